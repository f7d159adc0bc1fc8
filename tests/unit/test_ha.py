"""Active-standby groups: the GatewayGroup fields and their errors, the role machine, the rendered
conntrackd / keepalived / guard files (golden), the conntrackd statistics parser."""

from __future__ import annotations

import ipaddress
import os
import random
from pathlib import Path

import pytest

from gatelb.announce import guard
from gatelb.announce.conntrackd import parse_stats
from gatelb.announce.conntrackd_config import render as render_conntrackd
from gatelb.announce.decide import L2Claim
from gatelb.announce.ha import Action, Member, Role, start, sync_lost, synced, vrrp
from gatelb.announce.ha_control import ha_instance
from gatelb.announce.keepalived_config import ACTIVE_BONUS, HA_PRIORITIES, UPSTREAM_WEIGHT, ha_priority
from gatelb.announce.keepalived_config import render as render_keepalived
from gatelb.announce.l2 import EMPTY_L2, Link
from gatelb.model import GatewayGroup, ValidationErrors
from gatelb.sources.file.loader import collect_text, load_text

GOLDEN = Path(__file__).parent / "golden"
ip = ipaddress.ip_address

GROUP_DOC = """\
apiVersion: gatelb.io/v1alpha1
kind: GatewayGroup
metadata: {name: edge}
spec:
  mode: active-standby
  interface: lan0
  members: [{name: gw1, address: 198.51.100.2}, {name: gw2, address: 198.51.100.3}]
  backendGateway: 198.51.100.1/24
  stateSync: true
"""


