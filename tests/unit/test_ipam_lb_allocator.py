"""LBAllocator: per-name updates for a long-lived reconciler.

Scripted scenarios check the invariants after every step; a seeded random loop checks that every
update gives what a full allocate_partial() / allocate() over the same sequence gives, and that a
refused atomic batch leaves the allocator exactly as it was.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Mapping

import pytest

from gatelb.ipam.core import is_buggy
from gatelb.ipam.lb import Allocation, Allocator, LBAllocator, LBUpdate, allocate_partial
from gatelb.model import (
    AddressRange,
    DesiredState,
    IPAddress,
    IPPool,
    LoadBalancer,
    ValidationError,
)


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def pool(name: str, first: str, last: str, *more: tuple[str, str], auto: bool = True, buggy: bool = False) -> IPPool:
    ranges = [(first, last), *more]
    return IPPool(name, tuple(AddressRange(ip(a), ip(b)) for a, b in ranges), auto, buggy)


def lb(name: str, addr: str | None = None, *, pool: str | None = None, port: int = 80,
       family: int | None = None) -> LoadBalancer:
    front = ip(addr) if addr else None
    return LoadBalancer(name, port, frontend_ip=front, pool=pool, family=family or (front.version if front else 4))


def everything(alloc: LBAllocator) -> tuple[Allocation, dict[IPAddress, frozenset[str]], dict[str, str]]:
    """All observable state: the snapshot, the holders of every held address, the errors."""
    snap = alloc.snapshot()
    return (snap, {a: alloc.holders(a) for a in set(snap.addresses.values())},
            {n: str(e) for n, e in alloc.errors().items()})


def check(alloc: LBAllocator, lbs: Mapping[str, LoadBalancer]) -> None:
    snap = alloc.snapshot()
    pools = {p.name: p for p in alloc.pools}
    assert alloc.names() == set(lbs)
    assert set(snap.addresses) | set(alloc.errors()) == set(lbs)
    assert not set(snap.addresses) & set(alloc.errors())
    by_ip: dict[IPAddress, set[str]] = {}
    for name, addr in snap.addresses.items():
        by_ip.setdefault(addr, set()).add(name)
        item = lbs[name]
        owning = pools[snap.pool_of[name] or ""]
        assert owning.contains(addr), f"{name}: {addr} is not in its pool {owning.name}"
        assert item.pool in (None, owning.name) and addr.version == item.family
        assert alloc.address_of(name) == addr and alloc.pool_of(name) == owning.name
        if item.frontend_ip is not None:
            assert addr == item.frontend_ip
        elif owning.avoid_buggy_ips:
            assert not is_buggy(addr)
    for addr, names in by_ip.items():
        assert alloc.holders(addr) == names
        exclusive = [n for n in names if lbs[n].frontend_ip is None]
        assert not exclusive or len(names) == 1, f"{addr} is held by {sorted(names)}"


class Script:
    """One LBAllocator and the L4LBs it should know, checked after every step."""

    def __init__(self, *pools: IPPool) -> None:
        self.alloc = LBAllocator(pools)
        self.lbs: dict[str, LoadBalancer] = {}

    def update(self, *items: LoadBalancer, gone: Iterable[str] = (), atomic: bool = False,
               recorded: Mapping[str, IPAddress] | None = None) -> LBUpdate:
        before = everything(self.alloc)
        changes: dict[str, LoadBalancer | None] = {x.name: x for x in items}
        changes.update({n: None for n in gone})
        result = self.alloc.update(changes, recorded or {}, atomic=atomic)
        if not result.applied:
            assert atomic and result.errors and result.changed == ()
            assert everything(self.alloc) == before, "a refused atomic batch changed the allocator"
        else:
            for name, item in changes.items():
                if item is None:
                    self.lbs.pop(name, None)
                else:
                    self.lbs[name] = item
            lost = {n for n in before[0].addresses if self.alloc.address_of(n) != before[0].addresses[n]}
            won = {n for n in self.alloc.snapshot().addresses if n not in before[0].addresses}
            assert set(result.changed) == lost | won
        check(self.alloc, self.lbs)
        return result

    def addr(self, name: str) -> str:
        return str(self.alloc.address_of(name))


def test_update_allocates_keeps_and_releases_per_name() -> None:
    s = Script(pool("p", "203.0.113.0", "203.0.113.7"))
    assert s.update(lb("b"), lb("a")).changed == ("a", "b")
    assert (s.addr("a"), s.addr("b")) == ("203.0.113.0", "203.0.113.1")
    assert s.update(lb("b", port=443)).changed == ()  # changed, keeps its address
    assert s.update(gone=["a"]).changed == ("a",)
    assert s.alloc.address_of("a") is None
    assert s.update(lb("c")).changed == ("c",) and s.addr("c") == "203.0.113.0"


def test_recorded_addresses_first_then_explicit_then_automatic_within_a_batch() -> None:
    s = Script(pool("p", "203.0.113.0", "203.0.113.3"))
    s.update(lb("a"), lb("z", "203.0.113.0"), lb("m"), recorded={"m": ip("203.0.113.2")})
    assert (s.addr("a"), s.addr("m"), s.addr("z")) == ("203.0.113.1", "203.0.113.2", "203.0.113.0")


def test_recorded_address_is_only_for_names_without_one() -> None:
    s = Script(pool("p", "203.0.113.0", "203.0.113.7"))
    s.update(lb("a"))
    s.update(lb("a", port=443), recorded={"a": ip("203.0.113.5")})
    assert s.addr("a") == "203.0.113.0"


def test_a_recorded_address_beats_a_later_name_holding_it_as_a_full_pass_does() -> None:
    s = Script(pool("p", "203.0.113.0", "203.0.113.7"))
    s.update(lb("m"))
    assert s.addr("m") == "203.0.113.0"
    # "a" comes back with the address in its status: allocate() would give it to "a" (first by name).
    result = s.update(lb("a"), recorded={"a": ip("203.0.113.0")})
    assert (s.addr("a"), s.addr("m")) == ("203.0.113.0", "203.0.113.1") and result.changed == ("a", "m")
    # "z" does not get it: "a" comes first.
    s.update(lb("z"), recorded={"z": ip("203.0.113.0")})
    assert s.addr("z") == "203.0.113.2"


def test_explicit_to_automatic_keeps_the_address_and_pushes_out_its_sharers() -> None:
    s = Script(pool("p", "203.0.113.0", "203.0.113.7"))
    s.update(lb("a", "203.0.113.4"), lb("b", "203.0.113.4", port=443))
    result = s.update(lb("a"))
    assert s.addr("a") == "203.0.113.4"
    assert set(result.errors) == {"b"} and result.changed == ("b",)
    assert str(result.errors["b"]) == "L4LB b: spec.frontend.ip: 203.0.113.4 is already used by L4LB a"
    # b stays known and comes back by itself once a moves away.
    result = s.update(lb("a", "203.0.113.6"))
    assert result.errors == {} and s.addr("b") == "203.0.113.4" and set(result.changed) == {"a", "b"}


def test_atomic_batch_is_all_or_nothing() -> None:
    s = Script(pool("p", "203.0.113.0", "203.0.113.2"))
    s.update(lb("a"), lb("b", "203.0.113.2"), atomic=True)
    before = everything(s.alloc)
    result = s.update(lb("c"), lb("d"), lb("a", pool="nope"), gone=["b"], atomic=True)
    assert not result.applied
    assert sorted(result.errors) == ["a"]  # a let go of .0, so c and d would fit
    assert str(result.errors["a"]) == "L4LB a: spec.pool: unknown IPPool 'nope'"
    assert everything(s.alloc) == before
    with pytest.raises(ValueError, match="unknown IPPool"):
        result.raise_errors()
    # The same batch, not atomic: the failing ones get no address, the rest proceed.
    result = s.update(lb("c"), lb("d"), lb("a", pool="nope"), gone=["b"])
    assert result.applied and sorted(result.errors) == ["a"]
    assert s.alloc.address_of("a") is None and s.addr("c") == "203.0.113.0" and s.addr("d") == "203.0.113.1"
    assert result.changed == ("a", "b", "c", "d")


def test_an_earlier_failure_is_retried_but_does_not_block_an_atomic_batch() -> None:
    s = Script(pool("p", "203.0.113.0", "203.0.113.1"))
    s.update(lb("a"), lb("b"), lb("c"))
    assert set(s.alloc.errors()) == {"c"}
    result = s.update(lb("x", "203.0.113.0", port=443), atomic=True)
    # x fails (a holds .0 by allocation): refused. c, retried, is reported but would not block.
    assert result.applied is False and set(result.errors) == {"x", "c"}
    result = s.update(gone=["a"], atomic=True)
    assert result.applied and s.addr("c") == "203.0.113.0" and result.changed == ("a", "c")
    result = s.update(lb("d", pool="p"), atomic=True)
    assert not result.applied  # d itself fails: no free address


def test_set_pools_replaces_everyone_keeping_valid_addresses() -> None:
    s = Script(pool("p", "203.0.113.0", "203.0.113.7"))
    s.update(lb("a"), lb("b"), lb("c"))
    result = s.alloc.set_pools([pool("p", "203.0.113.1", "203.0.113.9")])
    check(s.alloc, s.lbs)
    assert (s.addr("a"), s.addr("b"), s.addr("c")) == ("203.0.113.3", "203.0.113.1", "203.0.113.2")
    assert result.changed == ("a",)
    before = everything(s.alloc)
    refused = s.alloc.set_pools([pool("p", "203.0.113.1", "203.0.113.2")], atomic=True)
    assert not refused.applied and set(refused.errors) == {"a"} and everything(s.alloc) == before
    result = s.alloc.set_pools([pool("p", "203.0.113.1", "203.0.113.2")])
    check(s.alloc, s.lbs)
    assert set(result.errors) == {"a"} and result.changed == ("a",)
    assert s.alloc.errors().keys() == {"a"}
    result = s.update(gone=["b"])
    assert result.changed == ("a", "b") and s.addr("a") == "203.0.113.1"


def test_update_work_is_proportional_to_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    s = LBAllocator([pool("big", "198.18.0.0", "198.18.255.255")])
    s.update({f"lb{i:05d}": lb(f"lb{i:05d}") for i in range(20000)})
    calls: dict[str, int] = {}
    for method in ("assign", "keep", "release", "snapshot"):
        original = getattr(Allocator, method)

        def counting(self: Allocator, *args: object, _m: str = method, _f: object = original) -> object:
            calls[_m] = calls.get(_m, 0) + 1
            return _f(self, *args)  # type: ignore[operator]

        monkeypatch.setattr(Allocator, method, counting)
    result = s.update({"lb00007": None, "new": lb("new"), "lb00009": lb("lb00009", port=443)})
    assert result.changed == ("lb00007", "new") and s.address_of("new") == ip("198.18.0.7")
    assert "snapshot" not in calls and sum(calls.values()) <= 10, calls


# --- the same as a full pass, over random sequences ----------------------------------------------

POOL_SETS = [
    (pool("a", "203.0.113.0", "203.0.113.7", buggy=True), pool("b", "203.0.113.16", "203.0.113.19", auto=False),
     pool("six", "2001:db8::", "2001:db8::3")),
    (pool("a", "203.0.113.2", "203.0.113.9"), pool("b", "203.0.113.16", "203.0.113.17"),
     pool("six", "2001:db8::2", "2001:db8::5")),
]
EXPLICIT = ["203.0.113.1", "203.0.113.2", "203.0.113.17", "203.0.113.5", "2001:db8::2", "203.0.113.0"]
NAMES = [f"lb{i}" for i in range(10)]


def random_lb(rng: random.Random, name: str) -> LoadBalancer:
    if rng.random() < 0.35:
        return lb(name, rng.choice(EXPLICIT), pool=rng.choice([None, None, "a", "b"]), port=rng.choice([80, 443]))
    return lb(name, pool=rng.choice([None, None, "a", "b", "six", "nope"]), port=rng.choice([80, 443]),
              family=rng.choice([4, 4, 4, 6]))


def full(pools: tuple[IPPool, ...], lbs: Mapping[str, LoadBalancer],
         recorded: Mapping[str, IPAddress]) -> tuple[Allocation, dict[str, str]]:
    got, errors = allocate_partial(DesiredState(pools, tuple(lbs[n] for n in sorted(lbs))), recorded)
    return got, {e.name: str(e) for e in errors}


@pytest.mark.parametrize("seed", range(150))
def test_update_equals_a_full_allocation(seed: int) -> None:
    rng = random.Random(seed)
    pools = POOL_SETS[0]
    s = Script(*pools)
    for _ in range(25):
        prev = s.alloc.snapshot()
        prev_errors = set(s.alloc.errors())
        if rng.random() < 0.08:
            pools = POOL_SETS[rng.randrange(len(POOL_SETS))]
            atomic = rng.random() < 0.5
            expected, errors = full(pools, s.lbs, prev.addresses)
            before = everything(s.alloc)
            result = s.alloc.set_pools(pools, atomic=atomic)
            assert {n: str(e) for n, e in result.errors.items()} == errors
            if atomic and errors:
                assert not result.applied and everything(s.alloc) == before
                pools = s.alloc.pools
            else:
                assert s.alloc.snapshot() == expected
            check(s.alloc, s.lbs)
            continue
        items: list[LoadBalancer] = []
        gone: list[str] = []
        for name in rng.sample(NAMES, rng.randint(1, 3)):
            if name in s.lbs and rng.random() < 0.3:
                gone.append(name)
            else:
                items.append(random_lb(rng, name))
        # A status address for some names that hold none here (possibly one someone else holds).
        recorded = {x.name: ip(rng.choice(EXPLICIT)) for x in items if rng.random() < 0.3}
        atomic = rng.random() < 0.5
        after = dict(s.lbs)
        for name in gone:
            after.pop(name)
        after.update({x.name: x for x in items})
        record = dict(prev.addresses) | {n: a for n, a in recorded.items() if n not in prev.addresses}
        expected, errors = full(pools, after, record)
        result = s.update(*items, gone=gone, atomic=atomic, recorded=recorded)
        batch = {x.name for x in items} | set(gone)
        blocking = {n for n in errors if n in batch or n not in prev_errors}
        assert {n: str(e) for n, e in result.errors.items()} == errors
        if atomic and blocking:
            assert not result.applied  # Script.update checked nothing changed
            continue
        assert result.applied
        assert s.alloc.snapshot() == expected
        assert {n: str(e) for n, e in s.alloc.errors().items()} == errors


def test_error_objects_name_the_l4lb() -> None:
    s = Script(pool("p", "203.0.113.0", "203.0.113.0"))
    result = s.update(lb("a"), lb("b"))
    (err,) = result.errors.values()
    assert isinstance(err, ValidationError) and err.name == "b" and err.path == "spec.frontend.ip"
