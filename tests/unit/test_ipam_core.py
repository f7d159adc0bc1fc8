"""The allocator core on its own: scan order and hints, the address rules, holding and sharing."""

from __future__ import annotations

import ipaddress

import pytest

from gatelb.ipam.core import Core, hold_map, is_buggy, is_subnet_router_anycast
from gatelb.model import AddressRange, IPAddress, IPPool


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def pool(name: str, *ranges: tuple[str, str], buggy: bool = False) -> IPPool:
    return IPPool(name, tuple(AddressRange(ip(a), ip(b)) for a, b in ranges), True, buggy)


def never(a: str, b: str) -> bool:
    return False


def test_address_rules() -> None:
    assert is_buggy(ip("203.0.113.0")) and is_buggy(ip("203.0.113.255")) and not is_buggy(ip("203.0.113.1"))
    assert not is_buggy(ip("2001:db8::ff"))
    assert is_subnet_router_anycast(ip("2001:db8:1:2::")) and not is_subnet_router_anycast(ip("2001:db8::1"))
    assert not is_subnet_router_anycast(ip("203.0.113.0"))


def test_lowest_free_scans_ranges_lowest_first_and_skips_what_is_not_free() -> None:
    p = pool("p", ("203.0.113.254", "203.0.113.255"), ("203.0.113.0", "203.0.113.1"), ("2001:db8::", "2001:db8::1"),
             buggy=True)
    core: Core[str] = Core([p], never)
    assert core.lowest_free(p, 4) == ip("203.0.113.1")  # .0 avoided
    assert core.lowest_free(p, 6) == ip("2001:db8::1")  # the anycast address is skipped
    core.take("a", ip("203.0.113.1"), "p", "x")
    assert core.lowest_free(p, 4) == ip("203.0.113.254")
    core.take("b", ip("203.0.113.254"), "p", "x")
    assert core.lowest_free(p, 4) is None
    core.release("a")
    assert core.lowest_free(p, 4) == ip("203.0.113.1")  # the release lowered the hint


def test_allocating_n_addresses_visits_o_n_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    p = pool("big", ("198.18.0.0", "198.18.255.255"))
    core: Core[str] = Core([p], never)
    calls = 0
    free = Core.free

    def counting(self: Core[str], pool: IPPool, addr: IPAddress) -> bool:
        nonlocal calls
        calls += 1
        return free(self, pool, addr)

    monkeypatch.setattr(Core, "free", counting)
    for i in range(3000):
        got = core.lowest_free(p, 4)
        assert got is not None
        core.take(f"o{i}", got, "big", "x")
    assert calls <= 2 * 3000
    core.release("o1500")
    calls = 0
    assert core.lowest_free(p, 4) == ip("198.18.0.0") + 1500 and calls == 1


def test_sharing_follows_the_predicate_and_conflict_names_the_lowest_holder() -> None:
    p = pool("p", ("203.0.113.0", "203.0.113.7"))
    core: Core[bool] = Core([p], lambda a, b: a and b)  # True: shareable
    addr = ip("203.0.113.3")
    core.take("web", addr, "p", True)
    core.take("tls", addr, "p", True)
    assert core.holders(addr) == {"web", "tls"}
    assert core.conflict(addr, "new", True) is None and core.compatible(addr, "new", True)
    assert core.conflict(addr, "new", False) == ("tls", True)
    assert not core.compatible(addr, "new", False)
    assert core.compatible(addr, "web", True)
    assert not core.compatible(addr, "web", False)  # tls is still there
    core.release("tls")
    assert core.compatible(addr, "web", False)  # only itself
    assert not core.free(p, addr)
    core.release("web")
    assert core.free(p, addr) and hold_map(core) == {}


def test_an_owner_may_hold_several_addresses() -> None:
    p = pool("p", ("203.0.113.0", "203.0.113.7"), ("2001:db8::1", "2001:db8::7"))
    core: Core[str] = Core([p], never)
    core.take("svc", ip("203.0.113.1"), "p", "t")
    core.take("svc", ip("2001:db8::1"), "p", "t")
    assert [h.ip for h in core.held_by("svc")] == [ip("203.0.113.1"), ip("2001:db8::1")]
    assert core.release_one("svc", ip("203.0.113.1")) is not None
    assert [h.ip for h in core.held_by("svc")] == [ip("2001:db8::1")]
    assert [h.ip for h in core.release("svc")] == [ip("2001:db8::1")]
    assert list(core.owners()) == []


def test_reserved_addresses_are_skipped_until_unreserved() -> None:
    p = pool("p", ("203.0.113.0", "203.0.113.3"))
    reserved = {ip("203.0.113.0"), ip("203.0.113.1")}
    core: Core[str] = Core([p], never, reserved.__contains__)
    assert core.lowest_free(p, 4) == ip("203.0.113.2")
    reserved.discard(ip("203.0.113.0"))
    assert core.lowest_free(p, 4) == ip("203.0.113.2")  # the hint is past it ...
    core.unreserved([ip("203.0.113.0")])
    assert core.lowest_free(p, 4) == ip("203.0.113.0")  # ... until told


def test_pool_lookup() -> None:
    a, b = pool("b", ("203.0.113.0", "203.0.113.7")), pool("a", ("198.51.100.0", "198.51.100.7"))
    core: Core[str] = Core([a, b], never)
    assert list(core.pools) == ["a", "b"]
    assert core.pool_containing(ip("203.0.113.5")) is a and core.pool_containing(ip("192.0.2.1")) is None
    assert core.has_family(a, 4) and not core.has_family(a, 6)
