"""What changed in this gateway's announcements, as notes for the objects concerned (Kubernetes
Events on the Service or L4LB: `kubectl describe svc web` tells where its VIP is announced).

Pure: two snapshots in, notes out. The announcer takes a snapshot after every apply and on its
watch ticks (BGP session states, the HA role); a reporter (the Kubernetes source) posts the notes,
rate-limited there.

- L2Announced / L2Withdrawn: this node started / stopped answering ARP (NDP) for the VIP, on which
  interfaces.
- BGPAnnounced / BGPWithdrawn: this node started / stopped announcing the VIP, to which peers.
- BGPSessionChanged: a session with a peer that carries the VIP changed state (Warning when it
  left Established).
- FailoverActive / FailoverStandby: this node's active-standby role changed (issue 10).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from gatelb.model import IPAddress

ESTABLISHED = "Established"


@dataclass(frozen=True)
class Note:
    lbs: tuple[str, ...]  # the load balancers concerned (state.services names)
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Snapshot:
    l2: Mapping[IPAddress, tuple[str, ...]] = field(default_factory=dict)  # VIP -> interfaces answered on
    bgp: Mapping[IPAddress, tuple[str, ...]] = field(default_factory=dict)  # VIP -> peers announced to
    sessions: Mapping[str, str] = field(default_factory=dict)  # peer -> FRR's bgpState
    ha: tuple[str, str] | None = None  # (GatewayGroup, role)


def _key(v: IPAddress) -> tuple[int, int]:
    return (v.version, int(v))


def diff(node: str, old: Snapshot, new: Snapshot, lbs_of: Mapping[IPAddress, tuple[str, ...]]) -> list[Note]:
    notes: list[Note] = []

    def lbs(vip: IPAddress) -> tuple[str, ...]:
        return lbs_of.get(vip, ())

    for vip in sorted(new.l2.keys() | old.l2.keys(), key=_key):
        before, after = old.l2.get(vip), new.l2.get(vip)
        proto = "ARP" if vip.version == 4 else "NDP"
        if after and after != before:
            notes.append(Note(lbs(vip), "Normal", "L2Announced",
                              f"{vip} announced by node {node} on interface {', '.join(after)} ({proto})"))
        elif before and not after:
            notes.append(Note(lbs(vip), "Normal", "L2Withdrawn",
                              f"{vip} no longer announced by node {node} on interface {', '.join(before)}"))
    for vip in sorted(new.bgp.keys() | old.bgp.keys(), key=_key):
        before_p, after_p = old.bgp.get(vip, ()), new.bgp.get(vip, ())
        if after_p and after_p != before_p:
            notes.append(Note(lbs(vip), "Normal", "BGPAnnounced",
                              f"{vip} announced by node {node} over BGP to peers {', '.join(after_p)}"))
        elif before_p and not after_p:
            notes.append(Note(lbs(vip), "Normal", "BGPWithdrawn",
                              f"{vip} no longer announced by node {node} over BGP (was to {', '.join(before_p)})"))
    for peer in sorted(new.sessions):
        was, now = old.sessions.get(peer), new.sessions[peer]
        if was is None or was == now:
            continue  # the first reading is no change
        carried = tuple(sorted({lb for vip, peers in new.bgp.items() if peer in peers for lb in lbs(vip)}))
        if carried:
            notes.append(Note(carried, "Normal" if now == ESTABLISHED else "Warning", "BGPSessionChanged",
                              f"node {node}: BGP session with peer {peer} is {now} (was {was})"))
    if new.ha is not None and new.ha != old.ha and new.ha[1] in ("active", "standby"):
        group, role = new.ha
        was_role = old.ha[1] if old.ha is not None else "starting"
        if was_role != role:
            every = tuple(sorted({lb for names in lbs_of.values() for lb in names}))
            lost = role != "active" and was_role == "active"  # a member that was serving no longer does
            notes.append(Note(every, "Warning" if lost else "Normal",
                              "FailoverActive" if role == "active" else "FailoverStandby",
                              f"node {node} is now the {role} member of GatewayGroup {group} (was {was_role})"))
    return [n for n in notes if n.lbs]


def parse_sessions(text: str, names: Mapping[str, str]) -> dict[str, str]:
    """`show bgp neighbors json` -> peer name -> bgpState, for the peers in `names` (address -> name)."""
    try:
        doc = json.loads(text or "{}")
    except ValueError:
        return {}
    out = {}
    for address, row in doc.items() if isinstance(doc, dict) else ():
        if address in names and isinstance(row, dict):
            out[names[address]] = str(row.get("bgpState") or "unknown")
    return out
