"""Weighted backends -> selection slots.

Every selection algorithm draws a slot number `0 <= s < B` (numgen random / numgen inc / jhash, all
`mod B`) and the slot maps to a backend. A backend owns slots in proportion to its weight, so
weights hold for all three algorithms.

Slot count. Weights are first divided by their greatest common divisor (1:1:2 stays three
backends in four slots). If the total W still exceeds the budget B = max(MIN_SLOTS,
SLOTS_PER_BACKEND x live backends), the weights are scaled to B slots: a backend whose exact share
is below one slot gets one (every live backend takes traffic), the others share the remaining
slots in proportion to their weights by the largest-remainder method.

Tolerance (documented in docs/configuration.md, checked by tests/unit/test_slots.py for random
weights and backend counts): each backend's share of slots differs from w/W by less than
(k + 1) / B, where k is the number of backends raised to one slot; exact when W <= B. As
B >= 16 x live >= 16 x k, that is never more than 1/16 + 1/256 of the traffic, and for backends of
comparable weight (no backend below one slot) less than 1/B.

Order. Slots are handed out in the order of a weighted fair queue (WF2Q: at step t, among the
backends whose next slot may start by t/B, the one whose slot ends first), which spreads each
backend's slots evenly: round robin over 5:1:1 gives a b a a c a a, never three in a row. It is
the same order as nginx's smooth weighted round robin for small weight sets (1:1:2, 1:3) and costs
O(B log n) instead of that algorithm's O(B x n), which at 10,000 backends was 17 s per compile.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from functools import lru_cache, reduce
from math import gcd

# Enough resolution for weights like 1:99 while keeping small services at 256 map elements at most.
MIN_SLOTS = 256
# Enough for every backend to get its share within the tolerance above, at any backend count.
SLOTS_PER_BACKEND = 16


def slot_budget(live: int) -> int:
    return max(MIN_SLOTS, SLOTS_PER_BACKEND * live)


def slot_counts(weights: Sequence[int]) -> list[int]:
    """How many slots each weight gets. Zero weights get zero slots. O(n log n)."""
    positive = [w for w in weights if w > 0]
    if not positive:
        return [0 for _ in weights]
    divisor = reduce(gcd, positive)
    reduced = [w // divisor for w in weights]
    total = sum(reduced)
    budget = slot_budget(len(positive))
    if total <= budget:
        return reduced
    return apportion(reduced, budget)


def apportion(weights: Sequence[int], budget: int) -> list[int]:
    """Exactly `budget` slots over the weights: every positive weight at least one slot, the
    rest by the largest-remainder method (the tolerance of the module docstring). Needs
    budget >= the number of positive weights."""
    reduced = list(weights)
    total = sum(reduced)
    # Backends below one slot, lightest first: once one is not below, no heavier one is.
    order = sorted((i for i, w in enumerate(reduced) if w > 0), key=lambda i: (reduced[i], i))
    counts = [0] * len(weights)
    left_slots, left_weight, k = budget, total, 0
    while k < len(order) and left_slots * reduced[order[k]] < left_weight:
        counts[order[k]] = 1
        left_slots -= 1
        left_weight -= reduced[order[k]]
        k += 1
    rest = order[k:]
    # Largest remainder over the others (each exact share is at least one slot here).
    remainders: list[tuple[int, int]] = []
    given = 0
    for i in rest:
        whole, part = divmod(left_slots * reduced[i], left_weight)
        counts[i] = whole
        given += whole
        remainders.append((-part, i))
    for _, i in heapq.nsmallest(left_slots - given, remainders):
        counts[i] += 1
    return counts


def slot_sequence(weights: Sequence[int]) -> tuple[int, ...]:
    """Backend index for every slot, evenly spread (see the module docstring)."""
    return _slot_sequence(tuple(weights))


# Most services share a handful of weight patterns (all ones, above all): compute each once.
@lru_cache(maxsize=4096)
def _slot_sequence(weights: tuple[int, ...]) -> tuple[int, ...]:
    counts = slot_counts(weights)
    total = sum(counts)
    if all(c in (0, 1) for c in counts):
        return tuple(i for i, c in enumerate(counts) if c)
    # Slot j of backend i may start at j/c and ends at (j+1)/c (fractions of one round); equal
    # fractions give equal floats (division is correctly rounded), so ties go to the lower index.
    pending = [(0.0, i) for i, c in enumerate(counts) if c]
    heapq.heapify(pending)
    eligible: list[tuple[float, int]] = []
    taken = [0] * len(counts)
    sequence: list[int] = []
    for t in range(total):
        now = t / total
        while pending and pending[0][0] <= now:
            _, i = heapq.heappop(pending)
            heapq.heappush(eligible, ((taken[i] + 1) / counts[i], i))
        _, i = heapq.heappop(eligible)  # never empty: sum(taken) = t, so some taken[i] <= t c_i / total
        sequence.append(i)
        taken[i] += 1
        if taken[i] < counts[i]:
            heapq.heappush(pending, (taken[i] / counts[i], i))
    return tuple(sequence)


def slot_tolerance(weights: Sequence[int]) -> float:
    """How far a backend's share of slots may be from its share of the weights (absolute, as a
    fraction of all new connections): 0 when the reduced weights fit in the budget (exact),
    otherwise (k + 1) / B with k the backends raised to one slot and B the slot count (see the
    module docstring; tests/unit/test_slots.py checks it)."""
    counts = slot_counts(weights)
    total = sum(counts)
    positive = [w for w in weights if w > 0]
    if not positive or total == sum(w // reduce(gcd, positive) for w in weights):
        return 0.0
    wsum = sum(weights)
    raised = sum(1 for c, w in zip(counts, weights, strict=True) if c == 1 and w * total < wsum)
    return (raised + 1) / total
