"""Addresses for Kubernetes Services of type LoadBalancer: the Service policy on the allocator core,
after MetalLB's allocator. Pure.

`ServiceAllocator` is a plain synchronous class. `assign` either gives a Service every address it
needs (one per IP family) or raises `AllocationError` and changes nothing. Rules:

- pools: the one named by the Service (`gatelb.io/address-pool`), else every autoAssign pool whose
  `serviceAllocation` accepts the Service, best priority first (a lower number wins; pools with a
  priority come before pools without one, pools that select the Service before pools open to all);
- `serviceAllocation`: `namespaces` or `namespaceSelectors` (either may match) and
  `serviceSelectors`; a pool without it serves every Service;
- requested addresses (annotation or `spec.loadBalancerIP`) are taken as given, one per family,
  and must lie in an acceptable pool;
- sharing: an address is one Service's, unless every holder has the same sharing key
  (`gatelb.io/allow-shared-ip`) and no two holders use the same protocol and port. A Service with
  a sharing key first looks for an address its key already holds, as MetalLB does;
- dual-stack: SingleStack takes the first family, RequireDualStack every family or nothing,
  PreferDualStack whatever families it can get (at least one);
- avoidBuggyIPs skips .0 and .255; the IPv6 subnet-router anycast address is never handed out;
- `reserved`: addresses held outside this allocator (L4LB objects), never given to a Service.

A long-lived allocator is kept up to date one Service at a time: `assign` for a new or changed
Service, `release` for a deleted one; each costs the Service's pools and the addresses its
sharing key holds, not the number of Services.

`allocate_services` runs it over every Service: first the addresses Services already hold (from
their status, so a restart never moves an address), then explicit requests, then the rest.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from gatelb.ipam.core import Core, avoided
from gatelb.model import IPAddress, IPPool, Protocol

Port = tuple[Protocol, int]
# Who holds an address outside this allocator ("L4LB default/web"), or None: a mapping or a function.
Reserved = Mapping[IPAddress, str] | Callable[[IPAddress], str | None]


class Reason(enum.StrEnum):
    """Why an allocation failed, short enough for an Event's reason text."""

    UNKNOWN_POOL = "UnknownPool"
    POOL_NOT_ALLOWED = "PoolNotAllowed"
    NO_POOL = "NoPool"
    NOT_IN_POOL = "NotInPool"
    IN_USE = "AddressInUse"
    EXHAUSTED = "PoolExhausted"
    FAMILY = "FamilyMismatch"
    BUGGY = "BuggyAddress"


class AllocationError(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class FamilyPolicy(enum.StrEnum):
    SINGLE = "SingleStack"
    PREFER_DUAL = "PreferDualStack"
    REQUIRE_DUAL = "RequireDualStack"


@dataclass(frozen=True)
class Selector:
    """A label selector: every matchLabels pair and every expression must hold."""

    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (key, operator, values)

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels):
            return False
        for key, op, values in self.expressions:
            present = key in labels
            ok = {
                "In": present and labels.get(key) in values,
                "NotIn": not present or labels.get(key) not in values,
                "Exists": present,
                "DoesNotExist": not present,
            }.get(op, False)
            if not ok:
                return False
        return True


@dataclass(frozen=True)
class ServiceAllocation:
    priority: int | None = None
    namespaces: frozenset[str] = frozenset()
    namespace_selectors: tuple[Selector, ...] = ()
    service_selectors: tuple[Selector, ...] = ()


@dataclass(frozen=True)
class ServicePool:
    pool: IPPool
    allocation: ServiceAllocation | None = None

    @property
    def name(self) -> str:
        return self.pool.name


@dataclass(frozen=True)
class ServiceRequest:
    key: str  # "namespace/name"
    ports: tuple[Port, ...]
    families: tuple[int, ...] = (4,)  # spec.ipFamilies, in order
    policy: FamilyPolicy = FamilyPolicy.SINGLE
    requested: tuple[IPAddress, ...] = ()
    pool: str | None = None
    sharing_key: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.key.partition("/")[0]


