"""The element layout of our table: every global set and map, declared once, as typed values.

Per-service state lives in elements of the sets and maps below (see ruleset.py for why). Each is
declared here and nowhere else; everything that needs to know a set's shape derives it:

    render.py          the skeleton's set/map declarations (SetLayout.declaration) and element text
    ruleset.py         fills elements as typed tuples whose fields follow `key` / `data`
    kernel/nlelements  the netlink codec of each set (field sizes and byte order from FieldType)
    agent/engine.py    which sets go over netlink (NETLINK_BULK_SETS, NETLINK_INCREMENT_SETS)
    kernel/counters    the counter sets and the generation set (Role), and how to read their keys
    kernel/nlcounters

Elements are typed, never joined text: a key is a tuple with one value per key field
(IPv4Address/IPv6Address, Protocol, int), a map's data is a tuple of values for `data` fields, a
verdict (nft syntax: "goto chain", "drop") for verdict maps, or None for plain sets. An interval
set's address field may hold a network instead of an address.

`typeof` declarations say `tcp dport` where the rules say `th dport` (which also covers UDP):
nft 1.0.6 cannot rebuild a `typeof ip daddr . ... . th dport` key from the kernel ("conflicting
protocols specified: ip vs. th"), which breaks every later transaction that adds a rule using the
map. Only the key's type (inet_service, 16 bits) matters for matching, so this is safe; it does
make `nft list` print `tcp dport` in those rules, for UDP services too.

The backend maps are per protocol (be4 for TCP, beu4 for UDP) because the *data* half of the
declaration is not only a type: a `dnat ... map` rule whose map data says `tcp dport` gets an
implicit `meta l4proto tcp` match from nft, so one shared map silently never DNATs UDP. `th
dport` there hits the rebuild bug above, so the UDP map says `udp dport` (and gets `udp`).

Pure: no I/O.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Final, Literal

from gatelb.model import Protocol

FieldValue = (
    ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network | ipaddress.IPv6Network | Protocol | int
)
Key = tuple[FieldValue, ...]
# A map's data: typed fields, a verdict in nft syntax, or None for a plain set.
Data = tuple[FieldValue, ...] | str | None


class FieldType(enum.Enum):
    """nft data types of the fields we use: (nft name, bytes in the kernel, byte order).

    The nft text of every value is its str() (an address, a network, "tcp", a decimal number), so
    one memo of formatted values serves every field (render.py relies on this)."""

    IPV4_ADDR = ("ipv4_addr", 4, "big")
    IPV6_ADDR = ("ipv6_addr", 16, "big")
    INET_PROTO = ("inet_proto", 1, "big")
    INET_SERVICE = ("inet_service", 2, "big")
    MARK = ("mark", 4, "host")
    # An integer from numgen/jhash (`typeof numgen random mod N`): host byte order, 32 bits.
    U32 = ("integer", 4, "host")

    def __init__(self, nft_name: str, size: int, byteorder: Literal["big", "host"]) -> None:
        self.nft_name = nft_name
        self.size = size
        self.byteorder = byteorder

    def accepts(self, value: object, interval: bool = False) -> bool:
        """Whether `value` is a valid Python value for this field (a network only in interval sets)."""
        if self is FieldType.IPV4_ADDR:
            return isinstance(value, ipaddress.IPv4Address) or (interval and isinstance(value, ipaddress.IPv4Network))
        if self is FieldType.IPV6_ADDR:
            return isinstance(value, ipaddress.IPv6Address) or (interval and isinstance(value, ipaddress.IPv6Network))
        if self is FieldType.INET_PROTO:
            return isinstance(value, Protocol)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return False
        return value < 1 << 16 if self is FieldType.INET_SERVICE else value < 1 << 32

    @staticmethod
    def text(value: FieldValue) -> str:
        """nft's text of a value (the same for every field type)."""
        return str(value)

    def parse(self, text: str | int) -> FieldValue:
        """The typed value of nft's text (or JSON) form of one field."""
        if self in (FieldType.IPV4_ADDR, FieldType.IPV6_ADDR):
            text = str(text)
            return ipaddress.ip_network(text) if "/" in text else ipaddress.ip_address(text)
        if self is FieldType.INET_PROTO:
            return Protocol(str(text))
        return int(text, 0) if isinstance(text, str) else int(text)


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a key or of a map's data. `expr` is the nft expression of a `typeof`
    declaration; a set declares `typeof` when its fields have expressions, `type` otherwise."""

    type: FieldType
    expr: str | None = None


class Flag(enum.StrEnum):
    INTERVAL = "interval"
    TIMEOUT = "timeout"
    DYNAMIC = "dynamic"
    COUNTER = "counter"  # declared as the `counter;` statement: every element counts its packets


class Role(enum.Enum):
    """What the counter readers (kernel/counters.py, nlcounters.py) do with a set. The values
    are FamilySets' field names."""

    # Packets and bytes client -> backend (conntrack's original direction, `direction="in"`),
    # keyed (frontend address, protocol, backend address, port).
    FLOWS = "flows"
    REPLIES = "replies"  # packets and bytes backend -> client (reply direction, "out"), same key
    CONNS = "conns"  # new connections (the counter's packets), same key
    GENERATION = "generation"  # the single element is the generation number of the table
    SERVICES = "services"  # the service maps: a frontend is programmed when it is a key here


