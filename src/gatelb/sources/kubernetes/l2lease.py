"""Who answers ARP/NDP for each L2 VIP in Kubernetes mode: one coordination.k8s.io Lease per VIP.

    every gatelb instance: Lease gatelb-node-<node>       (membership: who is alive)
    per L2 VIP:            Lease gatelb-l2-<vip>          (holderIdentity: the node that answers)

Each tick (every `poll_s`) an instance that has L2 VIPs to consider (none: no API call at all)
lists the Leases of its namespace once, renews its own
membership and the VIP Leases it holds (every `renew_s`), and takes the VIPs it should have:

- **Spread.** Among the live members eligible for a VIP (the L2Advertisement's nodes, or every
  member), the preferred owner is the highest rendezvous hash of (VIP, node): every instance
  computes the same ranking from the Leases alone, VIPs spread evenly, and a member that joins or
  leaves moves only the VIPs it wins or held. A holder hands a VIP to its preferred owner once
  that one has been alive for HANDOVER_AFTER leases (at most once per VIP per HANDOVER_COOLDOWN_S,
  so an owner that never takes it cannot make it bounce).
- **Takeover.** A Lease nobody renewed for its `leaseDurationSeconds` (as observed here, on our
  own monotonic clock, like client-go: no clock comparison between machines) is free. The
  preferred live owner takes a free VIP at once, any other eligible member after `renew_s`
  (the preferred one may be unable to serve it). Writes carry the resourceVersion read, so of
  two contenders exactly one wins (409 for the other).
- **Safety.** An instance answers for a VIP only while its last successful renewal is younger
  than `duration - 2 * poll_s`: others take over `duration` after the last change they saw, so
  an instance cut off from the API server stops answering before anyone else starts.
- An instance that cannot serve a VIP (no backend up here) does not take it and releases it;
  SIGTERM releases every Lease (holderIdentity cleared: the next owner takes over on its next tick).

The takeover after an owner dies is bounded by the lease duration plus one tick (plus the
gratuitous ARP): docs/announce.md has the measured figures and the trade-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gatelb.model import IPAddress
from gatelb.sources.kubernetes.api import ApiException, KubeApi, Obj, Trouble
from gatelb.sources.kubernetes.lease import _micro

log = logging.getLogger("gatelb.kube")

DEFAULT_DURATION_S = 2
HANDOVER_AFTER = 2  # lease durations a preferred owner must have been alive before it gets its VIPs
HANDOVER_COOLDOWN_S = 30.0
MEMBER_PREFIX = "gatelb-node-"
VIP_PREFIX = "gatelb-l2-"
WRITES_AT_ONCE = 16


def lease_name(vip: IPAddress) -> str:
    return VIP_PREFIX + str(vip).replace(".", "-").replace(":", "-")


def member_name(node: str) -> str:
    return MEMBER_PREFIX + re.sub(r"[^a-z0-9.-]", "-", node.lower())


def rank(vip: IPAddress, node: str) -> bytes:
    return hashlib.sha256(f"{vip}|{node}".encode()).digest()


def preferred(vip: IPAddress, candidates: set[str]) -> str | None:
    return max(candidates, key=lambda n: rank(vip, n)) if candidates else None


@dataclass(frozen=True)
class Want:
    nodes: tuple[str, ...]  # the members that may own it (empty: every member)
    servable: bool = True  # this gateway has a backend up for it


@dataclass
class _Seen:
    version: tuple[Any, ...]
    since: float  # monotonic time this version was first seen


class L2LeaseElection:
    def __init__(self, api: KubeApi, namespace: str, node: str, duration_s: int = DEFAULT_DURATION_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if duration_s < 1:
            raise ValueError("--l2-lease-duration: a Lease lasts whole seconds, at least 1")
        self._api = api
        self.namespace, self.node = namespace, node
        self.duration_s = duration_s
        self.renew_s = duration_s / 4
        self.poll_s = min(0.25, duration_s / 8)
        self._clock = clock
        self._wanted: dict[IPAddress, Want] = {}
        self._seen: dict[str, _Seen] = {}
        self._free_since: dict[str, float] = {}
        self._held: dict[IPAddress, float] = {}  # VIP -> monotonic send time of our last successful write
        self._versions: dict[str, str] = {}  # lease name -> resourceVersion after our last write
        self._handed: dict[IPAddress, float] = {}
        self._member_at = -1e9
        self._alive_since: dict[str, float] = {}  # member -> since when it has been seen alive without a gap
        self._owned: frozenset[IPAddress] = frozenset()
        self.holders: dict[str, str] = {}  # VIP -> holder, as last read (for status)
        self.members: tuple[str, ...] = ()
        self.on_change: Callable[[], None] = lambda: None
        self._trouble = Trouble(f"L2 election on the Leases in {namespace}")

    # -- what the announcer uses (from its thread: a whole-dict replacement is atomic) ---------------

    def want(self, wanted: Mapping[IPAddress, tuple[tuple[str, ...], bool]]) -> None:
        """VIP -> (the nodes that may own it, empty: any member; whether this gateway can serve it)."""
        self._wanted = {vip: Want(nodes, servable) for vip, (nodes, servable) in wanted.items()}

    def owned(self) -> frozenset[IPAddress]:
        return self._owned

    @property
    def problem(self) -> str | None:
        return self._trouble.problem

    def info(self) -> dict[str, Any]:
        return {"leaseNamespace": self.namespace, "leaseDurationSeconds": self.duration_s,
                "members": list(self.members), "holders": dict(sorted(self.holders.items()))}

    # -- the task --------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.tick()
                    self._trouble.ok()
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    self._trouble.failed(err, "L2 lease election failed", namespace=self.namespace,
                                         effect="owned VIPs are dropped once their Leases lapse")
                self._update_owned()
                await asyncio.sleep(self.poll_s)
        finally:
            held = list(self._held)
            self._held.clear()
            self._update_owned()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await asyncio.gather(*(self._release(lease_name(v)) for v in held),
                                         self._release(member_name(self.node)), return_exceptions=True)

    def _update_owned(self) -> None:
        now = self._clock()
        valid = self.duration_s - 2 * self.poll_s
        owned = frozenset(v for v, at in self._held.items() if now - at < valid)
        if owned != self._owned:
            self._owned = owned
            log.info("l2-leases", extra={"fields": {"event": "l2-leases", "owned": sorted(map(str, owned)),
                                                    "node": self.node, "wall_time": time.time()}})
            self.on_change()

    def _observe(self, leases: list[Obj], now: float) -> dict[str, tuple[str | None, Obj]]:
        """name -> (live holder or None, lease) for our Leases; a holder is live until its Lease
        has not changed for its duration, as seen here."""
        out: dict[str, tuple[str | None, Obj]] = {}
        names = set()
        for lease in leases:
            meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
            name = str(meta.get("name"))
            if not name.startswith((MEMBER_PREFIX, VIP_PREFIX)):
                continue
            names.add(name)
            holder = spec.get("holderIdentity") or None
            version = (holder, spec.get("renewTime"), meta.get("resourceVersion"))
            seen = self._seen.get(name)
            if seen is None or seen.version != version:
                seen = self._seen[name] = _Seen(version, now)
            duration = int(spec.get("leaseDurationSeconds") or self.duration_s)
            if holder == self.node and name in self._versions and meta.get("resourceVersion") == self._versions[name]:
                live: str | None = holder  # our own last write
            else:
                live = holder if holder and now - seen.since < duration else None
            out[name] = (live, lease)
        for gone in self._seen.keys() - names:
            del self._seen[gone]
        return out

    async def tick(self) -> None:
        now = self._clock()
        if not self._wanted and not self._held:
            return  # no L2 here (BGP only, or no VIP this node may own): no API calls at all
        leases = self._observe(await self._api.list_leases(self.namespace), now)
        writes: list[Any] = []
        me = member_name(self.node)
        if now - self._member_at >= self.renew_s:
            writes.append(self._member(leases.get(me), now))
        alive = {h for n, (h, _) in leases.items() if n.startswith(MEMBER_PREFIX) and h}
        alive.add(self.node)
        for gone in self._alive_since.keys() - alive:
            del self._alive_since[gone]
        for member in alive:
            self._alive_since.setdefault(member, now)
        alive_since = self._alive_since
        self.members = tuple(sorted(alive))
        self.holders = {}
        wanted = self._wanted
        for vip, want in wanted.items():
            name = lease_name(vip)
            holder, lease = leases.get(name, (None, None))
            if holder:
                self.holders[str(vip)] = holder
            candidates = {n for n in alive if not want.nodes or n in want.nodes}
            top = preferred(vip, candidates)
            if holder == self.node:
                if not want.servable:
                    writes.append(self._give_up(vip, "cannot serve it here"))
                elif top not in (None, self.node) and now - alive_since.get(top, now) >= \
                        HANDOVER_AFTER * self.duration_s and now - self._handed.get(vip, -1e9) >= HANDOVER_COOLDOWN_S:
                    self._handed[vip] = now
                    writes.append(self._give_up(vip, f"handed to its preferred owner {top}"))
                elif now - self._held.get(vip, -1e9) >= self.renew_s or vip not in self._held:
                    writes.append(self._take(vip, lease, now, renew=True))
                continue
            self._held.pop(vip, None)
            if holder is not None:
                self._free_since.pop(name, None)
                continue
            free_since = self._free_since.setdefault(name, now)
            if want.servable and (top == self.node or now - free_since >= self.renew_s):
                writes.append(self._take(vip, lease, now, renew=False))
        names = {lease_name(v) for v in wanted}
        self._free_since = {k: v for k, v in self._free_since.items() if k in names}
        for vip in [v for v in self._held if v not in wanted]:
            writes.append(self._give_up(vip, "no longer announced here"))
        gate = asyncio.Semaphore(WRITES_AT_ONCE)

        async def bounded(write: Any) -> None:
            async with gate:
                await write

        results = await asyncio.gather(*(bounded(w) for w in writes), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    def _spec(self, acquired: str | None, transitions: int) -> Obj:
        now = _micro(datetime.now(UTC))
        return {"holderIdentity": self.node, "leaseDurationSeconds": self.duration_s,
                "acquireTime": acquired or now, "renewTime": now, "leaseTransitions": transitions}

    async def _write(self, name: str, lease: Obj | None, spec: Obj) -> bool:
        """Create or replace (with the version read); False when someone else wrote first."""
        try:
            if lease is None:
                done = await self._api.create_lease(self.namespace, {
                    "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "gatelb"}}, "spec": spec})
            else:
                body = {"metadata": {**{k: v for k, v in (lease.get("metadata") or {}).items()
                                        if k in ("name", "resourceVersion", "labels")}}, "spec": spec}
                done = await self._api.replace_lease(self.namespace, name, body)
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        self._versions[name] = str((done.get("metadata") or {}).get("resourceVersion"))
        return True

    async def _member(self, lease: tuple[str | None, Obj] | None, now: float) -> None:
        raw = lease[1] if lease else None
        spec = (raw or {}).get("spec") or {}
        ours = spec.get("holderIdentity") == self.node
        if await self._write(member_name(self.node), raw, self._spec(spec.get("acquireTime") if ours else None, 0)):
            self._member_at = now

    async def _take(self, vip: IPAddress, lease: Obj | None, now: float, renew: bool) -> None:
        spec = (lease or {}).get("spec") or {}
        ours = spec.get("holderIdentity") == self.node
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
        if await self._write(lease_name(vip), lease, self._spec(spec.get("acquireTime") if ours else None,
                                                                transitions)):
            if vip not in self._held:
                log.info("l2-lease-acquired", extra={"fields": {"event": "l2-lease-acquired", "vip": str(vip),
                                                                "node": self.node, "renewal": renew}})
            self._held[vip] = now
            self.holders[str(vip)] = self.node
        else:
            self._held.pop(vip, None)

    async def _give_up(self, vip: IPAddress, why: str) -> None:
        self._held.pop(vip, None)
        self._update_owned()  # stop answering before anyone may take it
        log.info("l2-lease-released", extra={"fields": {"event": "l2-lease-released", "vip": str(vip),
                                                        "node": self.node, "why": why}})
        await self._release(lease_name(vip))

    async def _release(self, name: str) -> None:
        lease = await self._api.read_lease(self.namespace, name)
        spec = (lease or {}).get("spec") or {}
        if lease is None or spec.get("holderIdentity") != self.node:
            return
        body = {"metadata": {"name": name, "resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {**spec, "holderIdentity": None}}
        with contextlib.suppress(ApiException):
            await self._api.replace_lease(self.namespace, name, body)
