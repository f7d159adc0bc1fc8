"""Bulk set/map elements straight to the kernel over nfnetlink, as ONE atomic batch.

Why: at 10,000 services nft spends about 2 s parsing and evaluating 200,000 element strings in
userspace (measured: `nft -c`, which skips the kernel, takes as long as the real load), while the
kernel needs a fraction of that. Encoding the elements here, from the compiler's element text,
skips nft's per-element work. Only elements are sent this way; tables, chains, sets and rules
still go through nft, which understands them far better than we would by hand.

The encoding follows the kernel's uapi (include/uapi/linux/netfilter/nf_tables.h): every field of
a concatenated key is padded to 4 bytes; integers from `numgen` are host byte order, ports and
addresses network order. tests/netns/test_nlelements.py proves byte-equality by loading the same
elements both ways and comparing `nft list` output.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence

from .nft import NftError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NFPROTO_INET = 1
NLA_F_NESTED = 0x8000

NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_DATA_VALUE = 1
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE = 1
NFTA_VERDICT_CHAIN = 2
NFT_GOTO = -4
NF_DROP = 0

SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
# Elements per NEWSETELEM message: keeps each message far below netlink's 64 KiB attribute limit.
ELEMENTS_PER_MESSAGE = 1000

_PROTO = {"tcp": 6, "udp": 17}
_HOST_U32 = struct.Struct("=I")


def nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _field(text: str) -> bytes:
    """One field of a key or value, padded to 4 bytes (NFT_REG32 granularity)."""
    if text in _PROTO:
        return bytes((_PROTO[text], 0, 0, 0))
    if ":" in text:
        return socket.inet_pton(socket.AF_INET6, text)
    if "." in text:
        return socket.inet_aton(text)
    return struct.pack("!H", int(text)) + b"\0\0"


class ElementCodec:
    """Text element (as rendered for nft) -> binary NFTA_LIST_ELEM, for one set's layout.

    `key_fields` names each concatenated part: "addr", "proto", "port" or "u32" (numgen slot, host
    byte order). The nested attribute headers depend only on the key and data lengths, so they
    are built once per length; field values are cached, as addresses and ports repeat.
    """

    def __init__(self, key_fields: Sequence[str], data: str | None) -> None:
        self._key_fields = tuple(key_fields)
        self._data = data  # None (plain set), "verdict", or "value" (addr . port)
        self._cache: dict[str, bytes] = {}
        self._verdicts: dict[str, bytes] = {}
        self._frames: dict[tuple[int, int], tuple[bytes, bytes]] = {}

    def _part(self, kind: str, text: str) -> bytes:
        got = self._cache.get(text if kind != "u32" else "#" + text)
        if got is None:
            got = _HOST_U32.pack(int(text)) if kind == "u32" else _field(text)
            self._cache[text if kind != "u32" else "#" + text] = got
        return got

    def _frame(self, key_len: int, data_len: int, keyed_only: bool = False) -> tuple[bytes, bytes]:
        """(bytes before the key, bytes between key and data) for these lengths; all fields are
        multiples of 4 bytes, so no padding is ever needed."""
        frame = self._frames.get((key_len, -1 if keyed_only else data_len))
        if frame is None:
            key_attr = 4 + 4 + key_len
            data_attr = 0 if keyed_only else (
                (4 + 4 + data_len) if self._data == "value" else (4 + data_len) if data_len else 0)
            total = 4 + key_attr + data_attr
            before = struct.pack("=HHHHHH", total, NFTA_LIST_ELEM | NLA_F_NESTED,
                                 key_attr, NFTA_SET_ELEM_KEY | NLA_F_NESTED, 4 + key_len, NFTA_DATA_VALUE)
            between = b""
            if self._data == "value":
                between = struct.pack("=HHHH", data_attr, NFTA_SET_ELEM_DATA | NLA_F_NESTED,
                                      4 + data_len, NFTA_DATA_VALUE)
            elif self._data == "verdict":
                between = struct.pack("=HH", data_attr, NFTA_SET_ELEM_DATA | NLA_F_NESTED)
            frame = self._frames[(key_len, -1 if keyed_only else data_len)] = (before, between)
        return frame

    def _key(self, key: str) -> bytes:
        if len(self._key_fields) == 1:
            return self._part(self._key_fields[0], key)
        # Keys share long prefixes (a frontend's slots, a VIP's flows): encode everything but the
        # last field once per prefix.
        prefix, _, last = key.rpartition(" . ")
        head = self._cache.get(prefix)
        if head is None:
            parts = prefix.split(" . ")
            if len(parts) != len(self._key_fields) - 1:
                raise ValueError(f"element key {key!r} does not have {len(self._key_fields)} fields")
            fields = zip(self._key_fields, parts, strict=False)
            head = self._cache[prefix] = b"".join([self._part(k, p) for k, p in fields])
        return head + self._part(self._key_fields[-1], last)

    def encode_key(self, key: str) -> bytes:
        """An element to delete: the key is enough."""
        key_bytes = self._key(key)
        before, _ = self._frame(len(key_bytes), 0, keyed_only=True)
        return before + key_bytes

    def encode(self, key: str, data: str) -> bytes:
        key_bytes = self._key(key)
        if self._data == "value":
            addr, _, port = data.partition(" . ")
            data_bytes = self._part("addr", addr) + self._part("port", port)
        elif self._data == "verdict":
            data_bytes = self._verdicts.get(data) or self._verdicts.setdefault(
                data, nla(NFTA_DATA_VERDICT | NLA_F_NESTED, _verdict(data)))
        else:
            data_bytes = b""
        before, between = self._frame(len(key_bytes), len(data_bytes))
        return before + key_bytes + between + data_bytes


def _verdict(text: str) -> bytes:
    if text == "drop":
        return nla(NFTA_VERDICT_CODE, struct.pack("!i", NF_DROP))
    verb, _, chain = text.partition(" ")
    if verb != "goto" or not chain:
        raise ValueError(f"verdict {text!r} is not supported by the netlink loader")
    return nla(NFTA_VERDICT_CODE, struct.pack("!i", NFT_GOTO)) + nla(NFTA_VERDICT_CHAIN, chain.encode() + b"\0")


# The layouts of the sets the compiler fills in bulk (see dataplane/render.py GLOBAL_SETS).
CODECS: dict[str, Callable[[], ElementCodec]] = {}
for _f in (4, 6):
    CODECS[f"svc{_f}"] = lambda: ElementCodec(("addr", "proto", "port"), "verdict")
    CODECS[f"be{_f}"] = lambda: ElementCodec(("addr", "proto", "port", "u32"), "value")
    CODECS[f"beu{_f}"] = lambda: ElementCodec(("addr", "proto", "port", "u32"), "value")
    CODECS[f"flows{_f}"] = lambda: ElementCodec(("addr", "proto", "addr", "port"), None)
    CODECS[f"conns{_f}"] = lambda: ElementCodec(("addr", "proto", "addr", "port"), None)
    CODECS[f"fullnat{_f}"] = lambda: ElementCodec(("addr", "proto", "addr", "port"), None)
    CODECS[f"restricted{_f}"] = lambda: ElementCodec(("addr", "proto", "port"), None)
# `type mark` is host byte order, like numgen's integers.
CODECS["generation"] = lambda: ElementCodec(("u32",), None)


def nl_message(kind: int, flags: int, seq: int, family: int, res_id: int, payload: bytes) -> bytes:
    length = 16 + 4 + len(payload)
    return struct.pack("=IHHII", length, kind, flags, seq, 0) + struct.pack("!BBH", family, 0, res_id) + payload


def _chunks(encoded: Iterable[bytes]) -> Iterator[bytes]:
    chunk: list[bytes] = []
    for element in encoded:
        chunk.append(element)
        if len(chunk) == ELEMENTS_PER_MESSAGE:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)


class Batch:
    """One nfnetlink transaction of element deletions and additions, in the order given."""

    def __init__(self, table: str) -> None:
        self._table = table.encode() + b"\0"
        self._seq = 1
        self._msgs = [nl_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, self._seq, 0, NFNL_SUBSYS_NFTABLES, b"")]
        self.acks = 0

    def _add(self, kind: int, flags: int, set_name: str, encoded: Iterable[bytes]) -> None:
        header = nla(NFTA_SET_ELEM_LIST_TABLE, self._table) + nla(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
        for chunk in _chunks(encoded):
            self._seq += 1
            self.acks += 1
            payload = header + nla(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, chunk)
            self._msgs.append(nl_message((NFNL_SUBSYS_NFTABLES << 8) | kind, flags | NLM_F_REQUEST | NLM_F_ACK,
                                       self._seq, NFPROTO_INET, 0, payload))

    def add(self, set_name: str, items: Iterable[tuple[str, str]]) -> None:
        codec = CODECS[set_name]()
        self._add(NFT_MSG_NEWSETELEM, NLM_F_CREATE, set_name, (codec.encode(k, d) for k, d in items))

    def delete(self, set_name: str, keys: Iterable[str]) -> None:
        codec = CODECS[set_name]()
        self._add(NFT_MSG_DELSETELEM, 0, set_name, (codec.encode_key(k) for k in keys))

    def finish(self) -> bytes:
        end = nl_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, self._seq + 1, 0, NFNL_SUBSYS_NFTABLES, b"")
        return b"".join([*self._msgs, end])


def build_batch(table: str, elements: dict[str, Iterable[tuple[str, str]]]) -> tuple[bytes, int]:
    """A batch adding `elements` (set name -> (key, data)): (batch bytes, acknowledged messages)."""
    batch = Batch(table)
    for set_name, items in elements.items():
        batch.add(set_name, items)
    return batch.finish(), batch.acks


def send_batch(batch: bytes, expected_acks: int, timeout_s: float = 30.0) -> None:
    """Send one batch; raise NftError (the kernel then applied none of it) on any error."""
    if sys.byteorder != "little" and os.environ.get("GATELB_NL_ANY_ENDIAN") is None:
        raise NftError("the netlink element loader is only verified on little-endian hosts")
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        size = max(1 << 20, 2 * len(batch))
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 22)
        sock.settimeout(timeout_s)
        sock.send(batch)
        _read_acks(sock, expected_acks)
    except OSError as err:
        raise NftError(f"netlink element batch failed: {err}") from err
    finally:
        sock.close()


def _read_acks(sock: socket.socket, expected: int) -> None:
    seen = 0
    errors: list[str] = []
    while seen < expected:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + 16 <= len(data):
            length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + 16)
                seen += 1
                if code != 0:
                    errors.append(f"message {seq}: {os.strerror(-code)} ({errno.errorcode.get(-code, code)})")
            offset += (length + 3) & ~3
        if errors:
            raise NftError("the kernel rejected the element batch (nothing applied): " + "; ".join(errors[:5]))
