"""The two helpers of bench/ha_sync.py, each run inside a lab namespace.

``python -m bench.ha_sync_tools load --target VIP --port P --sources A,B,.. --rate R --seconds S
--probe-sources X,Y,.. --probe-every T`` (client namespace) opens new TCP connections at R per
second, open loop, from a raw socket: one SYN each, from the next (source address, port) pair, so
every SYN is a new conntrack entry on the active gateway. The backend's kernel answers SYN-ACK,
the client's kernel (which holds no such socket) answers RST: each connection goes SYN_SENT ->
SYN_RECV -> CLOSE on the gateway and is destroyed 10 s later, four state changes that conntrackd
replicates, without any user-space server in the way. Every T seconds one *probe* SYN goes from
the next probe address with port BASE + k (probe k; --probe-base, 40000, differs per run: a
later run never matches an earlier run's late DESTROY); its send time is recorded. Prints one JSON
line: {"sent", "send_failures", "elapsed_s", "probes": [[k, address, port, time], ...]}.

``python -m bench.ha_sync_tools capture --interface lan0 --port 3780 --probe-sources X,Y,..
--probes N --seconds S`` (standby namespace) reads every conntrackd datagram arriving on the
interface (AF_PACKET, kernel receive timestamps) and notes, for each probe k, the first datagram
that carries its source address and its port: the moment the standby received the probe's entry.
Prints one JSON line: {"datagrams", "bytes", "seen": {k: time}}.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import struct
import sys
import time

PROBE_PORT_BASE = 40000
PORTS = 38000  # the load's source ports, 1024 and up (under the probes')
SO_TIMESTAMPNS = 35
ETH_P_IP = 0x0800


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def syn(src: bytes, dst: bytes, sport: int, dport: int, seq: int) -> bytes:
    """An IPv4 packet with a TCP SYN (the kernel fills the IP checksum and id of a raw packet)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, socket.IPPROTO_TCP, 0, src, dst)
    return ip + tcp


def load(a: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    dst = socket.inet_aton(a.target)
    sources = [socket.inet_aton(s) for s in a.sources.split(",")]
    probes_from = [socket.inet_aton(s) for s in a.probe_sources.split(",")]
    # every packet made beforehand (8 sources x 38,000 ports: a tuple comes back after 30 s at
    # 10,000/s, long after its CLOSE entry expired): the loop only sends
    packets = [syn(src, dst, port, a.port, 1) for port in range(1024, 1024 + PORTS) for src in sources]
    target = (a.target, 0)
    probes: list[list[object]] = []
    sent = failed = 0
    t0 = time.time()
    next_probe = t0 + a.probe_every
    end = t0 + a.seconds
    while (now := time.time()) < end:
        if now >= next_probe:
            k = len(probes)
            src = probes_from[k % len(probes_from)]
            pkt = syn(src, dst, a.probe_base + k, a.port, k)
            at = time.time()
            sock.sendto(pkt, target)
            probes.append([k, socket.inet_ntoa(src), a.probe_base + k, at])
            next_probe += a.probe_every
        due = min(int((now - t0) * a.rate), sent + 500)  # at most 500 before the next probe check
        while sent < due:
            try:
                sock.sendto(packets[sent % len(packets)], target)
            except OSError:
                failed += 1  # a full queue: not offered (reported)
            sent += 1
        if sent >= int((time.time() - t0) * a.rate):
            time.sleep(0.0005)
    doc = {"sent": sent - failed, "send_failures": failed, "elapsed_s": time.time() - t0, "probes": probes}
    print(json.dumps(doc), flush=True)
    return 0


def capture(a: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sock.bind((a.interface, 0))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.settimeout(0.2)
    addresses = [socket.inet_aton(s) for s in a.probe_sources.split(",")]
    wanted: dict[bytes, list[int]] = {addr: [] for addr in addresses}  # address -> probes not seen yet
    for k in range(a.probes):
        wanted[addresses[k % len(addresses)]].append(k)
    seen: dict[int, float] = {}
    datagrams = size = 0
    end = time.time() + a.seconds
    while time.time() < end:
        try:
            data, anc, _flags, _addr = sock.recvmsg(65535, 64)
        except TimeoutError:
            continue
        if len(data) < 28 or data[9] != socket.IPPROTO_UDP:
            continue
        ihl = (data[0] & 0x0F) * 4
        if struct.unpack("!H", data[ihl + 2:ihl + 4])[0] != a.port:
            continue
        at = time.time()
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", value[:16])
                at = sec + nsec / 1e9
        datagrams += 1
        size += len(data) - ihl - 8
        payload = data[ihl + 8:]
        for addr, ks in wanted.items():
            if ks and addr in payload:
                for k in list(ks):
                    if struct.pack("!H", a.probe_base + k) in payload:
                        seen[k] = at
                        ks.remove(k)
    print(json.dumps({"datagrams": datagrams, "bytes": size, "seen": seen}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    lo = sub.add_parser("load")
    lo.add_argument("--target", required=True)
    lo.add_argument("--port", type=int, required=True)
    lo.add_argument("--sources", required=True)
    lo.add_argument("--rate", type=float, required=True)
    lo.add_argument("--seconds", type=float, required=True)
    lo.add_argument("--probe-sources", required=True)
    lo.add_argument("--probe-every", type=float, default=0.2)
    lo.add_argument("--probe-base", type=int, default=PROBE_PORT_BASE)
    ca = sub.add_parser("capture")
    ca.add_argument("--interface", required=True)
    ca.add_argument("--port", type=int, default=3780)
    ca.add_argument("--probe-sources", required=True)
    ca.add_argument("--probes", type=int, required=True)
    ca.add_argument("--seconds", type=float, required=True)
    ca.add_argument("--probe-base", type=int, default=PROBE_PORT_BASE)
    a = p.parse_args(argv)
    for s in (a.probe_sources.split(",") + (a.sources.split(",") if a.cmd == "load" else [])):
        ipaddress.IPv4Address(s)
    return load(a) if a.cmd == "load" else capture(a)


if __name__ == "__main__":
    sys.exit(main())
