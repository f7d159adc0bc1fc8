"""Service IPAM: scripted scenarios that check the allocator's invariants after every step."""

from __future__ import annotations

import contextlib
import ipaddress
import random
from collections.abc import Callable

import pytest

from gatelb.ipam.services import (
    AllocationError,
    FamilyPolicy,
    Reason,
    Selector,
    ServiceAllocation,
    ServiceAllocator,
    ServicePool,
    ServiceRequest,
    allocate_services,
)
from gatelb.model import AddressRange, IPAddress, IPPool, Protocol

TCP, UDP = Protocol.TCP, Protocol.UDP


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def spool(name: str, *ranges: str, auto: bool = True, buggy: bool = False,
          allocation: ServiceAllocation | None = None) -> ServicePool:
    out = []
    for r in ranges:
        if "/" in r:
            net = ipaddress.ip_network(r)
            out.append(AddressRange(net.network_address, net.broadcast_address))
        else:
            first, _, last = r.partition("-")
            out.append(AddressRange(ip(first), ip(last or first)))
    return ServicePool(IPPool(name, tuple(out), auto, buggy), allocation)


def req(key: str, *requested: str, ports: tuple[tuple[Protocol, int], ...] = ((TCP, 80),),
        families: tuple[int, ...] = (4,), policy: FamilyPolicy = FamilyPolicy.SINGLE,
        pool: str | None = None, share: str | None = None, labels: dict[str, str] | None = None,
        ns_labels: dict[str, str] | None = None) -> ServiceRequest:
    return ServiceRequest(key, ports, families, policy, tuple(ip(r) for r in requested), pool, share,
                          labels or {}, ns_labels or {})


def check_invariants(alloc: ServiceAllocator, requests: dict[str, ServiceRequest]) -> None:
    """Every held address: in the pool recorded for it; its holders all share one key and no
    (protocol, port); a Service holds at most one address per family."""
    seen: dict[IPAddress, list[str]] = {}
    for key, a in alloc.snapshot().items():
        assert len({x.version for x in a.addresses}) == len(a.addresses), key
        for addr, pool_name in zip(a.addresses, a.pools, strict=True):
            found = alloc.pool_containing(addr)
            assert found is not None and found.name == pool_name
            seen.setdefault(addr, []).append(key)
    for addr, keys in seen.items():
        assert alloc.holders(addr) == frozenset(keys)
        if len(keys) > 1:
            shares = {requests[k].sharing_key for k in keys}
            assert len(shares) == 1 and None not in shares, (addr, keys)
            ports = [p for k in keys for p in requests[k].ports]
            assert len(ports) == len(set(ports)), (addr, keys)


class Script:
    """Runs steps against one allocator, checking invariants after each and that a failed
    step changed nothing."""

    def __init__(self, *pools: ServicePool, reserved: dict[IPAddress, str] | None = None) -> None:
        self.alloc = ServiceAllocator(pools, reserved)
        self.requests: dict[str, ServiceRequest] = {}

    def assign(self, r: ServiceRequest) -> tuple[str, ...]:
        before = self.alloc.snapshot()
        try:
            a = self.alloc.assign(r)
        except AllocationError:
            assert self.alloc.snapshot() == before
            raise
        self.requests[r.key] = r
        check_invariants(self.alloc, self.requests)
        return tuple(str(x) for x in a.addresses)

    def fail(self, r: ServiceRequest, reason: Reason) -> str:
        with pytest.raises(AllocationError) as err:
            self.assign(r)
        assert err.value.reason is reason, err.value.message
        return err.value.message

    def release(self, key: str) -> None:
        self.alloc.release(key)
        self.requests.pop(key, None)
        check_invariants(self.alloc, self.requests)


def test_lowest_free_address_then_exhaustion_then_release_reuses() -> None:
    s = Script(spool("p", "203.0.113.1-203.0.113.2"))
    assert s.assign(req("a/one")) == ("203.0.113.1",)
    assert s.assign(req("a/two")) == ("203.0.113.2",)
    msg = s.fail(req("a/three"), Reason.EXHAUSTED)
    assert msg == "IPPool p: no free IPv4 address"
    s.release("a/one")
    assert s.assign(req("a/three")) == ("203.0.113.1",)


def test_an_assigned_service_keeps_its_address_on_reassign() -> None:
    s = Script(spool("p", "203.0.113.0/29"))
    first = s.assign(req("a/web"))
    s.assign(req("a/other"))
    assert s.assign(req("a/web", ports=((TCP, 443),))) == first


