"""A packet tracer over the model: which load balancer a packet matches and which backend it reaches.

It walks the same decisions the compiled table makes (render.py's `services` chain, ruleset.py's
pick and affinity chains), in the same order, from the desired state alone:

1. the frontend lookup (`ip daddr . meta l4proto . th dport vmap @svc4`): which service, if any;
2. the source-range rule (`... @restricted4 ... . ip saddr != @allow4 drop`);
3. no usable backend: the `no_backend_reject` chain or a plain drop;
4. the pick: a slot number drawn by `numgen random`/`numgen inc`/`jhash ip saddr` (source hash)/
   `jhash` of the flow (maglev) mod the slot count, the slot's backend from the slot table
   (selection.py). The hashes are computed exactly as the kernel does (Linux's jhash over the
   registers nft loads, then reciprocal_scale), so the tracer names *the* backend (for maglev
   when the packet's source port is given); random and round robin give each backend its share
   of the slots;
5. ClientIP affinity: the first backend whose affinity set holds the client wins before any pick
   (which sets hold it is a kernel fact the caller passes in).

Pure: no I/O. The kernel checks of `gatelb trace` (agent/trace.py) sit on top of this.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from gatelb.model import (
    Algorithm,
    Backend,
    IPAddress,
    IPNetwork,
    LoadBalancer,
    NoBackendAction,
    Protocol,
    Service,
    SyncedState,
)

from .ruleset import FLOWHASH_SEED, NO_BACKEND_CHAIN, SOURCEHASH_SEED, TABLE, ip_keyword
from .selection import slot_shares, slot_table, tolerance

# Verdicts, in the order the table decides them.
NO_MATCH = "no-match"  # no load balancer: the packet is routed (or not) as any other
DISABLED = "disabled"  # matches a load balancer whose state is disable: no rule exists for it
DROPPED_SOURCE = "dropped-source-range"
REJECTED_NO_BACKEND = "rejected-no-backend"
DROPPED_NO_BACKEND = "dropped-no-backend"
DNAT = "dnat"


@dataclass(frozen=True, slots=True)
class Packet:
    source: IPAddress
    destination: IPAddress
    port: int
    protocol: Protocol = Protocol.TCP
    source_port: int | None = None  # what maglev's flow hash needs to name the backend

    def __str__(self) -> str:
        dst = f"[{self.destination}]" if self.destination.version == 6 else str(self.destination)
        src = str(self.source) if self.source_port is None else _endpoint(self.source, self.source_port)
        return f"{src} -> {dst}:{self.port}/{self.protocol.value}"


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """What the health monitor last said about one backend (the state record's health entry)."""

    state: str  # up | down | unknown
    reason: str = ""
    since: float | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    backend: Backend
    state: str  # up | down | draining
    reason: str
    slots: int  # slots of the slot table (0: takes no new connection)
    probability: float  # of a new connection from this source (1/0 once the pick is known)
    share: float  # of new connections over many sources: slots / all slots
    weight_share: float  # weight / total weight of the serving backends (what was asked)
    affinity_expires_s: float | None = None  # this source is pinned here for this long


@dataclass(frozen=True)
class Trace:
    packet: Packet
    verdict: str
    explanation: str  # one sentence for people
    lb: str | None = None
    rule: str | None = None  # the nft rule (or chain) that decides, when it is not the DNAT pick
    source_allowed: bool | None = None  # None: the load balancer has no source ranges
    source_range: IPNetwork | None = None  # the range that allowed the source
    algorithm: Algorithm | None = None
    candidates: tuple[Candidate, ...] = ()
    chosen: Backend | None = None  # known for source hash and for an affinity hit
    slot: int | None = None  # the slot number (source hash)
    tolerance: float = 0.0  # max |share - weight_share| (slots.slot_tolerance)
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class TraceInput:
    """The desired state the tracer reads: what is served, what was asked, and health."""

    services: Mapping[str, Service]
    load_balancers: Mapping[str, LoadBalancer] = field(default_factory=dict)
    addresses: Mapping[str, IPAddress] = field(default_factory=dict)
    # (load balancer, backend address, backend port) -> health
    health: Mapping[tuple[str, IPAddress, int], BackendHealth] = field(default_factory=dict)

    @classmethod
    def from_synced(cls, state: SyncedState,
                    health: Mapping[tuple[str, IPAddress, int], BackendHealth] | None = None) -> TraceInput:
        return cls(state.services, state.load_balancers, state.addresses, health or {})

    def service_at(self, dst: IPAddress, protocol: Protocol, port: int) -> Service | None:
        for svc in self.services.values():
            if svc.vip == dst and svc.protocol is protocol and svc.port == port:
                return svc
        return None


# --- Linux's jhash (include/linux/jhash.h) and nft_jhash's reciprocal_scale --------------------

_M = 0xFFFFFFFF
JHASH_INITVAL = 0xDEADBEEF


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _M; a ^= _rol(c, 4); c = (c + b) & _M  # noqa: E702
    b = (b - a) & _M; b ^= _rol(a, 6); a = (a + c) & _M  # noqa: E702
    c = (c - b) & _M; c ^= _rol(b, 8); b = (b + a) & _M  # noqa: E702
    a = (a - c) & _M; a ^= _rol(c, 16); c = (c + b) & _M  # noqa: E702
    b = (b - a) & _M; b ^= _rol(a, 19); a = (a + c) & _M  # noqa: E702
    c = (c - b) & _M; c ^= _rol(b, 4); b = (b + a) & _M  # noqa: E702
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c ^= b; c = (c - _rol(b, 14)) & _M  # noqa: E702
    a ^= c; a = (a - _rol(c, 11)) & _M  # noqa: E702
    b ^= a; b = (b - _rol(a, 25)) & _M  # noqa: E702
    c ^= b; c = (c - _rol(b, 16)) & _M  # noqa: E702
    a ^= c; a = (a - _rol(c, 4)) & _M  # noqa: E702
    b ^= a; b = (b - _rol(a, 14)) & _M  # noqa: E702
    c ^= b; c = (c - _rol(b, 24)) & _M  # noqa: E702
    return c


def jhash(data: bytes, seed: int) -> int:
    """jhash(key, length, initval) as the kernel computes it on a little-endian CPU (whole 12-byte
    blocks are read as native 32-bit words; the tail byte by byte)."""
    a = b = c = (JHASH_INITVAL + len(data) + seed) & _M
    k = data
    while len(k) > 12:
        a = (a + int.from_bytes(k[0:4], "little")) & _M
        b = (b + int.from_bytes(k[4:8], "little")) & _M
        c = (c + int.from_bytes(k[8:12], "little")) & _M
        a, b, c = _mix(a, b, c)
        k = k[12:]
    if not k:
        return c
    tail = k + b"\0" * (12 - len(k))
    a = (a + int.from_bytes(tail[0:4], "little")) & _M
    b = (b + int.from_bytes(tail[4:8], "little")) & _M
    c = (c + int.from_bytes(tail[8:12], "little")) & _M
    return _final(a, b, c)


def sourcehash_slot(source: IPAddress, modulus: int, seed: int = SOURCEHASH_SEED) -> int:
    """The slot `jhash ip saddr mod N seed S` draws for `source` (nft_jhash: reciprocal_scale)."""
    return (jhash(source.packed, seed) * modulus) >> 32


_PROTOCOL_NUMBERS = {Protocol.TCP: 6, Protocol.UDP: 17}


def _register(value: bytes) -> bytes:
    """A field as nft leaves it in its 32-bit registers: zero-padded to a multiple of 4 bytes
    (nft_payload and nft_meta clear the register's rest)."""
    return value + b"\0" * (-len(value) % 4)


def flow_key(source: IPAddress, source_port: int, destination: IPAddress, port: int, protocol: Protocol) -> bytes:
    """The bytes `jhash <ruleset.flow_hash_fields> ...` hashes."""
    sport = _register(source_port.to_bytes(2, "big"))
    if source.version == 6:
        return source.packed + sport
    return (source.packed + destination.packed + _register(bytes([_PROTOCOL_NUMBERS[protocol]])) + sport
            + _register(port.to_bytes(2, "big")))


def flow_slot(packet: Packet, modulus: int, seed: int = FLOWHASH_SEED) -> int:
    """The slot maglev's `jhash ... mod N seed S` draws for `packet` (its source port given)."""
    assert packet.source_port is not None
    key = flow_key(packet.source, packet.source_port, packet.destination, packet.port, packet.protocol)
    return (jhash(key, seed) * modulus) >> 32


# --- the trace -----------------------------------------------------------------------------------


def _endpoint(vip: IPAddress, port: int) -> str:
    return f"[{vip}]:{port}" if vip.version == 6 else f"{vip}:{port}"


def source_range_rule(family: int) -> str:
    ip = ip_keyword(family)
    fe = f"{ip} daddr . meta l4proto . th dport"
    return f"table inet {TABLE} chain services: {fe} @restricted{family} {fe} . {ip} saddr != @allow{family} drop"


def idle_state(b: Backend, health: BackendHealth | None) -> tuple[str, str]:
    """Why a configured backend takes no new connection."""
    if b.weight == 0:
        return "draining", "weight 0"
    if b.drain:
        return "draining", "drain: true"
    if health is not None:
        return "down", health.reason or "health check failed"
    return "down", "marked down by the health checks"


def trace(view: TraceInput, packet: Packet,
          affinity: Mapping[tuple[IPAddress, int], float | None] | None = None) -> Trace:
    """Follow `packet` through the table the desired state compiles to.

    affinity: the backends (address, port) whose ClientIP affinity set holds the packet's source,
    with the seconds left before the entry expires (from the kernel; None: not known)."""
    svc = view.service_at(packet.destination, packet.protocol, packet.port)
    if svc is None:
        return _unmatched(view, packet)
    if packet.source.version != svc.family:
        return Trace(packet, NO_MATCH, f"{packet.source} is IPv{packet.source.version}, the frontend is "
                     f"IPv{svc.family}: such a packet cannot exist", lb=svc.name)
    allowed: bool | None = None
    matched: IPNetwork | None = None
    if svc.source_ranges:
        matched = next((n for n in svc.source_ranges if packet.source in n), None)
        allowed = matched is not None
        if not allowed:
            ranges = ", ".join(str(n) for n in svc.source_ranges)
            return Trace(packet, DROPPED_SOURCE,
                         f"dropped: {packet.source} is outside the sourceRanges of {svc.name} ({ranges})",
                         rule=source_range_rule(svc.family), source_allowed=False, lb=svc.name, algorithm=svc.algorithm)
    candidates = _candidates(view, svc, packet, affinity or {})
    if not svc.backends:
        if svc.no_backend is NoBackendAction.REJECT:
            how = "TCP reset" if svc.protocol is Protocol.TCP else "ICMP port unreachable"
            return Trace(packet, REJECTED_NO_BACKEND, f"rejected ({how}): {svc.name} has no backend that takes "
                         "new connections", rule=f"table inet {TABLE} chain {NO_BACKEND_CHAIN}",
                         source_allowed=allowed, source_range=matched, candidates=candidates, lb=svc.name,
                         algorithm=svc.algorithm)
        return Trace(packet, DROPPED_NO_BACKEND, f"dropped (noBackend: drop): {svc.name} has no backend that "
                     "takes new connections", rule=f"table inet {TABLE} map svc{svc.family}: drop",
                     source_allowed=allowed, source_range=matched, candidates=candidates, lb=svc.name,
                         algorithm=svc.algorithm)

    sequence = slot_table(svc)
    chosen: Backend | None = None
    slot: int | None = None
    notes: list[str] = []
    pinned = next((b for b in svc.backends if b.key in (affinity or {})), None)
    if pinned is not None:
        chosen = pinned
        how = f"to {pinned}: {packet.source} is in its ClientIP affinity set (sessionAffinity)"
    elif svc.algorithm is Algorithm.SOURCEHASH:
        slot = sourcehash_slot(packet.source, len(sequence))
        chosen = svc.backends[sequence[slot]]
        how = f"to {chosen}: source hash of {packet.source} picks slot {slot} of {len(sequence)}"
    elif svc.algorithm is Algorithm.MAGLEV and packet.source_port is not None:
        slot = flow_slot(packet, len(sequence))
        chosen = svc.backends[sequence[slot]]
        how = f"to {chosen}: the flow hash picks slot {slot} of the {len(sequence)}-slot Maglev table"
    elif svc.algorithm is Algorithm.MAGLEV:
        how = (f"to one of {len(svc.backends)} backends by the flow hash ({len(sequence)}-slot Maglev table; "
               "give the source port to name it)")
    elif svc.algorithm is Algorithm.ROUNDROBIN:
        how = f"to one of {len(svc.backends)} backends in turn (round robin over {len(sequence)} slots)"
    else:
        how = f"to one of {len(svc.backends)} backends at random, weighted ({len(sequence)} slots)"
    if svc.affinity is not None and pinned is None:
        notes.append(f"no affinity entry for {packet.source}: the first connection picks a backend and "
                     f"pins the client there for {svc.affinity.timeout_seconds} s of silence")
    if chosen is not None:
        candidates = tuple(_replace_probability(c, 1.0 if c.backend == chosen else 0.0) for c in candidates)
    return Trace(packet, DNAT, f"DNAT {how}", source_allowed=allowed, source_range=matched,
                 candidates=candidates, chosen=chosen, slot=slot, tolerance=tolerance(svc),
                 notes=tuple(notes), lb=svc.name, algorithm=svc.algorithm)


def _replace_probability(c: Candidate, p: float) -> Candidate:
    return Candidate(c.backend, c.state, c.reason, c.slots, p, c.share, c.weight_share, c.affinity_expires_s)


def _candidates(view: TraceInput, svc: Service, packet: Packet,
                affinity: Mapping[tuple[IPAddress, int], float | None]) -> tuple[Candidate, ...]:
    counts = slot_shares(svc)
    slots_total = sum(counts) or 1
    weight_total = sum(b.weight for b in svc.backends) or 1
    out = []
    for b, n in zip(svc.backends, counts, strict=True):
        h = view.health.get((svc.name, b.address, b.port))
        state = h.state if h is not None and h.state != "unknown" else "up"
        out.append(Candidate(b, state, h.reason if h else "", n, n / slots_total, n / slots_total,
                             b.weight / weight_total, affinity.get(b.key) if b.key in affinity else None))
    for b in svc.idle_backends:
        state, reason = idle_state(b, view.health.get((svc.name, b.address, b.port)))
        out.append(Candidate(b, state, reason, 0, 0.0, 0.0, 0.0, affinity.get(b.key)))
    return tuple(out)


def _unmatched(view: TraceInput, packet: Packet) -> Trace:
    for name, lb in sorted(view.load_balancers.items()):
        addr = view.addresses.get(name) or lb.frontend_ip
        if addr == packet.destination and lb.port == packet.port and lb.protocol is packet.protocol:
            if not lb.active:
                return Trace(packet, DISABLED, f"{name} is disabled (state: disable): nothing is programmed "
                             "for it, the packet is routed as any other", lb=name)
            return Trace(packet, NO_MATCH, f"{name} has this frontend but is not programmed (see `gatelb "
                         "status` for its errors): the packet is routed as any other", lb=name)
    others = sorted(f"{s.port}/{s.protocol.value} ({s.name})" for s in view.services.values()
                    if s.vip == packet.destination)
    hint = f"; this address serves {', '.join(others)}" if others else ""
    return Trace(packet, NO_MATCH, f"no load balancer at {_endpoint(packet.destination, packet.port)}/"
                 f"{packet.protocol.value}: the packet is routed as any other{hint}")


def parse_endpoint(text: str) -> tuple[IPAddress, int]:
    """`203.0.113.10:80` or `[2001:db8::1]:80` -> (address, port); ValueError with the reason."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r}: expected ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)")
    host = host.removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError as err:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from err
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: {port!r} is not a port (1-65535)")
    return address, int(port)
