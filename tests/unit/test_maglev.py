"""The Maglev table (dataplane/maglev.py): a function of the set of backends alone (the same on
every gateway), weights honoured within slots.py's tolerance, and a backend change moves about
1/N of the flows, measured over many keys drawn the way the kernel draws slots (a 32-bit hash,
reciprocal_scale)."""

from __future__ import annotations

import ipaddress
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatelb.dataplane.maglev import TABLE_SIZES, maglev_counts, maglev_table, maglev_tolerance, table_size
from gatelb.model import Backend

_RNG = random.Random(7)
KEYS = [_RNG.getrandbits(32) for _ in range(50_000)]


def backends(n: int, weights: list[int] | None = None) -> list[Backend]:
    return [Backend(ipaddress.ip_address(f"198.51.{100 + i // 200}.{10 + i % 200}"), 8080, weights[i] if weights else 1)
            for i in range(n)]


def owners(bes: list[Backend], configured: int) -> list[Backend]:
    """The backend of every key: slot = (hash x M) >> 32, as nft_jhash scales it."""
    table = maglev_table(bes, configured)
    return [bes[table[(h * len(table)) >> 32]] for h in KEYS]


def moved(before: list[Backend], after: list[Backend]) -> float:
    return sum(a != b for a, b in zip(before, after, strict=True)) / len(before)


def test_the_table_depends_on_the_set_of_backends_not_their_order() -> None:
    bes = backends(7, [1, 2, 3, 1, 1, 5, 1])
    table = maglev_table(bes)
    shuffled = bes[:]
    random.Random(3).shuffle(shuffled)
    again = maglev_table(shuffled)
    assert [bes[i] for i in table] == [shuffled[i] for i in again]
    assert len(table) == TABLE_SIZES[0] and set(table) == set(range(7))


def test_the_table_is_pinned_across_processes() -> None:
    """blake2b, not Python's salted hash(): these slots are what every gateway computes (and what
    this process computed last release: a change here moves every flow at the upgrade)."""
    table = maglev_table(backends(3))
    assert table[:12] == (0, 2, 0, 1, 2, 0, 1, 0, 1, 2, 1, 1), table[:12]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=60))
def test_weights_honoured_within_the_slot_tolerance(weights: list[int]) -> None:
    bes = backends(len(weights), weights)
    counts = maglev_counts(bes)
    table = maglev_table(bes)
    live = [i for i, w in enumerate(weights) if w > 0]
    assert [table.count(i) for i in range(len(bes))] == counts  # the fill gives every backend its quota
    if not live:
        assert table == ()
        return
    if len(live) == 1:
        assert table == (live[0],)
        return
    size = table_size(len(bes))
    assert sum(counts) == size
    assert all(counts[i] >= 1 for i in live) and all(counts[i] == 0 for i, w in enumerate(weights) if w == 0)
    raised = sum(1 for i in live if counts[i] == 1 and Fraction(weights[i] * size, sum(weights)) < 1)
    bound = Fraction(raised + 1, size)
    for i in live:
        assert abs(Fraction(counts[i], size) - Fraction(weights[i], sum(weights))) < bound
    assert maglev_tolerance(bes) < float(bound)


def test_table_size_follows_the_configured_backends() -> None:
    assert [table_size(n) for n in (2, 8, 9, 31, 32, 127, 128, 511, 512, 10_000)] == [
        257, 257, 1021, 1021, 4093, 4093, 16381, 16381, 65521, 65521]
    # A backend that goes down keeps the size (the table is sized for the configured count)
    assert len(maglev_table(backends(8)[:7], configured=8)) == 257
    assert len(maglev_table(backends(9)[:8], configured=9)) == 1021


@pytest.mark.parametrize("n", [2, 3, 5, 8, 10, 20, 40])
def test_removing_a_backend_moves_about_one_nth(n: int) -> None:
    """Its own flows (1/N) must move; Maglev moves a few more, the more the fewer slots each
    backend has. Measured (50,000 keys, the worst of three removals): N=3 1.04/N, N=5 1.13/N,
    N=8 1.52/N (257 slots), N=10 1.27/N, N=20 1.76/N (1,021), N=40 1.88/N (4,093)."""
    bes = backends(n)
    before = owners(bes, n)
    worst = 0.0
    for gone in (0, n // 2, n - 1):
        after = owners(bes[:gone] + bes[gone + 1:], n)
        share = moved(before, after)
        lost = sum(b == bes[gone] for b in before) / len(before)
        assert share >= lost - 1e-9  # every flow of the removed backend moved
        # flows of a surviving backend move only if its slot went to another: few
        worst = max(worst, share * n)
    assert worst <= (1.25 if n <= 5 else 1.6 if n <= 10 else 2.0), worst


@pytest.mark.parametrize("n", [2, 4, 9])
def test_adding_a_backend_moves_about_one_nth(n: int) -> None:
    bes = backends(n + 1)
    before, after = owners(bes[:n], n + 1), owners(bes, n + 1)
    gained = sum(b == bes[n] for b in after) / len(after)
    assert abs(gained - 1 / (n + 1)) < 0.02  # the new one gets its share
    assert moved(before, after) <= 1.35 / (n + 1)


def test_a_weight_change_moves_few_flows() -> None:
    bes = backends(4)
    heavier = [bes[0], bes[1], bes[2], Backend(bes[3].address, bes[3].port, 2)]
    share = moved(owners(bes, 4), owners(heavier, 4))
    # backend 3 goes from 1/4 to 2/5 of the slots: at least 0.15 must move. Measured 0.17 here,
    # but a weight change re-times every backend's turns in the fill, and other weight sets move
    # far more (bench/maglev.py: 0.52 for 1:1:1 to 1:1:2, where 0.17 is the least; docs say so)
    assert 0.15 <= share <= 0.45, share


def test_the_wf2q_sequence_would_move_most_flows() -> None:
    """Why maglev exists: the same removal with the slots.py sequence moves far more than 1/N."""
    from gatelb.dataplane.slots import slot_sequence

    def seq_owners(k: int) -> list[int]:
        seq = slot_sequence([1] * k)
        return [seq[(h * len(seq)) >> 32] for h in KEYS]

    before, after = seq_owners(5), seq_owners(4)
    assert sum(a != b for a, b in zip(before, after, strict=True)) / len(KEYS) > 0.45  # 1/N is 0.2
