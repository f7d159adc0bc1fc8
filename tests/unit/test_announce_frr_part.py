"""gatelb's part of an FRR it does not run (--frr-vty-socket): what it adds for a plan (golden),
the vtysh commands between two plans, and the checks of the user's running configuration."""

from __future__ import annotations

import os
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path

import pytest

from gatelb.announce import frr_external
from gatelb.announce.decide import BGPPlan, decide
from gatelb.announce.frr import FrrError
from gatelb.announce.frr_part import (
    EXTERNAL_TAG,
    Part,
    adopting,
    changes,
    check_plan,
    check_running,
    parse_running,
    part,
)

from .test_announce_decide import GOLDEN, config_objects, service, state

# Two peers (IPv4, IPv6) that get their family's prefixes alike; localPref and communities for all
CONFIG = """\
apiVersion: gatelb.io/v1alpha1
kind: BGPPeer
metadata: {name: upstream}
spec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.129}
---
apiVersion: gatelb.io/v1alpha1
kind: BGPPeer
metadata: {name: upstream6}
spec: {myASN: 64512, peerASN: 64500, peerAddress: "2001:db8:1::1"}
---
apiVersion: gatelb.io/v1alpha1
kind: BGPAdvertisement
metadata: {name: public}
spec: {ipAddressPools: [public], localPref: 200, communities: ["65535:65282", "large:64512:1:2"]}
---
apiVersion: gatelb.io/v1alpha1
kind: BGPAdvertisement
metadata: {name: other}
spec: {ipAddressPools: [other]}
"""
# What FRR 8.4 shows for a user's configuration with gatelb's part in it (taken from the netns test)
RUNNING = """\
Building configuration...

Current configuration:
!
frr version 8.4.4
frr defaults traditional
hostname gw1
service integrated-vtysh-config
!
router bgp 64512
 bgp router-id 192.0.2.130
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor 192.0.2.129 remote-as 64500
 neighbor 192.0.2.129 bfd
 neighbor 2001:db8:1::1 remote-as 64500
 !
 address-family ipv4 unicast
  network 198.18.7.0/24
  network 203.0.113.70/32 route-map gatelb-net-00000001
  neighbor 192.0.2.129 route-map user-out out
 exit-address-family
exit
!
router bgp 64999 vrf blue
 address-family ipv4 unicast
  network 203.0.113.99/32
 exit-address-family
exit
!
route-map gatelb-net-00000001 permit 10
 set tag 64179
exit
!
route-map user-out permit 10
 match tag 64179
 set local-preference 50
exit
!
end
"""


def plan_for(services: list[tuple[str, str]], config: str = CONFIG) -> BGPPlan:
    plan, errors = decide(state([service(n, v) for n, v in services], config_objects(config)), "gw1")
    assert errors == [] and plan.bgp is not None
    return plan.bgp


WEB_API = [("web", "203.0.113.10"), ("api", "203.0.113.12"), ("v6", "2001:db8:100::10"), ("agg", "203.0.113.70")]


