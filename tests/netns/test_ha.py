"""Active-standby with state sync, in network namespaces: the upstream router (FRR), a switch, two
gateways (`gatelb run --node gw1|gw2`, the same file), three backends whose default route is the
group's backend gateway; real keepalived (VRRP), real conntrackd (FTFW), real FRR on the gateways.

One scenario, in order: gw1 becomes active (it alone announces the VIP; it holds the backend
gateway), gw2 syncs and stands by; 20 held connections exchange a line every 100 ms and 5 UDP flows
(one socket each) a datagram every 50 ms while a paced client opens new connections; gw1 loses
power (links down, every process killed); the held connections and the UDP flows carry on through
gw2 (same connection: the backend echoes every line; the same backend for every datagram of a
flow; the backend still sees the client's address), new connections fail for under 1 s; gw1 comes
back: it syncs and stays standby (no preemption), and none of 10 connections opened through gw2
breaks. Then gw2 loses its uplink only (its LAN link and processes stay up): its priority falls
below gw1's, gw1 takes over and every connection and UDP flow carries on as after the power loss.
Then the router drops its BGP session with gw1 (gw1's link stays up): gw2 (no uplink) is worse
off, so gw1 stays active; gw2's uplink comes back: once its BGP session is up, gw2 takes over.
"""

from __future__ import annotations

import shutil
import time

import pytest

from gatelb.lab.bgp import GATEWAYS, ROUTER_BFDD, ROUTER_BGPD
from gatelb.lab.daemon import LabDaemon
from gatelb.lab.ha import CONFIG, DNS, UDP_PORT, WEB, Flow, HaLab
from gatelb.lab.running import RunningClient

from ..conftest import netns_unavailable

CONVERGE_S = 30.0


def wait_for(what: str, check: object, timeout: float, lab: HaLab) -> float:
    assert callable(check)
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not within {timeout} s\n{lab.router_vtysh('show ip bgp')}")
        time.sleep(0.01)
    return time.monotonic() - t0


def outage(attempts: list, t_fail: float) -> tuple[float, int]:  # type: ignore[type-arg]
    """The span from the first to the last failed attempt after `t_fail` (0 if none), and how many."""
    failed = [a.at for a in attempts if not a.ok and a.at is not None and a.at >= t_fail - 0.05]
    if not failed:
        return 0.0, 0
    return max(failed) - min(failed) + 0.05, len(failed)  # + the pacing interval


UDP_RATE = 20.0


def udp_flows(lab: HaLab, n: int, seconds: float) -> list[RunningClient]:
    """`n` UDP flows through the dnat VIP, each one socket (one conntrack entry), for `seconds`."""
    return [lab.start_client("udpflow", DNS, UDP_PORT, count=int(seconds * UDP_RATE), rate=UDP_RATE, timeout=0.4)
            for _ in range(n)]


def check_udp(flows: list[RunningClient], t_fail: float, what: str) -> tuple[float, int]:
    """Every flow kept one backend (its conntrack entry, NAT binding included, was committed on
    the new active: a fresh entry would pick a backend at random), the backends saw the client,
    and it answers again at the end. Returns the longest outage of a flow and the datagrams lost."""
    spans, lost = [], 0
    for i, running in enumerate(flows):
        attempts = list(running.result().attempts)
        ok = [a for a in attempts if a.ok]
        assert {a.backend for a in ok} and len({a.backend for a in ok}) == 1, (what, i, {a.backend for a in ok})
        assert {a.seen_source for a in ok} == {"192.0.2.10"}, (what, i)
        assert all(a.ok for a in attempts[-5:]), (what, i, [a.error for a in attempts[-5:]])
        assert any(a.ok and a.at is not None and a.at > t_fail + 1.0 for a in attempts), (what, i)
        span, failed = outage(attempts, t_fail)
        spans.append(span)
        lost += failed
    return max(spans), lost


@pytest.fixture(name="lab")
def ha_lab():  # type: ignore[no-untyped-def]
    if reason := netns_unavailable():
        pytest.skip(reason)
    for tool in ("vtysh", "keepalived", "conntrackd"):
        if shutil.which(tool) is None and not shutil.which(f"/usr/sbin/{tool}"):
            pytest.fail(f"{tool} is missing (./quickstart setup installs it)")
    with HaLab() as lab:
        lab.start_backends(http=None)
        lab.start_router(ROUTER_BGPD, ROUTER_BFDD)
        yield lab


