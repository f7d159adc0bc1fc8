"""gatelb's part of an FRR it does not run (`gatelb run --frr-vty-socket DIR`), purely: what it
adds for a BGP plan, the vtysh commands from one part to the next, and the checks of the user's
running configuration (golden/unit tests).

The part is only ever
- route-maps named `gatelb-net-N` (one per group of prefixes with the same attributes: they set
  the route tag EXTERNAL_TAG and the attributes where the prefix is originated), and
- `network P route-map gatelb-net-N` lines under the user's `router bgp <myASN>`.
The user's neighbors, their policy, their own networks and route-maps are theirs: gatelb never
writes them. Its part is recognised in the running configuration by the `gatelb-` names, so a
restart of gatelb adopts what a previous run left (or a crash: it is corrected on the first
apply) and a stop removes exactly that.

The neighbors are the user's, so per-peer policy is theirs too: every gatelb prefix goes to every
neighbor their outbound policy lets it out to. A plan that gives different prefixes or
attributes to different BGPPeers is refused (`check_plan`).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

from gatelb.announce.decide import Attributes, BGPPlan, PeerPlan
from gatelb.announce.frr_config import WELL_KNOWN
from gatelb.model import BGPPeer, ValidationError

EXTERNAL_TAG = 64179  # every route gatelb adds carries it: `match tag 64179` lets them out
MAP_PREFIX = "gatelb-net-"
OPTION = "--frr-vty-socket"


@dataclass(frozen=True)
class Part:
    """What gatelb has (or wants) in the user's FRR."""

    asn: int
    maps: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> its `set` lines
    networks: dict[tuple[str, str], str] = field(default_factory=dict)  # (family, prefix) -> route-map

    def lines(self) -> list[str]:
        """As FRR shows it (`show running-config`), for the golden tests and the state file."""
        out: list[str] = []
        for name in sorted(self.maps):
            out += [f"route-map {name} permit 10", *self.maps[name], "exit"]
        if self.networks:
            out.append(f"router bgp {self.asn}")
            for family in sorted({f for f, _ in self.networks}):
                out.append(f" address-family {family} unicast")
                out += [f"  network {p} route-map {m}" for (f, p), m in sorted(self.networks.items()) if f == family]
                out.append(" exit-address-family")
            out.append("exit")
        return out


def _sets(attrs: Attributes, asn: int) -> tuple[str, ...]:
    lines = [f" set tag {EXTERNAL_TAG}"]
    if attrs.local_pref is not None:
        lines.append(f" set local-preference {attrs.local_pref}")
    if attrs.as_path_prepend:
        lines.append(f" set as-path prepend {' '.join([str(asn)] * attrs.as_path_prepend)}")
    standard = [WELL_KNOWN.get(c, c) for c in attrs.communities if not c.startswith("large:")]
    large = [c.removeprefix("large:") for c in attrs.communities if c.startswith("large:")]
    if standard:
        lines.append(f" set community {' '.join(standard)} additive")
    if large:
        lines.append(f" set large-community {' '.join(large)} additive")
    return tuple(lines)


def check_plan(plan: BGPPlan) -> list[ValidationError]:
    """Without the neighbors, gatelb cannot send a prefix to one peer and not another, nor with
    different attributes: every BGPPeer of this gateway (of one address family) must get the
    same prefixes alike."""
    errors: list[ValidationError] = []
    firsts: dict[int, PeerPlan] = {}
    for pp in plan.peers:  # an IPv4 peer gets the IPv4 prefixes, an IPv6 peer the IPv6 ones
        first = firsts.setdefault(pp.peer.peer_address.version, pp)
        if first is pp:
            continue
        want, got = dict(first.prefixes), dict(pp.prefixes)
        if got != want:
            differ = sorted({str(p) for p in want.keys() ^ got.keys()}
                            | {str(p) for p in want.keys() & got.keys() if want[p] != got[p]})
            errors.append(ValidationError(BGPPeer.KIND, pp.peer.name, "", (
                f"with {OPTION} (an FRR gatelb does not run) every BGPPeer of a gateway gets the same prefixes "
                f"with the same attributes, but {', '.join(differ[:5])} differ from BGPPeer {first.peer.name}'s "
                f"(the BGPAdvertisements' peers, localPref, communities)")))
    return errors


def part(plan: BGPPlan | None, asn: int) -> Part:
    """What gatelb adds for `plan` (None: nothing) under `router bgp asn`."""
    if plan is None or not plan.peers:
        return Part(asn)
    maps: dict[str, tuple[str, ...]] = {}
    networks: dict[tuple[str, str], str] = {}
    firsts = {pp.peer.peer_address.version: pp for pp in reversed(plan.peers)}  # the same for each (check_plan)
    for prefix, attrs in sorted({x for pp in firsts.values() for x in pp.prefixes}, key=lambda x: str(x[0])):
        sets = _sets(attrs, plan.asn)
        # the name comes from what it sets: a changed attribute is a new map, never an edited one
        name = f"{MAP_PREFIX}{zlib.crc32(chr(10).join(sets).encode()):08x}"
        maps[name] = sets
        networks[("ipv4" if prefix.version == 4 else "ipv6", str(prefix))] = name
    return Part(asn, maps, networks)


