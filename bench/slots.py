"""Slot computation for one L4LB with many backends (issue 13): slot_counts + slot_sequence
(uncached), and compiling that one service (its be4 elements) as the engine does on every change.

    PYTHONPATH=src python -m bench.slots [--backends 1000 10000] [--repeats 3]

Weight patterns: equal (all 1, one slot each), mixed (1-1000, scaled to 16 slots per backend),
and a drain (one backend at weight 0) in the mixed set, which is what the engine recompiles when a
backend is drained.
"""

from __future__ import annotations

import argparse
import ipaddress
import os

from bench.common import best_time
from gatelb.dataplane.ruleset import compile_service
from gatelb.dataplane.slots import _slot_sequence, slot_sequence
from gatelb.model import Backend, Protocol, Service


def backends(n: int, weights: list[int]) -> tuple[Backend, ...]:
    base = int(ipaddress.ip_address("198.18.0.0"))
    return tuple(Backend(ipaddress.ip_address(base + i), 8080, w) for i, w in enumerate(weights[:n]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'backends':>8} {'weights':>8} {'slots':>7} {'sequence ms':>12} {'compile ms':>11}")
    for n in args.backends:
        patterns = {
            "equal": [1] * n,
            "mixed": [1 + (i * 7919) % 1000 for i in range(n)],
            "drain": [0] + [1 + (i * 7919) % 1000 for i in range(1, n)],
        }
        for label, weights in patterns.items():
            svc = Service("big", ipaddress.ip_address("198.19.0.1"), Protocol.TCP, 80,
                          tuple(b for b in backends(n, weights) if b.weight > 0))
            slots = len(slot_sequence(weights))
            seq_s = best_time(lambda w=weights: slot_sequence(w), args.repeats, _slot_sequence.cache_clear)  # type: ignore[misc]
            comp_s = best_time(lambda s=svc: compile_service(s), args.repeats, _slot_sequence.cache_clear)  # type: ignore[misc]
            print(f"{n:>8} {label:>8} {slots:>7} {seq_s * 1000:>12.1f} {comp_s * 1000:>11.1f}")


if __name__ == "__main__":
    main()