def test_requested_address_must_be_in_a_pool_and_free() -> None:
    s = Script(spool("p", "203.0.113.0/29"), spool("q", "203.0.113.8/29", auto=False))
    assert s.assign(req("a/x", "203.0.113.5")) == ("203.0.113.5",)
    assert "already used by Service a/x" in s.fail(req("a/y", "203.0.113.5"), Reason.IN_USE)
    assert s.fail(req("a/y", "198.51.100.1"), Reason.NOT_IN_POOL) == \
        "198.51.100.1 is not in any IPPool that accepts this Service"
    # A requested address in a pool without autoAssign needs the pool named.
    s.fail(req("a/y", "203.0.113.9"), Reason.NOT_IN_POOL)
    assert s.assign(req("a/y", "203.0.113.9", pool="q")) == ("203.0.113.9",)
    s.fail(req("a/z", "203.0.113.1", "203.0.113.2"), Reason.FAMILY)  # two IPv4 addresses


def test_named_pool_unknown_or_not_allowed() -> None:
    only_prod = ServiceAllocation(namespaces=frozenset({"prod"}))
    s = Script(spool("p", "203.0.113.0/29", allocation=only_prod))
    assert s.fail(req("dev/web", pool="nope"), Reason.UNKNOWN_POOL) == "unknown IPPool 'nope'"
    s.fail(req("dev/web", pool="p"), Reason.POOL_NOT_ALLOWED)
    s.fail(req("dev/web"), Reason.NO_POOL)
    assert s.assign(req("prod/web")) == ("203.0.113.0",)


def test_sharing_needs_same_key_and_distinct_ports() -> None:
    s = Script(spool("p", "203.0.113.10-203.0.113.11"))
    a = s.assign(req("n/a", share="k", ports=((TCP, 80),)))
    # Same key, other port: MetalLB reuses the address the key already holds.
    assert s.assign(req("n/b", share="k", ports=((TCP, 443),))) == a
    # Same key, UDP on the same number is another port.
    assert s.assign(req("n/c", share="k", ports=((UDP, 80),))) == a
    # Same key, clashing port: a fresh address, not the shared one.
    assert s.assign(req("n/d", share="k", ports=((TCP, 80),))) == ("203.0.113.11",)
    # Requesting the shared address with a clashing port or another key fails.
    assert "also uses tcp/443" in s.fail(req("n/e", "203.0.113.10", share="k", ports=((TCP, 443),)),
                                         Reason.IN_USE)
    s.fail(req("n/f", "203.0.113.10", share="other", ports=((TCP, 8080),)), Reason.IN_USE)
    s.fail(req("n/g", "203.0.113.10", ports=((TCP, 8080),)), Reason.IN_USE)


def test_dual_stack_policies() -> None:
    v4 = spool("v4", "203.0.113.0/30")
    dual = spool("dual", "203.0.113.8/30", "2001:db8:100::/126")
    s = Script(v4, dual)
    assert s.assign(req("n/single", families=(6,))) == ("2001:db8:100::1",)  # ::0 is subnet-router anycast
    assert s.assign(req("n/both", families=(6, 4), policy=FamilyPolicy.REQUIRE_DUAL)) == (
        "2001:db8:100::2", "203.0.113.8")  # pools in name order: "dual" first
    s.assign(req("n/fill6", families=(6,)))
    # IPv6 is exhausted now: RequireDualStack fails whole, PreferDualStack takes what it can.
    s.fail(req("n/req", families=(4, 6), policy=FamilyPolicy.REQUIRE_DUAL), Reason.EXHAUSTED)
    assert s.assign(req("n/pref", families=(4, 6), policy=FamilyPolicy.PREFER_DUAL)) == ("203.0.113.9",)
    s.fail(req("n/wrong", "2001:db8:100::2"), Reason.FAMILY)  # a SingleStack IPv4 Service


def test_avoid_buggy_ips() -> None:
    s = Script(spool("p", "203.0.113.255-203.0.113.255", "198.51.100.0/31", buggy=True))
    assert s.assign(req("n/a")) == ("198.51.100.1",)
    s.fail(req("n/b"), Reason.EXHAUSTED)
    s.fail(req("n/c", "203.0.113.255"), Reason.BUGGY)


def test_pool_preference_priority_then_selection_then_name() -> None:
    sel = Selector(match_labels=(("tier", "web"),))
    s = Script(
        spool("a-open", "203.0.113.1"),
        spool("b-labelled", "203.0.113.2", allocation=ServiceAllocation(service_selectors=(sel,))),
        spool("c-prio2", "203.0.113.3", allocation=ServiceAllocation(priority=2)),
        spool("d-prio1", "203.0.113.4", allocation=ServiceAllocation(priority=1)),
    )
    web = {"tier": "web"}
    assert s.assign(req("n/1", labels=web)) == ("203.0.113.4",)
    assert s.assign(req("n/2", labels=web)) == ("203.0.113.3",)
    assert s.assign(req("n/3", labels=web)) == ("203.0.113.2",)
    assert s.assign(req("n/4", labels=web)) == ("203.0.113.1",)
    s.fail(req("n/5"), Reason.EXHAUSTED)


