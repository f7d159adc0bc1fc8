"""Counters read back from our table (nft JSON), keyed the way the compiler wrote them.

Which sets count what, and their key fields, come from dataplane/layout.py (Role, COUNTER_SETS).

The counter sets are keyed by (frontend address, protocol, backend address, backend port) and
counted in the forward hook: `flows*` counts packets and bytes client -> backend, `replies*`
backend -> client, `conns*` the first packet of each new connection; each is split into shards
by the backend address (layout.counter_shard). Their elements live as long as the backend is
configured, so a backend going down and up, or its slots being renumbered, never resets them.
TableCounters.flows and lookup() give both directions together (status); the metrics read the
directions apart from the raw sets.

Reading lists the whole table, which takes seconds at 10,000 services: this is for `status`,
never for the sync path.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Any, cast

from gatelb.dataplane.layout import COUNTER_SETS, COUNTER_SHARDS, FAMILY_SETS, GENERATION, SERVICE_MAPS, Key, Role
from gatelb.model import IPAddress, Protocol

FlowKey = tuple[str, str, str, int]  # (vip, protocol, backend address, backend port), canonical text
Frontend = tuple[str, str, int]  # (vip, protocol, port): a key of the service maps, canonical text


@dataclass
class Counter:
    packets: int = 0
    bytes: int = 0

    def add(self, other: Counter) -> None:
        self.packets += other.packets
        self.bytes += other.bytes


RawCounts = dict[bytes, tuple[int, int]]  # a counter set as dumped: raw key -> (packets, bytes)


@dataclass
class TableCounters:
    """Per-backend counters of our table. Either keyed as text (`flows`, `new_connections`: nft's
    JSON, the reference reader) or as the kernel's raw keys (`raw`, set name -> counts: the
    netlink reader, which skips converting 200,000 keys to text). `lookup` reads both."""

    generation: int | None = None
    flows: dict[FlowKey, Counter] = field(default_factory=dict)
    new_connections: dict[FlowKey, int] = field(default_factory=dict)
    raw: dict[str, RawCounts] = field(default_factory=dict)
    # The frontends the kernel's service maps (svc4/svc6) hold: what is programmed now, whatever
    # the state record says. None when they were not read.
    frontends: set[Frontend] | None = None
    _by_shard: dict[int, tuple[list[RawCounts], list[RawCounts], list[RawCounts]]] = field(
        default_factory=dict, repr=False, compare=False)

    def programmed(self, vip: IPAddress, protocol: Protocol, port: int) -> bool:
        """Whether the kernel serves this frontend (when the service maps were not read: whether
        our table exists)."""
        if self.frontends is None:
            return self.generation is not None
        return (str(vip), protocol.value, port) in self.frontends

    def lookup(self, vip: IPAddress, protocol: Protocol, address: IPAddress, port: int) -> tuple[Counter, int]:
        """(packets and bytes, new connections) of one backend of one frontend address."""
        if not self.raw:
            key = (str(vip), protocol.value, str(address), port)
            return self.flows.get(key, Counter()), self.new_connections.get(key, 0)
        ((packets, nbytes, new),) = self.backends(vip, protocol, ((address, port),))
        return Counter(packets, nbytes), new


    def backends(self, vip: IPAddress, protocol: Protocol,
                 backends: tuple[tuple[IPAddress, int], ...]) -> list[tuple[int, int, int]]:
        """(packets, bytes, new connections) of each backend (address, port) of one frontend
        address: `lookup` for a whole load balancer, its key prefix encoded once."""
        if not self.raw:
            return [(c.packets, c.bytes, n) for c, n in (self.lookup(vip, protocol, a, p) for a, p in backends)]
        flows, replies, conns = self._shards(vip.version)
        head = vip.packed + _PROTO_BYTES[protocol]
        zero = (0, 0)
        out = []
        for address, port in backends:
            packed = address.packed
            raw = head + packed + _PORT.pack(port) + b"\0\0"
            shard = packed[-1] & _SHARD_MASK  # layout.counter_shard, from the bytes at hand
            p_in, b_in = flows[shard].get(raw, zero)
            p_out, b_out = replies[shard].get(raw, zero)
            out.append((p_in + p_out, b_in + b_out, conns[shard].get(raw, zero)[0]))
        return out

    def _shards(self, family: int) -> tuple[list[RawCounts], list[RawCounts], list[RawCounts]]:
        """The raw counts of one family's flows, replies and conns sets, by shard (memoised: a
        status looks up 100,000 backends)."""
        got = self._by_shard.get(family)
        if got is None:
            sets, empty = FAMILY_SETS[family], RawCounts()
            flows, replies, conns = ([self.raw.get(n, empty) for n in names]
                                     for names in (sets.flows, sets.replies, sets.conns))
            got = self._by_shard[family] = (flows, replies, conns)
        return got


def counter_key(vip: IPAddress, protocol: Protocol, address: IPAddress, port: int) -> bytes:
    """The raw key of a backend's elements in the counter sets (layout: frontend address,
    protocol, backend address, backend port; every field padded to 4 bytes)."""
    return vip.packed + _PROTO_BYTES[protocol] + address.packed + _PORT.pack(port) + b"\0\0"


_PORT = struct.Struct("!H")
_SHARD_MASK = COUNTER_SHARDS - 1
assert COUNTER_SHARDS <= 256, "the shard is taken from the address's last byte"
_PROTO_BYTES = {Protocol.TCP: bytes((socket.IPPROTO_TCP, 0, 0, 0)), Protocol.UDP: bytes((socket.IPPROTO_UDP, 0, 0, 0))}


def flow_key(key: Key) -> FlowKey:
    """A counter set's typed key (layout Role.FLOWS / REPLIES / CONNS) as the text tuple status uses."""
    vip, proto, backend, port = key
    return (str(vip), str(proto), str(backend), cast(int, port))


