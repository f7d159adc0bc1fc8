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

import zlib

from gatelb.announce.decide import Attributes, BGPPlan, PeerPlan
from gatelb.model import BFDProfile, IPNetwork

FINAL_DENY_SEQ = 65535
SEQ_MAX = 4294967295  # FRR's prefix-list sequence numbers: 1-4294967295
# FRR shows well-known communities by name; written the same way, a reload sees no difference.
WELL_KNOWN = {"65535:0": "graceful-shutdown", "65535:666": "blackhole", "65535:65281": "no-export",
              "65535:65282": "no-advertise", "65535:65283": "local-AS", "65535:65284": "no-peer"}


def route_map(peer: str) -> str:
    return f"gatelb-{peer}-out"


def _groups(plan: PeerPlan) -> list[tuple[Attributes, list[IPNetwork]]]:
    groups: dict[Attributes, list[IPNetwork]] = {}
    for prefix, attrs in plan.prefixes:
        groups.setdefault(attrs, []).append(prefix)
    return sorted(groups.items(), key=lambda kv: (kv[0].local_pref or -1, kv[0].communities, kv[0].as_path_prepend))


def _policy(plan: PeerPlan, asn: int) -> list[str]:
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
            lists += [f"{ip} prefix-list {plist} seq {n} permit {p}" for n, p in _numbered(mine)]
            seq += 10
            maps += [f"route-map {route_map(name)} permit {seq}", f" match {ip} address prefix-list {plist}"]
            if attrs.local_pref is not None:
                maps.append(f" set local-preference {attrs.local_pref}")
            if attrs.as_path_prepend:
                maps.append(f" set as-path prepend {' '.join([str(asn)] * attrs.as_path_prepend)}")
            maps += [*_communities(attrs), "exit", "!"]
    return [*lists, *(["!"] if lists else []), *maps, f"route-map {route_map(name)} deny {FINAL_DENY_SEQ}", "exit",
            "!"]


def _seq(prefix: IPNetwork) -> int:
    return zlib.crc32(str(prefix).encode()) % SEQ_MAX + 1


def _numbered(prefixes: list[IPNetwork]) -> list[tuple[int, IPNetwork]]:
    """Each prefix's prefix-list sequence number, from the prefix itself (a hash; the next free
    number on a collision), in sequence order. Numbered by position instead, adding or removing
    one VIP would renumber every entry after it: thousands of vtysh commands at 10,000 VIPs
    where two do (the entries are all permits: their order does not matter)."""
    taken: dict[int, IPNetwork] = {}
    for p in prefixes:
        n = _seq(p)
        while n in taken:
            n = n % SEQ_MAX + 1
        taken[n] = p
    return sorted(taken.items())


