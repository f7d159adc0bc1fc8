"""Where each VIP is announced and how: the BGP peers' session and BFD state (read from FRR),
the VIP -> peers index of the current plan, and the Prometheus series of the sessions.

Pure except `read_states` (one vtysh call). The index is built once per plan, so `gatelb status`
at 10,000 VIPs costs one dictionary lookup per VIP and prefix length.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gatelb.announce.decide import BGPPlan
from gatelb.model import IPNetwork

ESTABLISHED = "Established"


@dataclass(frozen=True, slots=True)
class PeerState:
    name: str
    address: str
    asn: int
    session: str  # FRR's FSM state: Idle, Connect, Active, OpenSent, OpenConfirm, Established
    bfd: str | None  # up, down, init, adminDown (None: no bfdProfile)
    prefixes: int  # what the plan gives this peer
    graceful_restart: bool
    established_at: float | None = None  # UNIX time the session came up (FRR's clock)

    def as_dict(self) -> dict[str, Any]:
        return {"peer": self.name, "address": self.address, "asn": self.asn, "session": self.session,
                "bfd": self.bfd, "prefixes": self.prefixes, "gracefulRestart": self.graceful_restart,
                "establishedAt": self.established_at}


def _json_documents(text: str) -> list[Any]:
    """vtysh prints one JSON document per -c command, one after the other."""
    decoder, i = json.JSONDecoder(), 0
    out: list[Any] = []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        doc, i = decoder.raw_decode(text, i)
        out.append(doc)


def parse_states(plan: BGPPlan | None, neighbors_json: str) -> dict[str, PeerState]:
    """`show bgp neighbors json` + `show bfd peers json` (in one vtysh output) -> state per peer."""
    if plan is None:
        return {}
    docs = _json_documents(neighbors_json)
    neighbors: Mapping[str, Any] = docs[0] if docs and isinstance(docs[0], dict) else {}
    bfd_peers = docs[1] if len(docs) > 1 and isinstance(docs[1], list) else []
    bfd = {str(p.get("peer")): str(p.get("status")) for p in bfd_peers if isinstance(p, dict)}
    out = {}
    for pp in plan.peers:
        address = str(pp.peer.peer_address)
        n = neighbors.get(address) or {}
        since = n.get("bgpTimerUpEstablishedEpoch") if n.get("bgpState") == ESTABLISHED else None
        out[pp.peer.name] = PeerState(
            pp.peer.name, address, pp.peer.peer_asn, str(n.get("bgpState", "unknown")),
            bfd.get(address, "down") if pp.bfd is not None else None, len(pp.prefixes), pp.peer.graceful_restart,
            float(since) if isinstance(since, int) else None)
    return out


class VipIndex:
    """VIP -> the peers its prefix goes to (aggregated prefixes included), for one plan. Host
    prefixes (/32, /128: nearly all) are looked up by the VIP's text, without parsing it."""

    def __init__(self, plan: BGPPlan | None) -> None:
        self._hosts: dict[str, list[tuple[str, str]]] = {}
        self._peers: dict[IPNetwork, list[str]] = {}
        self._lengths: dict[int, set[int]] = {4: set(), 6: set()}
        for pp in plan.peers if plan is not None else ():
            for prefix, _ in pp.prefixes:
                if prefix.prefixlen == prefix.max_prefixlen:
                    self._hosts.setdefault(str(prefix.network_address), []).append((str(prefix), pp.peer.name))
                else:
                    self._peers.setdefault(prefix, []).append(pp.peer.name)
                    self._lengths[prefix.version].add(prefix.prefixlen)

    def lookup(self, vip: str) -> list[tuple[str, str]]:
        """(prefix, peer) pairs for `vip`, longest prefix first."""
        found = list(self._hosts.get(vip, ()))
        if not self._peers:
            return found
        address = ipaddress.ip_address(vip)
        for length in sorted(self._lengths[address.version], reverse=True):
            prefix = ipaddress.ip_network(f"{address}/{length}", strict=False)
            found += [(str(prefix), peer) for peer in self._peers.get(prefix, ())]
        return found


class PeerCollector(Collector):
    """gatelb_bgp_session_up, gatelb_bfd_session_up, gatelb_bgp_prefixes_announced per peer."""

    def __init__(self, states: Callable[[], Mapping[str, PeerState]]) -> None:
        self._states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["peer", "address"]
        bgp = GaugeMetricFamily("gatelb_bgp_session_up", "1 while the BGP session to the peer is Established",
                                labels=labels)
        bfd = GaugeMetricFamily("gatelb_bfd_session_up",
                                "1 while the BFD session to the peer is up (peers with a bfdProfile only)",
                                labels=labels)
        prefixes = GaugeMetricFamily("gatelb_bgp_prefixes_announced",
                                     "Prefixes (VIPs that can be served) this gateway gives the peer", labels=labels)
        for name, s in sorted(self._states().items()):
            bgp.add_metric([name, s.address], 1.0 if s.session == ESTABLISHED else 0.0)
            if s.bfd is not None:
                bfd.add_metric([name, s.address], 1.0 if s.bfd == "up" else 0.0)
            prefixes.add_metric([name, s.address], float(s.prefixes))
        yield bgp
        yield bfd
        yield prefixes
