"""resolve() and Resolver: allocated L4LBs -> services, with health and drain applied."""

from __future__ import annotations

import ipaddress
import random

from gatelb.ipam.lb import Allocation, allocate
from gatelb.model import AddressRange, Backend, DesiredState, IPAddress, IPPool, LBState, LoadBalancer, Protocol
from gatelb.resolve import Resolver, resolve


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def pool(name: str, first: str, last: str, auto: bool = True) -> IPPool:
    return IPPool(name, (AddressRange(ip(first), ip(last)),), auto)


def lb(name: str, addr: str | None = None, *, state: LBState = LBState.ACTIVE,
       backends: tuple[Backend, ...] = ()) -> LoadBalancer:
    return LoadBalancer(name, 80, Protocol.TCP, ip(addr) if addr else None, None, backends, state=state)


def desired_state(pools: list[IPPool], lbs: list[LoadBalancer]) -> DesiredState:
    return DesiredState(tuple(pools), tuple(lbs))


POOLS = (pool("a", "203.0.113.0", "203.0.113.7"), pool("b", "203.0.113.16", "203.0.113.19", auto=False))


def random_lb(rng: random.Random, name: str) -> LoadBalancer:
    return LoadBalancer(name=name, port=rng.choice([80, 443]),
                        backends=(Backend(ip("198.51.100.11"), 8080),))


def be(addr: str, port: int = 8080, weight: int = 1, drain: bool = False) -> Backend:
    return Backend(ip(addr), port, weight, drain)


def test_resolve_builds_sorted_active_services_and_idles_drained_backends() -> None:
    backends = (
        be("198.51.100.11"),
        be("198.51.100.12", weight=0),
        be("198.51.100.13", drain=True),
        be("198.51.100.14"),
    )
    desired = desired_state(
        [pool("public", "203.0.113.0", "203.0.113.15")],
        [
            lb("z", backends=backends),
            lb("a", "203.0.113.9", backends=backends),
            lb("off", state=LBState.DISABLE),
        ],
    )
    allocation = allocate(desired, {})
    services = resolve(desired, allocation).services
    assert [x.name for x in services] == ["a", "z"]
    z = services[1]
    assert z.vip == allocation.addresses["z"] and z.port == 80 and z.protocol is Protocol.TCP
    assert z.backends == (backends[0], backends[3])
    assert z.idle_backends == (backends[1], backends[2])


def test_resolve_with_usable_filter_and_missing_allocation() -> None:
    backends = (be("198.51.100.11"), be("198.51.100.12"))
    desired = desired_state([pool("public", "203.0.113.0", "203.0.113.15")], [lb("a", backends=backends), lb("b")])
    allocation = Allocation({"a": ip("203.0.113.1")}, {"a": "public"})

    def healthy(name: str, b: Backend) -> bool:
        return name == "a" and b.address != ip("198.51.100.12")

    (only,) = resolve(desired, allocation, healthy).services
    assert only.name == "a" and only.backends == backends[:1] and only.idle_backends == backends[1:]


def test_resolver_reuses_unchanged_services_and_matches_resolve() -> None:
    rng = random.Random(1)
    lbs = {f"lb{i}": random_lb(rng, f"lb{i}") for i in range(6)}
    lbs = {n: LoadBalancer(n, 80 + i, backends=lb.backends) for i, (n, lb) in enumerate(lbs.items())}
    desired = DesiredState(POOLS, tuple(lbs.values()))
    allocation = allocate(desired, {})
    resolver = Resolver()
    first = resolver.resolve(desired, allocation, None)
    assert first == resolve(desired, allocation)
    lbs["lb2"] = LoadBalancer("lb2", 99, backends=lbs["lb2"].backends)
    desired2 = DesiredState(POOLS, tuple(lbs.values()))
    allocation2 = allocate(desired2, allocation.addresses)
    down = lambda lb, b: lb != "lb4"  # noqa: E731 - lb4's backend went down
    second = resolver.resolve(desired2, allocation2, down, dirty={"lb4"})
    assert second == resolve(desired2, allocation2, down)
    before, after = first.by_name(), second.by_name()
    assert after["lb0"] is before["lb0"]
    assert after["lb2"] is not before["lb2"] and after["lb4"] is not before["lb4"]
    assert after["lb4"].backends == ()