@dataclass(frozen=True)
class Assignment:
    addresses: tuple[IPAddress, ...]
    pools: tuple[str, ...]  # the pool of each address


@dataclass(frozen=True)
class _Hold:
    sharing_key: str | None
    ports: frozenset[Port]


def _shareable(a: _Hold, b: _Hold) -> bool:
    return a.sharing_key is not None and a.sharing_key == b.sharing_key and not a.ports & b.ports


def _ports_text(ports: Iterable[Port]) -> str:
    return ", ".join(f"{p.value}/{n}" for p, n in sorted(ports))


def family_name(version: int) -> str:
    return f"IPv{version}"


class ServiceAllocator:
    def __init__(self, pools: Iterable[ServicePool], reserved: Reserved | None = None) -> None:
        """`reserved`: who holds an address outside this allocator (L4LB objects), as a mapping
        or a function returning None for a free address."""
        self._pools = {p.name: p for p in sorted(pools, key=lambda p: p.name)}
        self._reserved = _reserved_function(reserved)
        self._core: Core[_Hold] = Core((p.pool for p in self._pools.values()), _shareable,
                                       lambda ip: self._reserved(ip) is not None)
        self._of: dict[str, Assignment] = {}
        self._hold_of: dict[str, _Hold] = {}
        # sharing key -> address -> how many Services with that key hold it.
        self._by_key: dict[str, dict[IPAddress, int]] = {}

    # -- queries -------------------------------------------------------------------------------

    def assignment(self, key: str) -> Assignment | None:
        return self._of.get(key)

    def holders(self, ip: IPAddress) -> frozenset[str]:
        return self._core.holders(ip)

    def snapshot(self) -> dict[str, Assignment]:
        return {k: self._of[k] for k in sorted(self._of)}

    def pool_containing(self, ip: IPAddress) -> ServicePool | None:
        found = self._core.pool_containing(ip)
        return self._pools[found.name] if found is not None else None

    def reserved_by(self, ip: IPAddress) -> str | None:
        return self._reserved(ip)

    def candidate_pools(self, req: ServiceRequest) -> list[ServicePool]:
        """The pools `req` may take addresses from, most preferred first; raises if there are none."""
        if req.pool is not None:
            named = self._pools.get(req.pool)
            if named is None:
                raise AllocationError(Reason.UNKNOWN_POOL, f"unknown IPPool {req.pool!r}")
            if not _accepts(named, req):
                raise AllocationError(Reason.POOL_NOT_ALLOWED,
                                      f"IPPool {named.name}'s serviceAllocation does not select this Service")
            return [named]
        pools = [p for p in self._pools.values() if p.pool.auto_assign and _accepts(p, req)]
        if not pools:
            raise AllocationError(Reason.NO_POOL, "no IPPool with autoAssign: true accepts this Service")
        return sorted(pools, key=_preference)

    # -- changes -------------------------------------------------------------------------------

    def release(self, key: str) -> None:
        """Drop the addresses of a deleted (or re-placed) Service."""
        self._of.pop(key, None)
        hold = self._hold_of.pop(key, None)
        for holding in self._core.release(key):
            if hold is not None and hold.sharing_key is not None:
                held = self._by_key[hold.sharing_key]
                held[holding.ip] -= 1
                if not held[holding.ip]:
                    del held[holding.ip]
                    if not held:
                        del self._by_key[hold.sharing_key]

    def set_reserved(self, reserved: Reserved | None, freed: Iterable[IPAddress] = ()) -> None:
        """Another view of the addresses held elsewhere; `freed`: those it no longer reserves
        (so automatic allocation sees them again). Services already holding a newly reserved
        address keep it until they are assigned again."""
        self._reserved = _reserved_function(reserved)
        self._core.unreserved(freed)

    def assign(self, req: ServiceRequest) -> Assignment:
        """Every address `req` needs, or AllocationError with nothing changed. A Service that
        already holds valid addresses keeps them."""
        current = self._of.get(req.key)
        if current is not None and self.keep(req, current.addresses):
            return current
        pools = self.candidate_pools(req)
        if req.requested:
            if len({ip.version for ip in req.requested}) != len(req.requested):
                raise AllocationError(Reason.FAMILY, "at most one requested address per IP family")
            chosen = [self._check_requested(req, ip, pools) for ip in req.requested]
        else:
            chosen = self._allocate_families(req, pools)
        return self._take(req, chosen)

    def keep(self, req: ServiceRequest, addresses: Iterable[IPAddress]) -> bool:
        """Give `req` addresses it held before (e.g. read back from its status) if they are all
        still valid for it; returns False, changing nothing, otherwise."""
        ips = tuple(addresses)
        if not ips or len({ip.version for ip in ips}) != len(ips):
            return False
        if req.requested and set(ips) != set(req.requested):
            return False
        if not req.requested and not self._families_fit(req, [ip.version for ip in ips]):
            return False
        try:
            pools = self.candidate_pools(req)
            chosen = [self._check_requested(req, ip, pools) for ip in ips]
        except AllocationError:
            return False
        self._take(req, chosen)
        return True

    # -- internals -----------------------------------------------------------------------------

    def _families_fit(self, req: ServiceRequest, versions: list[int]) -> bool:
        if any(v not in req.families for v in versions):
            return False
        if req.policy is FamilyPolicy.SINGLE:
            return versions == list(req.families[:1])
        if req.policy is FamilyPolicy.REQUIRE_DUAL:
            return sorted(versions) == sorted(req.families)
        return True

    def _conflict(self, req: ServiceRequest, ip: IPAddress) -> str | None:
        """Why `req` may not hold `ip` next to its current holders, or None."""
        reserver = self._reserved(ip)
        if reserver is not None:
            return f"{ip} is used by {reserver}"
        found = self._core.conflict(ip, req.key, _Hold(req.sharing_key, frozenset(req.ports)))
        if found is None:
            return None
        other, hold = found
        if req.sharing_key is None or hold.sharing_key != req.sharing_key:
            return f"{ip} is already used by Service {other} (no matching gatelb.io/allow-shared-ip)"
        return f"{ip} is shared with Service {other}, which also uses {_ports_text(set(req.ports) & hold.ports)}"

    def _check_requested(self, req: ServiceRequest, ip: IPAddress, pools: list[ServicePool]) -> tuple[IPAddress, str]:
        if ip.version not in req.families:
            wanted = ", ".join(family_name(f) for f in req.families)
            raise AllocationError(Reason.FAMILY, f"{ip} is {family_name(ip.version)}, the Service is {wanted}")
        pool = next((p for p in pools if p.pool.contains(ip)), None)
        if pool is None:
            where = f"IPPool {pools[0].name}" if req.pool else "any IPPool that accepts this Service"
            raise AllocationError(Reason.NOT_IN_POOL, f"{ip} is not in {where}")
        if avoided(pool.pool, ip):
            raise AllocationError(Reason.BUGGY, f"{ip} ends in .0 or .255, which IPPool {pool.name} avoids")
        conflict = self._conflict(req, ip)
        if conflict:
            raise AllocationError(Reason.IN_USE, conflict)
        return ip, pool.name

    def _allocate_families(self, req: ServiceRequest, pools: list[ServicePool]) -> list[tuple[IPAddress, str]]:
        wanted = req.families[:1] if req.policy is FamilyPolicy.SINGLE else req.families
        chosen: list[tuple[IPAddress, str]] = []
        first_error: AllocationError | None = None
        for family in wanted:
            try:
                chosen.append(self._allocate_one(req, pools, family))
            except AllocationError as err:
                if req.policy is not FamilyPolicy.PREFER_DUAL:
                    raise
                first_error = first_error or err
        if not chosen:
            assert first_error is not None
            raise first_error
        return chosen

    def _allocate_one(self, req: ServiceRequest, pools: list[ServicePool], family: int) -> tuple[IPAddress, str]:
        fitting = [p for p in pools if self._core.has_family(p.pool, family)]
        if not fitting:
            names = ", ".join(p.name for p in pools)
            raise AllocationError(Reason.FAMILY, f"IPPool {names}: no {family_name(family)} addresses")
        if req.sharing_key is not None:
            shared = self._shared_candidate(req, fitting, family)
            if shared is not None:
                return shared
        for pool in fitting:
            ip = self._core.lowest_free(pool.pool, family)
            if ip is not None:
                return ip, pool.name
        names = ", ".join(p.name for p in fitting)
        raise AllocationError(Reason.EXHAUSTED, f"IPPool {names}: no free {family_name(family)} address")

    def _shared_candidate(self, req: ServiceRequest, pools: list[ServicePool],
                          family: int) -> tuple[IPAddress, str] | None:
        """The lowest address of `family` that `req`'s sharing key holds and `req` may join."""
        assert req.sharing_key is not None
        held = self._by_key.get(req.sharing_key, {})
        for ip in sorted((ip for ip in held if ip.version == family), key=int):
            pool = next((p for p in pools if p.pool.contains(ip)), None)
            if pool is not None and self._conflict(req, ip) is None:
                return ip, pool.name
        return None

    def _take(self, req: ServiceRequest, chosen: list[tuple[IPAddress, str]]) -> Assignment:
        self.release(req.key)
        ordered = sorted(chosen, key=lambda c: req.families.index(c[0].version))
        assignment = Assignment(tuple(ip for ip, _ in ordered), tuple(p for _, p in ordered))
        hold = _Hold(req.sharing_key, frozenset(req.ports))
        for ip, pool in ordered:
            self._core.take(req.key, ip, pool, hold)
            if hold.sharing_key is not None:
                held = self._by_key.setdefault(hold.sharing_key, {})
                held[ip] = held.get(ip, 0) + 1
        self._of[req.key] = assignment
        self._hold_of[req.key] = hold
        return assignment