def test_namespace_selectors_and_expressions() -> None:
    staging = Selector(expressions=(("env", "In", ("staging", "qa")),))
    no_legacy = Selector(expressions=(("legacy", "DoesNotExist", ()),))
    alloc = ServiceAllocation(namespaces=frozenset({"team-a"}), namespace_selectors=(staging,),
                              service_selectors=(no_legacy,))
    s = Script(spool("p", "203.0.113.0/29", allocation=alloc))
    s.assign(req("team-a/x"))
    s.assign(req("other/y", ns_labels={"env": "qa"}))
    s.fail(req("other/z", ns_labels={"env": "prod"}), Reason.NO_POOL)
    s.fail(req("team-a/old", labels={"legacy": "yes"}), Reason.NO_POOL)


def test_reserved_addresses_are_never_handed_out() -> None:
    s = Script(spool("p", "203.0.113.1-203.0.113.2"), reserved={ip("203.0.113.1"): "L4LB default/web"})
    assert s.assign(req("n/a")) == ("203.0.113.2",)
    assert s.fail(req("n/b", "203.0.113.1"), Reason.IN_USE) == "203.0.113.1 is used by L4LB default/web"


def test_keep_restores_status_addresses_only_when_still_valid() -> None:
    alloc = ServiceAllocator([spool("p", "203.0.113.0/29"), spool("q", "198.51.100.0/29", auto=False)])
    assert alloc.keep(req("n/a"), [ip("203.0.113.6")])
    assert not alloc.keep(req("n/b"), [ip("203.0.113.6")])  # held by n/a
    assert not alloc.keep(req("n/c"), [ip("198.51.100.1")])  # pool q is not autoAssign, not named
    assert alloc.keep(req("n/c", pool="q"), [ip("198.51.100.1")])
    assert not alloc.keep(req("n/d"), [ip("192.0.2.1")])  # in no pool
    assert not alloc.keep(req("n/e", "203.0.113.3"), [ip("203.0.113.4")])  # request changed
    assert alloc.snapshot().keys() == {"n/a", "n/c"}


def test_allocate_services_restart_keeps_every_address_and_requests_win_over_new() -> None:
    pools = [spool("p", "203.0.113.0/30")]
    requests = [req("n/a"), req("n/b"), req("n/c", "203.0.113.0")]
    first, errors = allocate_services(pools, requests, {})
    assert not errors
    got = {k: a.addresses for k, a in first.snapshot().items()}
    assert got["n/c"] == (ip("203.0.113.0"),)  # explicit requests first: no one took it
    # Restart: the same requests in another order, current from status, get the same addresses.
    again, errors = allocate_services(pools, [*reversed(requests), req("n/d")], got)
    assert not errors
    assert {k: a.addresses for k, a in again.snapshot().items() if k != "n/d"} == got
    _, errors = allocate_services(pools, [*requests, req("n/d"), req("n/e")], got)
    assert set(errors) == {"n/e"} and errors["n/e"].reason is Reason.EXHAUSTED


@pytest.mark.parametrize("seed", range(5))
def test_random_scripts_keep_invariants(seed: int) -> None:
    rnd = random.Random(seed)
    s = Script(spool("p", "203.0.113.0/28", "2001:db8:100::/125", buggy=rnd.random() < 0.5),
               spool("q", "198.51.100.0/29", auto=False))
    steps: list[Callable[[], object]] = []
    for _ in range(200):
        key = f"n/s{rnd.randrange(12)}"
        if rnd.random() < 0.25:
            steps.append(lambda key=key: s.release(key))
            continue
        kw: dict[str, object] = {"share": rnd.choice([None, "k1", "k2"]),
                                 "ports": ((rnd.choice([TCP, UDP]), rnd.choice([80, 443])),),
                                 "families": rnd.choice([(4,), (6,), (4, 6)]),
                                 "policy": rnd.choice(list(FamilyPolicy)),
                                 "pool": rnd.choice([None, None, "q"])}
        requested = () if rnd.random() < 0.7 else (rnd.choice(["203.0.113.3", "198.51.100.2", "2001:db8:100::3"]),)
        r = req(key, *requested, **kw)  # type: ignore[arg-type]
        steps.append(lambda r=r: _try(s, r))
    for step in steps:
        step()


def _try(s: Script, r: ServiceRequest) -> None:
    with contextlib.suppress(AllocationError):  # Script.assign checked that a failure changed nothing
        s.assign(r)


# --- a long-lived allocator: release, reserved, cost per Service ---------------------------------


