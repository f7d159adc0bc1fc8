"""The FRR configuration of one gateway, rendered purely from its BGP plan (golden tests).

One text for every daemon (zebra, bgpd, bfdd), in FRR's integrated format: it is applied with
FRR's own frr-reload.py, which diffs it against the running configuration and sends only the
difference through vtysh, so a change never drops a session.

Each peer gets an outbound route-map that permits exactly its prefixes (prefix-lists grouped by
attribute set: local preference, communities) and denies the rest, so one `network` list can
serve peers that are given different VIPs. The map always exists (its final deny), so a peer
with nothing to announce announces nothing rather than everything.
"""

from __future__ import annotations

from gatelb.announce.decide import Attributes, BGPPlan, PeerPlan
from gatelb.model import BFDProfile, IPNetwork

FINAL_DENY_SEQ = 65535


def route_map(peer: str) -> str:
    return f"gatelb-{peer}-out"


def _groups(plan: PeerPlan) -> list[tuple[Attributes, list[IPNetwork]]]:
    groups: dict[Attributes, list[IPNetwork]] = {}
    for prefix, attrs in plan.prefixes:
        groups.setdefault(attrs, []).append(prefix)
    return sorted(groups.items(), key=lambda kv: (kv[0].local_pref or -1, kv[0].communities))


def _policy(plan: PeerPlan) -> list[str]:
    name = plan.peer.name
    lists: list[str] = []
    maps: list[str] = []
    seq = 0
    for index, (attrs, prefixes) in enumerate(_groups(plan), start=1):
        for family in (4, 6):
            mine = [p for p in prefixes if p.version == family]
            if not mine:
                continue
            ip = "ip" if family == 4 else "ipv6"
            plist = f"gatelb-{name}-{index}-v{family}"
            lists += [f"{ip} prefix-list {plist} seq {n} permit {p}" for n, p in enumerate(mine, start=1)]
            seq += 10
            maps += [f"route-map {route_map(name)} permit {seq}", f" match {ip} address prefix-list {plist}"]
            if attrs.local_pref is not None:
                maps.append(f" set local-preference {attrs.local_pref}")
            maps += [*_communities(attrs), "exit", "!"]
    return [*lists, *(["!"] if lists else []), *maps, f"route-map {route_map(name)} deny {FINAL_DENY_SEQ}", "exit",
            "!"]


def _communities(attrs: Attributes) -> list[str]:
    standard = [c for c in attrs.communities if not c.startswith("large:")]
    large = [c.removeprefix("large:") for c in attrs.communities if c.startswith("large:")]
    parts = []
    if standard:
        parts.append(f" set community {' '.join(standard)} additive")
    if large:
        parts.append(f" set large-community {' '.join(large)} additive")
    return parts


def _neighbor(plan: PeerPlan) -> list[str]:
    p = plan.peer
    n = f" neighbor {p.peer_address}"
    lines = [f"{n} remote-as {p.peer_asn}", f"{n} description gatelb BGPPeer {p.name}"]
    if p.peer_port != 179:
        lines.append(f"{n} port {p.peer_port}")
    if p.password:
        lines.append(f"{n} password {p.password}")
    if p.ebgp_multihop:
        lines.append(f"{n} ebgp-multihop")
    if p.source_address is not None:
        lines.append(f"{n} update-source {p.source_address}")
    lines.append(f"{n} timers {p.keepalive_s} {p.hold_time_s}")
    if p.connect_time_s is not None:
        lines.append(f"{n} timers connect {p.connect_time_s}")
    # Announcements and withdrawals go out at once: the delay between a VIP becoming
    # unservable and the router knowing it is ours to keep small.
    lines.append(f"{n} advertisement-interval 0")
    if plan.bfd is not None:
        lines.append(f"{n} bfd profile {plan.bfd.name}")
    return lines


def _family(plan: BGPPlan, family: int) -> list[str]:
    peers = [pp for pp in plan.peers if pp.peer.peer_address.version == family]
    prefixes = [p for p in plan.prefixes if p.version == family]
    if not peers:
        return []
    lines = [f" address-family {'ipv4' if family == 4 else 'ipv6'} unicast"]
    lines += [f"  network {p}" for p in prefixes]
    for pp in peers:
        lines += [f"  neighbor {pp.peer.peer_address} activate",
                  f"  neighbor {pp.peer.peer_address} route-map {route_map(pp.peer.name)} out"]
    return [*lines, " exit-address-family"]


def _bfd(profiles: tuple[BFDProfile, ...]) -> list[str]:
    if not profiles:
        return []
    lines = ["bfd"]
    for b in profiles:
        lines += [f" profile {b.name}", f"  detect-multiplier {b.detect_multiplier}",
                  f"  receive-interval {b.receive_interval_ms}", f"  transmit-interval {b.transmit_interval_ms}"]
        if b.echo_mode:
            lines += ["  echo-mode", f"  echo transmit-interval {b.echo_interval_ms}",
                      f"  echo receive-interval {b.echo_interval_ms}"]
        if b.passive_mode:
            lines.append("  passive-mode")
        if b.minimum_ttl != 254:
            lines.append(f"  minimum-ttl {b.minimum_ttl}")
        lines.append(" exit")
    return [*lines, "exit", "!"]


def render(plan: BGPPlan | None, hostname: str, log_file: str) -> str:
    """The whole configuration; with no plan, an instance that speaks to nobody."""
    lines = ["frr defaults traditional", f"hostname {hostname}", f"log file {log_file} informational",
             "service integrated-vtysh-config", "!"]
    if plan is not None:
        for pp in plan.peers:
            lines += _policy(pp)
        lines += [f"router bgp {plan.asn}"]
        if plan.router_id is not None:
            lines.append(f" bgp router-id {plan.router_id}")
        # Our policy is the route-maps above; FRR's eBGP default (announce nothing without a
        # policy) and its import check (announce only what is in the RIB) do not apply to VIPs.
        lines += [" no bgp ebgp-requires-policy", " no bgp network import-check", " no bgp default ipv4-unicast"]
        for pp in plan.peers:
            lines += _neighbor(pp)
        for family in (4, 6):
            lines += _family(plan, family)
        lines += ["exit", "!"]
        lines += _bfd(plan.profiles)
    return "\n".join(lines) + "\nend\n"