def test_active_standby_power_loss_keeps_connections_and_return_breaks_nothing(lab: HaLab) -> None:
    gw1 = LabDaemon(lab, CONFIG, name="gw1", ns="gw1", extra_args=("--node", "gw1")).start()
    gw1.wait_event("ha-role", where=lambda e: e["role"] == "active", timeout=15)
    # until its BGP session is up gw1 has no upstream: a healthy gw2 would rightly take over
    wait_for("gw1's BGP session", lambda: gw1.status()["info"]["ha"]["upstream"]["bgpEstablished"] is True,
             CONVERGE_S, lab)
    gw2 = LabDaemon(lab, CONFIG, name="gw2", ns="gw2", extra_args=("--node", "gw2")).start()
    gw2.wait_event("ha-role", where=lambda e: e["role"] == "standby", timeout=15)
    # the router holds gw2's prepended path as its backup (no UPDATE needed at the failover)
    wait_for("gw2's BGP session", lambda: gw2.status()["info"]["ha"]["upstream"]["bgpEstablished"] is True,
             CONVERGE_S, lab)
    took = wait_for("the VIP via gw1 only", lambda: lab.router_next_hops(f"{WEB}/32") == {GATEWAYS["gw1"]},
                    CONVERGE_S, lab)
    print(f"active member's route at the router after {took:.2f} s")
    assert lab.holder() == {"gw1"}
    wait_for("gw2 BACKUP", lambda: gw2.status()["info"]["ha"]["vrrp"] == "BACKUP", 5.0, lab)
    status = gw2.status()["info"]["ha"]
    assert (status["role"], status["active"], status["members"]) == ("standby", "gw1", ["gw1", "gw2"])

    flows = [Flow(lab.hold(WEB, 80, timeout=5.0)).start() for _ in range(20)]
    udp = udp_flows(lab, 5, 9.0)
    assert {f.seen_source for f in flows} == {"192.0.2.10"}  # dnat: the backends see the client
    assert len({f.backend for f in flows}) == 3
    time.sleep(1.0)  # the state reaches gw2
    assert all(f.alive and f.echoed >= 5 for f in flows), [f.error for f in flows]
    assert gw2.status()["info"]["ha"]["sync"].get("external", 0) >= 25, gw2.status()["info"]["ha"]["sync"]

    paced = lab.start_client("tcp", WEB, 80, count=80, rate=20, timeout=0.5)
    time.sleep(1.0)
    t_fail = time.time()
    lab.power_off("gw1")
    gw2.wait_event("ha-role", after=t_fail, where=lambda e: e["role"] == "active", timeout=3)
    wait_for("the VIP via gw2", lambda: lab.router_next_hops(f"{WEB}/32") == {GATEWAYS["gw2"]}, 3.0, lab)
    time.sleep(2.0)  # the held connections keep exchanging through gw2
    result = paced.result()
    span, failed = outage(list(result.attempts), t_fail)
    kept = [f for f in flows if f.alive]
    commit = gw2.wait_event("ha-commit", after=t_fail)
    print(f"power loss: {len(kept)}/20 established kept (longest pause {max(f.max_gap_s for f in kept):.3f} s), "
          f"new connections failed for {span:.3f} s ({failed} of {len(result.attempts)} attempts); "
          f"commit of {commit['entries']} entries in {commit['commit_ms']} ms")
    became = gw2.wait_event("ha-role", after=t_fail, where=lambda e: e["role"] == "active")
    announced = gw2.wait_event("announce", after=t_fail)
    print(f"after the power loss: gw2 MASTER (role active, before its commit) at {became['wall_time'] - t_fail:.3f} s, "
          f"announced at {announced['wall_time'] - t_fail:.3f} s (FRR {announced['duration_ms']} ms)")
    assert len(kept) >= 19, [f.error for f in flows]
    assert span < 1.0, result.failures
    assert lab.holder() == {"gw2"}
    udp_span, udp_lost = check_udp(udp, t_fail, "power loss")
    print(f"power loss: 5/5 UDP flows kept their backend through gw2, longest gap {udp_span:.3f} s "
          f"({udp_lost} datagrams lost in all)")
    assert udp_span < 1.0
    lines_before = {id(f): f.echoed for f in kept}
    time.sleep(0.5)
    assert all(f.echoed > lines_before[id(f)] for f in kept)

    # gw1 returns: it syncs, stays standby, and breaks none of the connections opened through gw2
    fresh = [Flow(lab.hold(WEB, 80, timeout=5.0)).start() for _ in range(10)]
    t_back = time.time()
    lab.reboot("gw1")
    gw1 = LabDaemon(lab, CONFIG, name="gw1", ns="gw1", extra_args=("--node", "gw1")).start()
    synced = gw1.wait_event("ha-synced", after=t_back, timeout=10)
    gw1.wait_event("ha-role", after=t_back, where=lambda e: e["role"] == "standby", timeout=10)
    time.sleep(2.0)
    assert synced["answered"] is True and synced["external"] >= 10, synced
    assert not gw1.events("ha-role", after=t_back) or all(e["role"] != "active"
                                                          for e in gw1.events("ha-role", after=t_back))
    broken = [f.error for f in fresh if not f.alive]
    print(f"return of gw1: {len(broken)} of 10 connections broken; gw1 synced {synced['external']} entries "
          f"in {synced['duration_ms']} ms")
    assert broken == []
    assert lab.holder() == {"gw2"}
    assert lab.router_next_hops(f"{WEB}/32") == {GATEWAYS["gw2"]}
    assert gw1.status()["info"]["ha"]["active"] == "gw2"

    # gw2 loses its uplink only: it falls below gw1 (track_interface, then its BGP session), gw1
    # takes over with the state it synced on its return
    wait_for("gw1's BGP session", lambda: gw1.status()["info"]["ha"]["upstream"]["bgpEstablished"] is True,
             CONVERGE_S, lab)
    udp = udp_flows(lab, 3, 6.0)
    paced = lab.start_client("tcp", WEB, 80, count=60, rate=20, timeout=0.5)
    time.sleep(1.0)
    held = [f for f in [*flows, *fresh] if f.alive]
    t_up = time.time()
    lab.uplink_down("gw2")
    took_over = gw1.wait_event("ha-role", after=t_up, where=lambda e: e["role"] == "active", timeout=3)
    wait_for("the VIP via gw1", lambda: lab.router_next_hops(f"{WEB}/32") == {GATEWAYS["gw1"]}, 3.0, lab)
    time.sleep(2.0)
    result = paced.result()
    span, failed = outage(list(result.attempts), t_up)
    kept = [f for f in held if f.alive]
    udp_span, udp_lost = check_udp(udp, t_up, "uplink loss")
    print(f"uplink loss: gw1 active at {took_over['wall_time'] - t_up:.3f} s; {len(kept)}/{len(held)} established "
          f"kept (longest pause {max(f.max_gap_s for f in kept):.3f} s), new connections failed for {span:.3f} s "
          f"({failed} of {len(result.attempts)}); 3/3 UDP flows kept their backend, longest gap {udp_span:.3f} s")
    assert len(kept) == len(held), [f.error for f in held]
    assert span < 1.0, result.failures
    assert lab.holder() == {"gw1"}
    lines_before = {id(f): f.echoed for f in kept}
    time.sleep(0.5)
    assert all(f.echoed > lines_before[id(f)] for f in kept)
    standby = gw2.status()["info"]["ha"]
    assert standby["role"] in ("syncing", "standby") and standby["upstream"]["uplinks"] == ["up0"], standby

    # the router drops its BGP session with gw1 (gw1's link stays up): gw1 has no upstream, but gw2
    # (no uplink) is worse off, so gw1 keeps the role
    t_bgp = time.time()
    lab.router_vtysh("configure terminal", "router bgp 64500", f"neighbor {GATEWAYS['gw1']} shutdown")
    wait_for("gw1 without BGP", lambda: gw1.status()["info"]["ha"]["upstream"]["bgpEstablished"] is False, 5.0, lab)
    time.sleep(0.5)
    prio = {name: g.status()["info"]["ha"]["priority"] for name, g in (("gw1", gw1), ("gw2", gw2))}
    print(f"gw1's BGP session down, gw2's uplink down: gw1 stays active (priorities {prio})")
    assert all(e["role"] == "active" for e in gw1.events("ha-role", after=t_bgp)), gw1.events("ha-role", after=t_bgp)
    assert lab.holder() == {"gw1"} and prio["gw1"] > prio["gw2"], prio
    # gw2's uplink comes back: once its BGP session is up it is better off than gw1 and takes over
    t_back = time.time()
    lab.run("gw2", ["sh", "-c", "ip link set up0 up; ip route replace default via 192.0.2.129"])
    took_over = gw2.wait_event("ha-role", after=t_back, where=lambda e: e["role"] == "active", timeout=15)
    upstream = gw2.wait_event("ha-upstream", after=t_back, where=lambda e: e["bgp_established"])
    print(f"gw2's uplink back: its BGP session up at {upstream['wall_time'] - t_back:.2f} s, active at "
          f"{took_over['wall_time'] - t_back:.2f} s (gw1 has no BGP session)")
    assert took_over["wall_time"] >= upstream["wall_time"]  # the BGP penalty, not the link, held it back
    wait_for("gw1 standby", lambda: gw1.status()["info"]["ha"]["role"] in ("syncing", "standby"), 5.0, lab)
    assert lab.holder() == {"gw2"}
    for f in [*flows, *fresh]:
        f.stop()
    gw1.stop()
    gw2.stop()