def changes(old: Part, new: Part) -> list[str]:
    """The vtysh commands from `old` to `new` (empty: nothing to do). Withdrawn networks first;
    new route-maps before the networks that use them; unused route-maps last."""
    out: list[str] = []

    def networks(keys: list[tuple[str, str]], make: str) -> None:
        for family in sorted({f for f, _ in keys}):
            out.extend([f"router bgp {old.asn if make == 'no' else new.asn}", f"address-family {family} unicast"])
            for k in keys:
                if k[0] == family:
                    out.append(f"no network {k[1]}" if make == "no" else f"network {k[1]} route-map {new.networks[k]}")
            out.extend(["exit-address-family", "exit"])

    networks(sorted(k for k in old.networks if new.networks.get(k) != old.networks[k]), "no")
    for name in sorted(new.maps.keys() - old.maps.keys()):
        out += [f"route-map {name} permit 10", *(s.strip() for s in new.maps[name]), "exit"]
    networks(sorted(k for k in new.networks if old.networks.get(k) != new.networks[k]), "add")
    out += [f"no route-map {name}" for name in sorted(old.maps.keys() - new.maps.keys())]
    return ["configure terminal", *out, "end"] if out else []


def adopting(ours: Part, new: Part) -> Part:
    """The base to diff against when `ours` was read from the running configuration: the
    route-maps `new` uses count as missing, so they are sent again (which changes nothing where
    they are). vtysh shows the route-maps of every daemon merged, and a restarted bgpd has lost
    the ones zebra still shows; a network whose route-map bgpd lacks is not announced."""
    return Part(ours.asn, {k: v for k, v in ours.maps.items() if k not in new.maps}, ours.networks)


# -- the user's running configuration -----------------------------------------------------------

@dataclass(frozen=True)
class Running:
    asn: int | None  # of the default instance's `router bgp` (None: there is none)
    neighbors: frozenset[str]
    import_check: bool  # `bgp network import-check` (FRR 8.4's default): VIPs are not in its RIB
    ours: Part  # what of gatelb's is there
    theirs: frozenset[str]  # prefixes the user originates themselves


_MAP = re.compile(r"^route-map (\S+) (permit|deny) (\d+)$")


def parse_running(text: str) -> Running:
    """The parts of `show running-config` that matter to gatelb."""
    asn: int | None = None
    neighbors: set[str] = set()
    import_check = True
    maps: dict[str, list[str]] = {}
    networks: dict[tuple[str, str], str] = {}
    theirs: set[str] = set()
    block: list[str] | None = None
    in_bgp, family = False, "ipv4"
    for line in text.splitlines():
        if (m := _MAP.match(line)) is not None:
            block = maps.setdefault(m.group(1), []) if m.group(1).startswith(MAP_PREFIX) else None
            in_bgp = False
            continue
        if line.startswith("router bgp "):
            w = line.split()
            in_bgp = len(w) == 3  # a `vrf` instance is not the one gatelb adds to
            if in_bgp:
                asn = int(w[2])
            family = "ipv4"
            continue
        if not line.startswith(" "):
            block, in_bgp = None, False
            continue
        if block is not None:
            if line.startswith(" set "):
                block.append(line)
            continue
        if not in_bgp:
            continue
        w = line.split()
        if w[:2] == ["no", "bgp"] and w[2:] == ["network", "import-check"]:
            import_check = False
        elif w[0] == "neighbor" and len(w) > 2 and w[2] in ("remote-as", "interface", "peer-group"):
            neighbors.add(w[1])
        elif w[0] == "address-family":
            family = w[1]
        elif w[0] == "network":
            if len(w) >= 4 and w[2] == "route-map" and w[3].startswith(MAP_PREFIX):
                networks[(family, w[1])] = w[3]
            else:
                theirs.add(w[1])
    return Running(asn, frozenset(neighbors), import_check,
                   Part(asn or 0, {k: tuple(v) for k, v in maps.items()}, networks), frozenset(theirs))


def check_running(plan: BGPPlan, running: Running, where: str) -> list[ValidationError]:
    """What the user's FRR must have for gatelb's part: `router bgp <myASN>`, each BGPPeer's
    address as a neighbor, the import check off; and no prefix of ours that the user already
    originates."""
    errors: list[ValidationError] = []
    first = plan.peers[0].peer if plan.peers else None
    if first is None:
        return errors
    if running.asn is None:
        return [ValidationError(BGPPeer.KIND, first.name, "spec.myASN", (
            f"the FRR at {where} has no `router bgp` (gatelb adds its networks to yours: configure "
            f"`router bgp {plan.asn}` and its neighbors there)"))]
    for pp in plan.peers:
        if pp.peer.my_asn != running.asn:
            errors.append(ValidationError(BGPPeer.KIND, pp.peer.name, "spec.myASN", (
                f"{pp.peer.my_asn}, but the FRR at {where} runs `router bgp {running.asn}`")))
        elif str(pp.peer.peer_address) not in running.neighbors:
            errors.append(ValidationError(BGPPeer.KIND, pp.peer.name, "spec.peerAddress", (
                f"{pp.peer.peer_address} is no neighbor of `router bgp {running.asn}` in the FRR at {where} "
                f"(the sessions are yours to configure there)")))
    if running.import_check:
        errors.append(ValidationError(BGPPeer.KIND, first.name, "", (
            f"the FRR at {where} checks that a network is in its RIB before announcing it, and VIPs are not: "
            f"add `no bgp network import-check` to its `router bgp {running.asn}`")))
    mine = {p for pp in plan.peers for p, _ in pp.prefixes}
    taken = sorted(str(p) for p in mine if str(p) in running.theirs)
    if taken:
        errors.append(ValidationError(BGPPeer.KIND, first.name, "", (
            f"the FRR at {where} already originates {', '.join(taken[:5])} itself (a `network` line of yours): "
            f"gatelb does not take over your lines; remove them or the VIPs from the pools")))
    return errors
