"""The announcement kinds (BFDProfile, BGPPeer, BGPAdvertisement, L2Advertisement, GatewayGroup) as
pydantic documents, and their parsers for the file loader's CONFIG_KINDS and the Kubernetes
source's CONFIG_RESOURCES.

Field names, defaults and ranges are MetalLB's (metallb.io BGPPeer, BFDProfile, BGPAdvertisement,
L2Advertisement), so a MetalLB object is read as it is: `apiVersion: metallb.io/v1beta1` (or
v1beta2 for BGPPeer) is accepted next to ours. Fields MetalLB has that gatelb does not honour yet
(nodeSelectors, passwordSecret, vrf, ipAddressPoolSelectors...) are rejected as unknown rather
than silently ignored: ignoring a node selector would announce from every gateway.

Checks across objects (an advertisement naming an unknown pool or peer, a peer naming an unknown
BFD profile, two local ASNs on one gateway) need the whole configuration, so they live with the
announcer (gatelb.announce.decide.check).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

import pydantic
from pydantic import AfterValidator, Field, PlainValidator, WithJsonSchema

from gatelb.model import (
    HA_ACTIVE_ACTIVE,
    BFDProfile,
    BGPAdvertisement,
    BGPPeer,
    ConfigObject,
    GatewayGroup,
    GatewayMember,
    L2Advertisement,
)
from gatelb.sources import errors as pyd_errors
from gatelb.sources.schema import IPField, Metadata, Name, Strict, _bounds, _ranged, problem, show

ASN_MIN, ASN_MAX = 1, 4294967295  # 0 is reserved (RFC 7607): no router accepts it
BFD_MS_MIN, BFD_MS_MAX = 10, 60000
APIVersion = Literal["gatelb.io/v1alpha1", "metallb.io/v1beta1", "metallb.io/v1beta2"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_COMMUNITY = re.compile(r"(\d+):(\d+)")
_LARGE = re.compile(r"large:(\d+):(\d+):(\d+)")
WELL_KNOWN = {"no-export", "no-advertise", "local-AS", "no-peer", "blackhole", "graceful-shutdown"}


def parse_duration(value: Any) -> int:
    """A Go duration as Kubernetes writes it ("90s", "1m30s", "3s") -> whole seconds."""
    if not isinstance(value, str):
        raise problem(f"expected a duration such as '90s' or '1m30s', got {show(value)}")
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(value):
        if m.start() != pos:
            break
        total += float(m[1]) * _UNIT_S[m[2]]
        pos = m.end()
    if not value or pos != len(value):
        raise problem(f"{value!r} is not a duration (such as '90s' or '1m30s')")
    if total != int(total):
        raise problem(f"{value!r}: BGP timers are whole seconds")
    return int(total)


def parse_community(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"expected a community such as '65535:65282', got {show(value)}")
    if value in WELL_KNOWN:
        return value
    m = _COMMUNITY.fullmatch(value)
    if m is not None and all(int(x) <= 65535 for x in m.groups()):
        return value
    m = _LARGE.fullmatch(value)
    if m is not None and all(int(x) <= ASN_MAX for x in m.groups()):
        return value
    raise problem(f"{value!r} is not a community (AA:NN with 0-65535 each, large:A:B:C, or one of "
                  f"{', '.join(sorted(WELL_KNOWN))})")


def _router_id(value: Any) -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise problem(f"expected a router ID (an IPv4 address), got {show(value)}")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise problem(f"{value!r} is not a router ID (an IPv4 address)") from None


ASN = Annotated[int, _ranged(ASN_MIN, ASN_MAX, "an AS number"), _bounds(ASN_MIN, ASN_MAX)]
BFDMillis = Annotated[int, _ranged(BFD_MS_MIN, BFD_MS_MAX, None, " ms"), _bounds(BFD_MS_MIN, BFD_MS_MAX)]
Multiplier = Annotated[int, _ranged(2, 255, None), _bounds(2, 255)]
TTL = Annotated[int, _ranged(1, 254, None), _bounds(1, 254)]
Duration = Annotated[int, PlainValidator(parse_duration), WithJsonSchema({"type": "string"})]
Community = Annotated[str, PlainValidator(parse_community), WithJsonSchema({"type": "string"})]
RouterID = Annotated[ipaddress.IPv4Address, PlainValidator(_router_id), WithJsonSchema({"type": "string"})]
BGPPort = Annotated[int, _ranged(1, 16384, "a BGP port"), _bounds(1, 16384)]  # MetalLB's bound
Interface = Annotated[str, AfterValidator(lambda v: _interface(v)), Field(json_schema_extra={"maxLength": 15})]


def _interface(name: str) -> str:
    if not 1 <= len(name) <= 15 or "/" in name or name.strip() != name or name in (".", ".."):
        raise problem(f"{name!r} is not an interface name (1-15 characters, no '/' or spaces)")
    return name


# --- documents ---------------------------------------------------------------------------------


class BFDProfileSpec(Strict):
    receive_interval: BFDMillis = 300
    transmit_interval: BFDMillis = 300
    detect_multiplier: Multiplier = 3
    echo_interval: BFDMillis = 50
    echo_mode: bool = False
    passive_mode: bool = False
    minimum_ttl: TTL = 254


class BGPPeerSpec(Strict):
    my_asn: ASN = Field(alias="myASN")
    peer_asn: ASN = Field(alias="peerASN")
    peer_address: IPField
    peer_port: BGPPort = 179
    source_address: IPField | None = None
    router_id: RouterID | None = Field(default=None, alias="routerID")
    hold_time: Duration | None = None
    keepalive_time: Duration | None = None
    connect_time: Duration | None = None
    password: str | None = None
    bfd_profile: Name | None = None
    ebgp_multi_hop: bool = False
    enable_graceful_restart: bool = False
    nodes: list[Name] = []  # standalone (Kubernetes: nodeSelectors, not supported yet)


class BGPAdvertisementSpec(Strict):
    ip_address_pools: list[Name] = []
    peers: list[Name] = []
    aggregation_length: Annotated[int, _ranged(0, 32, None), _bounds(0, 32)] = 32
    aggregation_length_v6: Annotated[int, _ranged(0, 128, None), _bounds(0, 128)] = Field(
        default=128, alias="aggregationLengthV6")
    local_pref: Annotated[int, _ranged(0, 4294967295, None), _bounds(0, 4294967295)] | None = None
    communities: list[Community] = []
    nodes: list[Name] = []


class L2AdvertisementSpec(Strict):
    ip_address_pools: list[Name] = []
    interfaces: list[Interface] = []
    nodes: list[Name] = []


class MemberSpec(Strict):
    name: Name
    address: IPField


def _interface_address(value: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if not isinstance(value, str) or "/" not in value:
        raise problem(f"expected an address with its prefix length such as '198.51.100.1/24', got {show(value)}")
    try:
        found = ipaddress.ip_interface(value)
    except ValueError:
        raise problem(f"{value!r} is not an address with its prefix length (such as '198.51.100.1/24')") from None
    if found.network.prefixlen == found.network.max_prefixlen:
        raise problem(f"{value!r}: the prefix length must be the backends' subnet (such as /24), not a host route")
    return found


InterfaceAddress = Annotated[ipaddress.IPv4Interface | ipaddress.IPv6Interface, PlainValidator(_interface_address),
                             WithJsonSchema({"type": "string"})]


class GatewayGroupSpec(Strict):
    interface: Interface
    members: Annotated[list[MemberSpec], Field(min_length=1)]
    mode: Literal["active-standby", "active-active"] | None = None
    backend_gateway: InterfaceAddress | None = None
    state_sync: bool = False


def _document(kind: str, spec: type[Strict]) -> type[Strict]:
    fields: dict[str, Any] = {"api_version": (APIVersion, ...), "kind": (Literal[kind], ...),
                              "metadata": (Metadata, ...), "spec": (spec, ...)}
    return pydantic.create_model(f"{kind}Document", __base__=Strict, **fields)


SPECS: dict[str, type[Strict]] = {
    "BFDProfile": BFDProfileSpec,
    "BGPPeer": BGPPeerSpec,
    "BGPAdvertisement": BGPAdvertisementSpec,
    "L2Advertisement": L2AdvertisementSpec,
    "GatewayGroup": GatewayGroupSpec,
}
DOCUMENTS = {kind: _document(kind, spec) for kind, spec in SPECS.items()}


# --- parsers: raw document -> model object, or the problems ------------------------------------

Problems = list[tuple[str, str]]


def _bfd(name: str, s: BFDProfileSpec, problems: Problems) -> BFDProfile:
    return BFDProfile(name, s.receive_interval, s.transmit_interval, s.detect_multiplier, s.echo_interval,
                      s.echo_mode, s.passive_mode, s.minimum_ttl)


def _peer(name: str, s: BGPPeerSpec, problems: Problems) -> BGPPeer:
    hold = s.hold_time if s.hold_time is not None else 90
    if hold != 0 and not 3 <= hold <= 65535:
        problems.append(("spec.holdTime", f"{hold} s is not a hold time (0, or 3-65535 s)"))
    if s.keepalive_time is not None:
        if s.keepalive_time > 65535:
            problems.append(("spec.keepaliveTime", f"{s.keepalive_time} s is not a keepalive time (0-65535 s)"))
        elif hold and s.keepalive_time >= hold:
            problems.append(("spec.keepaliveTime", f"{s.keepalive_time} s must be lower than spec.holdTime "
                                                   f"({hold} s)"))
    if s.connect_time is not None and not 1 <= s.connect_time <= 65535:
        problems.append(("spec.connectTime", f"{s.connect_time} s is not a connect time (1-65535 s)"))
    if s.source_address is not None and s.source_address.version != s.peer_address.version:
        problems.append(("spec.sourceAddress", f"{s.source_address} is not of the family of spec.peerAddress "
                                               f"{s.peer_address}"))
    return BGPPeer(name, s.my_asn, s.peer_asn, s.peer_address, s.peer_port, s.source_address, s.router_id,
                   hold, s.keepalive_time, s.connect_time, s.password, s.bfd_profile, s.ebgp_multi_hop,
                   tuple(s.nodes), graceful_restart=s.enable_graceful_restart)


def _bgp_adv(name: str, s: BGPAdvertisementSpec, problems: Problems) -> BGPAdvertisement:
    return BGPAdvertisement(name, tuple(s.ip_address_pools), tuple(s.peers), s.aggregation_length,
                            s.aggregation_length_v6, s.local_pref, tuple(s.communities), tuple(s.nodes))


def _l2_adv(name: str, s: L2AdvertisementSpec, problems: Problems) -> L2Advertisement:
    return L2Advertisement(name, tuple(s.ip_address_pools), tuple(s.interfaces), tuple(s.nodes))


def _group(name: str, s: GatewayGroupSpec, problems: Problems) -> GatewayGroup:
    seen: dict[str, int] = {}
    for i, m in enumerate(s.members):
        if m.name in seen:
            problems.append((f"spec.members[{i}].name", f"{m.name!r} is already spec.members[{seen[m.name]}]"))
        seen.setdefault(m.name, i)
    _ha_checks(s, problems)
    return GatewayGroup(name, s.interface, tuple(GatewayMember(m.name, m.address) for m in s.members),
                        s.mode or "", s.backend_gateway, s.state_sync)


def _ha_checks(s: GatewayGroupSpec, problems: Problems) -> None:
    if s.mode == HA_ACTIVE_ACTIVE:
        # Every member serves: nobody is the one to hold an address, and conntrackd's FTFW mode
        # replicates to one standby (docs/ha.md, "Active-active").
        if s.backend_gateway is not None:
            problems.append(("spec.backendGateway", "active-active has no active member to hold it: every member "
                                                    "serves (use nat: fullnat, see docs/ha.md)"))
        if s.state_sync:
            problems.append(("spec.stateSync", "not built for active-active (conntrackd replicates to one standby): "
                                               "the members choose the same backend for a flow instead"))
        return
    if s.mode is None:
        for field, given in (("spec.backendGateway", s.backend_gateway is not None), ("spec.stateSync", s.state_sync)):
            if given:
                problems.append((field, "needs spec.mode: active-standby (a member must be active to hold it)"))
        return
    if len(s.members) != 2:
        problems.append(("spec.members", f"active-standby needs exactly 2 members (got {len(s.members)}): "
                                         "conntrackd replicates state to one peer"))
    gw = s.backend_gateway
    if gw is None:
        problems.append(("spec.backendGateway", "active-standby needs it: the address the backends route "
                                                "through, held by the active member (such as 198.51.100.1/24)"))
    else:
        for i, m in enumerate(s.members):
            if m.address == gw.ip:
                problems.append(("spec.backendGateway", f"{gw.ip} is the address of member {m.name} "
                                                        f"(spec.members[{i}]): it must be an address of its own"))
            elif m.address.version == gw.version and m.address not in gw.network:
                problems.append(("spec.backendGateway", f"{gw} is not on the subnet of member {m.name}'s address "
                                                        f"{m.address} (spec.members[{i}]): the members must "
                                                        "share the backends' segment"))
    if s.state_sync and any(m.address.version != s.members[0].address.version for m in s.members):
        problems.append(("spec.stateSync", "the members' addresses must be of one family (conntrackd's UDP link)"))


_BUILD: dict[str, Any] = {
    "BFDProfile": _bfd,
    "BGPPeer": _peer,
    "BGPAdvertisement": _bgp_adv,
    "L2Advertisement": _l2_adv,
    "GatewayGroup": _group,
}


def parse(raw: dict[str, Any]) -> tuple[ConfigObject | None, Problems]:
    """One raw document of an announcement kind -> its model object, or None and the problems."""
    kind = raw.get("kind")
    try:
        doc = DOCUMENTS[str(kind)].model_validate(raw)
    except pydantic.ValidationError as exc:
        return None, list(pyd_errors.translate(exc))
    problems: Problems = []
    obj = _BUILD[str(kind)](doc.metadata.name, doc.spec, problems)  # type: ignore[attr-defined]
    return (None, problems) if problems else (obj, [])


PARSERS = dict.fromkeys(DOCUMENTS, parse)
