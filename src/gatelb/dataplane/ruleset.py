"""DesiredState (resolved) -> Ruleset: the nftables objects we want, as plain data.

The layout is chosen for load time (see docs/design-dataplane.md and docs/benchmarks.md): per-service
state lives almost entirely in *elements* of a few global maps, which nft loads far faster than
rules, chains or per-service sets.

    services chain:   ip daddr . meta l4proto . th dport  vmap @svc4       (O(1) service lookup)
    svc4 element:     203.0.113.10 . tcp . 80 : goto pick4_random_4
    pick4_random_4:   dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 4 map @be4
    be4 elements:     203.0.113.10 . tcp . 80 . 0 : 198.51.100.11 . 8080   (one per weighted slot)
    (UDP services use pick4u_* chains and the beu4 map: see layout.py)

Elements are typed tuples (layout.py): the be4 element above is the key (IPv4Address('203.0.113.10'),
Protocol.TCP, 80, 0) with data (IPv4Address('198.51.100.11'), 8080); render.py writes them as nft
text, kernel/nlelements.py encodes them for netlink.

The pick chains are shared by every service with the same algorithm and slot count, so 10,000
services need only a handful of rules. Round robin needs a counter of its own per service, and
ClientIP affinity needs per-backend timeout sets (kube-proxy's approach), so those two get
per-service chains.

Nothing here does I/O; the same input always gives the same Ruleset, in the same order.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import ipaddress
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from gatelb.model import (
    Algorithm,
    Backend,
    IPAddress,
    NatMode,
    NoBackendAction,
    Protocol,
    ResolvedState,
    Service,
)

from .layout import FAMILY_SETS, Data, FamilySets, Key, affinity_set, counter_shard
from .selection import slot_table

TABLE = "gatelb"
FAMILY = "inet"

# jhash needs a seed; a fixed one keeps source hashing stable across restarts and gateways.
SOURCEHASH_SEED = 0x676C6231
# The flow hash of maglev: the same seed, pinned for the same reason (every member of an
# active-active group must draw the same slot for a flow).
FLOWHASH_SEED = SOURCEHASH_SEED


def flow_hash_fields(family: int, protocol: Protocol) -> str:
    """What maglev hashes. IPv4: the 5-tuple. IPv6: source address and port only, because the
    5-tuple (44 bytes) next to the map key (24) exceeds nftables' 64 bytes of registers; the
    flows of one frontend share the rest of the tuple, so the spread is the same. The ports are
    named by protocol (`tcp sport`, not `th sport`): nft gives a rule with `th` next to the
    backend map an implicit `meta l4proto` match when it is added to an existing table but not
    in a full load, so the two would differ; with the protocol named, both have it."""
    p = protocol.value
    if family == 4:
        return f"ip saddr . ip daddr . meta l4proto . {p} sport . {p} dport"
    return f"ip6 saddr . {p} sport"

NO_BACKEND_CHAIN = "no_backend_reject"


def ip_keyword(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def fmt_endpoint(address: IPAddress, port: int) -> str:
    """addr:port as a dnat target; IPv6 needs brackets there."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def frontend_key(svc: Service) -> Key:
    """The key of the service in svc4/svc6 (and restricted4/6): (address, protocol, port)."""
    return (svc.vip, svc.protocol, svc.port)


def _short_hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def service_id(svc: Service) -> str:
    """Deterministic, readable, unique: hash of what identifies the service, then its name."""
    h = _short_hash(f"{svc.name}|{svc.vip}|{svc.protocol.value}|{svc.port}", 8)
    return f"{h}_{_UNSAFE.sub('_', svc.name)[:48]}"


def backend_id(backend: Backend) -> str:
    return _short_hash(f"{backend.address}|{backend.port}", 6)


