"""Weighted backends -> a Maglev slot table: the same table on every gateway, few flows moved.

The `maglev` algorithm (and every load balancer of an active-active GatewayGroup, docs/ha.md)
draws its slot from a hash of the flow (`jhash` with a pinned seed, ruleset.py), so the slot
table must be a function of the backends alone, and a backend change should move few flows
between backends. The WF2Q sequence of slots.py is neither: it interleaves backends by position,
so one backend more or less shifts nearly every slot. This table is Maglev's (Eisenbud et al.,
NSDI 2016, section 3.4), with weights:

- Table size M: a prime from a fixed ladder, the first with at least SLOTS_PER_BACKEND slots per
  *configured* backend (live or not): a change of M moves most flows, so a health change, a
  drain or weight 0 never changes it, and a configuration change only when the count of
  backends crosses 8, 31, 127, 511 (a ladder, not "the next prime").
- Each backend's permutation of the slots comes from its address and port alone (blake2b, not
  Python's salted hash()): offset = h1 mod M, skip = h2 mod (M - 1) + 1, slot j = offset + j x
  skip mod M. Backends take turns; on its turn a backend takes the next slot of its permutation
  that is still free.
- Weights: backend i takes exactly c_i slots, c_i apportioned from the weights by slots.apportion
  (largest remainder, every live backend at least one slot: the tolerance of slots.py with B =
  M), and its turns come in weighted fair order (its j-th turn at time j / c_i), so a heavy
  backend fills its share as evenly through the fill as a light one.
- Determinism: the turn order ties break by (address, port), never by input order, so the table
  depends on the set of backends only (tests/unit/test_maglev.py).

Disruption: removing one of N equal backends moves its own flows (1/N) plus a few more whose
slot another backend's permutation reached earlier in the refill; tests/unit/test_maglev.py
bounds it over many keys, bench/maglev.py measures it (figures in docs/configuration.md).

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache

from gatelb.model import Backend

from .slots import apportion

# Primes. Every slot is a map element in the kernel, and loading elements is what a full sync
# costs (bench/maglev.py: 1,000 services x 1,021 slots took 30 s against 0.9 s with random), so
# the table is as small as keeps a removal's disruption near 1/N: 32 slots per configured backend
# give 1.05/N at N=3 and about 1.5/N at N=8 (bench/maglev.py, docs/configuration.md).
TABLE_SIZES = (257, 1021, 4093, 16381, 65521)
SLOTS_PER_BACKEND = 32


def table_size(configured: int) -> int:
    for size in TABLE_SIZES:
        if size >= SLOTS_PER_BACKEND * configured:
            return size
    return TABLE_SIZES[-1]


def _permutation(backend: Backend, size: int) -> tuple[int, int]:
    digest = hashlib.blake2b(f"{backend.address}|{backend.port}".encode(), digest_size=16).digest()
    h1, h2 = int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big")
    return h1 % size, h2 % (size - 1) + 1


def maglev_counts(backends: Sequence[Backend], configured: int | None = None) -> list[int]:
    """How many slots of the table each backend owns (0 for weight 0). `configured`: the count
    of backends the table size is chosen for (default: len(backends))."""
    weights = [b.weight for b in backends]
    live = sum(1 for w in weights if w > 0)
    if live <= 1:
        # One backend takes every flow whatever the table: one slot says so in one map element.
        return [1 if w > 0 else 0 for w in weights]
    return apportion(weights, table_size(max(configured or 0, len(backends))))


def maglev_table(backends: Sequence[Backend], configured: int | None = None) -> tuple[int, ...]:
    """Backend index (into `backends`) of every slot; empty when no backend has weight."""
    return _table(tuple(backends), max(configured or 0, len(backends)))


@lru_cache(maxsize=1024)
def _table(backends: tuple[Backend, ...], configured: int) -> tuple[int, ...]:
    counts = maglev_counts(backends, configured)
    size = sum(counts)
    if size <= 1:
        return tuple(i for i, c in enumerate(counts) if c)
    table = [-1] * size
    perm = {i: _permutation(b, size) for i, b in enumerate(backends) if counts[i]}
    following = dict.fromkeys(perm, 0)  # j: the next index into each backend's permutation
    rank = {i: r for r, i in enumerate(sorted(perm, key=lambda i: (backends[i].address.packed, backends[i].port)))}
    # Weighted fair turns: backend i's k-th turn at time k / c_i (exact fractions: no float ties).
    turns = [(Fraction(1, counts[i]), rank[i], i) for i in perm]
    heapq.heapify(turns)
    taken = dict.fromkeys(perm, 0)
    for _ in range(size):
        _, r, i = heapq.heappop(turns)
        offset, skip = perm[i]
        j = following[i]
        slot = (offset + j * skip) % size
        while table[slot] >= 0:
            j += 1
            slot = (offset + j * skip) % size
        table[slot] = i
        following[i] = j + 1
        taken[i] += 1
        if taken[i] < counts[i]:
            heapq.heappush(turns, (Fraction(taken[i] + 1, counts[i]), r, i))
    return tuple(table)


def maglev_tolerance(backends: Sequence[Backend], configured: int | None = None) -> float:
    """The largest |slot share - weight share| of the table (exact, from the counts)."""
    counts = maglev_counts(backends, configured)
    size, wsum = sum(counts), sum(b.weight for b in backends)
    if not size:
        return 0.0
    return float(max(abs(Fraction(c, size) - Fraction(b.weight, wsum)) for c, b in zip(counts, backends, strict=True)))
