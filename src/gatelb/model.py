"""The desired state as immutable values.

Everything above this module (sources, IPAM, compiler, agent) passes these values around; nothing
here does I/O. A `DesiredState` is what a source produced after validation; a `ResolvedState` is
the same after IPAM gave every active load balancer a concrete frontend address, and is what the
data-plane compiler consumes.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

API_VERSION = "gatelb.io/v1alpha1"


# C0 and C1 controls, DEL, and the bidirectional overrides that can make text read differently
# from what it is: never shown raw in a message or a log line.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    return _ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def printable(text: str) -> str:
    """`text` with control characters escaped (\\n, \\x1b, \\u202e), so that input cannot forge log
    lines or hide itself in messages."""
    return _UNPRINTABLE.sub(_escape, text) if _UNPRINTABLE.search(text) else text


class ValidationError(ValueError):
    """Bad input. The message always names the object and the field.

    Format: ``<Kind> <name>: <field path>: <what is wrong>``, e.g.
    ``L4LB web: spec.frontend.port: 70000 is not a port (1-65535)``.
    """

    def __init__(self, kind: str, name: str, path: str, problem: str) -> None:
        self.kind = kind
        self.name = name
        self.path = path
        self.problem = problem
        text = f"{kind} {name}: {path}: {problem}" if path else f"{kind} {name}: {problem}"
        super().__init__(printable(text))


class ValidationErrors(ValueError):
    """Several independent problems found in one pass, so the user can fix them all at once."""

    def __init__(self, errors: list[ValidationError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class Protocol(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


class Algorithm(enum.StrEnum):
    RANDOM = "random"
    ROUNDROBIN = "roundrobin"
    SOURCEHASH = "sourcehash"
    # A hash of the flow into a Maglev table (dataplane/maglev.py): the same backend for a flow on
    # every gateway, few flows moved by a backend change. Every load balancer of an active-active
    # GatewayGroup's configuration uses it (docs/ha.md).
    MAGLEV = "maglev"


class NatMode(enum.StrEnum):
    DNAT = "dnat"  # keep the client's source address
    FULLNAT = "fullnat"  # also masquerade to the gateway's address towards the backend


class LBState(enum.StrEnum):
    ACTIVE = "active"
    DISABLE = "disable"


class CheckType(enum.StrEnum):
    TCP = "tcp"
    HTTP = "http"
    UDP = "udp"
    NONE = "none"


class NoBackendAction(enum.StrEnum):
    """What a new connection to a load balancer with no usable backend gets."""

    REJECT = "reject"  # TCP reset / ICMP port unreachable: the client fails at once
    DROP = "drop"  # silently dropped: the client times out


@dataclass(frozen=True, slots=True)
class Backend:
    address: IPAddress
    port: int
    weight: int = 1
    drain: bool = False

    @property
    def key(self) -> tuple[IPAddress, int]:
        return (self.address, self.port)

    def __str__(self) -> str:
        if self.address.version == 6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    type: CheckType = CheckType.TCP
    port: int | None = None  # None: the backend's own port
    interval_ms: int = 1000
    timeout_ms: int = 2000
    rise: int = 2
    fall: int = 3
    request_path: str = "/"
    host: str | None = None
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 399),)
    payload: str | None = None  # UDP: bytes sent (as UTF-8)
    expect: str | None = None  # UDP: substring the reply must contain


@dataclass(frozen=True, slots=True)
class Affinity:
    """ClientIP session affinity: a client keeps its backend until `timeout_seconds` of silence."""

    timeout_seconds: int = 10800


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    name: str
    port: int
    protocol: Protocol = Protocol.TCP
    frontend_ip: IPAddress | None = None  # None: allocate from `pool` or an autoAssign pool
    pool: str | None = None
    backends: tuple[Backend, ...] = ()
    algorithm: Algorithm = Algorithm.RANDOM
    affinity: Affinity | None = None
    source_ranges: tuple[IPNetwork, ...] = ()
    nat: NatMode = NatMode.DNAT
    state: LBState = LBState.ACTIVE
    check: HealthCheck = field(default_factory=HealthCheck)
    no_backend: NoBackendAction = NoBackendAction.REJECT
    # The family the frontend must have; derived from the backends when the IP is allocated.
    family: int = 4
    # DNS names (lowercase, no trailing dot) that get an A/AAAA record for the frontend address
    # (gatelb.dns); dns_ttl overrides the DNSProvider's TTL (external-dns's ttl annotation).
    hostnames: tuple[str, ...] = ()
    dns_ttl: int | None = None

    @property
    def active(self) -> bool:
        return self.state is LBState.ACTIVE


@dataclass(frozen=True, slots=True)
class AddressRange:
    """An inclusive range of addresses of one family."""

    first: IPAddress
    last: IPAddress

    @property
    def version(self) -> int:
        return self.first.version

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return False
        return ip.version == self.version and int(self.first) <= int(ip) <= int(self.last)

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


@dataclass(frozen=True, slots=True)
class IPPool:
    name: str
    ranges: tuple[AddressRange, ...]
    auto_assign: bool = True
    avoid_buggy_ips: bool = False  # skip .0 and .255 addresses, as MetalLB does

    def contains(self, ip: IPAddress) -> bool:
        return any(ip in r for r in self.ranges)


@dataclass(frozen=True, slots=True)
class DesiredState:
    """What the user asked for, validated one object at a time, before IPAM."""

    pools: tuple[IPPool, ...] = ()
    load_balancers: tuple[LoadBalancer, ...] = ()


@dataclass(frozen=True, slots=True)
class Service:
    """One active load balancer with its frontend resolved: the compiler's unit of work.

    `backends` are the ones that may take new connections (healthy, weight > 0, not draining);
    the agent filters them before compiling. An empty tuple means "no backend": new connections
    get `no_backend`.
    """

    name: str
    vip: IPAddress
    protocol: Protocol
    port: int
    backends: tuple[Backend, ...]
    algorithm: Algorithm = Algorithm.RANDOM
    affinity: Affinity | None = None
    source_ranges: tuple[IPNetwork, ...] = ()
    nat: NatMode = NatMode.DNAT
    no_backend: NoBackendAction = NoBackendAction.REJECT
    # Configured backends that take no new connections (weight 0, drain, health down). They keep
    # their counters, and their established connections keep flowing through conntrack.
    idle_backends: tuple[Backend, ...] = ()

    @property
    def family(self) -> int:
        return self.vip.version

    @property
    def frontend_key(self) -> tuple[IPAddress, Protocol, int]:
        return (self.vip, self.protocol, self.port)


@dataclass(frozen=True, slots=True)
class ResolvedState:
    """The services to program, sorted by name so compiled output is stable."""

    services: tuple[Service, ...] = ()

    def by_name(self) -> dict[str, Service]:
        return {s.name: s for s in self.services}


class OriginKind(enum.StrEnum):
    FILE = "file"  # an L4LB document of a standalone file or directory
    L4LB = "L4LB"  # a gatelb.io L4LB object in Kubernetes
    SERVICE = "Service"  # one port and address family of a Kubernetes Service


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The object a load balancer or an error belongs to: (kind, key). The key is the name in
    a file, "namespace/name" for namespaced Kubernetes objects, "name" for cluster-scoped ones."""

    kind: str
    key: str

    def __str__(self) -> str:
        return f"{self.kind} {self.key}"


