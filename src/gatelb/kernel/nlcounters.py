"""Reading our counter sets straight from the kernel (an nfnetlink element dump).

`nft -j list table` formats every element of every set as JSON in userspace: about 6 s at 10,000
services. `gatelb status` only needs the counter sets and the generation, which a netlink dump
returns in a fraction of that; parse_table (nft JSON) stays as the fallback and as the reference
the tests compare this with.
"""

from __future__ import annotations

import errno
import hashlib
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import cast

from gatelb.dataplane.layout import (
    COUNTER_SETS,
    FAMILY_SETS,
    GENERATION,
    SERVICE_MAPS,
    FieldType,
    Role,
    SetLayout,
    counter_shard,
)
from gatelb.model import IPAddress, Protocol

from .counters import Counter, FlowKey, Frontend, RawCounts, TableCounters, counter_key
from .nlelements import (
    NETLINK_NETFILTER,
    NFNL_SUBSYS_NFTABLES,
    NFPROTO_INET,
    NFTA_DATA_VALUE,
    NFTA_LIST_ELEM,
    NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    PROTOCOL_NUMBERS,
    ElementCodec,
    attrs,
    error_code,
    netlink_messages,
    nft_dump,
    nl_message,
    nla,
)

NFT_MSG_GETSETELEM = 13
NFTA_SET_ELEM_EXPR = 7
NFTA_SET_ELEM_EXPRESSIONS = 11
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2
_PROTO_NAMES = {n: p.value for p, n in PROTOCOL_NUMBERS.items()}


class TableMissing(Exception):
    pass


@dataclass
class RawDump:
    generation: int | None = None  # None: our table does not exist
    sets: dict[str, RawCounts] = field(default_factory=dict)
    # Per set, a digest of the kernel's answer (every key and number, in the kernel's order):
    # equal digests mean an unchanged set, so a reader may skip what it derived from it.
    digests: dict[str, bytes] = field(default_factory=dict)


def _counter(expr: bytes) -> Counter | None:
    name, body = b"", b""
    for kind, value in attrs(expr):
        if kind == NFTA_EXPR_NAME:
            name = value.rstrip(b"\0")
        elif kind == NFTA_EXPR_DATA:
            body = value
    if name != b"counter":
        return None
    c = Counter()
    for kind, value in attrs(body):
        if kind == NFTA_COUNTER_BYTES:
            c.bytes = struct.unpack("!Q", value[:8])[0]
        elif kind == NFTA_COUNTER_PACKETS:
            c.packets = struct.unpack("!Q", value[:8])[0]
    return c


def _elements(payload: bytes) -> Iterator[tuple[bytes, Counter]]:
    for kind, value in attrs(payload):
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS:
            continue
        for elem_kind, elem in attrs(value):
            if elem_kind != NFTA_LIST_ELEM:
                continue
            key, counter = b"", Counter()
            for attr, body in attrs(elem):
                if attr == NFTA_SET_ELEM_KEY:
                    key = next((v for k, v in attrs(body) if k == NFTA_DATA_VALUE), b"")
                elif attr == NFTA_SET_ELEM_EXPR:
                    counter = _counter(body) or counter
                elif attr == NFTA_SET_ELEM_EXPRESSIONS:
                    for k, expr in attrs(body):
                        if k == NFTA_LIST_ELEM:
                            counter = _counter(expr) or counter
            yield key, counter