VERDICT: Final = "verdict"


@dataclass(frozen=True, slots=True)
class SetLayout:
    """One global set or map of the table.

    netlink_bulk:       its elements may be bulk-loaded over netlink on a full load into an empty
                        kernel (kernel/nlelements.py); the others go as nft text.
    netlink_increments: element-only increments of it may go over netlink (no interval sets: the
                        netlink encoder does not split ranges).
    """

    name: str
    key: tuple[Field, ...]
    data: tuple[Field, ...] | Literal["verdict"] | None = None
    flags: tuple[Flag, ...] = ()
    netlink_bulk: bool = False
    netlink_increments: bool = False
    role: Role | None = None
    family: int | None = None  # 4 or 6 for per-family sets
    timeout_s: int | None = None
    shard: int | None = None  # which of COUNTER_SHARDS a counter set is (counter_shard)

    def __post_init__(self) -> None:
        if self.netlink_bulk and not self.netlink_increments:
            raise ValueError(f"{self.name}: a bulk-loaded set must also take netlink increments")
        if self.netlink_increments and self.interval:
            raise ValueError(f"{self.name}: interval sets cannot go over netlink")

    @property
    def kind(self) -> str:
        return "set" if self.data is None else "map"

    @property
    def interval(self) -> bool:
        return Flag.INTERVAL in self.flags

    @property
    def data_fields(self) -> tuple[Field, ...]:
        return self.data if isinstance(self.data, tuple) else ()

    def declaration_body(self) -> str:
        """What goes between the braces: `type ipv4_addr . inet_proto : verdict; flags interval;`."""
        fields = self.key + self.data_fields
        typeof = all(f.expr is not None for f in fields)
        if not typeof and any(f.expr is not None for f in fields):
            raise ValueError(f"{self.name}: mixes `type` and `typeof` fields")

        def spell(part: tuple[Field, ...]) -> str:
            return " . ".join((f.expr or "") if typeof else f.type.nft_name for f in part)

        text = f"{'typeof' if typeof else 'type'} {spell(self.key)}"
        if self.data == VERDICT:
            text += " : verdict"
        elif self.data is not None:
            text += f" : {spell(self.data_fields)}"
        text += ";"
        flags = [f.value for f in self.flags if f is not Flag.COUNTER]
        if flags:
            text += f" flags {','.join(flags)};"
        if self.timeout_s is not None:
            text += f" timeout {self.timeout_s}s;"
        if Flag.COUNTER in self.flags:
            text += " counter;"
        return text

    def declaration(self) -> str:
        return f"{self.kind} {self.name} {{ {self.declaration_body()} }}"

    def check(self, key: Key, data: Data = None) -> None:
        """Raise ValueError unless (key, data) is a valid element of this set."""
        if len(key) != len(self.key) or not all(
                f.type.accepts(v, self.interval) for f, v in zip(self.key, key, strict=True)):
            raise ValueError(f"{self.name}: key {key!r} does not match {self.declaration_body()}")
        if self.data is None:
            ok = data is None
        elif self.data == VERDICT:
            ok = isinstance(data, str) and (data in ("drop", "accept") or data.startswith(("goto ", "jump ")))
        else:
            ok = isinstance(data, tuple) and len(data) == len(self.data_fields) and all(
                f.type.accepts(v) for f, v in zip(self.data_fields, data, strict=True))
        if not ok:
            raise ValueError(f"{self.name}: data {data!r} does not match {self.declaration_body()}")


_ADDR = {4: FieldType.IPV4_ADDR, 6: FieldType.IPV6_ADDR}
_IP = {4: "ip", 6: "ip6"}

# Every counter set is split into this many shards, by the low bits of the backend address
# (counter_shard). Why: the kernel resumes a hash set's dump by walking past every element it has
# already sent, one 32 KiB message (about 450 elements) at a time, so dumping one set of n
# elements costs O(n^2 / 450); 16 sets of n / 16 cost 16 times less (docs/benchmarks.md,
# Observability). The rules pick the shard with a vmap on `address & 15`, which the compiler
# computes the same way; no hash to reproduce.
COUNTER_SHARDS: Final = 16
_SHARD_ROLES: Final = (Role.FLOWS, Role.REPLIES, Role.CONNS)