def _reserved_function(reserved: Reserved | None) -> Callable[[IPAddress], str | None]:
    if reserved is None:
        return lambda ip: None
    if isinstance(reserved, Mapping):
        return dict(reserved).get
    return reserved


def _accepts(pool: ServicePool, req: ServiceRequest) -> bool:
    a = pool.allocation
    if a is None:
        return True
    if a.namespaces or a.namespace_selectors:
        by_name = req.namespace in a.namespaces
        by_label = any(s.matches(req.namespace_labels) for s in a.namespace_selectors)
        if not (by_name or by_label):
            return False
    return not a.service_selectors or any(s.matches(req.labels) for s in a.service_selectors)


def _preference(pool: ServicePool) -> tuple[bool, int, bool, str]:
    a = pool.allocation
    priority = a.priority if a is not None else None
    return (priority is None, priority or 0, a is None, pool.name)


def allocate_services(
    pools: Iterable[ServicePool],
    requests: Iterable[ServiceRequest],
    current: Mapping[str, tuple[IPAddress, ...]],
    reserved: Reserved | None = None,
) -> tuple[ServiceAllocator, dict[str, AllocationError]]:
    """Allocate for every Service; one Service's failure never affects another's addresses.
    `current`: the addresses each Service holds now (its status, or the last round)."""
    alloc = ServiceAllocator(pools, reserved)
    errors: dict[str, AllocationError] = {}
    pending: list[ServiceRequest] = []
    for req in sorted(requests, key=lambda r: r.key):
        held = current.get(req.key)
        if not (held and alloc.keep(req, held)):
            pending.append(req)
    for req in sorted(pending, key=lambda r: not r.requested):  # stable: key order kept
        try:
            alloc.assign(req)
        except AllocationError as err:
            errors[req.key] = err
    return alloc, errors
