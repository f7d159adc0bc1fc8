"""The one allocator core under both IPAM policies (L4LB objects and Kubernetes Services). Pure.

`Core` knows pools and their ranges, who holds which address, and how to find the lowest free
address of a family in a pool. It knows nothing about L4LBs or Services: a policy (`ipam.lb`,
`ipam.services`) decides which pools a request may use, in which order, and what an error says.

- holders: every owner (a name) holds zero or more addresses, each from a pool and with a tag;
  an address may have several holders when their tags may share it: `shareable(a, b)` is the
  policy's (symmetric) rule. L4LBs: explicitly requested addresses share, allocated ones do not.
  Services: the same sharing key and no common port;
- free: an address with no holder, not `reserved` (a predicate for addresses held elsewhere,
  e.g. by L4LBs when allocating for Services), allowed by the pool's avoidBuggyIPs, and not an
  IPv6 subnet-router anycast address;
- `lowest_free` scans ranges lowest first from a per-range hint: every address below the hint is
  not free, so allocating N addresses visits O(N) addresses, not O(N^2). Releasing an address
  lowers the hints of the ranges holding it; a policy whose `reserved` predicate stops refusing an
  address says so with `unreserved` so the hint drops below it again.

Synchronous, no I/O. Nothing here raises on a bad request: the policy checks before it takes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from gatelb.model import AddressRange, IPAddress, IPPool

Tag = TypeVar("Tag", bound=Hashable)


def is_buggy(ip: IPAddress) -> bool:
    """Addresses ending in .0 or .255, which some old client firmware drops (MetalLB's rule)."""
    return ip.version == 4 and ip.packed[-1] in (0, 255)


def is_subnet_router_anycast(ip: IPAddress) -> bool:
    """An IPv6 address whose interface identifier (low 64 bits) is zero is the Subnet-Router
    anycast address of its /64 (RFC 4291 2.6.1): never hand it out automatically."""
    return ip.version == 6 and int(ip) & ((1 << 64) - 1) == 0


def avoided(pool: IPPool, ip: IPAddress) -> bool:
    """`ip` is one the pool's avoidBuggyIPs forbids."""
    return pool.avoid_buggy_ips and is_buggy(ip)


@dataclass(frozen=True, slots=True)
class Holding(Generic[Tag]):
    ip: IPAddress
    pool: str
    tag: Tag


class Core(Generic[Tag]):
    def __init__(
        self,
        pools: Iterable[IPPool],
        shareable: Callable[[Tag, Tag], bool],
        reserved: Callable[[IPAddress], bool] | None = None,
    ) -> None:
        self.pools: dict[str, IPPool] = {p.name: p for p in sorted(pools, key=lambda p: p.name)}
        self._shareable = shareable
        self._reserved = reserved
        # Per pool and family: (range index, range), lowest first whatever order they were written in.
        self._ranges: dict[tuple[str, int], list[tuple[int, AddressRange]]] = {}
        for pool in self.pools.values():
            for index, r in sorted(enumerate(pool.ranges), key=lambda item: int(item[1].first)):
                self._ranges.setdefault((pool.name, r.version), []).append((index, r))
        # address -> tag -> owners holding it with that tag (few tags per address: L4LBs have two).
        self._holds: dict[IPAddress, dict[Tag, set[str]]] = {}
        # owner -> address -> (pool, tag), in the order taken.
        self._held: dict[str, dict[IPAddress, Holding[Tag]]] = {}
        # (pool, range index) -> int: every address of the range below it is not free.
        self._hint: dict[tuple[str, int], int] = {}
        self.revision = 0  # bumped by every take and every release that dropped something

    # --- queries -------------------------------------------------------------------------------

    def pool(self, name: str) -> IPPool | None:
        return self.pools.get(name)

    def pool_containing(self, ip: IPAddress) -> IPPool | None:
        """The first pool by name that contains `ip` (validated pools never overlap)."""
        return next((p for p in self.pools.values() if p.contains(ip)), None)

    def has_family(self, pool: IPPool, family: int) -> bool:
        return (pool.name, family) in self._ranges

    def held(self, ip: IPAddress) -> bool:
        return ip in self._holds

    def holders(self, ip: IPAddress) -> frozenset[str]:
        return frozenset(o for owners in self._holds.get(ip, {}).values() for o in owners)

    def holds(self, ip: IPAddress) -> Iterator[tuple[str, Tag]]:
        """(owner, tag) of every holder of `ip`, in no particular order."""
        for tag, owners in self._holds.get(ip, {}).items():
            for owner in owners:
                yield owner, tag

    def held_by(self, owner: str) -> tuple[Holding[Tag], ...]:
        return tuple(self._held.get(owner, {}).values())

    def owners(self) -> Iterable[str]:
        return self._held.keys()

    def is_reserved(self, ip: IPAddress) -> bool:
        return self._reserved is not None and self._reserved(ip)

    def conflict(self, ip: IPAddress, owner: str, tag: Tag) -> tuple[str, Tag] | None:
        """The lowest-named holder of `ip` other than `owner` that may not share it with `tag`,
        or None. Costs the number of distinct tags on `ip` plus the holders that do conflict."""
        worst: tuple[str, Tag] | None = None
        for other_tag, owners in self._holds.get(ip, {}).items():
            if self._shareable(tag, other_tag):
                continue
            for other in owners:
                if other != owner and (worst is None or other < worst[0]):
                    worst = (other, other_tag)
        return worst

    def compatible(self, ip: IPAddress, owner: str, tag: Tag) -> bool:
        """No holder of `ip` other than `owner` objects to `tag`; stops at the first that does."""
        for other_tag, owners in self._holds.get(ip, {}).items():
            if not self._shareable(tag, other_tag) and any(o != owner for o in owners):
                return False
        return True

    def free(self, pool: IPPool, ip: IPAddress) -> bool:
        """Free to hand out automatically from `pool`."""
        return (ip not in self._holds and not avoided(pool, ip) and not is_subnet_router_anycast(ip)
                and not self.is_reserved(ip))

    def lowest_free(self, pool: IPPool, family: int) -> IPAddress | None:
        """The lowest free address of `family` in `pool`; None when there is none. Takes nothing."""
        for index, r in self._ranges.get((pool.name, family), ()):
            key = (pool.name, index)
            first, last = int(r.first), int(r.last)
            value = max(self._hint.get(key, first), first)
            cls = type(r.first)
            while value <= last:
                ip = cls(value)
                if self.free(pool, ip):
                    self._hint[key] = value
                    return ip
                value += 1
            self._hint[key] = value
        return None

    # --- changes -------------------------------------------------------------------------------

    def take(self, owner: str, ip: IPAddress, pool: str, tag: Tag) -> None:
        """`owner` holds `ip` (too). The caller checked it may: the core does not refuse."""
        self.release_one(owner, ip)
        self.revision += 1
        self._held.setdefault(owner, {})[ip] = Holding(ip, pool, tag)
        self._holds.setdefault(ip, {}).setdefault(tag, set()).add(owner)

    def release_one(self, owner: str, ip: IPAddress) -> Holding[Tag] | None:
        mine = self._held.get(owner)
        holding = mine.pop(ip, None) if mine is not None else None
        if holding is None:
            return None
        self.revision += 1
        if not mine:
            del self._held[owner]
        tags = self._holds[ip]
        owners = tags[holding.tag]
        owners.discard(owner)
        if not owners:
            del tags[holding.tag]
            if not tags:
                del self._holds[ip]
                self._lower_hints(ip)
        return holding

    def release(self, owner: str) -> tuple[Holding[Tag], ...]:
        """Drop every address `owner` holds; returns what it held."""
        released = self.held_by(owner)
        for holding in released:
            self.release_one(owner, holding.ip)
        return released

    def unreserved(self, ips: Iterable[IPAddress]) -> None:
        """The `reserved` predicate no longer refuses these addresses: scans must see them again."""
        for ip in ips:
            if ip not in self._holds:
                self._lower_hints(ip)

    # --- internals -----------------------------------------------------------------------------

    def _lower_hints(self, ip: IPAddress) -> None:
        value = int(ip)
        for pool in self.pools.values():
            for index, r in self._ranges.get((pool.name, ip.version), ()):
                key = (pool.name, index)
                if ip in r and key in self._hint and self._hint[key] > value:
                    self._hint[key] = value


def hold_map(core: Core[Tag]) -> Mapping[IPAddress, frozenset[str]]:
    """Every held address and its holders (for tests and snapshots; costs every holding)."""
    out: dict[IPAddress, frozenset[str]] = {}
    for owner in core.owners():
        for h in core.held_by(owner):
            out[h.ip] = out.get(h.ip, frozenset()) | {owner}
    return out