@dataclass
class Ruleset:
    """What the table should contain beyond its fixed skeleton (see render.skeleton()).

    elements: for every global set/map, typed element key -> data (None for plain sets); the
              fields follow the set's layout (layout.SETS).
    chains:   dynamic chains (pick and per-service chains), name -> rules.
    sets:     dynamic sets (affinity), name -> declaration body.
    """

    elements: dict[str, dict[Key, Data]] = field(default_factory=dict)
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sets: dict[str, str] = field(default_factory=dict)

    def add_element(self, set_name: str, key: Key, data: Data = None) -> None:
        self.elements.setdefault(set_name, {})[key] = data

    def element_count(self) -> int:
        return sum(len(v) for v in self.elements.values())


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Compiling 10,000 services allocates some 300,000 element tuples and no reference cycles;
    the cyclic collector's passes over the growing heap meanwhile would cost more than the
    compile itself, so it waits until the end."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compile_ruleset(state: ResolvedState) -> Ruleset:
    rs = Ruleset()
    with gc_paused():
        for svc in state.services:
            _compile_service(rs, svc)
    return rs


def compile_service(svc: Service) -> Ruleset:
    """One service's own fragment (shared pick chains included), for incremental updates."""
    rs = Ruleset()
    _compile_service(rs, svc)
    return rs


def goto(chain: str) -> str:
    """A verdict map's data. Interned: most services share a handful of pick chains."""
    return sys.intern(f"goto {chain}")


def _compile_service(rs: Ruleset, svc: Service) -> None:
    names = FAMILY_SETS[svc.family]
    vip, proto, port = svc.vip, svc.protocol, svc.port
    key: Key = (vip, proto, port)
    elements = rs.elements
    # Hot path at 10,000 services: a tuple per backend, shared by its slots' elements.
    targets = [(b.address, b.port) for b in svc.backends]

    if svc.source_ranges:
        rs.add_element(names.restricted, key)
        for net in svc.source_ranges:
            rs.add_element(names.allow, (vip, proto, port, net))

    flow_keys: list[Key] = [(vip, proto, a, p) for a, p in targets]
    _add_counters(elements, names, [*flow_keys, *((vip, proto, b.address, b.port) for b in svc.idle_backends)])

    if not svc.backends:
        verdict = goto(NO_BACKEND_CHAIN) if svc.no_backend is NoBackendAction.REJECT else "drop"
        rs.add_element(names.svc, key, verdict)
        return

    if svc.nat is NatMode.FULLNAT:
        elements.setdefault(names.fullnat, {}).update(dict.fromkeys(flow_keys))
    else:  # fullnat masquerades every flow already, hairpin included
        elements.setdefault(names.hairpin, {}).update(dict.fromkeys((a, a) for a, _ in targets))

    slots = slot_table(svc)
    if svc.affinity is not None:
        chain = _compile_affinity(rs, svc, slots)
    else:
        be = elements.setdefault(names.beu if proto is Protocol.UDP else names.be, {})
        for slot, index in enumerate(slots):
            be[(vip, proto, port, slot)] = targets[index]
        chain = _pick_chain(rs, svc, len(slots))
    rs.add_element(names.svc, key, goto(chain))


def _add_counters(elements: dict[str, dict[Key, Data]], names: FamilySets, keys: list[Key]) -> None:
    """Each backend's elements in its shard of the three counter sets (layout.counter_shard)."""
    for key in keys:
        shard = counter_shard(key[2])  # type: ignore[arg-type]
        for sets in (names.flows, names.replies, names.conns):
            elements.setdefault(sets[shard], {})[key] = None


def _selector(svc: Service, modulus: int) -> str:
    """The expression that draws a slot number for a new connection."""
    if svc.algorithm is Algorithm.SOURCEHASH:
        return f"jhash {ip_keyword(svc.family)} saddr mod {modulus} seed {SOURCEHASH_SEED:#x}"
    if svc.algorithm is Algorithm.ROUNDROBIN:
        return f"numgen inc mod {modulus}"
    if svc.algorithm is Algorithm.MAGLEV:
        return f"jhash {flow_hash_fields(svc.family, svc.protocol)} mod {modulus} seed {FLOWHASH_SEED:#x}"
    return f"numgen random mod {modulus}"


def backend_map(svc: Service) -> str:
    """be4/be6 for TCP, beu4/beu6 for UDP (layout.py says why they cannot be shared)."""
    names = FAMILY_SETS[svc.family]
    return names.beu if svc.protocol is Protocol.UDP else names.be