def _messages(sock: socket.socket, table: str, set_name: str, seq: int) -> Iterator[bytes]:
    """The payloads (after the nfgenmsg header) of one set's element dump."""
    payload = nla(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0") + nla(
        NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
    return nft_dump(sock, NFT_MSG_GETSETELEM, payload, seq, f"dumping set {set_name}",
                    lambda: TableMissing(set_name))


def _dump(sock: socket.socket, table: str, set_name: str, seq: int) -> Iterator[tuple[bytes, Counter]]:
    for body in _messages(sock, table, set_name, seq):
        yield from _elements(body)


# The shape the kernel gives every element of a counter set: NFTA_LIST_ELEM { KEY { DATA_VALUE key },
# EXPR { NAME "counter", DATA { BYTES u64, PACKETS u64 } } }, nested attributes without the
# NLA_F_NESTED flag. The fast reader compares an element's attribute headers with that frame and
# takes the numbers at fixed offsets (about 10x faster than walking the attributes: 200,000
# elements at 10,000 services); an element of any other shape goes through the general parser.
_HDR = struct.Struct("=HH")
_U64 = struct.Struct("!Q")


def _frame(key_length: int) -> tuple[int, bytes, bytes]:
    """(element length, the bytes before the key, the bytes from the key's end to the byte count)."""
    name = b"counter\0"
    numbers = 2 * 12
    expr_body = _HDR.pack(4 + len(name), NFTA_EXPR_NAME) + name + _HDR.pack(4 + numbers, NFTA_EXPR_DATA)
    expr = _HDR.pack(4 + len(expr_body) + numbers, NFTA_SET_ELEM_EXPR) + expr_body
    head_tail = _HDR.pack(8 + key_length, NFTA_SET_ELEM_KEY) + _HDR.pack(4 + key_length, NFTA_DATA_VALUE)
    length = 4 + len(head_tail) + key_length + len(expr) + numbers
    head = _HDR.pack(length, NFTA_LIST_ELEM) + head_tail
    return length, head, expr + _HDR.pack(12, NFTA_COUNTER_BYTES)


_PACKETS_HDR = _HDR.pack(12, NFTA_COUNTER_PACKETS)


def _scan(data: bytes, key_length: int, out: RawCounts) -> None:
    """One NFTA_SET_ELEM_LIST_ELEMENTS payload into `out` (raw key -> (packets, bytes))."""
    length, head, after = _frame(key_length)
    k0 = len(head)
    k1 = k0 + key_length
    b0 = k1 + len(after)  # the byte count; then the packet count's header and value
    p0 = b0 + 8
    u64 = _U64.unpack_from
    hdr = _HDR.unpack_from
    offset, end = 0, len(data)
    while offset + 4 <= end:
        size, _kind = hdr(data, offset)
        if size < 4:
            return
        if (size == length and data[offset : offset + k0] == head and data[offset + k1 : offset + b0] == after
                and data[offset + p0 : offset + p0 + 4] == _PACKETS_HDR):
            out[data[offset + k0 : offset + k1]] = (u64(data, offset + p0 + 4)[0], u64(data, offset + b0)[0])
        else:
            for key, counter in _elements(nla(NFTA_SET_ELEM_LIST_ELEMENTS, data[offset : offset + size])):
                out[key] = (counter.packets, counter.bytes)
        offset += (size + 3) & ~3


def _open() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    sock.settimeout(30)
    return sock


def _dump_set(table: str, layout: SetLayout) -> tuple[RawCounts, bytes]:
    """One set's counts and a digest of the kernel's messages (blake2b releases the GIL while
    it hashes)."""
    key_length = ElementCodec(layout).key_length
    counts: RawCounts = {}
    hasher = hashlib.blake2b(digest_size=16)
    with _open() as sock:
        for body in _messages(sock, table, layout.name, 1):
            hasher.update(body)
            for kind, value in attrs(body):
                if kind == NFTA_SET_ELEM_LIST_ELEMENTS:
                    _scan(value, key_length, counts)
    return counts, hasher.digest()


# Parallel set dumps (96 counter sets): 1, 2, 4 and 8 threads showed no consistent difference on
# two cores (docs/benchmarks.md, Observability); a few keep the kernel's share of the work on
# the other core while Python reads, without 96 threads at a time.
DUMP_THREADS = 4


def dump_raw(table: str = "gatelb", sets: Sequence[SetLayout] = COUNTER_SETS) -> RawDump:
    """The generation and `sets` of our table as raw key bytes -> (packets, bytes), for readers that
    map keys themselves (the metrics collector encodes the keys it expects once per sync).

    The kernel resumes a hash set's dump by walking past the elements already sent (one 32 KiB
    message at a time), so a dump costs O(n^2) in the set's size: that is why the counter sets are
    sharded (layout.COUNTER_SHARDS). Each set is dumped on its own socket, DUMP_THREADS at a time:
    the kernel's share runs on another core while the GIL is free."""
    out = RawDump()
    with _open() as sock:
        generation = ElementCodec(GENERATION)
        try:
            gens = [generation.decode_key(key)[0] for key, _ in _dump(sock, table, GENERATION.name, 1)]
        except TableMissing:
            return out
    out.generation = cast(int, gens[0]) if gens else 0
    with ThreadPoolExecutor(max_workers=max(1, min(DUMP_THREADS, len(sets))), thread_name_prefix="counters") as pool:
        dumps = [(layout.name, pool.submit(_dump_set, table, layout)) for layout in sets]
        for name, future in dumps:
            try:
                out.sets[name], out.digests[name] = future.result()
            except TableMissing:  # removed between the generation and this set
                return RawDump()
    return out


def _addr_text(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


# Field bytes -> the text of a FlowKey field (faster than building typed values: status reads
# 200,000 keys at 10,000 services).
_FIELD_TEXT: dict[FieldType, Callable[[bytes], str | int]] = {
    FieldType.IPV4_ADDR: _addr_text,
    FieldType.IPV6_ADDR: _addr_text,
    FieldType.INET_PROTO: lambda raw: _PROTO_NAMES.get(raw[0], str(raw[0])),
    FieldType.INET_SERVICE: lambda raw: struct.unpack("!H", raw[:2])[0],
}


def read_counters(table: str = "gatelb") -> TableCounters:
    """The generation and the per-backend counter sets of our table in this network namespace
    (which sets, and the layout of their keys, from dataplane/layout.py), keyed as text."""
    raw = dump_raw(table, (*COUNTER_SETS, *SERVICE_MAPS))
    out = TableCounters(generation=raw.generation, frontends=_frontends(raw.sets))
    for layout in COUNTER_SETS:
        codec = ElementCodec(layout)
        # Keys share their fields (a VIP for every backend of a service): convert each once.
        fields: list[tuple[int, int, Callable[[bytes], str | int], dict[bytes, str | int]]] = [
            (o, t.size, _FIELD_TEXT[t], {}) for o, t in codec.key_slices]
        flows = layout.role in (Role.FLOWS, Role.REPLIES)  # both directions together, as parse_table
        for key, (packets, nbytes) in raw.sets.get(layout.name, {}).items():
            if len(key) != codec.key_length:
                raise OSError(f"{layout.name}: unexpected key length {len(key)}")
            parts = []
            for o, size, text, cache in fields:
                chunk = key[o : o + size]
                value = cache.get(chunk)
                if value is None:
                    value = cache[chunk] = text(chunk)
                parts.append(value)
            fk = cast(FlowKey, tuple(parts))
            if flows:
                out.flows.setdefault(fk, Counter()).add(Counter(packets, nbytes))
            else:
                out.new_connections[fk] = packets
    return out


def read_counters_raw(table: str = "gatelb") -> TableCounters:
    """The same as read_counters with the kernel's raw keys (TableCounters.lookup reads them)."""
    raw = dump_raw(table, (*COUNTER_SETS, *SERVICE_MAPS))
    return TableCounters(generation=raw.generation, frontends=_frontends(raw.sets), raw=raw.sets)


def _frontends(sets: dict[str, RawCounts]) -> set[Frontend]:
    """The keys of the service maps (popped from `sets`) as (vip, protocol, port) text."""
    out: set[Frontend] = set()
    for layout in SERVICE_MAPS:
        fields = [(o, t.size, _FIELD_TEXT[t]) for o, t in ElementCodec(layout).key_slices]
        for key in sets.pop(layout.name, {}):
            vip, proto, port = (text(key[o : o + size]) for o, size, text in fields)
            out.add((str(vip), str(proto), cast(int, port)))
    return out


def read_generation(table: str = "gatelb") -> int | None:
    """The generation number in our table in this network namespace (None: no table). One tiny
    dump: cheap enough for the daemon's periodic check (agent/guard.py)."""
    with _open() as sock:
        try:
            gens = [ElementCodec(GENERATION).decode_key(key)[0] for key, _ in _dump(sock, table, GENERATION.name, 1)]
        except TableMissing:
            return None
    return cast(int, gens[0]) if gens else 0


def read_counters_for(keys: Iterable[tuple[IPAddress, Protocol, IPAddress, int]],
                      table: str = "gatelb") -> TableCounters:
    """The counters of just these backends (frontend address, protocol, backend address, port):
    one GETSETELEM request per set naming the keys, answered element by element, instead of a
    dump of the whole set (`gatelb status NAME` at 10,000 services). A key the kernel does not
    hold fails the request (ENOENT): then the whole sets are dumped instead."""
    wanted: dict[str, list[bytes]] = {}
    for vip, protocol, address, port in keys:
        sets = FAMILY_SETS[vip.version]
        raw = counter_key(vip, protocol, address, port)
        shard = counter_shard(address)
        for names in (sets.flows, sets.replies, sets.conns):
            wanted.setdefault(names[shard], []).append(raw)
    out = TableCounters()
    with _open() as sock:
        generation = ElementCodec(GENERATION)
        try:
            gens = [generation.decode_key(key)[0] for key, _ in _dump(sock, table, GENERATION.name, 1)]
        except TableMissing:
            return out
        out.generation = cast(int, gens[0]) if gens else 0
        try:
            for seq, (name, raws) in enumerate(wanted.items(), 2):
                out.raw[name] = _get(sock, table, name, raws, seq)
        except TableMissing:
            return read_counters_raw(table)
    # Whether each is programmed: the service maps are small (one element per frontend).
    try:
        out.frontends = _frontends({layout.name: _dump_set(table, layout)[0] for layout in SERVICE_MAPS})
    except TableMissing:
        out.frontends = set()
    return out


def _get(sock: socket.socket, table: str, set_name: str, keys: list[bytes], seq: int) -> RawCounts:
    elements = b"".join(nla(NFTA_LIST_ELEM, nla(NFTA_SET_ELEM_KEY, nla(NFTA_DATA_VALUE, k))) for k in keys)
    payload = (nla(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
               + nla(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
               + nla(NFTA_SET_ELEM_LIST_ELEMENTS, elements))
    sock.send(nl_message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_ACK, seq,
                         NFPROTO_INET, 0, payload))
    counts: RawCounts = {}
    key_length = len(keys[0]) if keys else 0
    while True:
        for kind, _seq, body in netlink_messages(sock.recv(1 << 20)):
            if kind == NLMSG_ERROR:
                code = error_code(body)
                if code == -errno.ENOENT:
                    raise TableMissing(set_name)
                if code != 0:
                    raise OSError(-code, f"reading elements of set {set_name}")
                return counts  # the ACK: every element has been answered
            for attr, value in attrs(body[4:]):
                if attr == NFTA_SET_ELEM_LIST_ELEMENTS:
                    _scan(value, key_length, counts)
