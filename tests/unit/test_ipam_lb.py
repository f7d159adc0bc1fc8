"""L4LB IPAM: scripted scenarios that check the allocator's invariants after every step."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable

import pytest

from gatelb.ipam.core import is_buggy, is_subnet_router_anycast
from gatelb.ipam.lb import Allocator, allocate, allocate_partial
from gatelb.model import (
    AddressRange,
    Backend,
    DesiredState,
    IPAddress,
    IPPool,
    LBState,
    LoadBalancer,
    Protocol,
    ValidationError,
    ValidationErrors,
)


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def rng(text: str) -> AddressRange:
    if "/" in text:
        net = ipaddress.ip_network(text)
        return AddressRange(net.network_address, net.broadcast_address)
    first, _, last = text.partition("-")
    return AddressRange(ip(first), ip(last or first))


def pool(name: str, *ranges: str, auto: bool = True, buggy: bool = False) -> IPPool:
    return IPPool(name, tuple(rng(r) for r in ranges), auto, buggy)


def lb(
    name: str,
    addr: str | None = None,
    *,
    pool: str | None = None,
    port: int = 80,
    family: int | None = None,
    protocol: Protocol = Protocol.TCP,
    state: LBState = LBState.ACTIVE,
    backends: tuple[Backend, ...] = (),
) -> LoadBalancer:
    front = ip(addr) if addr else None
    fam = family or (front.version if front else 4)
    return LoadBalancer(name, port, protocol, front, pool, backends, state=state, family=fam)


def state(pools: Iterable[IPPool], lbs: Iterable[LoadBalancer]) -> DesiredState:
    return DesiredState(tuple(pools), tuple(lbs))


def failure(desired: DesiredState, recorded: dict[str, IPAddress] | None = None) -> list[str]:
    with pytest.raises(ValidationErrors) as info:
        allocate(desired, recorded or {})
    return [str(e) for e in info.value.errors]


class Scenario:
    """Drives an Allocator step by step and checks every invariant after each step."""

    def __init__(self, *pools: IPPool) -> None:
        self.pools = {p.name: p for p in pools}
        self.alloc = Allocator(pools)
        self.lbs: dict[str, LoadBalancer] = {}

    def assign(self, item: LoadBalancer) -> IPAddress:
        before = self.alloc.snapshot()
        try:
            got = self.alloc.assign(item)
        except ValidationError:
            assert self.alloc.snapshot() == before, "a failed assign changed the allocation"
            self.check()
            raise
        self.lbs[item.name] = item
        self.check()
        return got

    def fresh_assign(self, item: LoadBalancer) -> IPAddress:
        """An automatic allocation for a new name must be the lowest free address (brute force)."""
        expected = self.lowest_free(item)
        got = self.assign(item)
        assert got == expected
        return got

    def keep(self, item: LoadBalancer, address: IPAddress) -> bool:
        before = self.alloc.snapshot()
        kept = self.alloc.keep(item, address)
        if kept:
            self.lbs[item.name] = item
        else:
            assert self.alloc.snapshot() == before
        self.check()
        return kept

    def release(self, name: str) -> None:
        self.alloc.release(name)
        self.lbs.pop(name, None)
        assert self.alloc.address_of(name) is None
        self.check()

    def lowest_free(self, item: LoadBalancer) -> IPAddress | None:
        pools = (
            [self.pools[item.pool]]
            if item.pool
            else [p for _, p in sorted(self.pools.items()) if p.auto_assign]
        )
        used = set(self.alloc.snapshot().addresses.values())
        for p in pools:
            for r in sorted((r for r in p.ranges if r.version == item.family), key=lambda r: int(r.first)):
                for value in range(int(r.first), int(r.last) + 1):
                    cand = type(r.first)(value)
                    skip = (p.avoid_buggy_ips and is_buggy(cand)) or is_subnet_router_anycast(cand)
                    if cand not in used and not skip:
                        return cand
        return None

    def check(self) -> None:
        snap = self.alloc.snapshot()
        assert set(snap.addresses) == set(self.lbs)
        by_ip: dict[IPAddress, list[str]] = {}
        for name, addr in snap.addresses.items():
            by_ip.setdefault(addr, []).append(name)
            item = self.lbs[name]
            owning = self.pools[snap.pool_of[name] or ""]
            assert owning.contains(addr), f"{name}: {addr} not in its pool {owning.name}"
            assert item.pool in (None, owning.name)
            assert addr.version == item.family
            if item.frontend_ip is not None:
                assert addr == item.frontend_ip
            elif owning.avoid_buggy_ips:
                assert not is_buggy(addr)
        for addr, names in by_ip.items():
            assert self.alloc.holders(addr) == frozenset(names)
            automatic = [n for n in names if self.lbs[n].frontend_ip is None]
            # No double allocation: an automatically allocated address has exactly one holder.
            assert not automatic or len(names) == 1, f"{addr} held by {names}"


# --- scripted scenarios -----------------------------------------------------------------------


def test_lowest_free_first_and_reuse_after_release() -> None:
    s = Scenario(pool("p", "203.0.113.8-203.0.113.11", "203.0.113.0-203.0.113.1"))
    assert s.fresh_assign(lb("a")) == ip("203.0.113.0")  # ranges are scanned lowest first
    assert s.fresh_assign(lb("b")) == ip("203.0.113.1")
    assert s.fresh_assign(lb("c")) == ip("203.0.113.8")
    s.release("a")
    assert s.fresh_assign(lb("d")) == ip("203.0.113.0")
    s.release("c")
    assert s.fresh_assign(lb("e")) == ip("203.0.113.8")


def test_exhaustion_fails_without_changing_anything() -> None:
    s = Scenario(pool("public", "203.0.113.1-203.0.113.2"))
    s.assign(lb("a"))
    s.assign(lb("b"))
    with pytest.raises(
        ValidationError, match=r"^L4LB c: spec.frontend.ip: IPPool public has no free IPv4 address$"
    ):
        s.assign(lb("c"))
    with pytest.raises(ValidationError, match=r"^L4LB c: spec.pool: IPPool public has no free IPv4 address$"):
        s.assign(lb("c", pool="public"))
    s.release("a")
    assert s.fresh_assign(lb("c")) == ip("203.0.113.1")


def test_failed_reassign_keeps_the_old_address() -> None:
    s = Scenario(pool("a", "203.0.113.1"), pool("b", "203.0.113.2", auto=False))
    s.assign(lb("x", pool="b"))
    old = s.assign(lb("y"))
    with pytest.raises(ValidationError, match=r"^L4LB y: spec.pool: IPPool b has no free IPv4 address$"):
        s.assign(lb("y", pool="b"))
    assert s.alloc.address_of("y") == old


def test_reassign_keeps_a_still_valid_address() -> None:
    s = Scenario(pool("p", "203.0.113.0/29"))
    s.assign(lb("a"))
    s.assign(lb("b"))
    s.release("a")
    assert s.assign(lb("b", port=443)) == ip("203.0.113.1")  # not moved to the now-free .0


def test_explicit_addresses_are_shared_automatic_ones_exclusive() -> None:
    s = Scenario(pool("public", "203.0.113.0/28"))
    s.assign(lb("web", "203.0.113.10"))
    s.assign(lb("web-tls", "203.0.113.10", port=443))
    s.assign(lb("web-udp", "203.0.113.10", protocol=Protocol.UDP))
    assert s.alloc.holders(ip("203.0.113.10")) == {"web", "web-tls", "web-udp"}
    auto = s.fresh_assign(lb("auto"))
    with pytest.raises(
        ValidationError, match=rf"^L4LB other: spec.frontend.ip: {auto} is already used by L4LB auto$"
    ):
        s.assign(lb("other", str(auto), port=443))
    s.release("web")
    s.release("web-tls")
    assert s.alloc.holders(ip("203.0.113.10")) == {"web-udp"}
    s.release("web-udp")
    assert s.alloc.holders(ip("203.0.113.10")) == frozenset()


def test_automatic_allocation_skips_shared_explicit_addresses() -> None:
    s = Scenario(pool("p", "203.0.113.1-203.0.113.3"))
    s.assign(lb("a", "203.0.113.1"))
    assert s.fresh_assign(lb("b")) == ip("203.0.113.2")


def test_explicit_address_must_be_in_a_pool_and_in_spec_pool() -> None:
    s = Scenario(pool("public", "203.0.113.0/28"), pool("private", "203.0.113.64/28", auto=False))
    with pytest.raises(
        ValidationError, match=r"^L4LB a: spec.frontend.ip: 203.0.113.200 is not in any IPPool$"
    ):
        s.assign(lb("a", "203.0.113.200"))
    with pytest.raises(
        ValidationError, match=r"^L4LB a: spec.frontend.ip: 203.0.113.5 is not in IPPool private$"
    ):
        s.assign(lb("a", "203.0.113.5", pool="private"))
    with pytest.raises(ValidationError, match=r"^L4LB a: spec.pool: unknown IPPool 'nope'$"):
        s.assign(lb("a", pool="nope"))
    assert s.assign(lb("a", "203.0.113.70")) == ip("203.0.113.70")  # autoAssign: false still allows asking
    assert s.alloc.pool_of("a") == "private"


def test_families() -> None:
    s = Scenario(pool("dual", "203.0.113.0/30", "2001:db8:100::/126"), pool("v4", "203.0.113.64/30"))
    # 2001:db8:100:: is the subnet-router anycast address: never allocated automatically
    assert s.fresh_assign(lb("six", family=6)) == ip("2001:db8:100::1")
    assert s.fresh_assign(lb("four")) == ip("203.0.113.0")
    with pytest.raises(ValidationError, match=r"^L4LB x: spec.pool: IPPool v4 has no IPv6 addresses$"):
        s.assign(lb("x", pool="v4", family=6))
    for i in range(2):  # ::2 and ::3 are what is left of the /126
        s.fresh_assign(lb(f"six{i}", family=6))
    with pytest.raises(
        ValidationError, match=r"^L4LB x: spec.frontend.ip: IPPool dual has no free IPv6 address$"
    ):
        s.assign(lb("x", family=6))


def test_several_autoassign_pools_in_name_order() -> None:
    s = Scenario(
        pool("b", "203.0.113.0"), pool("a", "203.0.113.9"), pool("manual", "203.0.113.5", auto=False)
    )
    assert s.fresh_assign(lb("x")) == ip("203.0.113.9")  # pool a comes first by name
    assert s.fresh_assign(lb("y")) == ip("203.0.113.0")
    with pytest.raises(
        ValidationError, match=r"^L4LB z: spec.frontend.ip: IPPools a, b have no free IPv4 address$"
    ):
        s.assign(lb("z"))


def test_no_autoassign_pool() -> None:
    s = Scenario(pool("manual", "203.0.113.0/28", auto=False))
    with pytest.raises(
        ValidationError, match=r"^L4LB a: spec.frontend.ip: not set, and no IPPool has autoAssign"
    ):
        s.assign(lb("a"))


def test_avoid_buggy_ips() -> None:
    s = Scenario(pool("p", "203.0.113.255-203.0.113.255", "203.0.113.0-203.0.113.1", buggy=True))
    assert s.fresh_assign(lb("a")) == ip("203.0.113.1")
    with pytest.raises(ValidationError, match=r"IPPool p has no free IPv4 address"):
        s.assign(lb("b"))
    with pytest.raises(ValidationError, match=r"203.0.113.0 ends in .0 or .255, which IPPool p avoids"):
        s.assign(lb("b", "203.0.113.0"))
    assert not s.keep(lb("b"), ip("203.0.113.255"))
    plain = Scenario(pool("p", "203.0.113.0-203.0.113.1"))
    assert plain.fresh_assign(lb("a")) == ip("203.0.113.0")


def test_keep_only_valid_recorded_addresses() -> None:
    s = Scenario(pool("a", "203.0.113.0/28"), pool("b", "203.0.113.64/28"), pool("v6", "2001:db8:100::/124"))
    assert not s.keep(lb("x"), ip("203.0.113.200"))  # in no pool any more
    assert not s.keep(lb("x", pool="b"), ip("203.0.113.5"))  # not in spec.pool
    assert not s.keep(lb("x", family=6), ip("203.0.113.5"))  # wrong family
    assert not s.keep(lb("x", "203.0.113.6"), ip("203.0.113.5"))  # explicit ip wins
    assert s.keep(lb("x"), ip("203.0.113.5"))
    assert not s.keep(lb("y"), ip("203.0.113.5"))  # someone else holds it
    assert s.keep(lb("y", family=6), ip("2001:db8:100::7"))


@pytest.mark.parametrize("seed", range(20))
def test_random_scripts_keep_invariants(seed: int) -> None:
    r = random.Random(seed)
    s = Scenario(
        pool("a", "203.0.113.0/29", buggy=True),
        pool("b", "203.0.113.250-203.0.113.255", "2001:db8:100::/126"),
        pool("m", "203.0.113.64/30", auto=False),
    )
    names = [f"lb{i}" for i in range(12)]
    explicit = ["203.0.113.3", "203.0.113.65", "2001:db8:100::2", "203.0.113.0"]
    for _ in range(60):
        name = r.choice(names)
        step = r.random()
        if step < 0.25:
            s.release(name)
            continue
        if step < 0.45:
            addr = r.choice(explicit)
            item = lb(name, addr, port=r.choice([80, 443]))
        else:
            item = lb(name, pool=r.choice([None, None, "a", "b", "m"]), family=r.choice([4, 4, 6]))
        try:
            if item.frontend_ip is None and s.alloc.address_of(name) is None:
                s.fresh_assign(item)
            else:
                s.assign(item)
        except ValidationError as err:
            assert err.name == name and err.path in ("spec.frontend.ip", "spec.pool")
            if item.frontend_ip is None:
                assert s.lowest_free(item) is None


# --- allocate() over a whole desired state ----------------------------------------------------


def test_allocate_is_deterministic_and_disabled_lbs_keep_addresses() -> None:
    pools = [pool("public", "203.0.113.0/28"), pool("v6", "2001:db8:100::/124")]
    lbs = [lb("c"), lb("a", state=LBState.DISABLE), lb("b", "203.0.113.0"), lb("d", family=6)]
    first = allocate(state(pools, lbs), {})
    assert first.addresses == {
        "a": ip("203.0.113.1"),
        "b": ip("203.0.113.0"),
        "c": ip("203.0.113.2"),
        "d": ip("2001:db8:100::1"),
    }
    assert first.pool_of == {"a": "public", "b": "public", "c": "public", "d": "v6"}
    for _ in range(5):
        random.Random(1).shuffle(lbs)
        random.Random(2).shuffle(pools)
        assert allocate(state(pools, lbs), {}) == first


def test_recorded_allocations_survive_new_lbs() -> None:
    pools = [pool("public", "203.0.113.0/28")]
    before = allocate(state(pools, [lb("m"), lb("n")]), {})
    after = allocate(
        state(pools, [lb("a"), lb("m"), lb("n"), lb("b", "203.0.113.9", port=443)]), before.addresses
    )
    assert after.addresses["m"] == before.addresses["m"] and after.addresses["n"] == before.addresses["n"]
    assert after.addresses["a"] not in (before.addresses["m"], before.addresses["n"])


def test_invalid_recorded_allocations_are_redone() -> None:
    pools = [pool("public", "203.0.113.0/28"), pool("other", "203.0.113.64/28", auto=False)]
    recorded = {
        "gone": ip("203.0.113.200"),
        "moved": ip("203.0.113.5"),
        "dup1": ip("203.0.113.7"),
        "dup2": ip("203.0.113.7"),
        "fam": ip("203.0.113.8"),
    }
    lbs = [lb("gone"), lb("moved", pool="other"), lb("dup1"), lb("dup2"), lb("fam", family=6, pool="other")]
    got, errors = allocate_partial(state(pools, lbs), recorded)
    # dup1 keeps its address (first by name); the others are allocated afresh, in name order.
    assert got.addresses["dup1"] == ip("203.0.113.7") and got.addresses["dup2"] == ip("203.0.113.0")
    assert got.addresses["gone"] == ip("203.0.113.1")
    assert got.addresses["moved"] == ip("203.0.113.64")
    assert [str(e) for e in errors] == ["L4LB fam: spec.pool: IPPool other has no IPv6 addresses"]
    assert "fam" not in got.addresses


def test_explicit_request_for_a_recorded_automatic_address_is_refused() -> None:
    pools = [pool("public", "203.0.113.0/28")]
    desired = state(pools, [lb("auto"), lb("web", "203.0.113.4")])
    assert failure(desired, {"auto": ip("203.0.113.4")}) == [
        "L4LB web: spec.frontend.ip: 203.0.113.4 is already used by L4LB auto"
    ]


def test_explicit_requests_go_before_new_automatic_allocations() -> None:
    got = allocate(state([pool("public", "203.0.113.0/30")], [lb("a"), lb("z", "203.0.113.0")]), {})
    assert got.addresses == {"a": ip("203.0.113.1"), "z": ip("203.0.113.0")}


def test_allocate_collects_every_error_and_allocates_nothing_on_failure() -> None:
    desired = state(
        [pool("public", "203.0.113.0")],
        [lb("a"), lb("b"), lb("c", "203.0.113.200"), lb("d", pool="nope")],
    )
    assert failure(desired) == [
        "L4LB b: spec.frontend.ip: IPPool public has no free IPv4 address",
        "L4LB c: spec.frontend.ip: 203.0.113.200 is not in any IPPool",
        "L4LB d: spec.pool: unknown IPPool 'nope'",
    ]
    partial, errors = allocate_partial(desired, {})
    assert partial.addresses == {"a": ip("203.0.113.0")} and len(errors) == 3


def test_many_allocations_stay_fast_and_unique() -> None:
    lbs = [lb(f"lb{i:05d}") for i in range(5000)]
    got = allocate(state([pool("big", "198.18.0.0/16")], lbs), {})
    assert len(set(got.addresses.values())) == 5000
    assert got.addresses["lb04999"] == ip("198.18.19.135")
