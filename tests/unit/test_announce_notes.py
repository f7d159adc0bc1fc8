"""Announcement notes (announce/notes.py: what becomes a Kubernetes Event), the Event limiter
(sources/kubernetes/events.py) and the gratuitous ARP / unsolicited NA packets (announce/garp.py)."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path
from typing import Any

from gatelb.announce.garp import arp_announcement, unsolicited_na
from gatelb.announce.notes import Note, Snapshot, diff, parse_sessions
from gatelb.sources.kubernetes.events import EventLimiter

V4, V6 = ipaddress.ip_address("192.0.2.200"), ipaddress.ip_address("2001:db8::200")
LBS = {V4: ("default/web:tcp:80",), V6: ("default/web6:tcp:80",)}


def test_l2_taken_and_released_name_the_node_and_interface() -> None:
    taken = Snapshot(l2={V4: ("up0",), V6: ("up0",)})
    assert diff("gw1", Snapshot(), taken, LBS) == [
        Note(("default/web:tcp:80",), "Normal", "L2Announced",
             "192.0.2.200 announced by node gw1 on interface up0 (ARP)"),
        Note(("default/web6:tcp:80",), "Normal", "L2Announced",
             "2001:db8::200 announced by node gw1 on interface up0 (NDP)")]
    assert diff("gw1", taken, taken, LBS) == []  # nothing changed, nothing said
    assert diff("gw1", taken, Snapshot(l2={V6: ("up0",)}), LBS) == [
        Note(("default/web:tcp:80",), "Normal", "L2Withdrawn", "192.0.2.200 no longer announced by node gw1 on "
                                                               "interface up0")]


def test_bgp_announced_withdrawn_and_session_changes() -> None:
    up = Snapshot(bgp={V4: ("upstream",)}, sessions={"upstream": "Established"})
    assert diff("gw1", Snapshot(sessions={"upstream": "Established"}), up, LBS) == [
        Note(("default/web:tcp:80",), "Normal", "BGPAnnounced", "192.0.2.200 announced by node gw1 over BGP to peers "
                                                                "upstream")]
    down = Snapshot(bgp={V4: ("upstream",)}, sessions={"upstream": "Active"})
    assert diff("gw1", up, down, LBS) == [
        Note(("default/web:tcp:80",), "Warning", "BGPSessionChanged",
             "node gw1: BGP session with peer upstream is Active (was Established)")]
    assert [n.reason for n in diff("gw1", down, Snapshot(sessions={"upstream": "Active"}), LBS)] == ["BGPWithdrawn"]
    # the first reading of a session is no change; a load balancer nobody knows is nobody's note
    assert diff("gw1", Snapshot(), Snapshot(sessions={"upstream": "Active"}), LBS) == []
    assert diff("gw1", Snapshot(), Snapshot(bgp={ipaddress.ip_address("192.0.2.9"): ("upstream",)}), LBS) == []


def test_every_failover_is_a_note_on_every_load_balancer() -> None:
    active = Snapshot(ha=("edge", "active"))
    [note] = diff("gw2", Snapshot(ha=("edge", "standby")), active, LBS)
    assert note == Note(("default/web6:tcp:80", "default/web:tcp:80"), "Normal", "FailoverActive",
                        "node gw2 is now the active member of GatewayGroup edge (was standby)")
    [back] = diff("gw2", active, Snapshot(ha=("edge", "standby")), LBS)
    assert (back.type, back.reason) == ("Warning", "FailoverStandby")
    assert diff("gw2", active, Snapshot(ha=("edge", "syncing")), LBS) == []  # syncing is no role of its own


def test_sessions_from_frr_json() -> None:
    text = '{"192.0.2.129": {"bgpState": "Established"}, "192.0.2.7": {"bgpState": "Idle"}}'
    assert parse_sessions(text, {"192.0.2.129": "upstream"}) == {"upstream": "Established"}
    assert parse_sessions("not json", {"192.0.2.129": "upstream"}) == {}


def test_limiter_dedupes_and_rate_limits_per_object() -> None:
    now = [0.0]
    limit = EventLimiter(dedupe_s=60, burst=3, refill_s=10, per_second=100, clock=lambda: now[0])
    assert limit.allow("Service default/web", "L2Announced", "a")
    assert not limit.allow("Service default/web", "L2Announced", "a")  # the same, within a minute
    assert limit.allow("Service default/web", "L2Withdrawn", "a")
    assert limit.allow("Service default/web", "L2Announced", "b")
    assert not limit.allow("Service default/web", "L2Announced", "c")  # the object's burst is spent
    assert limit.allow("Service default/api", "L2Announced", "c")  # another object has its own
    now[0] = 10.0
    assert limit.allow("Service default/web", "L2Announced", "c")  # one token back after 10 s
    now[0] = 61.0
    assert limit.allow("Service default/web", "L2Announced", "a")  # and the same message after a minute
    assert limit.dropped == 1


def test_garp_and_unsolicited_na_packets() -> None:
    mac = bytes.fromhex("02000000aa01")
    pkt = arp_announcement(mac, ipaddress.IPv4Address("192.0.2.200"))
    assert pkt[:6] == b"\xff" * 6 and pkt[6:12] == mac and pkt[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", pkt[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert pkt[22:28] == mac and pkt[28:32] == pkt[38:42] == bytes([192, 0, 2, 200])
    na = unsolicited_na(mac, ipaddress.IPv6Address("2001:db8::200"))
    assert na[0] == 136 and struct.unpack("!I", na[4:8])[0] == 0x20000000  # Override, not Solicited
    assert na[8:24] == ipaddress.IPv6Address("2001:db8::200").packed and na[24:26] == b"\x02\x01" and na[26:] == mac


def test_the_announcer_reports_a_failover_from_its_ha_role(tmp_path: Path) -> None:
    """The wiring: the announcer's snapshot reads the active-standby role, and a change of it is a
    FailoverActive note on the load balancers of the last synced state."""
    from gatelb.announce import Announcer

    class Role:
        role = "standby"

        def info(self) -> dict[str, Any]:
            return {"group": "edge", "role": self.role}

    announcer = Announcer("gw2", tmp_path / "frr")
    got: list[Note] = []
    announcer.report = got.extend
    announcer._lbs_of = dict(LBS)
    role = Role()
    announcer.ha = role  # type: ignore[assignment]
    announcer._notify()
    role.role = "active"
    announcer._notify()
    announcer._notify()  # no change, no note
    assert [(n.reason, n.message) for n in got] == [
        ("FailoverStandby", "node gw2 is now the standby member of GatewayGroup edge (was starting)"),
        ("FailoverActive", "node gw2 is now the active member of GatewayGroup edge (was standby)")]
