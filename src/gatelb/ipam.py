"""Frontend address allocation, in the spirit of MetalLB's allocator (pkg/allocator). Pure.

`Allocator` is a plain synchronous class: give it pools, then `assign` / `keep` / `release` L4LBs.
A failed call raises ValidationError and changes nothing. Rules:

- an explicit `spec.frontend.ip` must lie in some pool (in `spec.pool` if given); several L4LBs may
  share one explicit address on different ports (80 and 443 on one VIP);
- an address allocated to an L4LB without an explicit ip is exclusive to it;
- allocation takes the lowest free address of the L4LB's family from `spec.pool`, else from the
  autoAssign pools in name order, skipping .0 / .255 in pools with avoidBuggyIPs.

`allocate` runs it over a whole DesiredState, keeping the recorded addresses that are still valid
so a restart never moves a VIP. `resolve` turns the result into the services the compiler takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from gatelb.model import (
    Backend,
    DesiredState,
    IPAddress,
    IPPool,
    LoadBalancer,
    ResolvedState,
    Service,
    ValidationError,
    ValidationErrors,
)

L4LB = "L4LB"
Usable = Callable[[str, Backend], bool]


@dataclass(frozen=True)
class Allocation:
    """L4LB name -> frontend address, for active and disabled L4LBs alike (so a disable does not
    lose the address), and the pool each address came from."""

    addresses: dict[str, IPAddress] = field(default_factory=dict)
    pool_of: dict[str, str | None] = field(default_factory=dict)


def is_buggy(ip: IPAddress) -> bool:
    """Addresses ending in .0 or .255, which some old client firmware drops (MetalLB's rule)."""
    return ip.version == 4 and ip.packed[-1] in (0, 255)


def is_subnet_router_anycast(ip: IPAddress) -> bool:
    """An IPv6 address whose interface identifier (low 64 bits) is zero is the Subnet-Router
    anycast address of its /64 (RFC 4291 2.6.1): never hand it out automatically."""
    return ip.version == 6 and int(ip) & ((1 << 64) - 1) == 0


def _err(lb: LoadBalancer, path: str, text: str) -> ValidationError:
    return ValidationError(L4LB, lb.name, path, text)


class Allocator:
    def __init__(self, pools: Iterable[IPPool]) -> None:
        self._pools = {p.name: p for p in sorted(pools, key=lambda p: p.name)}
        self._address: dict[str, IPAddress] = {}
        self._pool: dict[str, str] = {}
        self._exclusive: dict[IPAddress, str] = {}  # allocated address -> its one holder
        self._shared: dict[IPAddress, set[str]] = {}  # explicitly requested address -> holders
        # Per (pool, range index): every address below the hint is in use (or buggy), so a scan
        # for the lowest free one starts there. Keeps allocating N addresses O(N), not O(N^2).
        self._hint: dict[tuple[str, int], int] = {}

    # --- queries -----------------------------------------------------------------------------

    def address_of(self, name: str) -> IPAddress | None:
        return self._address.get(name)

    def pool_of(self, name: str) -> str | None:
        return self._pool.get(name)

    def holders(self, ip: IPAddress) -> frozenset[str]:
        if ip in self._exclusive:
            return frozenset({self._exclusive[ip]})
        return frozenset(self._shared.get(ip, ()))

    def snapshot(self) -> Allocation:
        names = sorted(self._address)
        return Allocation({n: self._address[n] for n in names}, {n: self._pool.get(n) for n in names})

    def pool_containing(self, ip: IPAddress) -> IPPool | None:
        return next((p for p in self._pools.values() if p.contains(ip)), None)

    # --- changes -----------------------------------------------------------------------------

    def release(self, name: str) -> None:
        ip = self._address.pop(name, None)
        self._pool.pop(name, None)
        if ip is None:
            return
        if self._exclusive.get(ip) == name:
            del self._exclusive[ip]
        holders = self._shared.get(ip)
        if holders is not None:
            holders.discard(name)
            if not holders:
                del self._shared[ip]
        if ip not in self._exclusive and ip not in self._shared:
            self._lower_hint(ip)

    def assign(self, lb: LoadBalancer) -> IPAddress:
        """Give `lb` its frontend address; raises ValidationError and changes nothing on failure.

        An L4LB that already holds a still-valid allocated address keeps it."""
        if lb.frontend_ip is not None:
            pool = self._check_explicit(lb, lb.frontend_ip)
            self._take(lb.name, lb.frontend_ip, pool, exclusive=False)
            return lb.frontend_ip
        current = self._address.get(lb.name)
        if current is not None and self.keep(lb, current):
            return current
        ip, pool_name = self._lowest_free(lb)
        self._take(lb.name, ip, pool_name, exclusive=True)
        return ip

    def keep(self, lb: LoadBalancer, ip: IPAddress) -> bool:
        """Give an L4LB without an explicit ip the address it had before, if that is still valid:
        in a pool (`spec.pool` if set), of its family, allowed by avoidBuggyIPs, used by no one
        else. Returns False, changing nothing, otherwise."""
        pool = self.pool_containing(ip)
        if lb.frontend_ip is not None or pool is None or ip.version != lb.family:
            return False
        if (lb.pool is not None and pool.name != lb.pool) or (pool.avoid_buggy_ips and is_buggy(ip)):
            return False
        if self.holders(ip) - {lb.name}:
            return False
        self._take(lb.name, ip, pool.name, exclusive=True)
        return True

    # --- internals ---------------------------------------------------------------------------

    def _take(self, name: str, ip: IPAddress, pool: str, exclusive: bool) -> None:
        self.release(name)
        self._address[name] = ip
        self._pool[name] = pool
        if exclusive:
            self._exclusive[ip] = name
        else:
            self._shared.setdefault(ip, set()).add(name)

    def _check_explicit(self, lb: LoadBalancer, ip: IPAddress) -> str:
        path = "spec.frontend.ip"
        if lb.pool is not None:
            pool = self._pools.get(lb.pool)
            if pool is None:
                raise _err(lb, "spec.pool", f"unknown IPPool {lb.pool!r}")
            if not pool.contains(ip):
                raise _err(lb, path, f"{ip} is not in IPPool {pool.name}")
        else:
            found = self.pool_containing(ip)
            if found is None:
                raise _err(lb, path, f"{ip} is not in any IPPool")
            pool = found
        if pool.avoid_buggy_ips and is_buggy(ip):
            raise _err(lb, path, f"{ip} ends in .0 or .255, which IPPool {pool.name} avoids (avoidBuggyIPs)")
        owner = self._exclusive.get(ip)
        if owner is not None and owner != lb.name:
            raise _err(lb, path, f"{ip} is already used by L4LB {owner}")
        return pool.name

    def _candidates(self, lb: LoadBalancer) -> tuple[list[IPPool], str]:
        """The pools to allocate from and the field to blame when that fails."""
        if lb.pool is None:
            return [p for p in self._pools.values() if p.auto_assign], "spec.frontend.ip"
        pool = self._pools.get(lb.pool)
        if pool is None:
            raise _err(lb, "spec.pool", f"unknown IPPool {lb.pool!r}")
        return [pool], "spec.pool"

    def _lowest_free(self, lb: LoadBalancer) -> tuple[IPAddress, str]:
        pools, path = self._candidates(lb)
        family = f"IPv{lb.family}"
        if not pools:
            raise _err(lb, path, "not set, and no IPPool has autoAssign: true to allocate from")
        fitting = [p for p in pools if any(r.version == lb.family for r in p.ranges)]
        if not fitting:
            raise _err(lb, path, f"{_pools_label(pools)} {_has(pools)} no {family} addresses")
        for pool in fitting:
            ip = self._scan_pool(pool, lb.family)
            if ip is not None:
                return ip, pool.name
        raise _err(lb, path, f"{_pools_label(fitting)} {_has(fitting)} no free {family} address")

    def _scan_pool(self, pool: IPPool, family: int) -> IPAddress | None:
        # Lowest address first, whatever order the ranges were written in.
        ranges = sorted(
            (r for r in enumerate(pool.ranges) if r[1].version == family), key=lambda r: int(r[1].first)
        )
        for index, r in ranges:
            key = (pool.name, index)
            value = max(self._hint.get(key, int(r.first)), int(r.first))
            last = int(r.last)
            cls = type(r.first)
            while value <= last:
                ip = cls(value)
                if self._free_in(pool, ip) and not is_subnet_router_anycast(ip):
                    self._hint[key] = value
                    return ip
                value += 1
            self._hint[key] = value
        return None

    def _free_in(self, pool: IPPool, ip: IPAddress) -> bool:
        in_use = ip in self._exclusive or ip in self._shared
        return not in_use and not (pool.avoid_buggy_ips and is_buggy(ip))

    def _lower_hint(self, ip: IPAddress) -> None:
        for pool in self._pools.values():
            for index, r in enumerate(pool.ranges):
                key = (pool.name, index)
                if ip in r and key in self._hint:
                    self._hint[key] = min(self._hint[key], int(ip))


def _pools_label(pools: list[IPPool]) -> str:
    names = ", ".join(p.name for p in pools)
    return f"IPPool {names}" if len(pools) == 1 else f"IPPools {names}"


def _has(pools: list[IPPool]) -> str:
    return "has" if len(pools) == 1 else "have"


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


class IncrementalAllocator:
    """allocate() for a long-running agent: when the pools are the same objects as last time
    (the cached loader reuses unchanged documents), only L4LBs that are new, changed or removed
    are released and placed again, in allocate()'s order; the result is the same as a full
    allocate() with the previous addresses as the record (tests/unit/test_ipam_incremental.py).
    Any failure drops the kept state, so the next call starts from scratch."""

    def __init__(self) -> None:
        self._pools: tuple[IPPool, ...] | None = None
        self._alloc: Allocator | None = None
        self._lbs: dict[str, LoadBalancer] = {}

    def allocate(self, desired: DesiredState, recorded: Mapping[str, IPAddress]) -> Allocation:
        alloc = self._alloc
        if alloc is None or self._pools is None or not _same_objects(desired.pools, self._pools):
            alloc = Allocator(desired.pools)
            pending: Iterable[LoadBalancer] = desired.load_balancers
            previous: Mapping[str, IPAddress] = recorded
        else:
            current = {lb.name: lb for lb in desired.load_balancers}
            gone = [n for n in self._lbs if current.get(n) is not self._lbs[n]]
            previous = {n: ip for n in gone if (ip := alloc.address_of(n)) is not None}
            for name in gone:
                alloc.release(name)
            pending = [lb for lb in desired.load_balancers if self._lbs.get(lb.name) is not lb]
            if any(lb.frontend_ip is None and (ip := previous.get(lb.name)) is not None and alloc.holders(ip)
                   for lb in pending):
                # A changed automatic L4LB whose old address others now hold by explicit request:
                # allocate() gives recorded addresses priority over explicit requests, which only
                # a full pass reproduces.
                alloc, pending, previous = Allocator(desired.pools), desired.load_balancers, recorded
        self._alloc = None  # until this call succeeds
        errors = _place(alloc, pending, previous)
        if errors:
            raise ValidationErrors(sorted(errors, key=lambda e: e.name))
        self._alloc, self._pools = alloc, desired.pools
        self._lbs = {lb.name: lb for lb in desired.load_balancers}
        return alloc.snapshot()


def _same_objects(a: tuple[IPPool, ...], b: tuple[IPPool, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


class Resolver:
    """resolve() that reuses the Service of every L4LB whose object, address and backend health
    are unchanged, so that an unchanged service is the *same* object and the data-plane diff can
    skip it by identity. `dirty` names the L4LBs whose backend health changed since last time."""

    def __init__(self) -> None:
        self._memo: dict[str, tuple[LoadBalancer, IPAddress, Service]] = {}

    def resolve(self, desired: DesiredState, allocation: Allocation, usable: Usable | None,
                dirty: Iterable[str] = ()) -> ResolvedState:
        dirty = set(dirty)
        memo: dict[str, tuple[LoadBalancer, IPAddress, Service]] = {}
        for lb in desired.load_balancers:
            vip = allocation.addresses.get(lb.name)
            if not lb.active or vip is None:
                continue
            hit = self._memo.get(lb.name)
            if hit is not None and hit[0] is lb and hit[1] == vip and lb.name not in dirty:
                memo[lb.name] = hit
            else:
                memo[lb.name] = (lb, vip, service_for(lb, vip, usable))
        self._memo = memo
        return ResolvedState(tuple(memo[name][2] for name in sorted(memo)))


# --- resolve ----------------------------------------------------------------------------------


def service_for(lb: LoadBalancer, vip: IPAddress, usable: Usable | None = None) -> Service:
    """Backends with weight 0 or drain, or not `usable` (e.g. health down), take no new
    connections: they go to `idle_backends`, where their established flows keep working."""
    taking: list[Backend] = []
    idle: list[Backend] = []
    for b in lb.backends:
        ok = b.weight > 0 and not b.drain and (usable is None or usable(lb.name, b))
        (taking if ok else idle).append(b)
    return Service(
        name=lb.name,
        vip=vip,
        protocol=lb.protocol,
        port=lb.port,
        backends=tuple(taking),
        algorithm=lb.algorithm,
        affinity=lb.affinity,
        source_ranges=lb.source_ranges,
        nat=lb.nat,
        no_backend=lb.no_backend,
        idle_backends=tuple(idle),
    )


def resolve(desired: DesiredState, allocation: Allocation, usable: Usable | None = None) -> ResolvedState:
    """The active L4LBs as services, sorted by name. An L4LB without an address (its allocation
    failed) is left out."""
    services = [
        service_for(lb, allocation.addresses[lb.name], usable)
        for lb in desired.load_balancers
        if lb.active and lb.name in allocation.addresses
    ]
    return ResolvedState(tuple(sorted(services, key=lambda s: s.name)))
