"""Leader election on a coordination.k8s.io Lease, so one instance at a time allocates addresses.

The leader renews every `renew_s`; others take over once `renewTime + leaseDurationSeconds` has
passed. Every write is a PUT carrying the resourceVersion that was read, so of two contenders
the API server lets exactly one win (409 for the other). Any failure to renew makes this
instance a follower at once: it stops allocating (it keeps programming its own data path from
the addresses in Service status), which is the safe side.

A 409 (someone wrote between our read and our write) is no failure: the Lease is read again and
the decision taken anew. Real failures (a missing namespace, a missing permission, an unreachable
API server) are warned about at once; past `grace_s` they are an ERROR naming the cause and its fix
(again every `repeat_s`, not on every retry) and `problem` says so, for readiness: an instance that
cannot take the Lease must not look like a healthy follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from gatelb.sources.kubernetes.api import GRACE_S, REPEAT_S, ApiException, ApiProblem, KubeApi, Obj, Trouble

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
                 on_change: Callable[[bool], None], duration_s: int = 15, renew_s: float = 5.0,
                 grace_s: float = GRACE_S, repeat_s: float = REPEAT_S) -> None:
        self._api = api
        self.namespace, self.name, self.identity = namespace, name, identity
        self._on_change = on_change
        self._duration = duration_s
        self._renew = renew_s
        self._trouble = Trouble(f"leader election on Lease {namespace}/{name}", grace_s, repeat_s)
        self.is_leader = False
        # Set once the first attempt has ended (leader or not): the first round must not allocate
        # as a follower when this instance is about to lead (an L4LB would take a Service's
        # requested address), nor wait for a Lease the API server refuses.
        self.decided = asyncio.Event()

    @property
    def problem(self) -> str | None:
        """None while the Lease can be read and written (as leader or as follower); else, once that
        has failed for longer than the grace period, what fails and the fix: report not ready."""
        return self._trouble.problem

    @property
    def last_error(self) -> ApiProblem | None:
        """The last failure, described (kept after recovery; `problem` is the current state)."""
        return self._trouble.last_error

    async def run(self) -> None:
        try:
            while True:
                try:
                    leader = await self.step()
                    self._trouble.ok()
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    self._trouble.failed(err, "lease renewal failed", lease=f"{self.namespace}/{self.name}",
                                         effect="not the leader: no address is allocated and no status "
                                                "written by this instance")
                    leader = False
                self._set(leader)
                self.decided.set()
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

    async def step(self, attempts: int = 3) -> bool:
        """One attempt to acquire or renew; True when we hold the lease afterwards. A 409 (another
        writer between our read and write) reads the Lease again and decides anew."""
        for _ in range(attempts - 1):
            try:
                return await self._attempt()
            except ApiException as err:
                if err.status != 409:
                    raise
                log.debug("lease write conflict, reading it again", extra={"fields": {"error": str(err)[:300]}})
        try:
            return await self._attempt()
        except ApiException as err:
            if err.status == 409:  # still losing races: someone else is writing it; a follower for now
                return False
            raise

    async def _attempt(self) -> bool:
        now = datetime.now(UTC)
        lease = await self._api.read_lease(self.namespace, self.name)
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
