"""Active-active in network namespaces: the upstream router (FRR, ECMP with an L4 hash), a switch,
two gateways (`gatelb run --node gw1|gw2`, the same file, an active-active GatewayGroup), three
backends, a fullnat L4LB; real FRR with BFD on every side.

One scenario, in order: both members announce the VIP (two ECMP next hops); 300 new connections
from fixed source ports spread over both members, and every one reaches the backend the pure
tracer names (the kernel's jhash and the Maglev table, the same on both members); a backend dies:
the same 300 flows again, and only about 1/N of them move (those of the dead backend, plus few);
then 20 held connections and a paced stream of new ones while gw1 loses power: new connections
fail for well under 1 s (BFD), the survivor's held connections all carry on, and the dead member's
(fullnat: the backend knew them by gw1's address) are counted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from gatelb.lab.active_active import CONFIG, WEB, expected_backends
from gatelb.lab.bgp import GATEWAY_LAN, GATEWAYS, BgpLab
from gatelb.lab.daemon import LabDaemon
from gatelb.lab.ha import Flow

from ..conftest import running_bgp_lab

CONVERGE_S = 30.0
FLOWS, FIRST_PORT = 300, 41000


def wait_for(what: str, check: Callable[[], bool], timeout: float, lab: BgpLab) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not within {timeout} s\n{lab.router_vtysh('show ip bgp')}")
        time.sleep(0.01)
    return time.monotonic() - t0


@pytest.fixture(name="lab")
def aa_lab() -> Iterator[BgpLab]:
    with running_bgp_lab(backends=3) as lab:
        yield lab


def flows_from_fixed_ports(lab: BgpLab) -> tuple[list[str], Counter[str]]:
    result = lab.connect_many("tcp", WEB, 80, count=FLOWS, first_port=FIRST_PORT, concurrency=16)
    assert result.ok == FLOWS, result.failures
    return [a.backend or "" for a in result.attempts], Counter(a.seen_source or "" for a in result.attempts)


def test_active_active_ecmp_consistent_selection_and_member_loss(lab: BgpLab) -> None:
    gws = {g: LabDaemon(lab, CONFIG, name=g, ns=g, extra_args=("--node", g)).start() for g in GATEWAYS}
    both = set(GATEWAYS.values())
    took = wait_for("both members as ECMP next hops", lambda: lab.router_next_hops(f"{WEB}/32") == both,
                    CONVERGE_S, lab)
    print(f"ECMP route after {took:.2f} s")
    ha = gws["gw2"].status()["info"]["ha"]
    assert (ha["mode"], ha["members"], ha["selection"], ha["dnat"]) == ("active-active", ["gw1", "gw2"], "maglev", [])

    # New connections spread over both members, and both pick the tracer's backend for each flow
    got, via = flows_from_fixed_ports(lab)
    print(f"{FLOWS} flows: via {dict(via)}, backends {dict(Counter(got))}")
    assert set(via) == {GATEWAY_LAN["gw1"], GATEWAY_LAN["gw2"]}  # fullnat: the backend sees the member
    assert min(via.values()) >= FLOWS // 4, via
    want = expected_backends(FIRST_PORT, FLOWS)
    wrong = [(FIRST_PORT + i, g, w) for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not wrong, f"kernel and tracer disagree for {len(wrong)} flows: {wrong[:5]}"

    # A backend change moves about 1/N of the flows: be3 dies, the same 300 flows again
    t_kill = time.time()
    lab.kill_backend(3)
    for d in gws.values():
        d.wait_event("sync", after=t_kill, where=lambda e: "health" in e["trigger"], timeout=5)
    again, _ = flows_from_fixed_ports(lab)
    assert again == expected_backends(FIRST_PORT, FLOWS, up=(1, 2))
    moved = sum(a != b for a, b in zip(got, again, strict=True)) / FLOWS
    lost = got.count("be3") / FLOWS
    print(f"be3 down: {moved:.3f} of the flows moved (be3 had {lost:.3f}; 1/N = {1 / 3:.3f})")
    assert lost <= moved <= 1.35 / 3
    t_back = time.time()
    lab.start_backend(3)
    for d in gws.values():
        d.wait_event("sync", after=t_back, where=lambda e: "health" in e["trigger"], timeout=5)

    # gw1 loses power: BFD drops it at the router, the survivor's connections carry on
    flows = [Flow(lab.hold(WEB, 80, timeout=3.0)).start() for _ in range(20)]
    on = Counter(f.seen_source for f in flows)
    assert set(on) == {GATEWAY_LAN["gw1"], GATEWAY_LAN["gw2"]}, on
    paced = lab.start_client("tcp", WEB, 80, count=200, rate=50, timeout=0.5)
    time.sleep(1.0)
    t_fail = time.time()
    lab.power_off("gw1")
    converged = wait_for("gw1 dropped by BFD", lambda: lab.router_next_hops(f"{WEB}/32") == {GATEWAYS["gw2"]},
                         1.0, lab)
    time.sleep(1.5)
    result = paced.result()
    failed = [a.at for a in result.attempts if not a.ok and a.at is not None]
    span = (max(failed) - min(failed) + 1 / 50) if failed else 0.0
    dead = [f for f in flows if f.seen_source == GATEWAY_LAN["gw1"]]
    alive = [f for f in flows if f.seen_source == GATEWAY_LAN["gw2"]]
    print(f"power loss of gw1: route converged in {converged:.3f} s; new connections failed for {span:.3f} s "
          f"({len(failed)} of {len(result.attempts)} attempts at 50/s, {dict(result.failures)}); "
          f"held connections: {sum(f.alive for f in alive)}/{len(alive)} via gw2 kept, "
          f"{sum(f.alive for f in dead)}/{len(dead)} via gw1 survived ({sorted({f.error for f in dead if f.error})})")
    assert all(t >= t_fail - 0.05 for t in failed), "failures before the power loss"
    assert span < 1.0
    assert all(f.alive for f in alive), [f.error for f in alive]
    lines = {id(f): f.echoed for f in alive}
    time.sleep(0.5)
    assert all(f.echoed > lines[id(f)] for f in alive)
    for f in flows:
        f.stop()
    gws["gw2"].stop()