# Shared pick chains for up to this many slots are part of the table's fixed skeleton, so that a
# backend going down or coming back (which changes the slot count) changes map elements only.
STATIC_PICK_SLOTS = 16
STATIC_PICK_ALGORITHMS = (Algorithm.RANDOM, Algorithm.SOURCEHASH)


def pick_rule(family: int, protocol: Protocol, selector: str) -> str:
    ip = ip_keyword(family)
    bemap = FAMILY_SETS[family].beu if protocol is Protocol.UDP else FAMILY_SETS[family].be
    return f"dnat {ip} to {ip} daddr . meta l4proto . th dport . {selector} map @{bemap}"


def pick_chain_name(family: int, protocol: Protocol, algorithm: Algorithm, modulus: int) -> str:
    udp = "u" if protocol is Protocol.UDP else ""
    return f"pick{family}{udp}_{algorithm.value}_{modulus}"


def static_pick_chains() -> dict[str, str]:
    """The pick chains of the skeleton: name -> rule."""
    chains = {}
    for family in (4, 6):
        for protocol in Protocol:
            for algorithm in STATIC_PICK_ALGORITHMS:
                for modulus in range(1, STATIC_PICK_SLOTS + 1):
                    probe = Service("", ipaddress.ip_address("::" if family == 6 else "0.0.0.0"), protocol, 1, (),
                                    algorithm=algorithm)
                    chains[pick_chain_name(family, protocol, algorithm, modulus)] = pick_rule(
                        family, protocol, _selector(probe, modulus))
    return chains


def _pick_chain(rs: Ruleset, svc: Service, modulus: int) -> str:
    rule = pick_rule(svc.family, svc.protocol, _selector(svc, modulus))
    if svc.algorithm is Algorithm.ROUNDROBIN:
        # numgen inc keeps one counter per rule: sharing it between services would make two
        # services that alternate connections always land on the same slots.
        name = f"rr_{service_id(svc)}"
    else:
        name = pick_chain_name(svc.family, svc.protocol, svc.algorithm, modulus)
        if modulus <= STATIC_PICK_SLOTS and svc.algorithm in STATIC_PICK_ALGORITHMS:
            return name  # in the skeleton
    rs.chains[name] = (rule,)
    return name


def _compile_affinity(rs: Ruleset, svc: Service, slots: tuple[int, ...]) -> str:
    """kube-proxy's ClientIP affinity: one dynamic timeout set of client addresses per backend."""
    fam = svc.family
    ip = ip_keyword(fam)
    sid = service_id(svc)
    assert svc.affinity is not None
    timeout = svc.affinity.timeout_seconds
    decl = affinity_set(fam, timeout).declaration_body()
    rules: list[str] = []
    endpoint_chains: list[str] = []
    # The timeout is part of each set's name: a set's declaration never changes under one name,
    # so a new timeout is a new set (and new rules) rather than an in-place change nft cannot do.
    for b, set_name in affinity_set_names(svc):
        ep_chain = f"ep_{sid}_{backend_id(b)}"
        rs.sets[set_name] = decl
        rs.chains[ep_chain] = (
            f"update @{set_name} {{ {ip} saddr }} meta l4proto {svc.protocol.value}"
            f" dnat {ip} to {fmt_endpoint(b.address, b.port)}",
        )
        rules.append(f"{ip} saddr @{set_name} goto {ep_chain}")
        endpoint_chains.append(ep_chain)
    vmap = ", ".join(f"{slot} : goto {endpoint_chains[i]}" for slot, i in enumerate(slots))
    rules.append(f"{_selector(svc, len(slots))} vmap {{ {vmap} }}")
    chain = f"svc_{sid}"
    rs.chains[chain] = tuple(rules)
    return chain


def affinity_set_names(svc: Service) -> list[tuple[Backend, str]]:
    """The ClientIP affinity set of each backend of `svc`, in rule order (the first set holding
    the client decides), as _compile_affinity names them."""
    if svc.affinity is None:
        return []
    sid = service_id(svc)
    return [(b, f"aff_{sid}_{backend_id(b)}_{svc.affinity.timeout_seconds}") for b in svc.backends]
