"""Compile-time figures at N services x B backends (bench/gen.py's workload): compile_ruleset,
render_full, the daemon's AppliedRuleset.build and the netlink encoding of the bulk sets.

    PYTHONPATH=src python -m bench.compile_time [--n 10000] [--backends 10]
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import tracemalloc

from bench.common import best_time
from gatelb.dataplane import compile_ruleset
from gatelb.dataplane.incremental import AppliedRuleset
from gatelb.dataplane.layout import NETLINK_BULK_SETS
from gatelb.dataplane.render import render_full
from gatelb.kernel.nlelements import build_batch
from gatelb.model import Backend, Protocol, ResolvedState, Service

from .gen import services


def state(n: int, backends: int) -> ResolvedState:
    out = [Service(s.name, ipaddress.ip_address(s.vip), Protocol.TCP, s.port,
                   tuple(Backend(ipaddress.ip_address(a), p) for a, p in s.backends))
           for s in services(n, backends)]
    return ResolvedState(tuple(sorted(out, key=lambda s: s.name)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--backends", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    st = state(args.n, args.backends)
    rs = compile_ruleset(st)
    print(f"{rs.element_count()} elements")
    print(f"compile_ruleset       {best_time(lambda: compile_ruleset(st), args.repeats, gc.collect):.3f} s")
    print(f"render_full           {best_time(lambda: render_full(rs, 1), args.repeats, gc.collect):.3f} s")
    print(f"AppliedRuleset.build  {best_time(lambda: AppliedRuleset.build(st), args.repeats, gc.collect):.3f} s")
    bulk = {name: rs.elements[name].items() for name in NETLINK_BULK_SETS if rs.elements.get(name)}
    print(f"netlink build_batch   {best_time(lambda: build_batch('gatelb', bulk), args.repeats, gc.collect):.3f} s")
    gc.collect()
    tracemalloc.start()
    kept = compile_ruleset(st)
    print(f"compile_ruleset keeps {tracemalloc.get_traced_memory()[0] / 2**20:.1f} MiB")
    del kept
    tracemalloc.stop()


if __name__ == "__main__":
    main()
