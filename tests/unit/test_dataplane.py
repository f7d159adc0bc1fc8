"""Compiler: golden output, slot weights, and incremental transactions equal to full loads."""

from __future__ import annotations

import ipaddress
import os
import random
from pathlib import Path

import pytest

from gatelb.agent.engine import DataplaneSync
from gatelb.dataplane import compile_full, compile_ruleset
from gatelb.dataplane.slots import MIN_SLOTS, slot_counts, slot_sequence
from gatelb.kernel.fake import FakeNft
from gatelb.kernel.nft import NftError
from gatelb.model import (
    Affinity,
    Algorithm,
    Backend,
    NatMode,
    NoBackendAction,
    Protocol,
    ResolvedState,
    Service,
)

GOLDEN = Path(__file__).parent / "golden"


def be(addr: str, port: int = 8080, weight: int = 1) -> Backend:
    return Backend(ipaddress.ip_address(addr), port, weight)


def svc(name: str, vip: str, *backends: Backend, **kw: object) -> Service:
    port = kw.pop("port", 80)
    proto = kw.pop("protocol", Protocol.TCP)
    return Service(name, ipaddress.ip_address(vip), proto, port, tuple(backends), **kw)  # type: ignore[arg-type]


def example_state() -> ResolvedState:
    return ResolvedState(
        (
            svc("aff", "203.0.113.12", be("198.51.100.11", 53), be("198.51.100.12", 53),
                protocol=Protocol.UDP, port=53, affinity=Affinity(30)),
            svc("empty", "203.0.113.13", no_backend=NoBackendAction.DROP),
            svc("rr", "203.0.113.11", be("198.51.100.11"), be("198.51.100.12"),
                algorithm=Algorithm.ROUNDROBIN, nat=NatMode.FULLNAT),
            svc("v6", "2001:db8:100::1", be("2001:db8:2::11"), be("2001:db8:2::12", weight=3),
                algorithm=Algorithm.SOURCEHASH),
            svc("web", "203.0.113.10", be("198.51.100.11"), be("198.51.100.12"), be("198.51.100.13", weight=2),
                source_ranges=(ipaddress.ip_network("192.0.2.0/25"),), idle_backends=(be("198.51.100.14"),)),
        )
    )


