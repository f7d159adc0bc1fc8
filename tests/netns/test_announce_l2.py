"""L2 announcements through real keepalived (VRRP): a client on the same segment as two gateways
(`gatelb run --node gw1|gw2`, the same file), the VIPs in the client's own subnet.

One scenario, in order (each step depends on the state the previous one left):
the VIPs are spread (web and web6 owned by gw1, api by gw2); only the owner's MAC answers ARP
(arping) and NDP (ndisc6) for a VIP; the client reaches the backends through every VIP; gatelb
status says where each VIP is owned; a gateway that can no longer serve (its backend link down,
health checks fail) hands its VIPs over and takes them back when it can again; SIGTERM hands over
at once and a restarted gateway takes its own VIPs back; the owner's power
loss moves its VIPs to the other within 1 s, the client's neighbour entry follows (gratuitous
ARP) and its new connections succeed again.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator

import pytest

from gatelb.lab.daemon import LabDaemon
from gatelb.lab.l2 import API, CONFIG, UP, WEB, WEB6, L2Lab

from ..conftest import netns_unavailable

START_S = 20.0


@pytest.fixture(name="lab")
def l2_lab() -> Iterator[L2Lab]:
    if reason := netns_unavailable():
        pytest.skip(reason)
    if shutil.which("keepalived") is None:
        pytest.fail("keepalived is not installed (apt-get install keepalived; ./quickstart setup does)")
    with L2Lab(backends=2) as lab:
        lab.start_backends(udp=None, http=None)
        yield lab


def test_one_owner_answers_arp_and_ndp_and_power_loss_moves_the_vips(lab: L2Lab) -> None:
    gws = {g: LabDaemon(lab, CONFIG, name=g, ns=g, extra_args=("--node", g)) for g in UP}
    for d in gws.values():
        d.start()
    macs = {g: lab.mac(g) for g in UP}
    took = lab.wait_holder(WEB, "gw1", START_S)
    lab.wait_holder(API, "gw2", 5.0)  # spread: one instance preferred by each member
    lab.wait_holder(WEB6, "gw1", 5.0)
    print(f"VIPs owned {took:.2f} s after start")

    # exactly one MAC answers ARP (IPv4) and NDP (IPv6) for each VIP
    assert set(lab.arp_answers(WEB)) == {macs["gw1"]}, lab.arp_answers(WEB)
    assert set(lab.arp_answers(API)) == {macs["gw2"]}
    ndp = lab.ndp_answers(WEB6)
    assert ndp and set(ndp) == {macs["gw1"]}, ndp

    for vip in (WEB, API, WEB6):
        result = lab.connect_many("tcp", vip, 80, count=20)
        assert result.ok == 20, result
        assert result.backends == {"be1", "be2"}

    # gatelb status: where each VIP is owned
    doc = gws["gw1"].status()
    l2 = doc["info"]["l2"]
    assert WEB in l2["owned"] and WEB6 in l2["owned"] and API not in l2["owned"], l2
    # ... and per load balancer: the interface, this gateway's VRRP state, the owner when it is us
    where = {lb["frontend"]["ip"]: lb["announced"] for lb in doc["loadBalancers"]}
    assert (where[WEB]["l2"]["interface"], where[WEB]["l2"]["state"], where[WEB]["l2"]["owner"]) == (
        "up0", "MASTER", "gw1"), where[WEB]
    assert (where[API]["l2"]["state"], where[API]["l2"]["owner"], where[API]["bgp"]) == ("BACKUP", None, [])
    assert API in gws["gw2"].status()["info"]["l2"]["owned"]

    # gw1 can no longer serve (its backend link down: every check fails): its VIPs go to gw2
    t0 = time.monotonic()
    lab.run("gw1", ["ip", "link", "set", "lan0", "down"])
    moved = lab.wait_holder(WEB, "gw2", 3.0)
    print(f"owner's backends unreachable -> VIP moved: {time.monotonic() - t0:.3f} s")
    assert moved < 1.5  # a 400 ms detection window, then one VRRP takeover
    lab.wait_holder(WEB6, "gw2", 1.0)
    assert lab.connect_many("tcp", WEB, 80, count=10).ok == 10
    lab.run("gw1", ["ip", "link", "set", "lan0", "up"])
    lab.wait_holder(WEB, "gw1", 5.0)  # healthy again: it takes its own instance back
    lab.wait_holder(WEB6, "gw1", 5.0)
    assert lab.connect_many("tcp", WEB, 80, count=10).ok == 10
    assert lab.client_neighbour(WEB) == macs["gw1"]

    # SIGTERM: gw2's keepalived stops with priority-0 adverts, gw1 takes api over at once; a new
    # gw2 takes its own instance back (preemption)
    t0 = time.monotonic()
    gws["gw2"].signal(signal.SIGTERM)
    lab.wait_holder(API, "gw1", 1.0)
    print(f"SIGTERM -> VIP held by the other: {time.monotonic() - t0:.3f} s")
    assert gws["gw2"].wait(timeout=10) == 0, gws["gw2"].log_text()[-3000:]
    assert gws["gw2"].events("keepalived-stopped")
    gws["gw2"] = LabDaemon(lab, CONFIG, name="gw2-again", ns="gw2", extra_args=("--node", "gw2")).start()
    lab.wait_holder(API, "gw2", 5.0)
    assert lab.connect_many("tcp", API, 80, count=10).ok == 10

    # gw1 loses power: gw2 takes web over within 1 s, the client follows its gratuitous ARP
    t0 = time.monotonic()
    lab.power_off("gw1")
    took = lab.wait_holder(WEB, "gw2", 1.0)
    print(f"power loss -> VIP held by gw2: {took:.3f} s")
    served = None
    while time.monotonic() - t0 < 3.0:
        if lab.connect_many("tcp", WEB, 80, count=1, timeout=0.3).ok == 1:
            served = time.monotonic() - t0
            break
    assert served is not None, "no connection through the VIP after the owner's power loss"
    print(f"power loss -> new connection served: {served:.3f} s (client launch included)")
    assert lab.client_neighbour(WEB) == macs["gw2"]
    result = lab.connect_many("tcp", WEB, 80, count=20)
    assert result.ok == 20, result
    lab.wait_holder(WEB6, "gw2", 1.0)
    assert lab.connect_many("tcp", WEB6, 80, count=10).ok == 10
    assert set(lab.ndp_answers(WEB6)) == {macs["gw2"]}
    assert gws["gw2"].events("l2-state")
