"""Reading chosen elements of our sets from the kernel, one key at a time (nfnetlink GETSETELEM
without a dump), so that `gatelb trace` and `gatelb diagnose NAME` read only one service's
elements however large the table is.

Each key is its own request: the kernel stops at the first key it cannot find and answers ENOENT,
which is how a missing element (a stale or incomplete kernel) shows. Interval sets are read with
`nft get element` instead (agent/inspect.py): the netlink codec does not encode ranges.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from gatelb.dataplane.layout import Data, Key, SetLayout

from .counters import Counter
from .nlcounters import _counter
from .nlelements import (
    NETLINK_NETFILTER,
    NFNL_SUBSYS_NFTABLES,
    NFPROTO_INET,
    NFTA_LIST_ELEM,
    NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE,
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    ElementCodec,
    attrs,
    error_code,
    netlink_messages,
    nl_message,
    nla,
)

NFT_MSG_GETSETELEM = 13
NFT_MSG_NEWSETELEM = 12
NFTA_SET_ELEM_TIMEOUT = 4
NFTA_SET_ELEM_EXPIRATION = 5
NFTA_SET_ELEM_EXPR = 7
NFTA_SET_ELEM_EXPRESSIONS = 11


@dataclass(frozen=True, slots=True)
class Element:
    key: Key
    data: Data
    counter: Counter | None = None
    expires_ms: int | None = None  # timeout sets: what is left of the element's life


def _parse_element(codec: ElementCodec, payload: bytes) -> Element:
    key, data = codec.decode(nla(NFTA_LIST_ELEM | NLA_F_NESTED, payload))
    counter: Counter | None = None
    expires: int | None = None
    for kind, value in attrs(payload):
        if kind == NFTA_SET_ELEM_EXPR:
            counter = _counter(value) or counter
        elif kind == NFTA_SET_ELEM_EXPRESSIONS:
            for k, expr in attrs(value):
                if k == NFTA_LIST_ELEM:
                    counter = _counter(expr) or counter
        elif kind == NFTA_SET_ELEM_EXPIRATION:
            expires = struct.unpack("!Q", value[:8])[0]
    return Element(key, data, counter, expires)


def get_elements(layout: SetLayout, keys: Iterable[Key], table: str = "gatelb",
                 timeout_s: float = 10.0) -> dict[Key, Element | None]:
    """The element of each key in the set `layout.name` of our table (None: not in the kernel, or
    no such set or table: the kernel answers ENOENT for all three, so callers check the table
    first)."""
    codec = ElementCodec(layout)
    wanted = list(keys)
    out: dict[Key, Element | None] = {}
    if not wanted:
        return out
    header = nla(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0") + nla(
        NFTA_SET_ELEM_LIST_SET, layout.name.encode() + b"\0")
    by_seq: dict[int, Key] = {}
    messages = []
    for seq, key in enumerate(wanted, 1):
        by_seq[seq] = key
        body = header + nla(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, codec.encode_key(key))
        messages.append(nl_message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_ACK,
                                   seq, NFPROTO_INET, 0, body))
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        sock.settimeout(timeout_s)
        pending = set(by_seq)
        # A few hundred requests at most (one service's slots): send them in small groups so the
        # answers never overflow the socket's receive buffer.
        for start in range(0, len(messages), 64):
            group = set(range(start + 1, min(start + 64, len(messages)) + 1))
            sock.send(b"".join(messages[start : start + 64]))
            while group & pending:
                _receive(sock, codec, by_seq, out, pending, layout.name)
    finally:
        sock.close()
    for key in wanted:
        out.setdefault(key, None)
    return out


def _receive(sock: socket.socket, codec: ElementCodec, by_seq: dict[int, Key], out: dict[Key, Element | None],
             pending: set[int], set_name: str) -> None:
    for kind, seq, body in netlink_messages(sock.recv(1 << 20)):
        if kind == NLMSG_ERROR:
            code = error_code(body)
            pending.discard(seq)
            if code == -errno.ENOENT:
                key = by_seq.get(seq)
                if key is not None and key not in out:
                    out[key] = None
            elif code != 0:
                raise OSError(-code, f"reading elements of {set_name}")
            continue
        if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM:
            for attr, value in attrs(body[4:]):
                if attr != NFTA_SET_ELEM_LIST_ELEMENTS:
                    continue
                for elem_kind, elem in attrs(value):
                    if elem_kind == NFTA_LIST_ELEM:
                        element = _parse_element(codec, elem)
                        out[by_seq.get(seq, element.key)] = element


