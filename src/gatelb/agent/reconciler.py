"""The one reconcile loop, for every mode (`gatelb run -f`, `gatelb run --kubeconfig`, both, and
the one-shot `gatelb apply` / `plan` / `delete`).

    sources.collect() -> merge -> L4LB IPAM -> resolve (health, drain) -> engine (nftables)
        -> sources.commit() -> consumers.set(SyncedState)

Rules it owns, so that no mode can drift from another:

- the synced gate: nothing is programmed before every source has finished its first full load;
- batching: triggers that arrive while a round runs (or within BATCH_S of the first) are handled
  by one round;
- work proportional to the change: sources hand over only what changed since their last commit,
  the allocator, the resolver and the engine touch only those load balancers;
- strict sources (files) are all-or-nothing: a contribution with any error changes nothing and
  the last good content keeps serving; non-strict ones (Kubernetes) keep errors with the object;
- after a failed kernel transaction the next round is a full resync, with backoff;
- a previous run's table is adopted when the kernel still holds exactly what the record says,
  so a restart reloads nothing;
- consumers get the complete state after every successful sync, never after a failed one.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gatelb.agent.engine import DataplaneSync, SyncResult
from gatelb.agent.runtime import event, names_or_count
from gatelb.dataplane.changes import Flow, udp_flows_to_flush
from gatelb.ipam.lb import LBAllocator
from gatelb.kernel.nft import NftError
from gatelb.model import (
    ConfigObject,
    IPAddress,
    IPPool,
    LoadBalancer,
    ObjectRef,
    OriginKind,
    ResolvedState,
    Service,
    SyncedState,
    ValidationError,
)
from gatelb.resolve import Usable, consistent_selection, service_for
from gatelb.sources.base import Contribution, Source

BATCH_S = 0.005  # let a burst of events that are already in flight land before one round
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
THOROUGH_GROWTH = 1.5  # the process's peak size grown this much: one collection over the frozen too

FlushUdp = Callable[[list[Flow]], int]


class HealthFeed(Protocol):
    """Told the desired load balancers before backends are resolved (gatelb.health.feed)."""

    def desired(self, load_balancers: Mapping[str, LoadBalancer], changed: Collection[str] | None) -> None: ...


class Consumer(Protocol):
    """Receives the full state after each successful sync. Must be quick: anything slow (API
    writes, files, routing daemons) runs in the consumer's own task, woken from set()."""

    def set(self, state: SyncedState) -> None: ...


class RoundObserver(Protocol):
    """Told how each round ended (metrics, readiness): after the consumers on success, at once on
    a refused transaction. Must be quick and must not raise."""

    def round_done(self, report: RoundReport, seconds: float) -> None: ...

    def round_failed(self, error: str, seconds: float) -> None: ...


@dataclass
class _Slot:
    """One source and what the reconciler holds from it (its last committed contribution)."""

    source: Source
    names: set[str] = field(default_factory=set)
    pools: tuple[IPPool, ...] = ()
    errors: dict[ObjectRef, tuple[ValidationError, ...]] = field(default_factory=dict)
    config: set[ObjectRef] = field(default_factory=set)  # configuration objects it gave
    rejected: tuple[ValidationError, ...] = ()  # strict: why the newest content is not applied
    news: bool = True
    committed: bool = False  # a first contribution was accepted


@dataclass(frozen=True)
class RoundReport:
    """What one round did, for logs, the one-shot commands and tests."""

    changed: frozenset[str]  # load balancer names whose service was added, changed or removed
    previous: Mapping[str, Service | None]  # those names' services before the round (None: new)
    result: SyncResult | None  # None: nothing reached the kernel (nothing changed, or dry run)
    rejected: Mapping[str, tuple[ValidationError, ...]]  # strict source name -> its errors
    script: str = ""  # dry run: the transaction that would be applied
    prepare_s: float = 0.0  # collect, merge, allocate, resolve