def test_release_frees_the_addresses_and_the_sharing_key() -> None:
    s = Script(spool("p", "203.0.113.10-203.0.113.13"))
    s.assign(req("n/x"))
    shared = s.assign(req("n/a", share="k", ports=((TCP, 80),)))
    assert s.assign(req("n/b", share="k", ports=((TCP, 443),))) == shared == ("203.0.113.11",)
    s.release("n/a")
    assert s.alloc.holders(ip("203.0.113.11")) == {"n/b"}
    assert s.assign(req("n/c", share="k", ports=((TCP, 80),))) == shared  # the key still holds it
    s.release("n/b")
    s.release("n/c")
    s.release("n/never-assigned")
    assert s.alloc.holders(ip("203.0.113.11")) == frozenset()
    # The key holds nothing now: a new holder of it takes the lowest free address again.
    assert s.assign(req("n/d", share="k", ports=((TCP, 8080),))) == ("203.0.113.11",)
    assert s.alloc.assignment("n/a") is None


def test_reserved_as_a_function_and_changed_later() -> None:
    l4lbs = {ip("203.0.113.1"): "L4LB default/web"}
    s = Script(spool("p", "203.0.113.1-203.0.113.3"))
    s.alloc.set_reserved(l4lbs.get)
    assert s.assign(req("n/a")) == ("203.0.113.2",)
    assert s.fail(req("n/b", "203.0.113.1"), Reason.IN_USE) == "203.0.113.1 is used by L4LB default/web"
    assert s.alloc.reserved_by(ip("203.0.113.1")) == "L4LB default/web"
    del l4lbs[ip("203.0.113.1")]
    s.alloc.set_reserved(l4lbs.get, freed=[ip("203.0.113.1")])
    assert s.assign(req("n/b")) == ("203.0.113.1",)
    l4lbs[ip("203.0.113.3")] = "L4LB default/other"  # a newly reserved address needs no call
    s.fail(req("n/c"), Reason.EXHAUSTED)
    _, errors = allocate_services([spool("p", "203.0.113.1-203.0.113.3")], [req("n/a"), req("n/b")], {},
                                  lambda a: "L4LB x" if a.packed[-1] < 3 else None)
    assert set(errors) == {"n/b"}


def test_one_service_costs_its_own_work_not_the_number_of_services(monkeypatch: pytest.MonkeyPatch) -> None:
    from gatelb.ipam.core import Core

    alloc = ServiceAllocator([spool("big", "198.18.0.0/16"), spool("v6", "2001:db8:100::/112")])
    for i in range(5000):
        alloc.assign(req(f"n/s{i:04d}", families=(4, 6), policy=FamilyPolicy.REQUIRE_DUAL))
    for i in range(100):  # one address shared by 100 Services of one key
        alloc.assign(req(f"n/k{i:03d}", share="k3", ports=((TCP, 1000 + i),)))
    calls = {"free": 0, "conflict": 0}
    for name in calls:
        original = getattr(Core, name)

        def counting(self: Core[object], *args: object, _n: str = name, _f: object = original) -> object:
            calls[_n] += 1
            return _f(self, *args)  # type: ignore[operator]

        monkeypatch.setattr(Core, name, counting)
    alloc.release("n/s0007")
    got = alloc.assign(req("n/new", families=(4, 6), policy=FamilyPolicy.REQUIRE_DUAL))
    assert got.addresses == (ip("198.18.0.7"), ip("2001:db8:100::8"))  # ::0 is never handed out
    assert calls["free"] <= 4 and calls["conflict"] == 0, calls
    # A sharing key joins its own addresses: the work is that key's addresses, not every holding.
    calls = {"free": 0, "conflict": 0}
    alloc.assign(req("n/shared", share="k3", ports=((UDP, 53),)))
    assert alloc.assignment("n/shared") == alloc.assignment("n/k000")
    assert calls["conflict"] <= 1 and calls["free"] == 0, calls


@pytest.mark.parametrize("seed", range(5))
def test_random_updates_never_hand_out_reserved_addresses(seed: int) -> None:
    rnd = random.Random(seed)
    held: dict[IPAddress, str] = {}
    s = Script(spool("p", "203.0.113.0/29", "2001:db8:100::/125"))
    s.alloc.set_reserved(held.get)
    for _ in range(200):
        step = rnd.random()
        if step < 0.2:
            addr = ip(f"203.0.113.{rnd.randrange(8)}")
            if addr in held:
                del held[addr]
                s.alloc.set_reserved(held.get, freed=[addr])
            elif not s.alloc.holders(addr):
                held[addr] = "L4LB l"
        elif step < 0.4:
            s.release(f"n/s{rnd.randrange(10)}")
        else:
            r = req(f"n/s{rnd.randrange(10)}", share=rnd.choice([None, "k"]),
                    ports=((TCP, rnd.choice([80, 443])),), families=rnd.choice([(4,), (4, 6)]),
                    policy=rnd.choice(list(FamilyPolicy)))
            _try(s, r)
        for a in s.alloc.snapshot().values():
            assert not set(a.addresses) & set(held), "a Service got a reserved address"