def test_golden_full_load() -> None:
    """The exact text we load; regenerate with GATELB_REGEN_GOLDEN=1 after an intended change."""
    text = compile_full(example_state())
    path = GOLDEN / "example.nft"
    if os.environ.get("GATELB_REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_layout_uses_shared_pick_chains() -> None:
    state = ResolvedState(tuple(svc(f"s{i}", f"203.0.113.{i + 1}", be("198.51.100.11"), be("198.51.100.12"))
                                for i in range(50)))
    rs = compile_ruleset(state)
    assert rs.chains == {}  # pick chains for up to 16 slots are part of the skeleton
    assert set(rs.elements["svc4"].values()) == {"goto pick4_random_2"}
    assert len(rs.elements["svc4"]) == 50
    assert len(rs.elements["be4"]) == 100
    ip = ipaddress.ip_address
    assert rs.elements["be4"][(ip("203.0.113.1"), Protocol.TCP, 80, 1)] == (ip("198.51.100.12"), 8080)


def test_weights_become_slots() -> None:
    assert slot_counts([1, 1, 2]) == [1, 1, 2]
    assert slot_counts([10, 10, 20]) == [1, 1, 2]  # divided by the gcd
    assert slot_counts([0, 3]) == [0, 1]
    big = slot_counts([1, 1000, 7])
    assert sum(big) == MIN_SLOTS and min(big) >= 1
    assert sorted(slot_sequence([5, 1, 1])) == [0, 0, 0, 0, 0, 1, 2]
    # smooth order: the heavy backend never takes more than two slots in a row here
    seq = "".join("abc"[i] for i in slot_sequence([5, 1, 1]))
    assert "aaa" not in seq


def test_idle_backends_keep_counters_but_take_no_slots() -> None:
    rs = compile_ruleset(example_state())
    ip = ipaddress.ip_address
    key = (ip("203.0.113.10"), Protocol.TCP, ip("198.51.100.14"), 8080)
    assert all(key in rs.elements[f"{kind}4_14"] for kind in ("flows", "replies", "conns"))  # .14 & 15
    assert (ip("198.51.100.14"), 8080) not in rs.elements["be4"].values()


def _random_state(rng: random.Random) -> ResolvedState:
    services = []
    for i in range(rng.randint(0, 8)):
        fam6 = rng.random() < 0.3
        vip = f"2001:db8:100::{i + 1}" if fam6 else f"203.0.113.{i + 1}"
        pool = [f"2001:db8:2::{j}" for j in range(10, 16)] if fam6 else [f"198.51.100.{j}" for j in range(10, 16)]
        chosen = rng.sample(pool, rng.randint(0, 4))
        backends = tuple(be(a, weight=rng.choice([1, 1, 2, 3])) for a in chosen)
        services.append(
            svc(f"lb{i}", vip, *backends,
                algorithm=rng.choice(list(Algorithm)),
                affinity=Affinity(rng.choice([10, 60])) if rng.random() < 0.3 else None,
                nat=rng.choice(list(NatMode)),
                no_backend=rng.choice(list(NoBackendAction)),
                source_ranges=(ipaddress.ip_network("2001:db8:1::/64" if fam6 else "192.0.2.0/25"),)
                if rng.random() < 0.3 else ())
        )
    return ResolvedState(tuple(services))


@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("seed", range(40))
def test_incremental_equals_full(seed: int, indexed: bool) -> None:
    """Any sequence of increments leaves exactly what a fresh full load of the last state gives."""
    rng = random.Random(seed)
    nft = FakeNft()
    sync = DataplaneSync(nft, indexed=indexed)
    for step in range(6):
        state = _random_state(rng)
        result = sync.sync(state)
        assert result.full == (step == 0)
        fresh = FakeNft()
        fresh.apply(compile_full(state, generation=sync.generation))
        assert nft.table == fresh.table, f"step {step}:\n{nft.last_transaction}"


def test_unchanged_state_applies_nothing() -> None:
    nft = FakeNft()
    sync = DataplaneSync(nft, indexed=True)
    sync.sync(example_state())
    count = len(nft.transactions)
    result = sync.sync(example_state())
    assert result.script == "" and len(nft.transactions) == count


def test_one_backend_change_touches_only_its_elements() -> None:
    base = example_state()
    nft = FakeNft()
    sync = DataplaneSync(nft, indexed=True)
    sync.sync(base)
    web = base.by_name()["web"]
    changed = ResolvedState(tuple(
        s if s.name != "web" else Service(web.name, web.vip, web.protocol, web.port, web.backends[:2],
                                         source_ranges=web.source_ranges, idle_backends=web.idle_backends)
        for s in base.services
    ))
    result = sync.sync(changed)
    assert not result.full
    assert "203.0.113.10" in result.script
    for other in ("203.0.113.11", "203.0.113.12", "2001:db8:100::1"):
        assert other not in result.script


def test_failed_apply_forces_full_resync() -> None:
    nft = FakeNft()
    sync = DataplaneSync(nft, indexed=True)
    sync.sync(example_state())
    nft.fail_next = "Error: simulated kernel refusal"
    with pytest.raises(NftError):
        sync.sync(ResolvedState(example_state().services[:2]))
    result = sync.sync(ResolvedState(example_state().services[:2]))
    assert result.full


def test_adopt_only_when_generation_matches() -> None:
    nft = FakeNft()
    first = DataplaneSync(nft)
    first.sync(example_state())
    again = DataplaneSync(nft)
    assert again.adopt(example_state(), first.generation)
    assert not again.sync(example_state()).script
    stale = DataplaneSync(nft)
    assert not stale.adopt(example_state(), first.generation + 5)


def test_adopt_refuses_a_table_with_a_second_generation_element() -> None:
    """`nft add element inet gatelb generation { 99 }` behind our back: the recorded generation is
    still in the set, but the table is no longer exactly what we applied."""
    nft = FakeNft()
    first = DataplaneSync(nft, indexed=True)
    first.sync(example_state())
    nft.apply("add element inet gatelb generation { 99 }\n")
    assert not DataplaneSync(nft, indexed=True).adopt(example_state(), first.generation)
    result = DataplaneSync(nft, indexed=True).sync(example_state())
    assert result.full and nft.generation() == result.generation


@pytest.mark.parametrize("indexed", [False, True])
def test_adopt_refuses_a_table_whose_chains_were_emptied(indexed: bool) -> None:
    """`nft flush table` (or `flush chain`) empties chains and leaves every set, the generation
    included: the rules are gone although the generation matches."""
    nft = FakeNft()
    first = DataplaneSync(nft, indexed=indexed)
    first.sync(example_state())
    assert DataplaneSync(nft, indexed=indexed).adopt(example_state(), first.generation)
    nft.apply("flush chain inet gatelb services\n")
    assert not DataplaneSync(nft, indexed=indexed).adopt(example_state(), first.generation)
