"""Reading our counter sets straight from the kernel (an nfnetlink element dump).

`nft -j list table` formats every element of every set as JSON in userspace: about 6 s at 10,000
services. `gatelb status` only needs the counter sets and the generation, which a netlink dump
returns in a fraction of that; parse_table (nft JSON) stays as the fallback and as the reference
the tests compare this with.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Iterator
from typing import cast

from gatelb.dataplane.layout import COUNTER_SETS, GENERATION, SERVICE_MAPS, FieldType, Role

from .counters import Counter, FlowKey, TableCounters
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
    NLM_F_REQUEST,
    NLMSG_ERROR,
    PROTOCOL_NUMBERS,
    ElementCodec,
    attrs,
    nl_message,
    nla,
)

NFT_MSG_GETSETELEM = 13
NLM_F_DUMP = 0x300
NLMSG_DONE = 3
NFTA_SET_ELEM_EXPR = 7
NFTA_SET_ELEM_EXPRESSIONS = 11
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2
_PROTO_NAMES = {n: p.value for p, n in PROTOCOL_NUMBERS.items()}


class TableMissing(Exception):
    pass


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


def _dump(sock: socket.socket, table: str, set_name: str, seq: int) -> Iterator[tuple[bytes, Counter]]:
    payload = nla(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0") + nla(
        NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
    sock.send(nl_message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, seq,
                       NFPROTO_INET, 0, payload))
    while True:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + 16 <= len(data):
            length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
            body = data[offset + 16 : offset + length]
            offset += (length + 3) & ~3
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", body, 0)
                if code == -errno.ENOENT:
                    raise TableMissing(set_name)
                if code != 0:
                    raise OSError(-code, f"dumping set {set_name}")
                continue
            yield from _elements(body[4:])  # after the nfgenmsg header


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


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    sock.settimeout(30)
    return sock


def _generation(sock: socket.socket, table: str) -> int:
    codec = ElementCodec(GENERATION)
    gens = [codec.decode_key(key)[0] for key, _ in _dump(sock, table, GENERATION.name, 1)]
    return cast(int, gens[0]) if gens else 0


def read_generation(table: str = "gatelb") -> int | None:
    """The generation number in our table in this network namespace (None: no table). One tiny
    dump: cheap enough for a periodic check."""
    sock = _socket()
    try:
        return _generation(sock, table)
    except TableMissing:
        return None
    finally:
        sock.close()


def read_counters(table: str = "gatelb") -> TableCounters:
    """The generation, the per-backend counter sets and the frontends of the service maps of our
    table in this network namespace (which sets, and the layout of their keys, from
    dataplane/layout.py)."""
    out = TableCounters()
    sock = _socket()
    try:
        try:
            out.generation = _generation(sock, table)
        except TableMissing:
            return out
        out.frontends = set()
        for seq, layout in enumerate(SERVICE_MAPS, 100):
            fields = [(o, t.size, _FIELD_TEXT[t]) for o, t in ElementCodec(layout).key_slices]
            for key, _ in _dump(sock, table, layout.name, seq):
                vip, proto, port = (text(key[o : o + size]) for o, size, text in fields)
                out.frontends.add((str(vip), str(proto), int(port)))
        for seq, layout in enumerate(COUNTER_SETS, 2):
            codec = ElementCodec(layout)
            fields = [(o, t.size, _FIELD_TEXT[t]) for o, t in codec.key_slices]
            flows = layout.role is Role.FLOWS
            for key, counter in _dump(sock, table, layout.name, seq):
                if len(key) != codec.key_length:
                    raise OSError(f"{layout.name}: unexpected key length {len(key)}")
                fk = cast(FlowKey, tuple(text(key[o : o + size]) for o, size, text in fields))
                if flows:
                    out.flows[fk] = counter
                else:
                    out.new_connections[fk] = counter.packets
    finally:
        sock.close()
    return out
