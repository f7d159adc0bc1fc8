"""Where a VIP is announced: the peers' state from FRR's JSON, the VIP index, the metrics."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from gatelb.announce.decide import Attributes, BGPPlan, PeerPlan
from gatelb.announce.frr import FrrInstance
from gatelb.announce.peers import PeerCollector, VipIndex, parse_states
from gatelb.model import BFDProfile, BGPPeer

net = ipaddress.ip_network
UP = BGPPeer("upstream", 64512, 64500, ipaddress.ip_address("192.0.2.129"), graceful_restart=True)
V6 = BGPPeer("v6", 64512, 64501, ipaddress.ip_address("2001:db8:1::1"))
PLAN = BGPPlan(64512, None, (
    PeerPlan(UP, BFDProfile("fast"), ((net("203.0.113.10/32"), Attributes()), (net("203.0.113.64/28"), Attributes()))),
    PeerPlan(V6, None, ((net("2001:db8:100::10/128"), Attributes()),)),
))
# the shape of FRR 8.4's `show bgp neighbors json` then `show bfd peers json` (one vtysh run)
FRR = json.dumps({"192.0.2.129": {"remoteAs": 64500, "bgpState": "Established",
                                  "bgpTimerUpEstablishedEpoch": 1796146572},
                  "2001:db8:1::1": {"remoteAs": 64501, "bgpState": "Active"}}, indent=2) + "\n" + json.dumps(
    [{"peer": "192.0.2.129", "status": "up"}, {"peer": "192.0.2.200", "status": "down"}])


def test_states_from_frr() -> None:
    states = parse_states(PLAN, FRR)
    up, v6 = states["upstream"], states["v6"]
    assert (up.session, up.bfd, up.prefixes, up.graceful_restart, up.established_at) == (
        "Established", "up", 2, True, 1796146572.0)
    assert (v6.session, v6.bfd, v6.established_at) == ("Active", None, None)  # no bfdProfile: no BFD state
    assert parse_states(None, FRR) == {}
    # a peer FRR does not know (yet): unknown, and its BFD down
    assert parse_states(PLAN, "{}\n[]")["upstream"].session == "unknown"
    assert parse_states(PLAN, "{}\n[]")["upstream"].bfd == "down"


def test_vip_index_finds_host_and_aggregated_prefixes() -> None:
    index = VipIndex(PLAN)
    assert index.lookup("203.0.113.10") == [("203.0.113.10/32", "upstream")]
    assert index.lookup("203.0.113.70") == [("203.0.113.64/28", "upstream")]  # inside the aggregate
    assert index.lookup("2001:db8:100::10") == [("2001:db8:100::10/128", "v6")]
    assert index.lookup("203.0.113.11") == []
    assert VipIndex(None).lookup("203.0.113.10") == []


def test_session_metrics() -> None:
    states = parse_states(PLAN, FRR)
    registry = CollectorRegistry()
    registry.register(PeerCollector(lambda: states))
    text = generate_latest(registry).decode()
    assert 'gatelb_bgp_session_up{address="192.0.2.129",peer="upstream"} 1.0' in text
    assert 'gatelb_bgp_session_up{address="2001:db8:1::1",peer="v6"} 0.0' in text
    assert 'gatelb_bfd_session_up{address="192.0.2.129",peer="upstream"} 1.0' in text
    assert 'gatelb_bfd_session_up{address="2001:db8:1::1"' not in text
    assert 'gatelb_bgp_prefixes_announced{address="192.0.2.129",peer="upstream"} 2.0' in text


def test_startup_lines_frr_refused_are_found_in_what_the_log_got_since_the_start(tmp_path: Path) -> None:
    frr = FrrInstance(tmp_path, "gw1")
    old = "2026/12/01 18:00:00 BGP: [SHWNK-NWT5S][EC 100663304] No such command on config line 3: x\n"
    frr.log_file.write_text(old)
    offset = frr.log_file.stat().st_size
    assert frr._refused_lines(offset) == []  # an earlier start's error is not this one's
    new = "2026/12/01 18:01:55 BGP: [SHWNK-NWT5S][EC 100663304] No such command on config line 5:  neighbor x y\n"
    with open(frr.log_file, "a") as f:
        f.write("2026/12/01 18:01:55 BGP: [GRW2W-7XNK7] can't connect to 192.0.2.1\n" + new)
    assert frr._refused_lines(offset) == [new.rstrip("\n")]
