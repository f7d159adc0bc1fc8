"""Writing back to the cluster: Service status and pool annotation, L4LB status, Events.

Every write is skipped when the object already says the same (so a steady state costs no API
call), and an Event is sent once per distinct message per object, not once per reconcile.

A write the API server refuses (an ApiException) does not stop the others: it is logged with the
described cause (`api.describe`: code, reason, message, the fix for a 403), once per cause and not
once per object, and the method returns False. Each kind of write (e.g. `patch services/status`)
that has failed for longer than the grace period without one success is a `problem`. A 404 on a
patch is an object deleted meanwhile: no problem. Other exceptions (no answer at all) propagate.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable
from datetime import UTC, datetime
from typing import Any

from gatelb.model import IPAddress
from gatelb.sources.kubernetes.api import GRACE_S, REPEAT_S, ApiException, ApiProblem, KubeApi, Obj, Trouble, describe
from gatelb.sources.kubernetes.translate import ANN_POOL_RECORD, _dig, key_of, status_addresses

log = logging.getLogger("gatelb.kube")
COMPONENT = "gatelb"
EVENTS_NAMESPACE = "default"  # Events about cluster-scoped objects (IPPools) go here


def ingress(addresses: Iterable[IPAddress]) -> list[Obj]:
    return [{"ip": str(ip), "ipMode": "VIP"} for ip in addresses]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(obj: Obj, kind: str, event_type: str, reason: str, message: str) -> Obj:
    meta = obj.get("metadata") or {}
    name = meta.get("name", "unknown")
    return {
        "metadata": {"generateName": f"{name}."},
        "involvedObject": {"kind": kind, "apiVersion": obj.get("apiVersion", "v1"), "name": name,
                           "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                           "resourceVersion": meta.get("resourceVersion")},
        "type": event_type, "reason": reason, "message": message[:1024],
        "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
        "firstTimestamp": _now(), "lastTimestamp": _now(), "count": 1,
    }


class StatusWriter:
    def __init__(self, api: KubeApi, grace_s: float = GRACE_S, repeat_s: float = REPEAT_S) -> None:
        self._api = api
        self._reported: dict[tuple[str, str, str], str] = {}  # (kind, key, reason) -> last message
        self._grace, self._repeat = grace_s, repeat_s
        self._troubles: dict[str, Trouble] = {}  # per kind of write: "patch services/status"

    @property
    def problem(self) -> str | None:
        """None unless a kind of write has failed for longer than the grace period (no success since)."""
        return next((p for t in self._troubles.values() if (p := t.problem)), None)

    @property
    def last_error(self) -> ApiProblem | None:
        """The most recent failure of any write, described."""
        failed = [t for t in self._troubles.values() if t.last_error is not None]
        return max(failed, key=lambda t: t.last_at).last_error if failed else None

    async def _write(self, what: str, target: str, call: Awaitable[Any]) -> bool:
        trouble = self._troubles.get(what)
        try:
            await call
        except ApiException as err:
            if err.status == 404 and what.startswith("patch") and describe(err).fix is None:
                log.debug("write-back skipped: object gone", extra={"fields": {"object": target, "write": what}})
                return False
            if trouble is None:
                trouble = self._troubles[what] = Trouble(f"status write-back ({what})", self._grace, self._repeat)
            trouble.failed(err, "write-back failed", write=what, object=target)
            return False
        if trouble is not None:
            trouble.ok()
        return True

    async def event(self, obj: Obj, kind: str, event_type: str, reason: str, message: str) -> bool:
        """Send an Event unless this object already got this reason with this message. False when the
        API server refused it (it is sent again on the next call)."""
        slot = (kind, key_of(obj), reason)
        if self._reported.get(slot) == message:
            return True
        ns = _dig(obj, "metadata", "namespace") or EVENTS_NAMESPACE
        done = await self._write("create events", f"{kind} {key_of(obj)}",
                                 self._api.create_event(ns, event_body(obj, kind, event_type, reason, message)))
        if done:
            self._reported[slot] = message
        return done

    def forget(self, kind: str, key: str, reason: str) -> None:
        """The problem is gone: the same message later is news again."""
        self._reported.pop((kind, key, reason), None)

    async def service_served(self, svc: Obj, addresses: tuple[IPAddress, ...], pools: tuple[str, ...]) -> bool:
        """Annotation, status and IPAllocated Event; False when a write was refused (the next round
        tries again: the object still differs)."""
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        target = f"Service {ns}/{name}"
        pool_text = ",".join(dict.fromkeys(pools))
        if _dig(svc, "metadata", "annotations", ANN_POOL_RECORD) != pool_text and not await self._write(
                "patch services", target,
                self._api.patch_service(ns, name, {"metadata": {"annotations": {ANN_POOL_RECORD: pool_text}}})):
            return False
        before = status_addresses(svc)
        if (_dig(svc, "status", "loadBalancer", "ingress") or []) != ingress(addresses) and not await self._write(
                "patch services/status", target,
                self._api.patch_service(ns, name, {"status": {"loadBalancer": {"ingress": ingress(addresses)}}},
                                        status=True)):
            return False
        self.forget("Service", key_of(svc), "AllocationFailed")
        if set(before) != set(addresses):
            text = ", ".join(str(a) for a in addresses)
            return await self.event(svc, "Service", "Normal", "IPAllocated",
                                    f"Assigned IP [{text}] from IPPool {pool_text}")
        return True

    async def service_released(self, svc: Obj) -> bool:
        """No longer ours (deleted type/class, or allocation lost): clear what we wrote."""
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        target = f"Service {ns}/{name}"
        # The annotation first: followers serve only annotated Services, so they stop at once.
        if _dig(svc, "metadata", "annotations", ANN_POOL_RECORD) is not None and not await self._write(
                "patch services", target,
                self._api.patch_service(ns, name, {"metadata": {"annotations": {ANN_POOL_RECORD: None}}})):
            return False
        if _dig(svc, "status", "loadBalancer", "ingress") and not await self._write(
                "patch services/status", target,
                self._api.patch_service(ns, name, {"status": {"loadBalancer": {"ingress": None}}}, status=True)):
            return False
        self.forget("Service", key_of(svc), "IPAllocated")
        return True

    async def l4lb_status(self, obj: Obj, state: str, message: str, ip: IPAddress | None) -> bool:
        want = {"state": state, "message": message, "frontendIP": str(ip) if ip else None}
        have = obj.get("status") or {}
        if {k: have.get(k) for k in want} == want:
            return True
        meta = obj["metadata"]
        return await self._write("patch l4lbs/status", f"L4LB {meta['namespace']}/{meta['name']}",
                                 self._api.patch_l4lb_status(meta["namespace"], meta["name"], {"status": want}))
