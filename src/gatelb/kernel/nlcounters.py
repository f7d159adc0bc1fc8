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
from collections.abc import Iterator

from .counters import Counter, TableCounters
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
    NLA_F_NESTED,
    NLM_F_REQUEST,
    NLMSG_ERROR,
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
_PROTO_NAMES = {6: "tcp", 17: "udp"}


class TableMissing(Exception):
    pass


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            return
        yield kind & ~NLA_F_NESTED & 0x7FFF, data[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def _counter(expr: bytes) -> Counter | None:
    name, body = b"", b""
    for kind, value in _attrs(expr):
        if kind == NFTA_EXPR_NAME:
            name = value.rstrip(b"\0")
        elif kind == NFTA_EXPR_DATA:
            body = value
    if name != b"counter":
        return None
    c = Counter()
    for kind, value in _attrs(body):
        if kind == NFTA_COUNTER_BYTES:
            c.bytes = struct.unpack("!Q", value[:8])[0]
        elif kind == NFTA_COUNTER_PACKETS:
            c.packets = struct.unpack("!Q", value[:8])[0]
    return c


def _elements(payload: bytes) -> Iterator[tuple[bytes, Counter]]:
    for kind, value in _attrs(payload):
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS:
            continue
        for elem_kind, elem in _attrs(value):
            if elem_kind != NFTA_LIST_ELEM:
                continue
            key, counter = b"", Counter()
            for attr, body in _attrs(elem):
                if attr == NFTA_SET_ELEM_KEY:
                    key = next((v for k, v in _attrs(body) if k == NFTA_DATA_VALUE), b"")
                elif attr == NFTA_SET_ELEM_EXPR:
                    counter = _counter(body) or counter
                elif attr == NFTA_SET_ELEM_EXPRESSIONS:
                    for k, expr in _attrs(body):
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


def _text(field: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(field) == 16 else socket.AF_INET, field)


def read_counters(table: str = "gatelb") -> TableCounters:
    """The generation and the per-backend counter sets of our table in this network namespace."""
    out = TableCounters()
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        sock.settimeout(30)
        try:
            gens = [struct.unpack("=I", key[:4])[0] for key, _ in _dump(sock, table, "generation", 1)]
        except TableMissing:
            return out
        out.generation = gens[0] if gens else 0
        for seq, (name, alen) in enumerate((("flows4", 4), ("conns4", 4), ("flows6", 16), ("conns6", 16)), 2):
            for key, counter in _dump(sock, table, name, seq):
                vip, proto, backend, port = key[:alen], key[alen], key[alen + 4 : 2 * alen + 4], key[2 * alen + 4:]
                fk = (_text(vip), _PROTO_NAMES.get(proto, str(proto)), _text(backend),
                      struct.unpack("!H", port[:2])[0])
                if name.startswith("flows"):
                    out.flows[fk] = counter
                else:
                    out.new_connections[fk] = counter.packets
    finally:
        sock.close()
    return out