class Reconciler:
    def __init__(self, sources: Sequence[Source], engine: DataplaneSync, *,
                 usable: Usable | None = None, health: HealthFeed | None = None, consumers: Iterable[Consumer] = (),
                 flush_udp: FlushUdp | None = None,
                 recorded: Mapping[str, IPAddress] | None = None,
                 host_address: Callable[[IPAddress], bool] | None = None) -> None:
        self._slots = [_Slot(s) for s in sources]
        self._engine = engine
        self._usable = usable
        self._health = health
        self.consumers: list[Consumer] = list(consumers)
        self.observers: list[RoundObserver] = []
        self._flush_udp = flush_udp
        # Addresses load balancers had (state record, then every allocation this process made):
        # a load balancer that comes back, or comes up after a restart, gets its address again.
        self._recorded: dict[str, IPAddress] = dict(recorded or {})
        self._lbs: dict[str, LoadBalancer] = {}
        self._owner: dict[str, _Slot] = {}
        self._origins: dict[str, ObjectRef] = {}
        self._pools: tuple[IPPool, ...] = ()
        # The host's own addresses are never a VIP (kernel/addresses.py): None allows them.
        self._host_address = host_address
        self._alloc = LBAllocator((), host_address)
        self._alloc_errors: dict[str, tuple[ValidationError, ...]] = {}
        self._services: dict[str, Service] = {}
        self._config: dict[ObjectRef, ConfigObject] = {}
        self._config_owner: dict[ObjectRef, _Slot] = {}
        self._config_changed = True
        self._consistent = False  # an active-active GatewayGroup: the same pick on every member
        self._health_dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._failures = 0
        self._synced_once = False
        self._first_pass_due = True
        self._pools_changed = False
        self._contributed = False  # the last _gather() got a contribution from some source
        self.rounds = 0
        self._full_passes = _full_passes()
        self._thorough_kib = 0  # the process's peak size at the last pass over the frozen objects
        self.last_state: SyncedState | None = None
        self.last_error: str | None = None
        self.triggered_at = 0.0
        self._reasons: set[str] = set()  # why the pending round runs (for its log line)
        self._resync_due = False  # resync(): the next round reloads the whole table
        self._busy = False  # a round is running (its transaction may be in flight)
        # Triggers not yet handled by a successful round, and when the oldest of them arrived
        # (UNIX time): what /healthz and gatelb_changes_pending report. A failed round keeps them.
        self.pending = 0
        self.pending_since: float | None = None

    # -- what others may read ----------------------------------------------------------------

    @property
    def pools(self) -> tuple[IPPool, ...]:
        return self._pools

    def holders(self, ip: IPAddress) -> frozenset[str]:
        return self._alloc.holders(ip)

    @property
    def services(self) -> Mapping[str, Service]:
        return self._services

    @property
    def synced(self) -> bool:
        return all(slot.source.synced for slot in self._slots)

    # -- triggers ----------------------------------------------------------------------------

    def notifier(self, source: Source) -> Callable[[str], None]:
        slot = next(s for s in self._slots if s.source is source)

        def notify(reason: str) -> None:
            slot.news = True
            self.trigger(reason)

        return notify

    def trigger(self, reason: str = "") -> None:
        if not self._reasons:
            self.triggered_at = time.perf_counter()
        self._reasons.add(reason.partition(":")[0] or "unknown")
        self.pending += 1
        if self.pending_since is None:
            self.pending_since = time.time()
        self._wake.set()

    def health_changed(self, lbs: Iterable[str]) -> None:
        self._health_dirty.update(lbs)
        self.trigger("health")

    def remember(self, addresses: Mapping[str, IPAddress]) -> None:
        """Addresses load balancers had before (the state record): they get them back."""
        self._recorded.update(addresses)

    def adopt(self, previous: ResolvedState, generation: int) -> bool:
        """Take over the table a previous run left (see DataplaneSync.adopt); the first round then
        changes only what differs from it."""
        if not self._engine.adopt(previous, generation):
            return False
        self._services = previous.by_name()
        event(logging.INFO, "adopted", generation=generation, services=len(previous.services))
        return True

    # -- repair: the kernel changed behind our back (agent/guard.py) -------------------------

    @property
    def expected_generation(self) -> int | None:
        """The generation our table holds if nobody else touched it; None while a round runs or
        before anything was applied (nothing to compare with then)."""
        if self._busy or not self._engine.has_applied:
            return None
        return self._engine.generation

    def resync(self, reason: str) -> None:
        """Reload the whole table in the next round, through the usual path (someone deleted,
        flushed or edited it: the in-memory diff would be empty)."""
        self._resync_due = True
        self.trigger(f"repair:{reason}")

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the sources forever (a supervised task). Sources run as their own tasks."""
        while not self.synced:
            await self._wake.wait()
            self._wake.clear()
        event(logging.INFO, "synced", sources=[s.source.name for s in self._slots])
        self._wake.set()
        ready = False
        while True:
            await self._wake.wait()
            await asyncio.sleep(BATCH_S)
            self._wake.clear()
            done = await self.round()
            if done and not ready and not self._first_pass_due:
                # The first round over every source's complete content is done: the kernel holds
                # the desired state (whether this round had to change anything or not).
                ready = True
                event(logging.INFO, "ready", services=len(self._services), generation=self._engine.generation,
                      wall_time=time.time())
            self._collect_garbage()
            if not done:
                delay = RETRY_BACKOFF_S[min(self._failures - 1, len(RETRY_BACKOFF_S) - 1)]
                await asyncio.sleep(delay)
                self._wake.set()

    def _collect_garbage(self) -> None:
        """Start-up ran without the cyclic collector (Daemon.run): collect once, freeze what
        exists (long-lived: 10,000 services are millions of objects), and turn it back on.

        Later, whenever the collector has made a full pass on its own since the last look, freeze
        again: what survived that pass is long-lived (informer objects replaced by newer versions,
        the services of changed load balancers), and left unfrozen it is traversed again by every
        later full pass, 100-500 ms each at 10,000 Services, which is what delayed random changes.
        Frozen objects are still freed by reference counting, and the young generations are
        collected before each freeze; but a garbage cycle that formed among frozen objects (a
        request in flight when they were frozen) is only found by a pass over the frozen ones too.
        That thorough pass runs once the process's peak size has grown by THOROUGH_GROWTH since
        the last one: like CPython's own rule for full passes, its cost (0.3-0.5 s at 10,000) is
        paid once per that much growth, and what such cycles can hold is bounded by it. (The peak
        size is one cheap system call; gc.get_freeze_count() walks every frozen object, 80 ms.)"""
        if not gc.isenabled():
            gc.collect()
            gc.freeze()
            gc.enable()
            self._thorough_kib = _peak_kib()
        elif _full_passes() != self._full_passes:
            if _peak_kib() > self._thorough_kib * THOROUGH_GROWTH:
                gc.unfreeze()
                gc.collect()
                gc.freeze()
                self._thorough_kib = _peak_kib()
            else:
                gc.collect(1)
                gc.freeze()
        self._full_passes = _full_passes()

    async def round(self, dry_run: bool = False) -> bool:
        """One round; False when the kernel refused (the next round is then a full resync)."""
        self._busy = True
        try:
            report = await self.run_round(dry_run=dry_run)
        finally:
            self._busy = False
        return report is not None

    async def run_round(self, dry_run: bool = False) -> RoundReport | None:
        """One round; None when the kernel refused the transaction."""
        t0 = time.perf_counter()
        taken = self.pending
        reasons, self._reasons = self._reasons, set()
        triggered_at = self.triggered_at if reasons else t0
        changes, rejected, everything = self._gather()
        contributed = self._contributed
        if self._slots and not any(slot.committed for slot in self._slots):
            # No good configuration yet: program nothing. Whatever the kernel serves (an adopted
            # table) stays as it is until there is one.
            return RoundReport(frozenset(), {}, None, rejected)
        # Once every source has given a first good content, look at everything once: after an
        # adoption, load balancers that went away while we were down are only in the adopted
        # services. Until then only additions and changes are made, never removals of what a
        # source that has not loaded yet may still want.
        if self._first_pass_due and all(slot.committed for slot in self._slots):
            everything = True
        if self._config_changed and consistent_selection(self._config.values()) != self._consistent:
            self._consistent = not self._consistent
            everything = True  # every load balancer's algorithm changes
        if self._resync_due and not dry_run:
            self._resync_due = False
            self._engine.force_full()
        if self._health is not None and (changes or everything):
            self._health.desired(self._lbs, None if everything else changes.keys())
        upserts, removed, previous = self._resolve(changes, everything)
        t1 = time.perf_counter()
        full_needed = not self._engine.has_applied
        if dry_run:
            script = self._engine.plan_changes(self._services, upserts, removed)
            return RoundReport(frozenset(previous), previous, None, rejected, script, t1 - t0)
        result: SyncResult | None = None
        if upserts or removed or full_needed:
            try:
                result = await asyncio.to_thread(self._engine.sync_changes, self._services, upserts, removed)
            except NftError as err:
                self._failures += 1
                self.last_error = str(err)[:2000]
                event(logging.ERROR, "sync-failed", error=self.last_error, attempt=self._failures)
                for observer in self.observers:
                    observer.round_failed(self.last_error, time.perf_counter() - t0)
                return None
        self._failures = 0
        self.last_error = None
        self.rounds += 1
        if everything:
            self._first_pass_due = False
        if self._flush_udp is not None and previous:
            await self._flush(previous)
        if not (contributed or previous or everything or rejected or result is not None):
            # Woken, but no source had anything new (a Kubernetes Service whose only change is our
            # own status write coming back) and no health change moved a service: the state is the
            # one the consumers already have. Publishing it again would copy every map and wake
            # every consumer (a state save of 10,000 services) for nothing, 1,200 times in a
            # first sync at 10,000.
            self.pending = max(0, self.pending - taken)
            if self.pending == 0:
                self.pending_since = None
            quiet = RoundReport(frozenset(), {}, None, rejected, prepare_s=t1 - t0)
            for observer in self.observers:
                observer.round_done(quiet, time.perf_counter() - t0)
            return quiet
        state = self._publish(previous.keys() | changes.keys(), everything or (result is not None and result.full),
                              result)
        if result is not None and (result.changes or result.full):
            now = time.perf_counter()
            event(logging.INFO, "sync", trigger=",".join(sorted(reasons)), full=result.full,
                  changed=names_or_count(previous.keys()), changes=result.changes,
                  services=len(self._services), load_balancers=len(upserts) + len(removed),
                  generation=result.generation, prepare_ms=round((t1 - t0) * 1000, 3),
                  compile_ms=round(result.compile_s * 1000, 3), apply_ms=round(result.apply_s * 1000, 3),
                  duration_ms=round((now - t0) * 1000, 3), since_trigger_ms=round((now - triggered_at) * 1000, 3),
                  wall_time=time.time())
        for consumer in self.consumers:
            try:
                consumer.set(state)
            except Exception as err:  # one broken consumer must not stop the others or the loop
                event(logging.ERROR, "consumer-failed", consumer=type(consumer).__name__, error=repr(err)[:500])
        # Triggers that arrived while this round ran stay pending (with the older timestamp).
        self.pending = max(0, self.pending - taken)
        if self.pending == 0:
            self.pending_since = None
        report = RoundReport(frozenset(previous), previous, result, rejected, prepare_s=t1 - t0)
        for observer in self.observers:
            observer.round_done(report, time.perf_counter() - t0)
        if result is not None and result.full:
            # Everything loaded so far (10,000 services are millions of objects) is long-lived:
            # keep it out of the cyclic collector's full passes, which would otherwise add 100 ms
            # or more to random increments. After the log line and the consumers (a 0.3 s pass
            # at 10,000), so that neither the report nor the status write-back waits for it.
            gc.collect()
            gc.freeze()
            self._full_passes = _full_passes()
            self._thorough_kib = _peak_kib()
        return report

    # -- gather: sources -> desired load balancers and addresses --------------------------------

    def _gather(self) -> tuple[dict[str, LoadBalancer | None], dict[str, tuple[ValidationError, ...]], bool]:
        """Collect every source with news, merge what is acceptable, allocate. Returns the load
        balancers whose desired value or address changed, the rejections, and whether
        everything must be treated as changed (pools changed)."""
        changes: dict[str, LoadBalancer | None] = {}
        rejected: dict[str, tuple[ValidationError, ...]] = {}
        self._pools_changed = False
        self._contributed = False
        for slot in self._slots:
            if not slot.news:
                continue
            slot.news = False
            contribution = slot.source.collect(self)
            if contribution is None:  # nothing (new): for a source that never gave anything, empty
                slot.committed = True
                continue
            self._contributed = True
            problems = self._accept(slot, contribution, changes)
            if problems:
                slot.rejected = problems
                rejected[slot.source.name] = problems
                event(logging.ERROR, "config-invalid", source=slot.source.name, errors=[str(e) for e in problems],
                      keeping="last good configuration" if slot.names or self._synced_once else "nothing applied yet")
            else:
                if slot.rejected:
                    event(logging.INFO, "config-valid-again", source=slot.source.name)
                slot.rejected = ()
                slot.committed = True
                slot.source.commit(contribution)
        self._synced_once = True
        return changes, rejected, self._pools_changed

    def _accept(self, slot: _Slot, c: Contribution, changes: dict[str, LoadBalancer | None]) -> tuple[
            ValidationError, ...]:
        """Merge one contribution. For a strict source returns its problems and changes nothing
        when there are any."""
        for name, ip in c.recorded.items():
            self._recorded.setdefault(name, ip)  # what this process allocated itself comes first
        # A source may hand over an object equal to what it gave before (a Kubernetes Service
        # whose status we just wrote): nothing to allocate or resolve for it.
        lb_changes: dict[str, LoadBalancer | None] = {
            name: lb for name, lb in c.load_balancers.items()
            if lb is None or self._owner.get(name) is not slot or self._lbs.get(name) != lb
            or self._origins.get(name) != c.origins.get(name, self._origins.get(name))}
        if c.full:
            for name in slot.names - c.load_balancers.keys():
                lb_changes[name] = None
        errors = dict(c.errors)
        if c.full:
            errors.update({ref: () for ref in slot.errors if ref not in errors})
        clashes = [
            ValidationError("L4LB", name, "metadata.name",
                            f"already defined by {self._owner[name].source.name}")
            for name, lb in lb_changes.items()
            if lb is not None and name in self._owner and self._owner[name] is not slot
        ]
        config: dict[ObjectRef, ConfigObject | None] = dict(c.config)
        if c.full:
            for ref in slot.config - config.keys():
                config[ref] = None
        clashes += [
            ValidationError(ref.kind, ref.key, "metadata.name",
                            f"already defined by {self._config_owner[ref].source.name}")
            for ref, obj in config.items()
            if obj is not None and ref in self._config_owner and self._config_owner[ref] is not slot
        ]
        if slot.source.strict:
            problems = tuple(e for errs in errors.values() for e in errs) + tuple(clashes)
            if problems:
                return problems
        for err in clashes:  # non-strict: that object is left out, the rest proceeds
            if err.kind == "L4LB":
                lb_changes.pop(err.name, None)
                ref = c.origins.get(err.name, ObjectRef(OriginKind.L4LB, err.name))
            else:
                ref = ObjectRef(err.kind, err.name)
                config.pop(ref, None)
            errors[ref] = (*errors.get(ref, ()), err)
        pools = self._merged_pools(slot, c.pools) if c.pools is not None else None
        if pools is not None and pools != self._pools:
            outcome = self._replace_pools(pools, lb_changes, atomic=slot.source.strict)
            if outcome and slot.source.strict:
                return outcome
        else:
            update = self._alloc.update(lb_changes, self._recorded, atomic=slot.source.strict)
            if not update.applied:
                return tuple(update.errors[n] for n in sorted(update.errors))
            self._note_allocation(lb_changes, update.changed, changes)
        if c.pools is not None:
            slot.pools = c.pools
        for name, lb in lb_changes.items():
            if lb is None:
                slot.names.discard(name)
                self._owner.pop(name, None)
                self._lbs.pop(name, None)
                self._origins.pop(name, None)
            else:
                slot.names.add(name)
                self._owner[name] = slot
                self._lbs[name] = lb
                self._origins[name] = c.origins.get(name, ObjectRef(OriginKind.FILE, name))
            changes[name] = lb
        for ref, errs in errors.items():
            if errs:
                slot.errors[ref] = errs
            else:
                slot.errors.pop(ref, None)
        for ref, obj in config.items():
            if obj is None:
                if self._config_owner.get(ref) is slot:
                    del self._config[ref], self._config_owner[ref]
                    self._config_changed = True
                slot.config.discard(ref)
            elif self._config.get(ref) != obj:
                self._config[ref], self._config_owner[ref] = obj, slot
                slot.config.add(ref)
                self._config_changed = True
        return ()

    def _merged_pools(self, slot: _Slot, pools: tuple[IPPool, ...]) -> tuple[IPPool, ...]:
        """Every source's pools; a name given by two sources counts once: the first source's, in
        the order the daemon lists them (files before Kubernetes)."""
        out: dict[str, IPPool] = {}
        for s in self._slots:
            for p in pools if s is slot else s.pools:
                out.setdefault(p.name, p)
        return tuple(out[n] for n in sorted(out))

    def _replace_pools(self, pools: tuple[IPPool, ...], lb_changes: Mapping[str, LoadBalancer | None],
                       atomic: bool) -> tuple[ValidationError, ...]:
        """A pool change: place every load balancer again in a new allocator (current addresses
        first), and swap it in unless `atomic` and something failed."""
        trial = LBAllocator(pools, self._host_address)
        everyone: dict[str, LoadBalancer | None] = dict(self._lbs)
        everyone.update(lb_changes)
        current = {n: ip for n in self._lbs if (ip := self._alloc.address_of(n)) is not None}
        recorded = {**self._recorded, **current}
        update = trial.update({n: lb for n, lb in everyone.items() if lb is not None}, recorded, atomic=False)
        if update.errors and atomic:
            mine = [e for n, e in sorted(update.errors.items()) if n in lb_changes]
            if mine:
                return tuple(mine)
        self._alloc, self._pools, self._pools_changed = trial, pools, True
        # Every load balancer is resolved again (`everything`): no per-name changes needed.
        self._note_allocation(everyone, (), {})
        return ()

    def _note_allocation(self, lb_changes: Mapping[str, LoadBalancer | None], moved: Iterable[str],
                         changes: dict[str, LoadBalancer | None]) -> None:
        # The allocator keeps the load balancers that got no address and retries them on every
        # update (one may get the address another just freed): its list is the truth.
        self._alloc_errors = {n: (e,) for n, e in self._alloc.errors().items()}
        for name in moved:
            ip = self._alloc.address_of(name)
            if ip is not None:
                self._recorded[name] = ip
            if name not in lb_changes:  # same object, new (or lost) address
                changes[name] = self._lbs.get(name)

    # -- resolve: desired + addresses + health -> services ---------------------------------------

    def _resolve(self, changes: Mapping[str, LoadBalancer | None], everything: bool) -> tuple[
            list[Service], list[str], dict[str, Service | None]]:
        """Services for the load balancers that changed (or whose backends' health did). Returns
        the upserts, the removed names, and the previous service of each touched name (None:
        it had none)."""
        names: Iterable[str] = (self._lbs.keys() | self._services.keys()) if everything else (
            changes.keys() | self._health_dirty)
        self._health_dirty = set()
        upserts: list[Service] = []
        removed: list[str] = []
        previous: dict[str, Service | None] = {}
        for name in names:
            lb = self._lbs.get(name)
            vip = self._alloc.address_of(name) if lb is not None else None
            old = self._services.get(name)
            new = (service_for(lb, vip, self._usable, self._consistent)
                   if lb is not None and vip is not None and lb.active else None)
            if new == old:
                continue
            previous[name] = old
            if new is None:
                removed.append(name)
                del self._services[name]
            else:
                upserts.append(new)
                self._services[name] = new
        return upserts, removed, previous

    async def _flush(self, previous: Mapping[str, Service | None]) -> None:
        before = {n: s for n, s in previous.items() if s is not None}
        after = ResolvedState(tuple(self._services[n] for n in previous if n in self._services))
        flows = udp_flows_to_flush(before, after)
        if flows and self._flush_udp is not None:
            hits = await asyncio.to_thread(self._flush_udp, flows)
            event(logging.INFO, "conntrack-flush", flows=len(flows), deleted=hits,
                  backends=sorted({str(f.backend) for f in flows}))

    # -- publish -----------------------------------------------------------------------------

    def _publish(self, touched: Iterable[str], everything: bool, result: SyncResult | None) -> SyncedState:
        errors: dict[ObjectRef, tuple[ValidationError, ...]] = {}
        for slot in self._slots:
            errors.update(slot.errors)
            if slot.rejected:
                ref = ObjectRef("source", slot.source.name)
                errors[ref] = slot.rejected
        for name, errs in self._alloc_errors.items():
            ref = self._origins.get(name, ObjectRef(OriginKind.FILE, name))
            errors[ref] = (*errors.get(ref, ()), *errs)
        snap = self._alloc.snapshot()
        state = SyncedState(
            generation=self._engine.generation,
            load_balancers=dict(self._lbs),
            origins=dict(self._origins),
            addresses=dict(snap.addresses),
            pools=self._pools,
            pool_of=dict(snap.pool_of),
            services=dict(self._services),
            errors=errors,
            changed=None if everything or self.last_state is None else frozenset(touched),
            full=result is not None and result.full,
            config=dict(self._config) if self._config_changed or self.last_state is None else self.last_state.config,
            config_changed=self._config_changed,
        )
        self._config_changed = False
        self.last_state = state
        return state


def _peak_kib() -> int:
    """The process's peak resident size (KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _full_passes() -> int:
    """How many full (oldest-generation) collections this process has made."""
    return int(gc.get_stats()[2]["collections"])


async def run_sources(reconciler: Reconciler, sources: Sequence[Source]) -> None:
    """Run every source as a child of one task (for the supervisor)."""
    async with asyncio.TaskGroup() as group:
        for source in sources:
            group.create_task(source.run(reconciler.notifier(source)), name=f"source {source.name}")


async def one_round(reconciler: Reconciler, sources: Sequence[Source], dry_run: bool = False) -> tuple[
        RoundReport | None, float]:
    """Load one-shot sources and run a single round (gatelb apply / plan / delete). Returns the
    round's report (None: the kernel refused) and the seconds the sources took to load."""
    t0 = time.perf_counter()
    for source in sources:
        await source.run(reconciler.notifier(source))
    if not reconciler.synced:
        raise RuntimeError("a one-shot source did not finish loading")
    load_s = time.perf_counter() - t0
    return await reconciler.run_round(dry_run=dry_run), load_s
