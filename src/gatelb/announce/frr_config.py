"""The FRR configuration of one gateway, rendered purely from its BGP plan (golden tests).

One text for every daemon (zebra, bgpd, bfdd), in FRR's integrated format: it is applied with
FRR's own frr-reload.py, which diffs it against the running configuration and sends only the
difference through vtysh, so a change never drops a session.

Each peer gets an outbound route-map that permits exactly its prefixes (by route tag: one per
group of prefixes with the same peers and attributes, see `tags`) and denies the rest, so one
`network` list can serve peers that are given different VIPs. The map always exists (its final
deny), so a peer with nothing to announce announces nothing rather than everything.
"""

from __future__ import annotations

import zlib

from gatelb.announce.decide import Attributes, BGPPlan, PeerPlan
from gatelb.model import BFDProfile, IPNetwork

FINAL_DENY_SEQ = 65535
TAG_MAX = 4294967295  # FRR's route tags: 1-4294967295
SEQ_SPAN = FINAL_DENY_SEQ - 1  # a peer's route-map entries: 1-65534, then the final deny
# FRR shows well-known communities by name; written the same way, a reload sees no difference.
WELL_KNOWN = {"65535:0": "graceful-shutdown", "65535:666": "blackhole", "65535:65281": "no-export",
              "65535:65282": "no-advertise", "65535:65283": "local-AS", "65535:65284": "no-peer"}


def route_map(peer: str) -> str:
    return f"gatelb-{peer}-out"


def tag_map(tag: int) -> str:
    return f"gatelb-tag-{tag}"


def _probe(wanted: int, taken: set[int], span: int) -> int:
    while wanted in taken:
        wanted = wanted % span + 1
    taken.add(wanted)
    return wanted


def _hash(text: str, span: int) -> int:
    return zlib.crc32(text.encode()) % span + 1


def tags(plan: BGPPlan) -> dict[IPNetwork, int]:
    """Each prefix's route tag: one per distinct "which peers, with which attributes" (the
    as-path prepend of an active-standby standby left out: it applies to every prefix alike).

    The tag is set where the prefix is originated (`network P route-map gatelb-tag-T`) and each
    peer's outbound route-map permits the tags it is given (`match tag T`), so the policy has a
    few entries whatever the number of VIPs. (Per-prefix prefix-lists instead: FRR 8.4 loads
    each entry through its YANG layer, quadratic in the list's size: minutes at 10,000.) A tag
    comes from a hash of what it stands for (the next free number on a collision), so a VIP
    added or removed never renumbers the others."""
    by_prefix: dict[IPNetwork, list[str]] = {}
    for pp in plan.peers:
        for prefix, a in pp.prefixes:
            by_prefix.setdefault(prefix, []).append(f"{pp.peer.name}/{a.local_pref}/{','.join(a.communities)}")
    keys = {prefix: "|".join(sorted(v)) for prefix, v in by_prefix.items()}
    taken: set[int] = set()
    numbers = {key: _probe(_hash(key, TAG_MAX), taken, TAG_MAX) for key in sorted(set(keys.values()))}
    return {prefix: numbers[key] for prefix, key in keys.items()}


def _tag_maps(tagged: dict[IPNetwork, int]) -> list[str]:
    lines: list[str] = []
    for tag in sorted(set(tagged.values())):
        lines += [f"route-map {tag_map(tag)} permit 10", f" set tag {tag}", "exit", "!"]
    return lines


