"""The L2 Lease election (sources/kubernetes/l2lease.py) against the API stand-in, two members
ticked by hand on one fake clock: spread by rendezvous hash, no takeover before the owner's Lease
has lapsed, takeover after it, handing over, stepping down when it cannot serve, and dropping its
own ownership when it cannot renew."""

from __future__ import annotations

import asyncio
import ipaddress

from kubernetes_asyncio.client import ApiClient

from gatelb.sources.kubernetes.api import KubeApi
from gatelb.sources.kubernetes.l2lease import HANDOVER_AFTER, L2LeaseElection, lease_name, preferred
from tests.k8s_standin.client import apply
from tests.k8s_standin.client import run as run_standin
from tests.k8s_standin.server import StandinServer

NS = "gatelb-system"
POOL = [ipaddress.ip_address(f"192.0.2.{200 + i}") for i in range(8)]
A = next(v for v in POOL if preferred(v, {"gw1", "gw2"}) == "gw1")
B = next(v for v in POOL if preferred(v, {"gw1", "gw2"}) == "gw2")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pair(client: ApiClient, clock: Clock) -> tuple[L2LeaseElection, L2LeaseElection]:
    one = L2LeaseElection(KubeApi(client), NS, "gw1", duration_s=2, clock=clock)
    two = L2LeaseElection(KubeApi(client), NS, "gw2", duration_s=2, clock=clock)
    for e in (one, two):
        e.want({A: ((), True), B: ((), True)})
    return one, two


async def ticks(clock: Clock, *elections: L2LeaseElection, seconds: float = 0.25, step: float = 0.25) -> None:
    end = clock.now + seconds
    while clock.now < end:
        for e in elections:
            await e.tick()
            e._update_owned()
        clock.now += step


def holder(server: StandinServer, vip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    lease = server.store.objects.get(("coordination.k8s.io/v1/leases", NS, lease_name(vip)))
    return (lease or {}).get("spec", {}).get("holderIdentity")


def test_spread_takeover_after_the_lease_and_never_before() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await apply(client, "rbac.yaml")
        clock = Clock()
        one, two = pair(client, clock)
        await ticks(clock, one, seconds=1)  # gw1 alone first: it takes both
        assert one.owned() == {A, B}
        await ticks(clock, one, two, seconds=HANDOVER_AFTER * 2 + 1)
        # spread: gw2 got the VIP it is preferred for once it had been alive long enough
        assert (one.owned(), two.owned()) == ({A}, {B})
        assert (holder(server, A), holder(server, B)) == ("gw1", "gw2")
        assert sorted(one.members) == ["gw1", "gw2"]

        # gw1 dies (stops renewing): gw2 must not take A while gw1's last renewal is in force ...
        last = one._held[A]
        await ticks(clock, two, seconds=last + 2 - clock.now - 0.01)
        assert two.owned() == {B}
        # ... and takes it once the Lease has lapsed (2 s), on its next tick
        await ticks(clock, two, seconds=0.5)
        assert two.owned() == {A, B} and holder(server, A) == "gw2"

    run_standin(body)


def test_an_owner_that_cannot_serve_or_renew_steps_down() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await apply(client, "rbac.yaml")
        clock = Clock()
        one, two = pair(client, clock)
        await ticks(clock, one, two, seconds=HANDOVER_AFTER * 2 + 1)
        assert one.owned() == {A}
        one.want({A: ((), False), B: ((), True)})  # no backend up on gw1 for A
        await ticks(clock, one, two, seconds=0.75)
        assert one.owned() == set() and two.owned() == {A, B}  # released at once, taken after a grace

        # gw2 cut off from the API server: it stops answering before its Lease lapses for the others
        server.forbid("list", "leases", "coordination.k8s.io", NS)
        t0 = clock.now
        while two.owned():
            with_error = asyncio.create_task(two.tick())
            await asyncio.gather(with_error, return_exceptions=True)
            two._update_owned()
            clock.now += 0.25
        assert clock.now - t0 <= 2 - 2 * two.poll_s + 0.25
        server.allow_all()

    run_standin(body)


def test_stop_releases_every_lease() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await apply(client, "rbac.yaml")
        one = L2LeaseElection(KubeApi(client), NS, "gw1", duration_s=1)
        one.want({A: ((), True)})
        task = asyncio.create_task(one.run())
        for _ in range(100):
            if one.owned():
                break
            await asyncio.sleep(0.02)
        assert one.owned() == {A} and holder(server, A) == "gw1"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert holder(server, A) is None

    run_standin(body)