def group(doc: str = GROUP_DOC) -> GatewayGroup:
    out = collect_text(doc)
    assert not out.errors, [str(e) for e in out.errors]
    (obj,) = [o for o in out.config.values() if isinstance(o, GatewayGroup)]
    return obj


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("GATELB_REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_fields_parse() -> None:
    g = group()
    assert (g.mode, str(g.backend_gateway), g.state_sync, g.ha) == ("active-standby", "198.51.100.1/24", True, True)
    plain = group(GROUP_DOC.replace("  mode: active-standby\n", "").replace("  backendGateway: 198.51.100.1/24\n", "")
                  .replace("  stateSync: true\n", ""))
    assert (plain.mode, plain.backend_gateway, plain.state_sync, plain.ha) == ("", None, False, False)


@pytest.mark.parametrize("change, message", [
    (("mode: active-standby", "mode: hot"), "GatewayGroup edge: spec.mode: "),
    (("mode: active-standby", "mode: active-active"), "GatewayGroup edge: spec.backendGateway: active-active has "
                                                      "no active member to hold it"),
    (("  mode: active-standby\n", ""), "GatewayGroup edge: spec.backendGateway: needs spec.mode: active-standby"),
    (("198.51.100.1/24", "198.51.100.1"), "GatewayGroup edge: spec.backendGateway: expected an address with its "
                                         "prefix length"),
    (("198.51.100.1/24", "198.51.100.1/32"), "GatewayGroup edge: spec.backendGateway: '198.51.100.1/32': the prefix"),
    (("198.51.100.1/24", "198.51.100.2/24"), "GatewayGroup edge: spec.backendGateway: 198.51.100.2 is the address "
                                            "of member gw1"),
    (("198.51.100.1/24", "192.0.2.1/24"), "GatewayGroup edge: spec.backendGateway: 192.0.2.1/24 is not on the "
                                         "subnet of member gw1's address"),
    (("  backendGateway: 198.51.100.1/24\n", ""), "GatewayGroup edge: spec.backendGateway: active-standby needs it"),
    (("stateSync: true", "stateSync: 2"), "GatewayGroup edge: spec.stateSync: "),
    ((", {name: gw2, address: 198.51.100.3}]", "]"), "GatewayGroup edge: spec.members: active-standby needs exactly "
                                                     "2 members (got 1)"),
])
def test_errors_name_the_field(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ValidationErrors) as exc:
        load_text(GROUP_DOC.replace(*change))
    assert any(str(e).startswith(message) for e in exc.value.errors), str(exc.value)


def test_golden_conntrackd_configuration() -> None:
    golden("ha-gw1.conntrackd", render_conntrackd(group(), "gw1", Path("/var/lib/gatelb/conntrackd")))
    gw2 = render_conntrackd(group(), "gw2", Path("/var/lib/gatelb/conntrackd"))
    assert "IPv4_address 198.51.100.3\n" in gw2 and "IPv4_Destination_Address 198.51.100.2\n" in gw2


def test_golden_keepalived_ha_instance() -> None:
    links = {"lan0": Link("lan0", (ipaddress.ip_interface("198.51.100.2/24"),)),
             "up0": Link("up0", (ipaddress.ip_interface("192.0.2.130/26"),))}
    claims = [L2Claim(ip("192.0.2.140"), (), "lan", True)]
    inst = ha_instance(group(), "gw1", claims, links, [ip("192.0.2.129")])
    assert inst.addresses == ("198.51.100.1/24 dev lan0", "192.0.2.140/32 dev up0")
    assert (inst.uplinks, inst.bgp) == (("up0",), True)
    assert (inst.priority, ha_instance(group(), "gw2", claims, links).priority) == HA_PRIORITIES
    assert ha_instance(group(), "gw2", claims, links).vrid == inst.vrid  # both members agree
    golden("ha-gw1.keepalived", render_keepalived(EMPTY_L2, "gw1", Path("/var/lib/gatelb/keepalived"), inst))


def test_golden_guard() -> None:
    golden("ha-guard.nft", guard.render([ip("198.51.100.1"), ip("2001:db8:2::1"), ip("192.0.2.140")]))
    assert guard.removal() == "add table inet gatelb-ha\ndelete table inet gatelb-ha\n"


# -- the role machine ---------------------------------------------------------------------------


def test_start_is_guarded_ineligible_and_asks_for_the_state() -> None:
    m, actions = start(True)
    assert m.role is Role.SYNCING
    assert actions == [Action.GUARD, Action.WITHDRAW, Action.INELIGIBLE, Action.RESYNC]


def test_not_synced_never_becomes_active() -> None:
    m, _ = start(True)
    m, actions = vrrp(m, "MASTER")  # e.g. keepalived had not read the track file yet
    assert (m.role, actions) == (Role.SYNCING, [])
    m, actions = synced(m)
    assert (m.role, actions) == (Role.STANDBY, [Action.ELIGIBLE])


def test_takeover_commits_before_it_lets_traffic_in_and_announces() -> None:
    m, _ = synced(start(True)[0])
    m, actions = vrrp(m, "BACKUP")
    assert (m.role, actions) == (Role.STANDBY, [])
    m, actions = vrrp(m, "MASTER")
    assert m.role is Role.ACTIVE
    assert actions == [Action.HOLD, Action.COMMIT, Action.UNGUARD, Action.ANNOUNCE]


def test_demotion_releases_first_and_syncs_again() -> None:
    m, _ = vrrp(synced(start(True)[0])[0], "MASTER")
    m, actions = vrrp(m, "BACKUP")
    assert m.role is Role.SYNCING
    assert actions[:2] == [Action.WITHDRAW, Action.GUARD]
    assert actions[2:] == [Action.DEMOTE, Action.INELIGIBLE, Action.RESYNC]


def test_without_state_sync_no_commit_and_no_resync() -> None:
    m, actions = start(False)
    assert (m.role, actions) == (Role.STANDBY, [Action.GUARD, Action.WITHDRAW, Action.ELIGIBLE])
    m, actions = vrrp(m, "MASTER")
    assert actions == [Action.HOLD, Action.UNGUARD, Action.ANNOUNCE]
    assert vrrp(m, "FAULT")[1] == [Action.WITHDRAW, Action.GUARD, Action.ELIGIBLE]


def test_conntrackd_restart_resyncs_a_standby_but_not_the_active() -> None:
    standby, _ = synced(start(True)[0])
    m, actions = sync_lost(standby)
    assert (m.role, actions) == (Role.SYNCING, [Action.INELIGIBLE, Action.RESYNC])
    active, _ = vrrp(standby, "MASTER")
    assert sync_lost(active) == (active, [])


def _apply(m: Member, what: str) -> tuple[Member, list[Action]]:
    if what == "synced":
        return synced(m)
    if what == "lost":
        return sync_lost(m)
    return vrrp(m, what)


def test_invariants_over_random_histories() -> None:
    """Whatever keepalived reports in whatever order: active only while MASTER and synced; a
    commit always comes before the guard is lifted; leaving MASTER always withdraws and guards
    first; guard and announcements always end in a consistent pair."""
    rng = random.Random(7)
    for _ in range(2000):
        m, actions = start(rng.random() < 0.8)
        guarded, announcing, committed, track = True, False, False, "ineligible"
        for _ in range(rng.randrange(1, 12)):
            what = rng.choice(["MASTER", "BACKUP", "FAULT", "STOP", "synced", "lost"])
            was_active = m.active
            m, actions = _apply(m, what)
            if was_active and what in ("BACKUP", "FAULT", "STOP"):
                assert actions[:2] == [Action.WITHDRAW, Action.GUARD]
            for a in actions:
                if a is Action.COMMIT:
                    committed = True
                elif a is Action.UNGUARD:
                    assert committed or not m.state_sync
                    guarded = False
                elif a is Action.GUARD:
                    guarded, committed = True, False
                elif a in (Action.ANNOUNCE, Action.WITHDRAW):
                    announcing = a is Action.ANNOUNCE
                if a in (Action.HOLD, Action.ELIGIBLE, Action.INELIGIBLE):
                    track = str(a)
            if m.active:
                assert m.vrrp == "MASTER" and m.synced
            assert announcing == m.active and guarded == (not m.active)
            # the bonus exactly while active; the state-less start is eligible at once
            assert (track == "hold") == m.active
            if not m.active and m.state_sync:
                assert (track == "ineligible") == (m.role is Role.SYNCING)


def test_two_members_never_active_together_on_one_segment() -> None:
    """On a shared segment VRRP has one MASTER at a time (the other is BACKUP): replay VRRP's
    hand-overs, including a returning member, and check at most one machine is active."""
    ms = {n: synced(start(True)[0])[0] for n in ("gw1", "gw2")}
    history = [("gw1", "MASTER"), ("gw2", "BACKUP"), ("gw1", "STOP"), ("gw2", "MASTER"), ("gw1", "lost"),
               ("gw1", "BACKUP"), ("gw1", "MASTER"),  # not synced yet after its return: ignored
               ("gw1", "synced"), ("gw1", "BACKUP"), ("gw2", "FAULT"), ("gw1", "MASTER")]
    for name, what in history:
        ms[name], _ = _apply(ms[name], what)
        assert sum(m.active for m in ms.values()) <= 1, (name, what, ms)
    assert ms["gw1"].active and not ms["gw2"].active


STATS = """cache internal:
current active connections:	          20
connections created:		          20	failed:	           0

cache external:
current active connections:	           3
connections created:		           3	failed:	           0

traffic processed:
                   0 Bytes                         0 Pckts

UDP traffic (active device=lan0):
                  84 Bytes sent                  160 Bytes recv
                   2 Pckts sent                    3 Pckts recv
                   0 Error send                    0 Error recv
"""


def test_parse_stats() -> None:
    assert parse_stats(STATS) == {"internal": 20, "external": 3, "sent_bytes": 84, "recv_bytes": 160,
                                  "sent_pckts": 2, "recv_pckts": 3}


def test_a_standby_announces_a_prepended_path() -> None:
    from gatelb.announce.decide import Attributes, BGPPlan, PeerPlan
    from gatelb.announce.frr_config import render
    from gatelb.model import BGPPeer

    out = collect_text("apiVersion: gatelb.io/v1alpha1\nkind: BGPPeer\nmetadata: {name: up}\n"
                       "spec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.129}\n")
    (peer,) = [o for o in out.config.values() if isinstance(o, BGPPeer)]
    prefix = ipaddress.ip_network("203.0.113.10/32")
    standby = BGPPlan(64512, None, (PeerPlan(peer, None, ((prefix, Attributes(as_path_prepend=3)),)),))
    active = BGPPlan(64512, None, (PeerPlan(peer, None, ((prefix, Attributes()),)),))
    assert " set as-path prepend 64512 64512 64512\n" in render(standby, "gw2", "/tmp/frr.log")
    assert "as-path prepend" not in render(active, "gw2", "/tmp/frr.log")


# -- the priorities: upstream tracking without preemption (keepalived's arithmetic) -------------

# how badly a member's upstream is off: 0 healthy, 1 its BGP sessions down (the link is up),
# 2 its uplink down (the sessions go down with it)
PENALTIES = {0: (0, False), 1: (0, True), 2: (1, True)}


def _prio(rank: int, track: int, level: int) -> int | None:
    links_down, bgp_down = PENALTIES[level]
    return ha_priority(HA_PRIORITIES[rank], track, links_down, bgp_down)


def _takes_over(active: int | None, standby: int | None) -> bool:
    """VRRP with preemption: a BACKUP takes over from the MASTER whose adverts carry a strictly
    lower priority, or that advertises nothing (FAULT, dead)."""
    return standby is not None and (active is None or standby > active)


@pytest.mark.parametrize("active_rank", [0, 1])
def test_a_healthy_active_member_is_never_preempted(active_rank: int) -> None:
    """The no-preemption rule: whatever the standby's state (a returning member, higher base)."""
    active = _prio(active_rank, ACTIVE_BONUS, 0)
    for level in PENALTIES:
        assert not _takes_over(active, _prio(1 - active_rank, 0, level))


@pytest.mark.parametrize("active_rank", [0, 1])
def test_an_active_member_without_upstream_hands_over_only_to_a_better_one(active_rank: int) -> None:
    """It gives its role up to a standby whose upstream is better, never to one as badly off
    (the only healthy one, or the least unhealthy, stays), never to one that is not synced."""
    for mine in PENALTIES:
        active = _prio(active_rank, ACTIVE_BONUS, mine)
        assert active is not None
        for theirs in PENALTIES:
            standby = _prio(1 - active_rank, 0, theirs)
            assert _takes_over(active, standby) == (theirs < mine), (active_rank, mine, theirs, active, standby)
            assert not _takes_over(active, _prio(1 - active_rank, -254, theirs))  # syncing: FAULT


def test_no_sum_is_clamped() -> None:
    """keepalived clamps priorities to 1-254: a clamped sum would tie members that differ."""
    for rank in (0, 1):
        for track in (0, ACTIVE_BONUS):
            for links_down, bgp_down in PENALTIES.values():
                total = HA_PRIORITIES[rank] + track + UPSTREAM_WEIGHT * (links_down + int(bgp_down))
                assert 1 <= total <= 254
                assert ha_priority(HA_PRIORITIES[rank], track, links_down, bgp_down) == total


def test_both_starting_the_healthier_wins_then_the_first_member() -> None:
    for a in PENALTIES:
        for b in PENALTIES:
            p1, p2 = _prio(0, 0, a), _prio(1, 0, b)
            assert p1 is not None and p2 is not None
            assert (p1 > p2) == (a <= b), (a, b, p1, p2)


def test_status_lines() -> None:
    from gatelb.cli.output import ha_lines

    info = {"group": "edge", "mode": "active-standby", "node": "gw2", "role": "standby", "vrrp": "BACKUP",
            "members": ["gw1", "gw2"], "active": "gw1", "addresses": {"gw1": "198.51.100.1", "gw2": "198.51.100.2"},
            "backendGateway": "198.51.100.254/24", "priority": 140,
            "upstream": {"uplinks": ["up0"], "bgp": True, "bgpEstablished": True}, "stateSync": True,
            "sync": {"internal": 0, "external": 51, "sent_pckts": 20, "recv_pckts": 412, "last_received": 99.6,
                     "last_resync": 40.0}}
    assert ha_lines(info, 100.0) == [
        "ha edge (active-standby): members gw1 (198.51.100.1), gw2 (198.51.100.2); active gw1; "
        "backend gateway 198.51.100.254/24",
        "ha this member gw2: standby (vrrp BACKUP, priority 140)",
        "ha upstream: uplinks up0; BGP established",
        "ha sync: 0 entries local (sent to the peer), 51 replicated from the peer; 20 datagrams sent, 412 "
        "received, the last 0.4 s ago; last resync 60.0 s ago"]
    info.update(priority=None, upstream={"uplinks": ["up0"], "uplinksDown": ["up0"], "bgp": True,
                                         "bgpEstablished": False}, sync={})
    assert ha_lines(info, 100.0)[1:] == ["ha this member gw2: standby (vrrp BACKUP, priority FAULT)",
                                          "ha upstream: uplinks up0 (DOWN); NO BGP SESSION ESTABLISHED",
                                          "ha sync: 0 entries local (sent to the peer), 0 replicated from the peer; "
                                          "0 datagrams sent, 0 received, none yet"]
