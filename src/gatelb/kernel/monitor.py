"""nftables change notifications in this network namespace (the NFNLGRP_NFTABLES multicast group).

The kernel announces every committed nftables transaction: one message per object it touched
(table, chain, rule, set, element; each names its table in attribute 1), then a NEWGEN message
that closes the transaction and names the committer (the netlink port id in the header, the
process id and name in attributes). That is enough to see, within milliseconds, that someone
other than us deleted, flushed or edited our table, or changed another table.

We decode only that much: message type, family, table name, and the committer. Our own
transactions are recognised through kernel/nft.py's OWN_COMMITTERS (the nft processes we start,
our netlink batch sockets and threads).

A full load of ours announces every element (200,000 messages at 10,000 services): the receive
buffer can overflow. The kernel then reports ENOBUFS and the lost messages are gone; read()
says so, and the caller checks the table's generation instead.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field

from .nft import OWN_COMMITTERS
from .nlelements import NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES, attrs

NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33
RCVBUF = 8 << 20

NFT_MSG_NEWGEN = 15
NFTA_GEN_PROC_PID = 2
NFTA_GEN_PROC_NAME = 3
# Notification types -> what changed (the DESTROY* types of newer kernels are announced as DEL*).
CHANGES = {0: "table added", 2: "table deleted", 3: "chain added", 5: "chain deleted", 6: "rule added",
           8: "rule deleted", 9: "set added", 11: "set deleted", 12: "element added", 14: "element deleted",
           18: "object added", 20: "object deleted", 22: "flowtable added", 24: "flowtable deleted"}
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


@dataclass
class Commit:
    """One committed transaction: who made it, and what it changed per (family, table)."""

    portid: int
    pid: int
    process: str
    tables: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        return self.portid in OWN_COMMITTERS or self.pid in OWN_COMMITTERS

    def touched(self, family: str, table: str) -> Counter[str] | None:
        return self.tables.get((family, table))


class NftMonitor:
    """A non-blocking netlink socket subscribed to nftables notifications. The constructor does no
    I/O: open() creates the socket (in the network namespace of the calling thread)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._pending: dict[tuple[str, str], Counter[str]] = {}

    def open(self) -> int:
        """Subscribe; returns the file descriptor to wait on. Raises OSError when not allowed."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            sock.bind((0, 0))
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        return sock.fileno()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def read(self) -> tuple[list[Commit], bool]:
        """Every transaction completed since the last call, and whether notifications were lost
        (receive buffer overflow) since then."""
        assert self._sock is not None, "open() first"
        commits: list[Commit] = []
        lost = False
        while True:
            try:
                data = self._sock.recv(1 << 20)
            except BlockingIOError:
                return commits, lost
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                lost = True
                self._pending = {}  # a partial transaction can no longer be attributed
                continue
            commits.extend(self._parse(data))

    def _parse(self, data: bytes) -> list[Commit]:
        done: list[Commit] = []
        offset = 0
        while offset + 20 <= len(data):
            length, kind, _flags, _seq, portid = struct.unpack_from("=IHHII", data, offset)
            if length < 20:
                break
            body = data[offset + 16 : offset + length]
            offset += (length + 3) & ~3
            if kind >> 8 != NFNL_SUBSYS_NFTABLES:
                continue
            msg = kind & 0xFF
            if msg == NFT_MSG_NEWGEN:
                pid, name = 0, ""
                for attr, value in attrs(body[4:]):
                    if attr == NFTA_GEN_PROC_PID:
                        pid = struct.unpack("!I", value[:4])[0]
                    elif attr == NFTA_GEN_PROC_NAME:
                        name = value.rstrip(b"\0").decode(errors="replace")
                done.append(Commit(portid, pid, name, self._pending))
                self._pending = {}
                continue
            what = CHANGES.get(msg)
            if what is None:
                continue
            table = next((v.rstrip(b"\0").decode(errors="replace") for a, v in attrs(body[4:]) if a == 1), "")
            key = (FAMILIES.get(body[0], str(body[0])), table)
            self._pending.setdefault(key, Counter())[what] += 1
        return done
