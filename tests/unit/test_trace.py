"""The packet tracer (dataplane/trace.py): pure, over the model."""

from __future__ import annotations

import ipaddress
import random

import pytest

from gatelb.dataplane.slots import slot_budget, slot_counts, slot_tolerance
from gatelb.dataplane.trace import (
    DNAT,
    DROPPED_SOURCE,
    NO_MATCH,
    REJECTED_NO_BACKEND,
    BackendHealth,
    Packet,
    TraceInput,
    parse_endpoint,
    sourcehash_slot,
    trace,
)
from gatelb.model import Affinity, Algorithm, Backend, Protocol, Service

ip = ipaddress.ip_address
VIP = ip("203.0.113.10")


def svc(weights: tuple[int, ...] = (1, 1, 1), **kw: object) -> Service:
    backends = tuple(Backend(ip(f"198.51.100.{11 + i}"), 8080, w) for i, w in enumerate(weights))
    return Service("web", VIP, Protocol.TCP, 80, backends, **kw)  # type: ignore[arg-type]


def packet(source: str = "192.0.2.10", port: int = 80, protocol: Protocol = Protocol.TCP) -> Packet:
    return Packet(ip(source), VIP, port, protocol)


def view(s: Service, **kw: object) -> TraceInput:
    return TraceInput({s.name: s}, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("weights", [(1, 1, 8), (1, 2, 3), (1, 99), (5, 1, 1), (1000, 1, 1), (7, 300, 13, 1)])
def test_probabilities_follow_the_weights_within_the_slot_tolerance(weights: tuple[int, ...]) -> None:
    t = trace(view(svc(weights)), packet())
    assert t.verdict == DNAT and t.chosen is None
    assert abs(sum(c.probability for c in t.candidates) - 1) < 1e-9
    for c in t.candidates:
        assert c.weight_share == pytest.approx(c.backend.weight / sum(weights))
        assert abs(c.probability - c.weight_share) <= t.tolerance + 1e-12


def test_small_weights_are_exact_and_large_ones_stay_within_the_documented_bound() -> None:
    assert slot_tolerance([1, 1, 8]) == 0.0
    rng = random.Random(7)
    for _ in range(300):
        weights = [rng.randint(1, 10_000) for _ in range(rng.randint(1, 40))]
        counts = slot_counts(weights)
        total, wsum = sum(counts), sum(weights)
        tol = slot_tolerance(weights)
        assert total <= slot_budget(len(weights))
        assert all(abs(c / total - w / wsum) <= tol + 1e-12 for c, w in zip(counts, weights, strict=True))


def test_source_ranges_verdict() -> None:
    s = svc(source_ranges=(ipaddress.ip_network("192.0.2.0/25"),))
    inside = trace(view(s), packet("192.0.2.10"))
    assert inside.verdict == DNAT and inside.source_allowed and str(inside.source_range) == "192.0.2.0/25"
    outside = trace(view(s), packet("192.0.2.200"))
    assert outside.verdict == DROPPED_SOURCE and outside.source_allowed is False and not outside.candidates
    assert outside.rule is not None and "@restricted4" in outside.rule and "!= @allow4 drop" in outside.rule


def test_affinity_entry_pins_the_source() -> None:
    s = svc(affinity=Affinity(60))
    fresh = trace(view(s), packet())
    assert fresh.chosen is None and any("no affinity entry" in n for n in fresh.notes)
    pinned = s.backends[1]
    t = trace(view(s), packet(), affinity={pinned.key: 42.0})
    assert t.chosen == pinned
    assert [c.probability for c in t.candidates] == [0.0, 1.0, 0.0]
    assert t.candidates[1].affinity_expires_s == 42.0
    # The first backend's set wins when (after a change) two hold the client: rule order.
    both = trace(view(s), packet(), affinity={s.backends[2].key: 1.0, s.backends[0].key: 2.0})
    assert both.chosen == s.backends[0]


def test_source_hash_matches_the_kernels_jhash() -> None:
    # Measured with `jhash ip saddr mod 5 seed 0x676c6231` on Linux 6.18 (a vmap to counted chains).
    assert [sourcehash_slot(ip(a), 5) for a in ("192.0.2.10", "192.0.2.200", "192.0.2.77", "2001:db8:1::10")] \
        == [2, 2, 4, 0]
    s = svc((1, 1, 1, 1, 1), algorithm=Algorithm.SOURCEHASH)
    t = trace(view(s), packet("192.0.2.77"))
    assert t.slot == 4 and t.chosen == s.backends[4]


def test_no_match_names_what_the_address_serves() -> None:
    t = trace(view(svc()), packet(port=443))
    assert t.verdict == NO_MATCH and t.lb is None and "serves 80/tcp (web)" in t.explanation
    assert trace(view(svc()), packet(protocol=Protocol.UDP)).verdict == NO_MATCH


def test_down_and_draining_backends_are_candidates_without_slots() -> None:
    up = Backend(ip("198.51.100.11"), 8080)
    down = Backend(ip("198.51.100.12"), 8080)
    drain = Backend(ip("198.51.100.13"), 8080, drain=True)
    s = Service("web", VIP, Protocol.TCP, 80, (up,), idle_backends=(down, drain))
    health = {("web", down.address, 8080): BackendHealth("down", "3/3 failures: connect refused")}
    t = trace(view(s, health=health), packet())
    states = {str(c.backend): (c.state, c.reason, c.probability) for c in t.candidates}
    assert states == {"198.51.100.11:8080": ("up", "", 1.0),
                      "198.51.100.12:8080": ("down", "3/3 failures: connect refused", 0.0),
                      "198.51.100.13:8080": ("draining", "drain: true", 0.0)}
    empty = Service("web", VIP, Protocol.TCP, 80, (), idle_backends=(down,))
    assert trace(view(empty), packet()).verdict == REJECTED_NO_BACKEND


def test_parse_endpoint() -> None:
    assert parse_endpoint("203.0.113.10:80") == (VIP, 80)
    assert parse_endpoint("[2001:db8::1]:443") == (ip("2001:db8::1"), 443)
    for bad, why in (("203.0.113.10", "ADDRESS:PORT"), ("web:80", "not an IP address"),
                     ("203.0.113.10:70000", "not a port")):
        with pytest.raises(ValueError, match=why):
            parse_endpoint(bad)
