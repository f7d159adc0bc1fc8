"""Frontend addresses for L4LB objects: the L4LB policy on the allocator core. Pure.

`Allocator` is a plain synchronous class: give it pools, then `assign` / `keep` / `release` L4LBs.
A failed call raises ValidationError and changes nothing. Rules:

- an explicit `spec.frontend.ip` must lie in some pool (in `spec.pool` if given); several L4LBs may
  share one explicit address on different ports (80 and 443 on one VIP);
- an address allocated to an L4LB without an explicit ip is exclusive to it;
- allocation takes the lowest free address of the L4LB's family from `spec.pool`, else from the
  autoAssign pools in name order, skipping .0 / .255 in pools with avoidBuggyIPs.

`allocate` runs it over a whole DesiredState, keeping the recorded addresses that are still valid
so a restart never moves a VIP. Its order: first the recorded addresses (in name order), then
explicit requests, then automatic allocations in name order.

`LBAllocator` is the same for a long-lived reconciler: `update` takes the L4LBs that changed and
gives exactly what a full `allocate_partial` (or, atomic, `allocate`) over all of them would give
with the current addresses as the record, at a cost proportional to the batch.
`IncrementalAllocator` is that behind allocate()'s signature, for the file daemon.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from gatelb.ipam.core import Core, avoided
from gatelb.model import (
    DesiredState,
    IPAddress,
    IPPool,
    LoadBalancer,
    ValidationError,
    ValidationErrors,
)

L4LB = "L4LB"
SHARED = True  # the holding tag of an explicitly requested address
EXCLUSIVE = False  # ... and of an allocated one


def _shareable(a: bool, b: bool) -> bool:
    return a and b


@dataclass(frozen=True)
class Allocation:
    """L4LB name -> frontend address, for active and disabled L4LBs alike (so a disable does not
    lose the address), and the pool each address came from."""

    addresses: dict[str, IPAddress] = field(default_factory=dict)
    pool_of: dict[str, str | None] = field(default_factory=dict)


def _err(lb: LoadBalancer, path: str, text: str) -> ValidationError:
    return ValidationError(L4LB, lb.name, path, text)


HOST_ADDRESS = ("is an address of this host: a VIP on it would take over the host's own services "
                "(SSH...); use another address, or run with --allow-host-addresses")


class Allocator:
    """`host`: addresses the allocator must neither hand out nor accept (the host's own)."""

    def __init__(self, pools: Iterable[IPPool], host: Callable[[IPAddress], bool] | None = None) -> None:
        self._core: Core[bool] = Core(pools, _shareable, host)
        self._snapshot: tuple[int, Allocation] | None = None

    @property
    def pools(self) -> Mapping[str, IPPool]:
        return self._core.pools

    # --- queries -----------------------------------------------------------------------------

    def address_of(self, name: str) -> IPAddress | None:
        held = self._core.held_by(name)
        return held[0].ip if held else None

    def pool_of(self, name: str) -> str | None:
        held = self._core.held_by(name)
        return held[0].pool if held else None

    def explicit(self, name: str) -> bool | None:
        """Whether `name` holds its address by explicit request; None if it holds none."""
        held = self._core.held_by(name)
        return held[0].tag if held else None

    def holders(self, ip: IPAddress) -> frozenset[str]:
        return self._core.holders(ip)

    def snapshot(self) -> Allocation:
        """Every holding; the same object until something is taken or released (the daemon
        publishes one after every round, and at 10,000 L4LBs building it costs milliseconds).
        Callers must not change it."""
        if self._snapshot is not None and self._snapshot[0] == self._core.revision:
            return self._snapshot[1]
        names = sorted(self._core.owners())
        held = {n: self._core.held_by(n)[0] for n in names}
        snap = Allocation({n: h.ip for n, h in held.items()}, {n: h.pool for n, h in held.items()})
        self._snapshot = (self._core.revision, snap)
        return snap

    def pool_containing(self, ip: IPAddress) -> IPPool | None:
        return self._core.pool_containing(ip)

    # --- changes -----------------------------------------------------------------------------

    def release(self, name: str) -> None:
        self._core.release(name)

    def assign(self, lb: LoadBalancer) -> IPAddress:
        """Give `lb` its frontend address; raises ValidationError and changes nothing on failure.

        An L4LB that already holds a still-valid allocated address keeps it."""
        if lb.frontend_ip is not None:
            pool = self._check_explicit(lb, lb.frontend_ip)
            self._take(lb.name, lb.frontend_ip, pool, SHARED)
            return lb.frontend_ip
        current = self.address_of(lb.name)
        if current is not None and self.keep(lb, current):
            return current
        ip, pool_name = self._lowest_free(lb)
        self._take(lb.name, ip, pool_name, EXCLUSIVE)
        return ip

    def keep(self, lb: LoadBalancer, ip: IPAddress) -> bool:
        """Give an L4LB without an explicit ip the address it had before, if that is still valid:
        in a pool (`spec.pool` if set), of its family, allowed by avoidBuggyIPs, used by no one
        else. Returns False, changing nothing, otherwise."""
        pool = self.keepable(lb, ip)
        if pool is None or not self._core.compatible(ip, lb.name, EXCLUSIVE):
            return False
        self._take(lb.name, ip, pool.name, EXCLUSIVE)
        return True

    def keepable(self, lb: LoadBalancer, ip: IPAddress) -> IPPool | None:
        """The pool `keep` would record for `ip`, leaving aside who holds it; None if invalid."""
        pool = self.pool_containing(ip)
        if lb.frontend_ip is not None or pool is None or ip.version != lb.family or self._core.is_reserved(ip):
            return None
        if (lb.pool is not None and pool.name != lb.pool) or avoided(pool, ip):
            return None
        return pool

    def restore(self, name: str, ip: IPAddress, pool: str, explicit: bool) -> None:
        """Put back a holding read from an earlier state of this allocator, unchecked."""
        self._take(name, ip, pool, explicit)

    # --- internals ---------------------------------------------------------------------------

    def _take(self, name: str, ip: IPAddress, pool: str, tag: bool) -> None:
        self._core.release(name)
        self._core.take(name, ip, pool, tag)

    def _check_explicit(self, lb: LoadBalancer, ip: IPAddress) -> str:
        path = "spec.frontend.ip"
        if lb.pool is not None:
            pool = self._core.pool(lb.pool)
            if pool is None:
                raise _err(lb, "spec.pool", f"unknown IPPool {lb.pool!r}")
            if not pool.contains(ip):
                raise _err(lb, path, f"{ip} is not in IPPool {pool.name}")
        else:
            found = self.pool_containing(ip)
            if found is None:
                raise _err(lb, path, f"{ip} is not in any IPPool")
            pool = found
        if avoided(pool, ip):
            raise _err(lb, path, f"{ip} ends in .0 or .255, which IPPool {pool.name} avoids (avoidBuggyIPs)")
        if self._core.is_reserved(ip):
            raise _err(lb, path, f"{ip} {HOST_ADDRESS}")
        conflict = self._core.conflict(ip, lb.name, SHARED)
        if conflict is not None:
            raise _err(lb, path, f"{ip} is already used by L4LB {conflict[0]}")
        return pool.name

    def _candidates(self, lb: LoadBalancer) -> tuple[list[IPPool], str]:
        """The pools to allocate from and the field to blame when that fails."""
        if lb.pool is None:
            return [p for p in self._core.pools.values() if p.auto_assign], "spec.frontend.ip"
        pool = self._core.pool(lb.pool)
        if pool is None:
            raise _err(lb, "spec.pool", f"unknown IPPool {lb.pool!r}")
        return [pool], "spec.pool"

    def _lowest_free(self, lb: LoadBalancer) -> tuple[IPAddress, str]:
        pools, path = self._candidates(lb)
        family = f"IPv{lb.family}"
        if not pools:
            raise _err(lb, path, "not set, and no IPPool has autoAssign: true to allocate from")
        fitting = [p for p in pools if self._core.has_family(p, lb.family)]
        if not fitting:
            raise _err(lb, path, f"{_pools_label(pools)} {_has(pools)} no {family} addresses")
        for pool in fitting:
            ip = self._core.lowest_free(pool, lb.family)
            if ip is not None:
                return ip, pool.name
        raise _err(lb, path, f"{_pools_label(fitting)} {_has(fitting)} no free {family} address")


def _pools_label(pools: list[IPPool]) -> str:
    names = ", ".join(p.name for p in pools)
    return f"IPPool {names}" if len(pools) == 1 else f"IPPools {names}"


def _has(pools: list[IPPool]) -> str:
    return "has" if len(pools) == 1 else "have"


# --- over a whole desired state ----------------------------------------------------------------


def allocate_partial(
    desired: DesiredState, recorded: Mapping[str, IPAddress]
) -> tuple[Allocation, list[ValidationError]]:
    """Allocate what can be allocated; L4LBs in error get no address. For sources (Kubernetes)
    where one bad object must not stop the others."""
    alloc = Allocator(desired.pools)
    errors = _place(alloc, desired.load_balancers, recorded)
    return alloc.snapshot(), errors


def _place(alloc: Allocator, load_balancers: Iterable[LoadBalancer],
           recorded: Mapping[str, IPAddress]) -> list[ValidationError]:
    errors: list[ValidationError] = []
    lbs = sorted(load_balancers, key=lambda lb: lb.name)
    # Order matters: first the addresses L4LBs already had (a restart never moves a VIP), then
    # explicit requests (so a new automatic allocation never takes an address someone asked for),
    # then everything else, lowest address first in name order.
    pending: list[LoadBalancer] = []
    for lb in lbs:
        old = recorded.get(lb.name)
        if lb.frontend_ip is None and old is not None and alloc.keep(lb, old):
            continue
        pending.append(lb)
    for lb in sorted(pending, key=lambda lb: lb.frontend_ip is None):  # stable: name order kept
        try:
            alloc.assign(lb)
        except ValidationError as err:
            errors.append(err)
    return errors


def allocate(desired: DesiredState, recorded: Mapping[str, IPAddress]) -> Allocation:
    """Every L4LB's frontend address; raises ValidationErrors listing every failure."""
    allocation, errors = allocate_partial(desired, recorded)
    if errors:
        raise ValidationErrors(sorted(errors, key=lambda e: e.name))
    return allocation


# --- per name, for a long-lived reconciler -----------------------------------------------------


@dataclass(frozen=True)
class LBUpdate:
    """What one `LBAllocator.update` (or `set_pools`) did.

    `changed`: the names whose address is not what it was before the call (new, moved, lost or
    removed), sorted; empty when an atomic call was refused. `errors`: every L4LB placed in this
    call that got no address, by name (for an atomic call that was refused: why)."""

    changed: tuple[str, ...] = ()
    errors: Mapping[str, ValidationError] = field(default_factory=dict)
    applied: bool = True

    def raise_errors(self) -> None:
        if self.errors:
            raise ValidationErrors([self.errors[n] for n in sorted(self.errors)])


@dataclass(frozen=True)
class _Before:
    lb: LoadBalancer | None
    address: IPAddress | None
    pool: str | None
    explicit: bool | None
    error: ValidationError | None


class LBAllocator:
    """The L4LBs a reconciler knows and their addresses, updated one batch of names at a time.

    The result of every call is what `allocate_partial` over every known L4LB would give with
    the current addresses as the record (plus `recorded` for names that hold none); `atomic`
    calls give what `allocate` gives, or refuse the batch and change nothing. An L4LB that got
    no address is kept and placed again on every later call (cheap: it holds nothing), as a full
    pass would. The work of `update` is proportional to the batch, the L4LBs still without an
    address, and the few a batch pushes out by allocate()'s order (a recorded address wins over
    an explicit request and over a later name)."""

    def __init__(self, pools: Iterable[IPPool], host: Callable[[IPAddress], bool] | None = None) -> None:
        self._host = host
        self._alloc = Allocator(pools, host)
        self._lbs: dict[str, LoadBalancer] = {}
        self._failed: dict[str, ValidationError] = {}

    # --- queries -----------------------------------------------------------------------------

    @property
    def pools(self) -> tuple[IPPool, ...]:
        return tuple(self._alloc.pools.values())

    def address_of(self, name: str) -> IPAddress | None:
        return self._alloc.address_of(name)

    def pool_of(self, name: str) -> str | None:
        return self._alloc.pool_of(name)

    def holders(self, ip: IPAddress) -> frozenset[str]:
        return self._alloc.holders(ip)

    def snapshot(self) -> Allocation:
        return self._alloc.snapshot()

    def load_balancer(self, name: str) -> LoadBalancer | None:
        return self._lbs.get(name)

    def names(self) -> frozenset[str]:
        return frozenset(self._lbs)

    def errors(self) -> dict[str, ValidationError]:
        """The known L4LBs that hold no address, and why."""
        return {n: self._failed[n] for n in sorted(self._failed)}

    # --- changes -----------------------------------------------------------------------------

    def update(self, changes: Mapping[str, LoadBalancer | None], recorded: Mapping[str, IPAddress] | None = None,
               atomic: bool = False) -> LBUpdate:
        """Apply new or changed L4LBs (name -> object) and removals (name -> None).

        `recorded`: addresses for names that hold none here yet (a state file, an object's
        status), kept like allocate()'s record; ignored for names that hold one. `atomic`: if
        any L4LB of the batch (or one it pushed out) fails, nothing changes; L4LBs that already
        had no address before the call are placed again but do not block it."""
        recorded = recorded or {}
        before: dict[str, _Before] = {}
        previous: dict[str, IPAddress] = {}
        keep_heap: list[str] = []
        explicit: list[str] = []
        automatic: list[str] = []

        def touch(name: str) -> None:
            if name not in before:
                before[name] = _Before(self._lbs.get(name), self._alloc.address_of(name), self._alloc.pool_of(name),
                                       self._alloc.explicit(name), self._failed.get(name))

        def pend(name: str) -> None:
            """Release `name` and queue it in allocate()'s phases."""
            touch(name)
            ip = self._alloc.address_of(name)
            old = ip if ip is not None else recorded.get(name)
            self._alloc.release(name)
            self._failed.pop(name, None)
            lb = self._lbs[name]
            if lb.frontend_ip is not None:
                explicit.append(name)
            elif old is not None:
                previous[name] = old
                heapq.heappush(keep_heap, name)
            else:
                automatic.append(name)

        for name, lb in changes.items():
            touch(name)
            if lb is None:
                self._alloc.release(name)
                self._lbs.pop(name, None)
                self._failed.pop(name, None)
            else:
                self._lbs[name] = lb
        for name in sorted(set(changes) | set(self._failed)):
            if name in self._lbs:
                pend(name)
        errors: dict[str, ValidationError] = {}
        # 1. recorded addresses, in name order. A pending L4LB's record beats the holders outside
        #    the batch as it would in a full pass: a later-named allocated holder is pushed out
        #    (it comes back through this loop and then allocates afresh), and explicit holders
        #    fail, for allocate() takes recorded addresses before any explicit request.
        while keep_heap:
            name = heapq.heappop(keep_heap)
            lb, ip = self._lbs[name], previous[name]
            pool = self._alloc.keepable(lb, ip)
            if pool is None:
                automatic.append(name)
                continue
            holders = self._alloc.holders(ip) - {name}
            if any(self._alloc.explicit(h) is False and h < name for h in holders):
                automatic.append(name)
                continue
            for holder in sorted(holders):
                pend(holder)
            kept = self._alloc.keep(lb, ip)
            assert kept, f"{name} could not keep {ip}"
        # 2. explicit requests, 3. automatic allocations, each in name order.
        for name in sorted(explicit) + sorted(automatic):
            try:
                self._alloc.assign(self._lbs[name])
            except ValidationError as err:
                errors[name] = err
                self._failed[name] = err
        # An L4LB that had no address before and is not in the batch does not block it.
        if atomic and any(n in changes or before[n].error is None for n in errors):
            self._roll_back(before)
            return LBUpdate((), errors, applied=False)
        changed = tuple(sorted(n for n, b in before.items() if self._alloc.address_of(n) != b.address))
        return LBUpdate(changed, errors)

    def set_pools(self, pools: Iterable[IPPool], atomic: bool = False) -> LBUpdate:
        """New pools: every known L4LB is placed again, keeping its address where still valid."""
        alloc = Allocator(pools, self._host)
        lbs = list(self._lbs.values())
        old = self._alloc.snapshot()
        found = _place(alloc, lbs, old.addresses)
        errors = {e.name: e for e in sorted(found, key=lambda e: e.name)}
        if atomic and errors:
            return LBUpdate((), errors, applied=False)
        self._alloc, self._failed = alloc, dict(errors)
        changed = tuple(sorted(n for n in set(old.addresses) | set(self._lbs)
                               if alloc.address_of(n) != old.addresses.get(n)))
        return LBUpdate(changed, errors)

    def _roll_back(self, before: Mapping[str, _Before]) -> None:
        for name in before:
            self._alloc.release(name)
        for name, b in before.items():
            if b.lb is None:
                self._lbs.pop(name, None)
            else:
                self._lbs[name] = b.lb
            if b.error is None:
                self._failed.pop(name, None)
            else:
                self._failed[name] = b.error
            if b.address is not None and b.pool is not None and b.explicit is not None:
                self._alloc.restore(name, b.address, b.pool, b.explicit)


class IncrementalAllocator:
    """allocate() for a long-running agent: when the pools are the same objects as last time
    (the cached loader reuses unchanged documents), only L4LBs that are new, changed or removed
    (by identity) go to `LBAllocator.update`, atomically; the result is the same as a full
    allocate() with the previous addresses as the record (tests/unit/test_ipam_lb_incremental.py).
    A failed call leaves the last good state in place."""

    def __init__(self) -> None:
        self._pools: tuple[IPPool, ...] | None = None
        self._alloc: LBAllocator | None = None
        self._lbs: dict[str, LoadBalancer] = {}

    def allocate(self, desired: DesiredState, recorded: Mapping[str, IPAddress]) -> Allocation:
        current = {lb.name: lb for lb in desired.load_balancers}
        alloc = self._alloc
        changes: dict[str, LoadBalancer | None]
        if alloc is None or self._pools is None or not _same_objects(desired.pools, self._pools):
            alloc = LBAllocator(desired.pools)
            changes = dict(current)
        else:
            changes = {n: None for n in self._lbs if n not in current}
            changes.update({n: lb for n, lb in current.items() if self._lbs.get(n) is not lb})
        result = alloc.update(changes, recorded, atomic=True)
        result.raise_errors()
        self._alloc, self._pools, self._lbs = alloc, desired.pools, current
        return alloc.snapshot()


def _same_objects(a: tuple[IPPool, ...], b: tuple[IPPool, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