@dataclass(frozen=True)
class ConfigObject:
    """Base of the configuration kinds that are neither load balancers nor pools (BGP peers, BFD
    profiles, advertisements, gateway groups, DNS providers...). Each subclass sets KIND (the
    document kind) and is a frozen dataclass; sources hand them over by ObjectRef(KIND, name)."""

    KIND: ClassVar[str] = ""
    name: str

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.KIND, self.name)


ConfigT = TypeVar("ConfigT", bound=ConfigObject)


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A Kubernetes Secret holding a value (a TSIG secret)."""

    namespace: str
    name: str
    key: str = "secret"


@dataclass(frozen=True)
class DNSProvider(ConfigObject):
    """Where the records of load balancers with hostnames go: one zone on RFC 2136 servers
    (tried in order), updates signed with TSIG, ownership recorded in external-dns's TXT format.
    Exactly one of tsig_secret (base64), tsig_secret_file and tsig_secret_ref is set."""

    KIND: ClassVar[str] = "DNSProvider"
    zone: str = ""  # absolute, lowercase, with the trailing dot: "lb.example."
    servers: tuple[tuple[str, int], ...] = ()  # (host, port)
    tsig_key_name: str = ""
    tsig_algorithm: str = "hmac-sha256"
    tsig_secret: str | None = None
    tsig_secret_file: str | None = None
    tsig_secret_ref: SecretRef | None = None
    ttl: int = 300
    owner_id: str = "gatelb"
    repair_interval_s: float = 60.0  # how often records are read back and repaired
    timeout_s: float = 2.0  # per server and request


@dataclass(frozen=True)
class SyncedState:
    """What every consumer (health monitor, state record, status write-back, metrics, announcers,
    DNS) receives after each successful sync: the complete state, never a delta.

    `changed` names the load balancers that differ from the previous SyncedState, as a hint that
    lets a consumer skip work; None means "assume everything changed" (the first sync, a full
    resync, a pool change). A consumer must stay correct if it ignores the hint.
    """

    generation: int
    load_balancers: Mapping[str, LoadBalancer]  # desired, every source, by name
    origins: Mapping[str, ObjectRef]  # load balancer name -> the object it came from
    addresses: Mapping[str, IPAddress]  # frontend address of every allocated load balancer
    pools: tuple[IPPool, ...]
    pool_of: Mapping[str, str | None]  # load balancer name -> the pool its address came from
    services: Mapping[str, Service]  # what the kernel serves now, by name
    errors: Mapping[ObjectRef, tuple[ValidationError, ...]]
    changed: frozenset[str] | None = None
    full: bool = False  # this sync reloaded the whole table
    config: Mapping[ObjectRef, ConfigObject] = field(default_factory=dict)  # every other kind
    config_changed: bool = True  # whether `config` differs from the previous SyncedState

    def resolved(self) -> ResolvedState:
        return ResolvedState(tuple(self.services[n] for n in sorted(self.services)))

    def config_of(self, cls: type[ConfigT]) -> dict[str, ConfigT]:
        """The configuration objects of one kind, by name."""
        return {ref.key: obj for ref, obj in self.config.items() if isinstance(obj, cls)}


# --- announcement configuration (gatelb.announce): MetalLB's kinds and field meanings ----------


@dataclass(frozen=True)
class BFDProfile(ConfigObject):
    """BFD timers for the BGP sessions that name this profile (MetalLB's BFDProfile)."""

    KIND: ClassVar[str] = "BFDProfile"
    receive_interval_ms: int = 300
    transmit_interval_ms: int = 300
    detect_multiplier: int = 3
    echo_interval_ms: int = 50
    echo_mode: bool = False
    passive_mode: bool = False
    minimum_ttl: int = 254


@dataclass(frozen=True)
class BGPPeer(ConfigObject):
    """A BGP session from the gateways (all, or `nodes`) to one router."""

    KIND: ClassVar[str] = "BGPPeer"
    my_asn: int = 0
    peer_asn: int = 0
    peer_address: IPAddress = field(default_factory=lambda: ipaddress.IPv4Address(0))
    peer_port: int = 179
    source_address: IPAddress | None = None
    router_id: ipaddress.IPv4Address | None = None
    hold_time_s: int = 90
    keepalive_time_s: int | None = None  # None: a third of the hold time, as BGP and MetalLB do
    connect_time_s: int | None = None  # None: FRR's default (120 s)
    password: str | None = None
    bfd_profile: str | None = None
    ebgp_multihop: bool = False
    nodes: tuple[str, ...] = ()  # standalone: only these gateways peer; empty: every gateway
    # BGP graceful restart (MetalLB's enableGracefulRestart): SIGTERM keeps the routes at this
    # router (stale, for its restart time) instead of withdrawing them (docs/announce.md)
    graceful_restart: bool = False

    @property
    def keepalive_s(self) -> int:
        return self.keepalive_time_s if self.keepalive_time_s is not None else self.hold_time_s // 3


@dataclass(frozen=True)
class BGPAdvertisement(ConfigObject):
    """Which pools' VIPs are announced over BGP, to which peers (empty: all), with what attributes."""

    KIND: ClassVar[str] = "BGPAdvertisement"
    ip_address_pools: tuple[str, ...] = ()  # empty: every pool
    peers: tuple[str, ...] = ()
    aggregation_length: int = 32
    aggregation_length_v6: int = 128
    local_pref: int | None = None
    communities: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()  # standalone: only these gateways announce; empty: every gateway


@dataclass(frozen=True)
class L2Advertisement(ConfigObject):
    """VIPs of these pools are answered for with ARP/NDP by one gateway of the segment."""

    KIND: ClassVar[str] = "L2Advertisement"
    ip_address_pools: tuple[str, ...] = ()  # empty: every pool
    interfaces: tuple[str, ...] = ()  # empty: the interface whose subnet holds the VIP
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GatewayMember:
    name: str
    address: IPAddress


@dataclass(frozen=True)
class GatewayGroup(ConfigObject):
    """The gateways that serve one configuration together (standalone): who they are and the
    link they share for coordination (L2 election; high availability builds on it)."""

    KIND: ClassVar[str] = "GatewayGroup"
    interface: str = ""
    members: tuple[GatewayMember, ...] = ()
    # High availability (docs/ha.md). "": the members only announce (BGP, the L2 election);
    # "active-standby": one member is active and holds `backend_gateway`, the L2 VIPs and the BGP
    # announcements, the other follows with the replicated connection state.
    mode: str = ""
    backend_gateway: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None
    state_sync: bool = False

    @property
    def ha(self) -> bool:
        return self.mode == HA_ACTIVE_STANDBY


HA_ACTIVE_STANDBY = "active-standby"
HA_ACTIVE_ACTIVE = "active-active"
