"""What this gateway announces where, from the synced state: pure, so every rule has a unit test.

A VIP *can be served* when at least one active load balancer on it has a backend that takes new
connections (state.services holds only active load balancers, with health and drain applied).
Only such VIPs are announced; when one can no longer be served its route is withdrawn.

Rules (MetalLB's meaning for the same fields):
- a BGPAdvertisement with no ipAddressPools covers every pool, with no peers every peer, with no
  nodes every gateway; a BGPPeer with no nodes peers from every gateway;
- an IPv4 peer gets the IPv4 prefixes, an IPv6 peer the IPv6 ones;
- the prefix is the VIP's /aggregationLength (/aggregationLengthV6); two advertisements giving
  the same prefix to one peer merge: the highest localPref, the union of communities;
- a gateway speaks BGP with one AS number and one router ID (one FRR `router bgp`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gatelb.model import (
    BFDProfile,
    BGPAdvertisement,
    BGPPeer,
    ConfigObject,
    GatewayGroup,
    IPAddress,
    IPNetwork,
    IPPool,
    L2Advertisement,
    ObjectRef,
    SyncedState,
    ValidationError,
)


@dataclass(frozen=True, slots=True)
class Attributes:
    local_pref: int | None = None
    communities: tuple[str, ...] = ()
    as_path_prepend: int = 0  # an active-standby standby's path: our ASN this many extra times


@dataclass(frozen=True, slots=True)
class PeerPlan:
    peer: BGPPeer
    bfd: BFDProfile | None
    prefixes: tuple[tuple[IPNetwork, Attributes], ...]  # sorted by prefix


@dataclass(frozen=True, slots=True)
class BGPPlan:
    asn: int
    router_id: ipaddress.IPv4Address | None
    peers: tuple[PeerPlan, ...]  # sorted by peer name

    @property
    def prefixes(self) -> tuple[IPNetwork, ...]:
        found = {p for plan in self.peers for p, _ in plan.prefixes}
        return tuple(sorted(found, key=_net_key))

    @property
    def profiles(self) -> tuple[BFDProfile, ...]:
        found = {plan.bfd.name: plan.bfd for plan in self.peers if plan.bfd is not None}
        return tuple(found[n] for n in sorted(found))


@dataclass(frozen=True, slots=True)
class L2Claim:
    """A VIP this gateway may answer ARP/NDP for (the election decides who actually does).

    Every VIP of an active load balancer in the advertisement's pools is claimed, servable or
    not: whether this gateway can serve it only weighs in the election (gatelb.announce.l2), so
    a health change never changes the keepalived configuration, only a track file."""

    vip: IPAddress
    interfaces: tuple[str, ...]  # empty: the interface whose subnet holds the VIP
    advertisement: str
    servable: bool = True  # at least one backend up here


@dataclass(frozen=True, slots=True)
class Plan:
    bgp: BGPPlan | None
    l2: tuple[L2Claim, ...]
    servable: Mapping[IPAddress, tuple[str, ...]]  # every VIP that can be served -> its load balancers

    @property
    def empty(self) -> bool:
        return self.bgp is None and not self.l2


EMPTY = Plan(None, (), {})


def _net_key(n: IPNetwork) -> tuple[int, int, int]:
    return (n.version, int(n.network_address), n.prefixlen)


def has_announcements(config: Mapping[ObjectRef, ConfigObject]) -> bool:
    return any(isinstance(o, (BGPPeer, BGPAdvertisement, L2Advertisement)) for o in config.values())


def servable(state: SyncedState) -> dict[IPAddress, tuple[str, ...]]:
    out: dict[IPAddress, list[str]] = {}
    for name in sorted(state.services):
        svc = state.services[name]
        if svc.backends:
            out.setdefault(svc.vip, []).append(name)
    return {vip: tuple(names) for vip, names in out.items()}


def _pool_names(vip: IPAddress, lbs: Iterable[str], state: SyncedState) -> set[str]:
    """The pools a VIP belongs to: the pool its address was allocated from, else (a fixed
    frontend.ip) every pool that contains it."""
    named = {p for lb in lbs if (p := state.pool_of.get(lb))}
    return named or {p.name for p in state.pools if p.contains(vip)}


def _on(node: str, nodes: tuple[str, ...]) -> bool:
    return not nodes or node in nodes


def check(config: Mapping[ObjectRef, ConfigObject], pools: Iterable[IPPool], node: str,
          l2_groups: bool = True) -> list[ValidationError]:
    """Problems across objects: unknown pools, peers, profiles and gateways; two AS numbers or
    router IDs, or one peer address twice, on this gateway. `l2_groups`: L2 is elected among a
    GatewayGroup's members (standalone; Kubernetes elects with Leases and needs none)."""
    pool_names = {p.name for p in pools}
    peers = {o.name: o for o in config.values() if isinstance(o, BGPPeer)}
    profiles = {o.name for o in config.values() if isinstance(o, BFDProfile)}
    groups = [o for o in config.values() if isinstance(o, GatewayGroup)]
    members = {m.name for g in groups for m in g.members}
    errors: list[ValidationError] = []

    def nodes_known(kind: str, name: str, nodes: tuple[str, ...]) -> None:
        for i, n in enumerate(nodes):
            if groups and n not in members:
                errors.append(ValidationError(kind, name, f"spec.nodes[{i}]",
                                              f"{n!r} is not a member of any GatewayGroup"))

    for obj in sorted(config.values(), key=lambda o: (o.KIND, o.name)):
        if isinstance(obj, (BGPAdvertisement, L2Advertisement)):
            for i, pool in enumerate(obj.ip_address_pools):
                if pool not in pool_names:
                    errors.append(ValidationError(obj.KIND, obj.name, f"spec.ipAddressPools[{i}]",
                                                  f"unknown IPPool {pool!r}"))
            nodes_known(obj.KIND, obj.name, obj.nodes)
        if isinstance(obj, BGPAdvertisement):
            for i, peer in enumerate(obj.peers):
                if peer not in peers:
                    errors.append(ValidationError(obj.KIND, obj.name, f"spec.peers[{i}]", f"unknown BGPPeer {peer!r}"))
        if isinstance(obj, BGPPeer):
            if obj.bfd_profile is not None and obj.bfd_profile not in profiles:
                errors.append(ValidationError(obj.KIND, obj.name, "spec.bfdProfile",
                                              f"unknown BFDProfile {obj.bfd_profile!r}"))
            nodes_known(obj.KIND, obj.name, obj.nodes)
    if l2_groups:
        errors += _l2_groups(config, groups, node)
    mine = [peers[n] for n in sorted(peers) if _on(node, peers[n].nodes)]
    if mine:
        first = mine[0]
        seen: dict[tuple[IPAddress, int], str] = {}
        for p in mine:
            if p.my_asn != first.my_asn:
                errors.append(ValidationError(p.KIND, p.name, "spec.myASN", (
                    f"{p.my_asn} differs from BGPPeer {first.name}'s {first.my_asn}: a gateway speaks BGP "
                    f"with one AS number ({node})")))
            if p.router_id is not None and first.router_id is not None and p.router_id != first.router_id:
                errors.append(ValidationError(p.KIND, p.name, "spec.routerID", (
                    f"{p.router_id} differs from BGPPeer {first.name}'s {first.router_id} ({node})")))
            key = (p.peer_address, p.peer_port)
            if key in seen:
                errors.append(ValidationError(p.KIND, p.name, "spec.peerAddress",
                                              f"{p.peer_address} is already BGPPeer {seen[key]}'s"))
            seen.setdefault(key, p.name)
    return errors


