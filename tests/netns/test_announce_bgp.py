"""BGP announcements through real FRR: two gateways (`gatelb run --node gw1|gw2`, the same file)
peer with an upstream router (FRR, configured by the test) behind a switch namespace.

One scenario, in order (each step depends on the state the previous one left):
both gateways are ECMP next hops for a VIP; a client behind the router reaches the backends; a
disabled L4LB is never announced; a VIP whose backends are all down is withdrawn and comes back;
a gateway's power loss is noticed by the router through BFD within 1 s and new connections carry
on via the other; SIGTERM withdraws (the router is told at once, by a notification).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from gatelb.lab.bgp import CONFIG, GATEWAYS, OFF, ROUTER, SOLO, WEB, BgpLab
from gatelb.lab.daemon import LabDaemon

CONVERGE_S = 30.0  # first sessions: FRR start, connect-retry 1 s, BGP open, BFD up


def wait_for(what: str, check: Callable[[], bool], timeout: float, lab: BgpLab) -> float:
    """Poll `check` every 10 ms; the seconds it took. Fails with the router's view after `timeout`."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not within {timeout} s\n"
                        f"{lab.router_vtysh('show ip bgp summary')}\n{lab.router_vtysh('show ip bgp')}")
        time.sleep(0.01)
    return time.monotonic() - t0


def announced(daemon: LabDaemon) -> dict[str, Any]:
    """`gatelb status -o json`: each load balancer's BGP announcements."""
    return {lb["name"]: lb["announced"]["bgp"] for lb in daemon.status()["loadBalancers"]}


def test_bgp_ecmp_health_withdrawal_bfd_failover_and_sigterm(bgp_lab: BgpLab) -> None:
    lab = bgp_lab
    gws = {g: LabDaemon(lab, CONFIG, name=g, ns=g, extra_args=("--node", g)) for g in GATEWAYS}
    for d in gws.values():
        d.start()
    both = set(GATEWAYS.values())
    took = wait_for("both gateways as ECMP next hops of the VIP", lambda: lab.router_next_hops(f"{WEB}/32") == both,
                    CONVERGE_S, lab)
    print(f"ECMP route after {took:.2f} s")
    assert lab.router_next_hops(f"{SOLO}/32") == both

    # a client behind the router reaches both backends through the VIP
    result = lab.connect_many("tcp", WEB, 80, count=40)
    assert result.ok == 40, result
    assert result.backends == {"be1", "be2"}

    # all backends of `solo` down: withdrawn by both gateways; back when it is up again
    t_kill = time.time()
    lab.kill_backend(1)
    gone = wait_for("solo withdrawn", lambda: not lab.router_next_hops(f"{SOLO}/32"), 5.0, lab)
    print(f"all backends down -> withdrawn at the router: {gone:.3f} s")
    assert lab.router_next_hops(f"{WEB}/32") == both  # web still has be2
    down_event = gws["gw1"].wait_event("announce", after=t_kill, where=lambda e: f"{SOLO}/32" in e["withdrawn"])
    assert down_event["prefixes"] == 1
    # gatelb status: per load balancer where it is announced and how; the session metrics
    wait_for("status: web announced to an Established peer with BFD up",
             lambda: announced(gws["gw1"])["web"] == [{"peer": "upstream", "prefix": f"{WEB}/32", "address": ROUTER,
                                                       "session": "Established", "bfd": "up"}], 10.0, lab)
    where = announced(gws["gw1"])
    assert where["solo"] == [] and where["disabled"] == []
    metrics = lab.run("gw1", [sys.executable, "-c", "import urllib.request; print(urllib.request.urlopen("
                              "'http://127.0.0.1:9469/metrics').read().decode())"]).stdout
    assert f'gatelb_bgp_session_up{{address="{ROUTER}",peer="upstream"}} 1.0' in metrics
    assert f'gatelb_bfd_session_up{{address="{ROUTER}",peer="upstream"}} 1.0' in metrics
    lab.start_backend(1)
    wait_for("solo announced again", lambda: lab.router_next_hops(f"{SOLO}/32") == both, 5.0, lab)

    # gw1 loses power: the router drops it through BFD, new connections go via gw2
    t0 = time.monotonic()
    lab.power_off("gw1")
    wait_for("gw1 dropped by BFD", lambda: lab.router_next_hops(f"{WEB}/32") == {GATEWAYS["gw2"]}, 1.0, lab)
    print(f"power loss -> route converged: {time.monotonic() - t0:.3f} s")
    result = lab.connect_many("tcp", WEB, 80, count=20)
    assert result.ok == 20, result

    # the disabled L4LB was never announced
    assert f"{OFF}/32" not in lab.router_vtysh("show ip bgp")

    # SIGTERM: gw2 withdraws first (a Cease notification: at once, not after BFD or the hold time)
    # (BFD's admin-down or the Cease, whichever the router reads first: both are sent before FRR stops)
    t0 = time.monotonic()
    gws["gw2"].signal(signal.SIGTERM)
    wait_for("gw2 withdrawn on SIGTERM", lambda: not lab.router_next_hops(f"{WEB}/32"), 1.0, lab)
    print(f"SIGTERM -> withdrawn at the router: {time.monotonic() - t0:.3f} s")
    assert gws["gw2"].wait(timeout=10) == 0, gws["gw2"].log_text()[-3000:]
    neighbor = lab.router_vtysh(f"show ip bgp neighbors {GATEWAYS['gw2']}")
    assert "Notification received (Cease" in neighbor or "BFD down received" in neighbor, neighbor
    assert gws["gw2"].events("withdrawn")