def _policy(plan: PeerPlan, asn: int, tagged: dict[IPNetwork, int]) -> list[str]:
    name = plan.peer.name
    mine: dict[int, Attributes] = {}
    for prefix, attrs in plan.prefixes:
        mine.setdefault(tagged[prefix], attrs)
    maps: list[str] = []
    taken: set[int] = set()
    entries = sorted((_probe(_hash(str(tag), SEQ_SPAN), taken, SEQ_SPAN), tag) for tag in sorted(mine))
    for seq, tag in entries:
        attrs = mine[tag]
        maps += [f"route-map {route_map(name)} permit {seq}", f" match tag {tag}"]
        if attrs.local_pref is not None:
            maps.append(f" set local-preference {attrs.local_pref}")
        if attrs.as_path_prepend:
            maps.append(f" set as-path prepend {' '.join([str(asn)] * attrs.as_path_prepend)}")
        maps += [*_communities(attrs), "exit", "!"]
    return [*maps, f"route-map {route_map(name)} deny {FINAL_DENY_SEQ}", "exit", "!"]


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


def _family(plan: BGPPlan, family: int, tagged: dict[IPNetwork, int]) -> list[str]:
    peers = [pp for pp in plan.peers if pp.peer.peer_address.version == family]
    prefixes = [p for p in plan.prefixes if p.version == family]
    if not peers:
        return []
    lines = [f" address-family {'ipv4' if family == 4 else 'ipv6'} unicast"]
    lines += [f"  network {p} route-map {tag_map(tagged[p])}" for p in prefixes]
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
        tagged = tags(plan)
        lines += _tag_maps(tagged)
        for pp in plan.peers:
            lines += _policy(pp, plan.asn, tagged)
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
            lines += _family(plan, family, tagged)
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


def _split(text: str) -> tuple[list[str], dict[str, list[str]], dict[tuple[str, str], str], str]:
    """(the other lines, the top-level route-map blocks by header, the `network` lines by
    (address family, prefix), the `router bgp` line)."""
    rest: list[str] = []
    maps: dict[str, list[str]] = {}
    networks: dict[tuple[str, str], str] = {}
    family, asn, block = "", "", None
    for line in text.splitlines():
        if line.startswith("route-map "):
            block = maps.setdefault(line, [line])
            continue
        if block is not None:
            if line == "!":
                block = None
            else:
                block.append(line)
            continue
        if line.startswith("router bgp "):
            asn = line
        if line.startswith(" address-family "):
            family = line.strip()
        if line.startswith("  network "):
            networks[(family, line.split()[1])] = line.strip()
            continue
        rest.append(line)
    return rest, maps, networks, asn


def quick_changes(old: str, new: str) -> list[str] | None:
    """The vtysh commands that turn rendered `old` into `new` when they differ only in prefixes
    (`network` lines: a VIP that can or can no longer be served) and in whole route-map entries
    coming or going (the tag of a new group of prefixes), else None (then frr-reload.py diffs
    the whole configuration). One vtysh call of a few commands instead of frr-reload's diff of
    the whole configuration is what keeps a withdrawal fast at 10,000 VIPs.

    Order: withdrawn networks first; new route-map entries before the networks that need them;
    entries no network uses any more last."""
    old_rest, old_maps, old_nets, asn = _split(old)
    new_rest, new_maps, new_nets, _ = _split(new)
    if old_rest != new_rest or not asn:
        return None
    if any(old_maps[h] != new_maps[h] for h in old_maps.keys() & new_maps.keys()):
        return None  # an entry's attributes changed: frr-reload.py works out the lines
    out: list[str] = ["configure terminal"]

    def networks(keys: list[tuple[str, str]], prefix: str, source: dict[tuple[str, str], str]) -> None:
        for family in sorted({f for f, _ in keys}):
            out.extend([asn, family, *(f"{prefix}{source[k]}" for k in keys if k[0] == family), "exit-address-family",
                        "exit"])

    bare = {k: " ".join(v.split()[:2]) for k, v in old_nets.items()}  # `no network P`
    networks(sorted(old_nets.keys() - new_nets.keys()), "no ", bare)
    for header in new_maps.keys() - old_maps.keys():
        out += new_maps[header]
    networks(sorted(k for k in new_nets if old_nets.get(k) != new_nets[k]), "", new_nets)
    out += [f"no {header}" for header in old_maps.keys() - new_maps.keys()]
    return out if len(out) > 1 else []
