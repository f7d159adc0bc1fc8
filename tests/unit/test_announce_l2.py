"""The L2 decision (gatelb.announce.l2: which VIPs on which interface, in which VRRP instance, with
which priority on which member) and keepalived's rendered configuration (golden file)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from gatelb.announce.decide import L2Claim, decide, group_of
from gatelb.announce.keepalived import parse_notify
from gatelb.announce.keepalived_config import render, tracks
from gatelb.announce.l2 import FAULT, Link, plan_l2
from gatelb.model import (
    AddressRange,
    Backend,
    GatewayGroup,
    GatewayMember,
    IPPool,
    L2Advertisement,
    LoadBalancer,
    Protocol,
    Service,
    SyncedState,
)
from gatelb.sources.file.loader import collect_text

GOLDEN = Path(__file__).parent / "golden"
ip = ipaddress.ip_address
GROUP = GatewayGroup("edge", "lan0", tuple(GatewayMember(f"gw{i}", ip(f"198.51.100.{i}")) for i in (1, 2, 3)))
LAN = L2Advertisement("lan")
LINKS = {
    "lo": Link("lo", (ipaddress.ip_interface("127.0.0.1/8"),)),
    "up0": Link("up0", (ipaddress.ip_interface("192.0.2.130/24"), ipaddress.ip_interface("2001:db8:1::130/64"),
                        ipaddress.ip_interface("192.0.2.201/32"))),  # a VIP this member holds
    "lan0": Link("lan0", (ipaddress.ip_interface("198.51.100.1/24"),)),
}


def claims(*vips: str, servable: tuple[str, ...] | None = None, adv: str = "lan",
           interfaces: tuple[str, ...] = ()) -> list[L2Claim]:
    return [L2Claim(ip(v), interfaces, adv, servable is None or v in servable) for v in vips]


def test_vips_are_spread_over_the_members_one_instance_each_with_rotated_priorities() -> None:
    vips = [f"192.0.2.{200 + i}" for i in range(6)]
    plans = {n: plan_l2(claims(*vips), GROUP, {"lan": LAN}, n, LINKS) for n in ("gw1", "gw2", "gw3")}
    assert all(errors == [] for _, errors in plans.values())
    gw1 = plans["gw1"][0]
    # the interface whose subnet holds the VIP; VIP v in instance int(v) % 3, VRIDs 1-3
    assert [(i.name, i.interface, i.vrid, [str(v) for v in i.vips]) for i in gw1.instances] == [
        ("gatelb-up0-v4-1", "up0", 1, ["192.0.2.202", "192.0.2.205"]),
        ("gatelb-up0-v4-2", "up0", 2, ["192.0.2.200", "192.0.2.203"]),
        ("gatelb-up0-v4-3", "up0", 3, ["192.0.2.201", "192.0.2.204"]),
    ]
    # every member computes the same instances; each is the preferred owner (254) of exactly one
    for n, (plan, _) in plans.items():
        assert [(i.name, i.vips) for i in plan.instances] == [(i.name, i.vips) for i in gw1.instances]
        top = [i.name for i in plan.instances if i.priority == 254]
        assert len(top) == 1 and plan.instances[[i.name for i in plan.instances].index(top[0])].preferred == n
    by_vrid = {vrid: sorted((plans[n][0].instances[vrid - 1].priority, n) for n in plans) for vrid in (1, 2, 3)}
    assert by_vrid[1] == [(252, "gw3"), (253, "gw2"), (254, "gw1")]
    assert by_vrid[2] == [(252, "gw1"), (253, "gw3"), (254, "gw2")]  # gw3 is next in line after gw2
    assert all(i.track == 0 for i in gw1.instances)


def test_adding_a_vip_moves_no_other_vip() -> None:
    before, _ = plan_l2(claims("192.0.2.200", "192.0.2.201", "192.0.2.202"), GROUP, {"lan": LAN}, "gw1", LINKS)
    after, _ = plan_l2(claims("192.0.2.200", "192.0.2.201", "192.0.2.202", "192.0.2.210"), GROUP, {"lan": LAN},
                       "gw1", LINKS)
    where = {v: i.vrid for i in before.instances for v in i.vips}
    assert all(where[v] == i.vrid for i in after.instances for v in i.vips if v in where)


def test_unservable_vips_lower_the_priority_and_none_servable_is_a_fault() -> None:
    plan, _ = plan_l2(claims("192.0.2.201", "192.0.2.204", "192.0.2.202", servable=("192.0.2.201",)),
                      GROUP, {"lan": LAN}, "gw1", LINKS)
    inst = {i.vrid: i for i in plan.instances}
    assert inst[3].track == -3 and inst[3].unservable == (ip("192.0.2.204"),)  # 3 members: -3 per VIP
    assert inst[1].track == FAULT  # its only VIP has no backend up here: step down
    # a member serving more of an instance's VIPs outbids the worst-ranked one serving all
    assert inst[3].priority + inst[3].track < 254 - 2


def test_families_interfaces_and_member_sets() -> None:
    only12 = L2Advertisement("pair", nodes=("gw1", "gw2"), interfaces=("lan0",))
    plan, errors = plan_l2([*claims("192.0.2.201", "2001:db8:1::10"),
                            *claims("203.0.113.5", adv="pair", interfaces=("lan0",))],
                           GROUP, {"lan": LAN, "pair": only12}, "gw1", LINKS)
    assert errors == []
    # member sets sorted: (gw1, gw2) gets VRIDs 1-2, (gw1, gw2, gw3) 3-5; VRIDs count per family
    assert {(i.name, i.vrid, i.members) for i in plan.instances} == {
        ("gatelb-lan0-v4-2", 2, ("gw1", "gw2")),
        ("gatelb-up0-v4-5", 5, ("gw1", "gw2", "gw3")),
        ("gatelb-up0-v6-4", 4, ("gw1", "gw2", "gw3")),  # the interface of its /64
    }
    # gw3 is not in `pair`: it does not run that instance
    plan3, _ = plan_l2([*claims("203.0.113.5", adv="pair", interfaces=("lan0",))], GROUP,
                       {"lan": LAN, "pair": only12}, "gw3", LINKS)
    assert plan3.empty


def test_an_interface_that_does_not_exist_is_an_error_naming_the_object_and_field() -> None:
    adv = L2Advertisement("lan", interfaces=("up0", "eth9"))
    plan, errors = plan_l2(claims("192.0.2.201", interfaces=("up0", "eth9")), GROUP, {"lan": adv}, "gw1", LINKS)
    assert plan.empty
    assert [str(e) for e in errors] == ["L2Advertisement lan: spec.interfaces[1]: no interface 'eth9' on gateway gw1"]
    _, errors = plan_l2(claims("203.0.113.9"), GROUP, {"lan": LAN}, "gw1", LINKS)
    assert [str(e) for e in errors] == [
        "L2Advertisement lan: spec.interfaces: 203.0.113.9 is on no subnet of gateway gw1's interfaces "
        "(lan0, lo, up0): name the interface"]


CONFIG = """\
apiVersion: gatelb.io/v1alpha1
kind: L2Advertisement
metadata: {name: lan}
spec: {ipAddressPools: [lan]}
"""
GROUP_DOC = """\
---
apiVersion: gatelb.io/v1alpha1
kind: GatewayGroup
metadata: {name: edge}
spec: {interface: lan0, members: [{name: gw1, address: 198.51.100.1}, {name: gw2, address: 198.51.100.2}]}
"""
POOLS = (IPPool("lan", (AddressRange(ip("192.0.2.200"), ip("192.0.2.215")),)),)


def state(text: str, services: list[Service]) -> SyncedState:
    out = collect_text(text)
    assert not out.errors, [str(e) for e in out.errors]
    return SyncedState(generation=1, load_balancers={s.name: LoadBalancer(s.name, 80) for s in services}, origins={},
                       addresses={s.name: s.vip for s in services}, pools=POOLS,
                       pool_of={s.name: "lan" for s in services}, services={s.name: s for s in services},
                       errors={}, config=dict(out.config))


def svc(name: str, vip: str, up: bool = True) -> Service:
    return Service(name, ip(vip), Protocol.TCP, 80, (Backend(ip("198.51.100.11"), 8080),) if up else ())


def test_decide_claims_every_active_vip_with_whether_it_can_be_served() -> None:
    st = state(CONFIG + GROUP_DOC, [svc("web", "192.0.2.200"), svc("down", "192.0.2.201", up=False)])
    plan, errors = decide(st, "gw1")
    assert errors == []
    assert [(str(c.vip), c.servable) for c in plan.l2] == [("192.0.2.200", True), ("192.0.2.201", False)]
    assert group_of(st.config_of(GatewayGroup).values(), "gw1") == st.config_of(GatewayGroup)["edge"]


def test_l2_without_a_gateway_group_is_an_error() -> None:
    _, errors = decide(state(CONFIG, [svc("web", "192.0.2.200")]), "gw1")
    assert [str(e) for e in errors] == [
        "L2Advertisement lan: gateway gw1 is in no GatewayGroup: L2 needs the group to elect one owner per VIP "
        "(add a GatewayGroup listing gw1 among spec.members, or name the node with --node)"]


def test_rendered_keepalived_configuration_matches_the_golden_file(tmp_path: Path) -> None:
    two = GatewayGroup("edge", "lan0", GROUP.members[:2])
    plan, errors = plan_l2([*claims("192.0.2.200", "192.0.2.201", "192.0.2.202", "192.0.2.203",
                                    servable=("192.0.2.200", "192.0.2.201", "192.0.2.202")),
                            *claims("2001:db8:1::10")], two, {"lan": LAN}, "gw1", LINKS)
    assert errors == []
    directory = Path("/var/lib/gatelb/keepalived")
    text = render(plan, "gw1", directory)
    golden = GOLDEN / "announce-gw1.keepalived"
    if os.environ.get("GATELB_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()
    assert tracks(plan, directory) == {
        directory / "track" / "gatelb-up0-v4-1": "0\n",
        directory / "track" / "gatelb-up0-v4-2": "-2\n",  # 192.0.2.203 has no backend up here
        directory / "track" / "gatelb-up0-v6-1": "0\n",
    }


@pytest.mark.parametrize(("line", "parsed"), [
    ('INSTANCE "gatelb-up0-v4-1" MASTER 254\n', ("gatelb-up0-v4-1", "MASTER", 254)),
    ('INSTANCE "gatelb-up0-v4-1" FAULT 0', ("gatelb-up0-v4-1", "FAULT", 0)),
    ('GROUP "g" MASTER 0', None),
    ("garbage", None),
])
def test_notify_fifo_lines(line: str, parsed: tuple[str, str, int] | None) -> None:
    assert parse_notify(line) == parsed
