"""Leader election on a coordination.k8s.io Lease, so one instance at a time allocates addresses.

The leader renews every `renew_s`; others take over once `renewTime + leaseDurationSeconds` has
passed. Every write is a PUT carrying the resourceVersion that was read, so of two contenders
the API server lets exactly one win (409 for the other). Any failure to renew makes this
instance a follower at once: it stops allocating (it keeps programming its own data path from
the addresses in Service status), which is the safe side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from kubernetes_asyncio.client.exceptions import ApiException

from gatelb.sources.kubernetes.api import KubeApi, Obj

log = logging.getLogger("gatelb.kube")


def _micro(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


class LeaseElector:
    def __init__(self, api: KubeApi, namespace: str, name: str, identity: str,
                 on_change: Callable[[bool], None], duration_s: int = 15, renew_s: float = 5.0) -> None:
        self._api = api
        self.namespace, self.name, self.identity = namespace, name, identity
        self._on_change = on_change
        self._duration = duration_s
        self._renew = renew_s
        self.is_leader = False

    async def run(self) -> None:
        try:
            while True:
                try:
                    leader = await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    log.warning("lease renewal failed", extra={"fields": {"error": repr(err)[:300]}})
                    leader = False
                self._set(leader)
                await asyncio.sleep(self._renew)
        finally:
            was_leader = self.is_leader
            self._set(False)
            if was_leader:  # hand over at once instead of making the next instance wait out the lease
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.release(), 2)

    async def release(self) -> None:
        lease = await self._api.read_lease(self.namespace, self.name)
        spec = (lease or {}).get("spec") or {}
        if lease is None or spec.get("holderIdentity") != self.identity:
            return
        spec = {**spec, "holderIdentity": None, "leaseDurationSeconds": 1}
        body = {"metadata": {"name": self.name, "resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": spec}
        await self._api.replace_lease(self.namespace, self.name, body)

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            log.info("leadership", extra={"fields": {"leader": leader, "lease": f"{self.namespace}/{self.name}"}})
            self._on_change(leader)

    def _spec(self, now: datetime, acquired: str | None, transitions: int) -> Obj:
        return {"holderIdentity": self.identity, "leaseDurationSeconds": self._duration,
                "acquireTime": acquired or _micro(now), "renewTime": _micro(now), "leaseTransitions": transitions}

    async def step(self) -> bool:
        """One attempt to acquire or renew; True when we hold the lease afterwards."""
        now = datetime.now(UTC)
        lease = await self._api.read_lease(self.namespace, self.name)
        try:
            if lease is None:
                await self._api.create_lease(self.namespace, {"metadata": {"name": self.name},
                                                              "spec": self._spec(now, None, 0)})
                return True
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity")
            renewed = _parse(spec.get("renewTime"))
            duration = int(spec.get("leaseDurationSeconds") or self._duration)
            if holder and holder != self.identity and renewed and renewed + timedelta(seconds=duration) > now:
                return False
            ours = holder == self.identity
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
            body = {"metadata": {"name": self.name, "resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": self._spec(now, spec.get("acquireTime") if ours else None, transitions)}
            await self._api.replace_lease(self.namespace, self.name, body)
            return True
        except ApiException as err:
            if err.status == 409:  # someone else created or renewed it between our read and write
                return False
            raise
