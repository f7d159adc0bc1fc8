"""Who answers ARP/NDP for which VIP on which interface: the L2 election's inputs, pure.

The election itself is VRRP (keepalived, gatelb.announce.keepalived): exactly one member of the
GatewayGroup is MASTER of a VRRP instance and holds the instance's VIPs as addresses on the
interface, so only its MAC answers ARP (IPv4) and NDP (IPv6) for them.

Spreading. The VIPs of one interface and family are split over N instances, N the number of
members that may announce them (the GatewayGroup's members, narrowed by the advertisement's
`nodes`): VIP v goes to instance k = int(v) mod N, a split that does not move the other VIPs
when one is added or removed. Member i's priority in instance k is 254 - ((i - k) mod N): every
member is the preferred owner of one instance and the next in line for the one before it.

Health. The priority also falls by N for every VIP of the instance this member cannot serve (no
backend up here), so a member that serves more of the instance's VIPs always outbids one that
serves fewer, whatever the ranks; a member that can serve none of them steps down (FAULT, -254).
The penalty reaches keepalived through a track file, never through a reload.

Router IDs. Every distinct member set gets N consecutive VRIDs (1-255), in the order of the sorted
sets, from the configuration alone: every member computes the same IDs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gatelb.announce.decide import L2Claim
from gatelb.model import GatewayGroup, IPAddress, L2Advertisement, ValidationError

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
TOP_PRIORITY = 254  # 255 is reserved for a VRRP address owner
FAULT = -254  # a track value at or below -254 puts the instance in FAULT (keepalived.conf(5))
MAX_VRID = 255


@dataclass(frozen=True, slots=True)
class Link:
    """One interface of this gateway: its name and addresses (read by the announcer)."""

    name: str
    addresses: tuple[IPInterface, ...] = ()
    up: bool = True


@dataclass(frozen=True, slots=True)
class VrrpInstance:
    name: str  # gatelb-<interface>-v<family>-<vrid>
    interface: str
    family: int
    vrid: int
    priority: int  # this member's base priority
    vips: tuple[IPAddress, ...]  # sorted
    members: tuple[str, ...]  # the member set, in the group's order
    preferred: str  # the member whose rank is 0
    track: int  # added to the priority through the track file (0, -N per unservable VIP, FAULT)
    unservable: tuple[IPAddress, ...] = ()


@dataclass(frozen=True, slots=True)
class L2Plan:
    instances: tuple[VrrpInstance, ...]  # sorted by name

    @property
    def empty(self) -> bool:
        return not self.instances


EMPTY_L2 = L2Plan(())


def _key(a: IPAddress) -> tuple[int, int]:
    return (a.version, int(a))


def member_sets(group: GatewayGroup, advertisements: Iterable[L2Advertisement]) -> dict[str, tuple[str, ...]]:
    """Advertisement name -> the members that may announce its VIPs, in the group's order."""
    names = [m.name for m in group.members]
    return {a.name: tuple(n for n in names if not a.nodes or n in a.nodes) for a in advertisements}


def vrid_bases(sets: Iterable[tuple[str, ...]]) -> dict[tuple[str, ...], int]:
    bases: dict[tuple[str, ...], int] = {}
    nxt = 1
    for s in sorted(set(sets)):
        if s:
            bases[s] = nxt
            nxt += len(s)
    return bases


def interface_for(vip: IPAddress, links: Mapping[str, Link]) -> str | None:
    """The interface whose subnet holds the VIP (the longest prefix; host routes, such as the VIP
    itself added by the election, do not count)."""
    best: tuple[int, str] | None = None
    for link in links.values():
        for addr in link.addresses:
            net = addr.network
            if net.version != vip.version or net.prefixlen == net.max_prefixlen or vip not in net:
                continue
            cand = (-net.prefixlen, link.name)
            if best is None or cand < best:
                best = cand
    return best[1] if best else None


_interface_for = interface_for  # the name active-standby (ha_control) imports


def plan_l2(claims: Iterable[L2Claim], group: GatewayGroup | None, advertisements: Mapping[str, L2Advertisement],
            node: str, links: Mapping[str, Link]) -> tuple[L2Plan, list[ValidationError]]:
    claims = list(claims)
    if not claims:
        return EMPTY_L2, []
    if group is None:  # decide.check reports it
        return EMPTY_L2, []
    sets = member_sets(group, advertisements.values())
    bases = vrid_bases(sets.values())
    errors: list[ValidationError] = []
    top = max((b + len(s) - 1 for s, b in bases.items()), default=0)
    if top > MAX_VRID:
        errors.append(ValidationError("GatewayGroup", group.name, "spec.members", (
            f"the L2Advertisements' member sets need {top} VRRP router IDs; VRRP has {MAX_VRID}")))
    for name in sorted(advertisements):
        for i, iface in enumerate(advertisements[name].interfaces):
            if iface not in links:
                errors.append(ValidationError(L2Advertisement.KIND, name, f"spec.interfaces[{i}]",
                                              f"no interface {iface!r} on gateway {node}"))
    # (interface, family, member set, k) -> [(vip, servable)]
    buckets: dict[tuple[str, int, tuple[str, ...], int], list[tuple[IPAddress, bool]]] = {}
    for claim in sorted(claims, key=lambda c: _key(c.vip)):
        members = sets[claim.advertisement]
        if node not in members:
            continue
        ifaces = claim.interfaces
        if not ifaces:
            found = interface_for(claim.vip, links)
            if found is None:
                errors.append(ValidationError(L2Advertisement.KIND, claim.advertisement, "spec.interfaces", (
                    f"{claim.vip} is on no subnet of gateway {node}'s interfaces "
                    f"({', '.join(sorted(links)) or 'none'}): name the interface")))
                continue
            ifaces = (found,)
        k = int(claim.vip) % len(members)
        for iface in ifaces:
            buckets.setdefault((iface, claim.vip.version, members, k), []).append((claim.vip, claim.servable))
    if errors:
        return EMPTY_L2, errors
    instances = []
    for (iface, family, members, k), entries in buckets.items():
        n = len(members)
        me = members.index(node)
        vrid = bases[members] + k
        unservable = tuple(v for v, ok in entries if not ok)
        track = FAULT if len(unservable) == len(entries) else -n * len(unservable)
        instances.append(VrrpInstance(
            name=f"gatelb-{iface}-v{family}-{vrid}", interface=iface, family=family, vrid=vrid,
            priority=TOP_PRIORITY - (me - k) % n, vips=tuple(v for v, _ in entries), members=members,
            preferred=members[k], track=track, unservable=unservable))
    return L2Plan(tuple(sorted(instances, key=lambda i: i.name))), []
