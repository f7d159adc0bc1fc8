"""Weighted backends -> selection slots.

Every selection algorithm draws a slot number `0 <= s < W` (numgen random / numgen inc / jhash, all
`mod W`) and the slot maps to a backend. A backend of weight w owns w slots, so weights hold for
all three algorithms. Weights are first divided by their greatest common divisor (1:1:2 stays three
backends in four slots); if the total still exceeds MAX_SLOTS the weights are scaled down with the
largest-remainder method, every backend keeping at least one slot.

The order of slots is the "smooth weighted round robin" sequence (nginx's algorithm), so round
robin over weights 5:1:1 gives a a b a c a a rather than a a a a a b c.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache, reduce
from math import gcd

# Enough resolution for weights like 1:99 while keeping at most 256 map elements per service.
MAX_SLOTS = 256


def slot_counts(weights: Sequence[int], max_slots: int = MAX_SLOTS) -> list[int]:
    """How many slots each weight gets. Zero weights get zero slots."""
    positive = [w for w in weights if w > 0]
    if not positive:
        return [0 for _ in weights]
    divisor = reduce(gcd, positive)
    reduced = [w // divisor for w in weights]
    total = sum(reduced)
    if total <= max_slots:
        return reduced
    # Largest remainder, with a floor of one slot per live backend.
    live = sum(1 for w in reduced if w > 0)
    budget = max(max_slots, live)
    exact = [w * (budget - live) / total for w in reduced]
    counts = [(int(e) + 1 if w > 0 else 0) for e, w in zip(exact, reduced, strict=True)]
    leftover = budget - sum(counts)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - int(exact[i])), i))
    for i in order[:leftover]:
        if reduced[i] > 0:
            counts[i] += 1
    return counts


def slot_sequence(weights: Sequence[int], max_slots: int = MAX_SLOTS) -> tuple[int, ...]:
    """Backend index for every slot, in smooth weighted round-robin order."""
    return _slot_sequence(tuple(weights), max_slots)


# Most services share a handful of weight patterns (all ones, above all): compute each once.
@lru_cache(maxsize=4096)
def _slot_sequence(weights: tuple[int, ...], max_slots: int) -> tuple[int, ...]:
    counts = slot_counts(weights, max_slots)
    total = sum(counts)
    current = [0] * len(counts)
    sequence: list[int] = []
    for _ in range(total):
        for i, c in enumerate(counts):
            current[i] += c
        best = max(range(len(counts)), key=lambda i: (current[i], -i))
        current[best] -= total
        sequence.append(best)
    return tuple(sequence)


def slot_tolerance(weights: Sequence[int], max_slots: int = MAX_SLOTS) -> float:
    """How far a backend's share of slots may be from its share of the weights (absolute, as a
    fraction of all new connections).

    0 when the reduced weights fit in `max_slots` (the shares are exact). Otherwise a backend
    gets floor(e)+1 or floor(e)+2 slots with e = w * (B - L) / W (B slots, L live backends, W the
    weight total), while its exact share is w * B / W = e + w * L / W slots: it differs by at
    most max(2, L) slots, i.e. max(2, L) / B of the connections.
    """
    counts = slot_counts(weights, max_slots)
    total = sum(counts)
    positive = [w for w in weights if w > 0]
    if not positive or total == sum(w // reduce(gcd, positive) for w in weights):
        return 0.0
    return max(2, len(positive)) / total