def group_of(groups: Iterable[GatewayGroup], node: str) -> GatewayGroup | None:
    return next((g for g in sorted(groups, key=lambda g: g.name) if any(m.name == node for m in g.members)), None)


def _l2_groups(config: Mapping[ObjectRef, ConfigObject], groups: list[GatewayGroup],
               node: str) -> list[ValidationError]:
    """L2 needs to know who else answers on the segment: this gateway in exactly one group."""
    advs = sorted((o for o in config.values() if isinstance(o, L2Advertisement) and _on(node, o.nodes)),
                  key=lambda o: o.name)
    if not advs:
        return []
    mine = sorted((g for g in groups if any(m.name == node for m in g.members)), key=lambda g: g.name)
    if not mine:
        return [ValidationError(advs[0].KIND, advs[0].name, "", (
            f"gateway {node} is in no GatewayGroup: L2 needs the group to elect one owner per VIP "
            f"(add a GatewayGroup listing {node} among spec.members, or name the node with --node)"))]
    return [ValidationError(g.KIND, g.name, "spec.members", (
        f"gateway {node} is already a member of GatewayGroup {mine[0].name}: one group per gateway"))
        for g in mine[1:]]


def decide(state: SyncedState, node: str, l2_groups: bool = True) -> tuple[Plan, list[ValidationError]]:
    """The plan for gateway `node`, or EMPTY and the problems when the configuration is wrong."""
    config = state.config
    if not has_announcements(config):
        return EMPTY, []
    errors = check(config, state.pools, node, l2_groups)
    if errors:
        return EMPTY, errors
    vips = servable(state)
    pools_of = {vip: _pool_names(vip, lbs, state) for vip, lbs in vips.items()}
    active = _active(state)
    pools_of_active = {vip: _pool_names(vip, lbs, state) for vip, lbs in active.items()}
    return Plan(_bgp(state, node, vips, pools_of), _l2(state, node, active, pools_of_active, vips), vips), []