def counter_shard(backend: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """The shard of a backend's elements in the counter sets."""
    return int(backend) & (COUNTER_SHARDS - 1)


def shard_value(family: int, n: int) -> str:
    """`n` as an address of `family` in nft text: the shard numbers and the mask of the rules
    (`ip daddr & 0.0.0.15 vmap { 0.0.0.3 : goto count4_3, ... }`)."""
    return str(ipaddress.IPv4Address(n) if family == 4 else ipaddress.IPv6Address(n))


def _family_sets(f: int) -> list[SetLayout]:
    addr, ip = _ADDR[f], _IP[f]
    proto, service = FieldType.INET_PROTO, FieldType.INET_SERVICE
    frontend = (Field(addr), Field(proto), Field(service))
    # (frontend address, protocol, frontend port, slot) -> (backend address, backend port)
    slot = (Field(addr, f"{ip} daddr"), Field(proto, "meta l4proto"), Field(service, "tcp dport"),
            Field(FieldType.U32, "numgen random mod 1"))
    # (frontend address, protocol, backend address, backend port): per-backend counters, packets
    # and bytes of each direction (flows*: client -> backend, replies*: backend -> client) and new
    # connections (conns*), each in COUNTER_SHARDS sets (flows4_0 .. flows4_15). They live as long as the
    # backend stays configured, whatever happens to its slots. nft 1.0.6 cannot put `ct original
    # proto-dst` in a concatenation, so the frontend port is not part of the key; see docs/status.md.
    flow = (Field(addr, f"ct original {ip} daddr"), Field(proto, "meta l4proto"), Field(addr, f"{ip} daddr"),
            Field(service, "tcp dport"))
    def bulk(name: str, key: tuple[Field, ...], data: tuple[Field, ...] | Literal["verdict"] | None = None,
             **kw: Role | tuple[Flag, ...] | int) -> SetLayout:
        return SetLayout(name, key, data, netlink_bulk=True, netlink_increments=True, family=f, **kw)  # type: ignore[arg-type]

    return [
        bulk(f"svc{f}", frontend, VERDICT, role=Role.SERVICES),
        bulk(f"be{f}", slot, (Field(addr, f"{ip} daddr"), Field(service, "tcp dport"))),
        bulk(f"beu{f}", slot, (Field(addr, f"{ip} daddr"), Field(service, "udp dport"))),
        *(bulk(f"{role.value}{f}_{shard}", flow, flags=(Flag.COUNTER,), role=role, shard=shard)
          for role in _SHARD_ROLES for shard in range(COUNTER_SHARDS)),
        # FULLNAT services' flows (same key): masqueraded towards the backend.
        SetLayout(f"fullnat{f}", flow, netlink_increments=True, family=f),
        # Hairpin (a backend connecting to a VIP and balanced to itself): (backend, backend),
        # masqueraded so that its reply comes back through us (kube-proxy does the same). One
        # element per backend address, shared by every service it serves.
        bulk(f"hairpin{f}", (Field(addr, f"{ip} saddr"), Field(addr, f"{ip} daddr"))),
        # Frontends with source ranges, and the (frontend . client network) pairs they allow.
        SetLayout(f"restricted{f}", frontend, netlink_increments=True, family=f),
        SetLayout(f"allow{f}", (*frontend, Field(addr)), flags=(Flag.INTERVAL,), family=f),
    ]


SETS: Final[dict[str, SetLayout]] = {
    s.name: s
    for s in (*_family_sets(4), *_family_sets(6),
              SetLayout("generation", (Field(FieldType.MARK),), netlink_increments=True, role=Role.GENERATION))
}

# Derived lists (in declaration order), for the engine and the counter readers.
NETLINK_BULK_SETS: Final = tuple(n for n, s in SETS.items() if s.netlink_bulk)
NETLINK_INCREMENT_SETS: Final = tuple(n for n, s in SETS.items() if s.netlink_increments)
COUNTER_SETS: Final = tuple(s for s in SETS.values() if s.role in _SHARD_ROLES)
SERVICE_MAPS: Final = tuple(s for s in SETS.values() if s.role is Role.SERVICES)
GENERATION: Final = next(s for s in SETS.values() if s.role is Role.GENERATION)


@dataclass(frozen=True, slots=True)
class FamilySets:
    """The names of one address family's sets, for the compiler."""

    svc: str
    be: str
    beu: str
    fullnat: str
    hairpin: str
    restricted: str
    allow: str
    # The counter sets, indexed by shard (counter_shard of the backend address).
    flows: tuple[str, ...]
    replies: tuple[str, ...]
    conns: tuple[str, ...]


def _family_names(f: int) -> FamilySets:
    mine = [s for s in SETS.values() if s.family == f]
    plain = {s.name.removesuffix(str(f)): s.name for s in mine if s.shard is None}
    sharded = {r.value: tuple(s.name for s in mine if s.role is r) for r in _SHARD_ROLES}
    return FamilySets(**plain, **sharded)  # type: ignore[arg-type]


FAMILY_SETS: Final = {f: _family_names(f) for f in (4, 6)}


def affinity_set(family: int, timeout_s: int, name: str = "") -> SetLayout:
    """A per-service ClientIP affinity set: client addresses, added from the packet path."""
    return SetLayout(name, (Field(_ADDR[family]),), flags=(Flag.DYNAMIC, Flag.TIMEOUT), family=family,
                     timeout_s=timeout_s)
