"""Writing back to the cluster: Service status and pool annotation, L4LB status, Events.

Every write is skipped when the object already says the same (so a steady state costs no API
call), and an Event is sent once per distinct message per object, not once per reconcile.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from gatelb.model import IPAddress
from gatelb.sources.kubernetes.api import KubeApi, Obj
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
    def __init__(self, api: KubeApi) -> None:
        self._api = api
        self._reported: dict[tuple[str, str, str], str] = {}  # (kind, key, reason) -> last message

    async def event(self, obj: Obj, kind: str, event_type: str, reason: str, message: str) -> None:
        """Send an Event unless this object already got this reason with this message."""
        slot = (kind, key_of(obj), reason)
        if self._reported.get(slot) == message:
            return
        self._reported[slot] = message
        ns = _dig(obj, "metadata", "namespace") or EVENTS_NAMESPACE
        await self._api.create_event(ns, event_body(obj, kind, event_type, reason, message))

    def forget(self, kind: str, key: str, reason: str) -> None:
        """The problem is gone: the same message later is news again."""
        self._reported.pop((kind, key, reason), None)

    async def service_served(self, svc: Obj, addresses: tuple[IPAddress, ...], pools: tuple[str, ...]) -> None:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        pool_text = ",".join(dict.fromkeys(pools))
        if _dig(svc, "metadata", "annotations", ANN_POOL_RECORD) != pool_text:
            await self._api.patch_service(ns, name, {"metadata": {"annotations": {ANN_POOL_RECORD: pool_text}}})
        before = status_addresses(svc)
        if (_dig(svc, "status", "loadBalancer", "ingress") or []) != ingress(addresses):
            await self._api.patch_service(ns, name, {"status": {"loadBalancer": {"ingress": ingress(addresses)}}},
                                          status=True)
        self.forget("Service", key_of(svc), "AllocationFailed")
        if set(before) != set(addresses):
            text = ", ".join(str(a) for a in addresses)
            await self.event(svc, "Service", "Normal", "IPAllocated", f"Assigned IP [{text}] from IPPool {pool_text}")

    async def service_released(self, svc: Obj) -> None:
        """No longer ours (deleted type/class, or allocation lost): clear what we wrote."""
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        # The annotation first: followers serve only annotated Services, so they stop at once.
        if _dig(svc, "metadata", "annotations", ANN_POOL_RECORD) is not None:
            await self._api.patch_service(ns, name, {"metadata": {"annotations": {ANN_POOL_RECORD: None}}})
        if _dig(svc, "status", "loadBalancer", "ingress"):
            await self._api.patch_service(ns, name, {"status": {"loadBalancer": {"ingress": None}}}, status=True)
        self.forget("Service", key_of(svc), "IPAllocated")

    async def l4lb_status(self, obj: Obj, state: str, message: str, ip: IPAddress | None) -> None:
        want = {"state": state, "message": message, "frontendIP": str(ip) if ip else None}
        have = obj.get("status") or {}
        if {k: have.get(k) for k in want} != want:
            meta = obj["metadata"]
            await self._api.patch_l4lb_status(meta["namespace"], meta["name"], {"status": want})