def _active(state: SyncedState) -> dict[IPAddress, tuple[str, ...]]:
    out: dict[IPAddress, list[str]] = {}
    for name in sorted(state.services):
        out.setdefault(state.services[name].vip, []).append(name)
    return {vip: tuple(names) for vip, names in out.items()}


def _covers(adv_pools: tuple[str, ...], vip_pools: set[str]) -> bool:
    return not adv_pools or bool(vip_pools.intersection(adv_pools))


def _bgp(state: SyncedState, node: str, vips: Mapping[IPAddress, tuple[str, ...]],
         pools_of: Mapping[IPAddress, set[str]]) -> BGPPlan | None:
    peers = state.config_of(BGPPeer)
    mine = [peers[n] for n in sorted(peers) if _on(node, peers[n].nodes)]
    if not mine:
        return None
    profiles = state.config_of(BFDProfile)
    advs = [a for _, a in sorted(state.config_of(BGPAdvertisement).items()) if _on(node, a.nodes)]
    plans = []
    for peer in mine:
        chosen: dict[IPNetwork, Attributes] = {}
        for adv in advs:
            if adv.peers and peer.name not in adv.peers:
                continue
            for vip in vips:
                if vip.version != peer.peer_address.version or not _covers(adv.ip_address_pools, pools_of[vip]):
                    continue
                length = adv.aggregation_length if vip.version == 4 else adv.aggregation_length_v6
                prefix = ipaddress.ip_network(f"{vip}/{length}", strict=False)
                chosen[prefix] = _merge(chosen.get(prefix), adv)
        plans.append(PeerPlan(peer, profiles.get(peer.bfd_profile) if peer.bfd_profile else None,
                              tuple(sorted(chosen.items(), key=lambda kv: _net_key(kv[0])))))
    router_id = next((p.router_id for p in mine if p.router_id is not None), None)
    return BGPPlan(mine[0].my_asn, router_id, tuple(plans))


def _merge(old: Attributes | None, adv: BGPAdvertisement) -> Attributes:
    if old is None:
        return Attributes(adv.local_pref, tuple(sorted(set(adv.communities))))
    prefs = [p for p in (old.local_pref, adv.local_pref) if p is not None]
    return Attributes(max(prefs) if prefs else None, tuple(sorted({*old.communities, *adv.communities})))


def _l2(state: SyncedState, node: str, vips: Mapping[IPAddress, tuple[str, ...]],
        pools_of: Mapping[IPAddress, set[str]], can_serve: Mapping[IPAddress, object]) -> tuple[L2Claim, ...]:
    claims: dict[IPAddress, L2Claim] = {}
    for name, adv in sorted(state.config_of(L2Advertisement).items()):
        if not _on(node, adv.nodes):
            continue
        for vip in vips:
            if vip not in claims and _covers(adv.ip_address_pools, pools_of[vip]):
                claims[vip] = L2Claim(vip, adv.interfaces, name, vip in can_serve)
    return tuple(claims[v] for v in sorted(claims, key=lambda a: (a.version, int(a))))