def _communities(attrs: Attributes) -> list[str]:
    standard = [WELL_KNOWN.get(c, c) for c in attrs.communities if not c.startswith("large:")]
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
        lines += [f"{n} bfd", f"{n} bfd profile {plan.bfd.name}"]
    if p.graceful_restart:
        # Restarting speaker for this peer (capability in the OPEN, End-of-RIB after the initial
        # updates). No `bfd check-control-plane-failure` here: our BFD shares fate with bgpd (it
        # stops with it), which is what its C bit, left clear, tells the router; the router's
        # own `check-control-plane-failure` then ignores our BFD going down during the restart.
        lines.append(f"{n} graceful-restart")
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
        # Only what differs from FRR's defaults: its running configuration omits those, and
        # frr-reload.py compares text, so a default written out would be "added" on every reload.
        lines.append(f" profile {b.name}")
        if b.detect_multiplier != 3:
            lines.append(f"  detect-multiplier {b.detect_multiplier}")
        if b.receive_interval_ms != 300:
            lines.append(f"  receive-interval {b.receive_interval_ms}")
        if b.transmit_interval_ms != 300:
            lines.append(f"  transmit-interval {b.transmit_interval_ms}")
        if b.echo_mode:
            lines.append("  echo-mode")
            if b.echo_interval_ms != 50:
                lines += [f"  echo transmit-interval {b.echo_interval_ms}",
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
            lines += _policy(pp, plan.asn)
        lines += [f"router bgp {plan.asn}"]
        if plan.router_id is not None:
            lines.append(f" bgp router-id {plan.router_id}")
        # Our policy is the route-maps above; FRR's eBGP default (announce nothing without a
        # policy) and its import check (announce only what is in the RIB) do not apply to VIPs.
        lines += [" no bgp ebgp-requires-policy", " no bgp network import-check", " no bgp default ipv4-unicast"]
        if any(pp.peer.graceful_restart for pp in plan.peers):
            # The F bit: our forwarding (the nftables table) survives a restart of gatelb and FRR,
            # so the router keeps the stale routes through the new session's OPEN until our
            # End-of-RIB rather than dropping them at the OPEN.
            lines.append(" bgp graceful-restart preserve-fw-state")
        for pp in plan.peers:
            lines += _neighbor(pp)
        for family in (4, 6):
            lines += _family(plan, family)
        lines += ["exit", "!"]
        lines += _bfd(plan.profiles)
    return "\n".join(lines) + "\nend\n"


def daemon_files(text: str) -> dict[str, str]:
    """The rendered configuration as one startup file per daemon (each rejects the others'
    sections): the `bfd` block to bfdd, the rest to bgpd, the header to each. A daemon that
    starts from its file has everything before its first session comes up, in one read: no
    session opens with half the prefixes (which would end a graceful restart's stale routes
    early) and a start with 10,000 VIPs does not go through frr-reload.py."""
    lines = text.splitlines()
    head_end = lines.index("!")
    head = [line for line in lines[:head_end] if not line.startswith("service ")]
    parts: dict[str, list[str]] = {"bgpd": [], "bfdd": []}
    target = "bgpd"
    for line in lines[head_end + 1:]:
        if line == "end":
            continue
        if line == "bfd":
            target = "bfdd"
        parts[target].append(line)
        if target == "bfdd" and line == "exit":
            target = "bgpd"
    return {"zebra": "\n".join(head) + "\n", **{d: "\n".join([*head, *body]) + "\n" for d, body in parts.items()}}


def quick_changes(old: str, new: str) -> list[str] | None:
    """The vtysh commands that turn rendered `old` into `new` when they differ only in prefixes
    (prefix-list entries and `network` lines: a VIP that can or can no longer be served), else
    None (then frr-reload.py diffs the whole configuration). One vtysh call instead of
    frr-reload's dozens is what keeps a withdrawal fast.

    Order: withdrawn networks first; prefix-list entries added before stale ones are removed, so
    an entry renumbered by a removal before it is never missing (a same-seq entry is replaced)."""
    def split(text: str) -> tuple[list[str], dict[str, str], dict[tuple[str, str], str], str]:
        rest: list[str] = []
        lists: dict[str, str] = {}  # "ip prefix-list NAME seq N" -> the line
        networks: dict[tuple[str, str], str] = {}  # (family line, prefix) -> network line
        family, asn = "", ""
        for line in text.splitlines():
            if line.startswith(("ip prefix-list ", "ipv6 prefix-list ")):
                lists[" ".join(line.split()[:5])] = line
                continue
            if line.startswith("router bgp "):
                asn = line
            if line.startswith(" address-family "):
                family = line.strip()
            if line.startswith("  network "):
                networks[(family, line.split()[1])] = line.strip()
                continue
            rest.append(line)
        return rest, lists, networks, asn

    old_rest, old_lists, old_nets, asn = split(old)
    new_rest, new_lists, new_nets, _ = split(new)
    if old_rest != new_rest or not asn:
        return None
    out: list[str] = ["configure terminal"]

    def networks(keys: list[tuple[str, str]], prefix: str, source: dict[tuple[str, str], str]) -> None:
        for family in sorted({f for f, _ in keys}):
            out.extend([asn, family, *(f"{prefix}{source[k]}" for k in keys if k[0] == family), "exit-address-family",
                        "exit"])

    networks(sorted(old_nets.keys() - new_nets.keys()), "no ", old_nets)
    out += [line for key, line in new_lists.items() if old_lists.get(key) != line]
    out += [f"no {line}" for key, line in old_lists.items() if key not in new_lists]
    networks(sorted(new_nets.keys() - old_nets.keys()), "", new_nets)
    return out if len(out) > 1 else []