def test_golden_part_and_its_first_commands() -> None:
    """The lines gatelb adds (as FRR shows them) and the vtysh run that adds them to an FRR
    that has none; regenerate with GATELB_REGEN_GOLDEN=1 after an intended change."""
    new = part(plan_for(WEB_API), 64512)
    text = "\n".join(new.lines()) + "\n----\n" + "\n".join(changes(Part(64512), new)) + "\n"
    path = GOLDEN / "announce-gw1-external.frr"
    if os.environ.get("GATELB_REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
    assert all(s.startswith(" set ") for sets in new.maps.values() for s in sets)
    assert {sets[0] for sets in new.maps.values()} == {f" set tag {EXTERNAL_TAG}"}


def test_a_withdrawal_is_one_no_network_and_a_return_one_network() -> None:
    full = part(plan_for(WEB_API), 64512)
    less = part(plan_for([s for s in WEB_API if s[0] != "api"]), 64512)
    assert changes(full, less) == ["configure terminal", "router bgp 64512", "address-family ipv4 unicast",
                                   "no network 203.0.113.12/32", "exit-address-family", "exit", "end"]
    name = full.networks[("ipv4", "203.0.113.12/32")]
    assert changes(less, full) == ["configure terminal", "router bgp 64512", "address-family ipv4 unicast",
                                   f"network 203.0.113.12/32 route-map {name}", "exit-address-family", "exit", "end"]
    assert changes(full, full) == []


def test_a_new_attribute_group_adds_its_route_map_first_and_an_unused_one_goes_last() -> None:
    only_agg = part(plan_for([("agg", "203.0.113.70")]), 64512)
    only_web = part(plan_for([("web", "203.0.113.10")]), 64512)
    (old_map,), (new_map,) = only_agg.maps, only_web.maps
    assert old_map != new_map
    assert changes(only_agg, only_web) == [
        "configure terminal",
        "router bgp 64512", "address-family ipv4 unicast", "no network 203.0.113.70/32", "exit-address-family", "exit",
        f"route-map {new_map} permit 10", f"set tag {EXTERNAL_TAG}", "set local-preference 200",
        "set community no-advertise additive", "set large-community 64512:1:2 additive", "exit",
        "router bgp 64512", "address-family ipv4 unicast", f"network 203.0.113.10/32 route-map {new_map}",
        "exit-address-family", "exit",
        f"no route-map {old_map}", "end"]


def test_the_standby_prepend_is_a_route_map_of_its_own() -> None:
    plan = plan_for([("web", "203.0.113.10")])
    standby = replace(plan, peers=tuple(replace(pp, prefixes=tuple((p, replace(a, as_path_prepend=3))
                                                                    for p, a in pp.prefixes)) for pp in plan.peers))
    active, passive = part(plan, 64512), part(standby, 64512)
    (name,) = passive.maps
    assert name not in active.maps
    assert " set as-path prepend 64512 64512 64512" in passive.maps[name]
    cmds = changes(active, passive)
    assert cmds.index(f"route-map {name} permit 10") < cmds.index(f"network 203.0.113.10/32 route-map {name}")


def test_peers_of_one_family_must_get_the_same_prefixes() -> None:
    two_v4 = CONFIG.replace('"2001:db8:1::1"', "192.0.2.140") + """---
apiVersion: gatelb.io/v1alpha1
kind: BGPAdvertisement
metadata: {name: only-upstream}
spec: {ipAddressPools: [other], peers: [upstream], localPref: 50}
"""
    assert check_plan(plan_for(WEB_API)) == []  # IPv4 and IPv6 peers: each gets its family's
    errors = [str(e) for e in check_plan(plan_for(WEB_API, two_v4))]
    assert errors == ["BGPPeer upstream6: with --frr-vty-socket (an FRR gatelb does not run) every BGPPeer of a "
                      "gateway gets the same prefixes with the same attributes, but 203.0.113.70/32 differ from "
                      "BGPPeer upstream's (the BGPAdvertisements' peers, localPref, communities)"]


def test_the_running_configuration_is_read_for_ours_and_theirs() -> None:
    r = parse_running(RUNNING)
    assert r.asn == 64512  # not the vrf instance's
    assert r.neighbors == {"192.0.2.129", "2001:db8:1::1"}
    assert not r.import_check
    assert r.ours == Part(64512, {"gatelb-net-00000001": (" set tag 64179",)},
                          {("ipv4", "203.0.113.70/32"): "gatelb-net-00000001"})
    assert r.theirs == {"198.18.7.0/24"}  # the vrf's network is not in the instance gatelb adds to
    # a restart adopts: from what is there to the plan, only the difference; a stop removes exactly ours
    new = part(plan_for([("agg", "203.0.113.70")]), 64512)
    (name,) = new.maps
    assert changes(r.ours, new) == [
        "configure terminal", "router bgp 64512", "address-family ipv4 unicast", "no network 203.0.113.70/32",
        "exit-address-family", "exit", f"route-map {name} permit 10", f"set tag {EXTERNAL_TAG}", "exit",
        "router bgp 64512", "address-family ipv4 unicast", f"network 203.0.113.70/32 route-map {name}",
        "exit-address-family", "exit", "no route-map gatelb-net-00000001", "end"]
    # route-maps read back may be zebra's alone (a restarted bgpd lost them): the ones in use are sent again
    assert changes(adopting(r.ours, r.ours), r.ours) == [
        "configure terminal", "route-map gatelb-net-00000001 permit 10", "set tag 64179", "exit", "end"]
    assert changes(r.ours, Part(64512)) == [
        "configure terminal", "router bgp 64512", "address-family ipv4 unicast", "no network 203.0.113.70/32",
        "exit-address-family", "exit", "no route-map gatelb-net-00000001", "end"]


def test_what_the_users_frr_must_have() -> None:
    plan = plan_for(WEB_API)
    where = "/var/run/frr"
    assert check_running(plan, parse_running(RUNNING), where) == []
    wrong_asn = RUNNING.replace("router bgp 64512\n", "router bgp 64513\n")
    assert [str(e) for e in check_running(plan, parse_running(wrong_asn), where)] == [
        "BGPPeer upstream: spec.myASN: 64512, but the FRR at /var/run/frr runs `router bgp 64513`",
        "BGPPeer upstream6: spec.myASN: 64512, but the FRR at /var/run/frr runs `router bgp 64513`"]
    no_neighbor = RUNNING.replace(" neighbor 2001:db8:1::1 remote-as 64500\n", "")
    assert [str(e) for e in check_running(plan, parse_running(no_neighbor), where)] == [
        "BGPPeer upstream6: spec.peerAddress: 2001:db8:1::1 is no neighbor of `router bgp 64512` in the FRR at "
        "/var/run/frr (the sessions are yours to configure there)"]
    checking = RUNNING.replace(" no bgp network import-check\n", "")
    assert "add `no bgp network import-check` to its `router bgp 64512`" in str(
        check_running(plan, parse_running(checking), where)[0])
    theirs = RUNNING.replace("  network 198.18.7.0/24\n", "  network 203.0.113.10/32\n")
    (err,) = check_running(plan, parse_running(theirs), where)
    assert "already originates 203.0.113.10/32 itself" in str(err)
    no_bgp = "\n".join(line for line in RUNNING.splitlines() if not line.startswith("router bgp 64512"))
    (err,) = check_running(plan, parse_running(no_bgp.replace("router bgp 64999 vrf blue", "!")), where)
    assert str(err).startswith("BGPPeer upstream: spec.myASN: the FRR at /var/run/frr has no `router bgp`")


def test_the_checks_run_on_every_change_and_a_refused_one_sends_nothing(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """ExternalFrr against a stand-in vtysh (a script: the running configuration, and a log of
    what it was sent); the real one is in tests/netns/test_announce_external_frr.py."""
    (tmp_path / "bgpd.vty").touch()
    (tmp_path / "running").write_text(RUNNING)
    vtysh = tmp_path / "vtysh"
    vtysh.write_text(f"""#!/bin/sh
case "$*" in
  *"show running-config"*) cat {tmp_path}/running ;;
  *"-c"*) ;;
  *) cat >> {tmp_path}/sent ;;
esac
""")
    vtysh.chmod(0o755)
    monkeypatch.setattr(frr_external, "VTYSH", str(vtysh))
    frr = frr_external.ExternalFrr(tmp_path, tmp_path / "frr-external.conf")
    plan = plan_for([("agg", "203.0.113.70")])
    assert frr.apply(plan)
    sent = (tmp_path / "sent").read_text()
    assert "network 203.0.113.70/32 route-map gatelb-net-" in sent
    assert "no route-map gatelb-net-00000001" in sent  # the leftover of a previous run, adopted and removed
    assert not frr.apply(plan)  # nothing changed: no vtysh run
    # a new VIP prefix the user originates already (their `network 198.18.7.0/24`): refused, nothing sent
    extra = (ip_network("198.18.7.0/24"), plan.peers[0].prefixes[0][1])
    theirs = replace(plan, peers=tuple(replace(pp, prefixes=(*pp.prefixes, extra)) if pp.prefixes else pp
                                       for pp in plan.peers))
    with pytest.raises(FrrError, match=r"already originates 198\.18\.7\.0/24 itself"):
        frr.apply(theirs)
    assert (tmp_path / "sent").read_text() == sent
    # stop: exactly what it added goes
    removed = frr.withdraw()
    assert set(removed.networks) == {("ipv4", "203.0.113.70/32")}
    assert (tmp_path / "sent").read_text()[len(sent):].splitlines() == [
        "configure terminal", "router bgp 64512", "address-family ipv4 unicast", "no network 203.0.113.70/32",
        "exit-address-family", "exit", *(f"no route-map {m}" for m in removed.maps), "end"]
    assert not (tmp_path / "frr-external.conf").exists()