_COUNTED = {s.name: s for s in COUNTER_SETS}
_SERVICE_MAPS = {s.name: s for s in SERVICE_MAPS}


def _element(raw: Any) -> tuple[list[Any], Counter]:
    """An element is either a bare value/concat or {"elem": {"val": ..., "counter": ...}}."""
    inner: dict[str, Any] = raw["elem"] if isinstance(raw, dict) and "elem" in raw else {}
    val = inner["val"] if inner else raw
    parts = val["concat"] if isinstance(val, dict) and "concat" in val else [val]
    c = inner.get("counter") or {}
    return parts, Counter(int(c.get("packets", 0)), int(c.get("bytes", 0)))


def parse_table(objects: list[dict[str, Any]]) -> TableCounters:
    frontends: set[Frontend] = set()
    out = TableCounters(frontends=frontends)
    for obj in objects:
        s = obj.get("set") or obj.get("map")
        if not s:
            continue
        name, elems = s.get("name", ""), s.get("elem") or []
        layout = _COUNTED.get(name)
        if name in _SERVICE_MAPS:
            fields = _SERVICE_MAPS[name].key
            for raw in elems:  # a map element is [key, data]
                parts = raw[0]["concat"] if isinstance(raw, list) else _element(raw)[0]
                vip, proto, port = (f.type.parse(p) for f, p in zip(fields, parts, strict=True))
                frontends.add((str(vip), str(proto), cast(int, port)))
        elif name == GENERATION.name:
            out.generation = int(elems[0]) if elems else 0
        elif layout is not None:
            for raw in elems:
                parts, counter = _element(raw)
                key = flow_key(tuple(f.type.parse(p) for f, p in zip(layout.key, parts, strict=True)))
                if layout.role in (Role.FLOWS, Role.REPLIES):
                    out.flows.setdefault(key, Counter()).add(counter)
                else:
                    out.new_connections[key] = counter.packets
    if out.generation is None and any("table" in o for o in objects):
        out.generation = 0
    return out
