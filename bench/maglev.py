"""The Maglev table (dataplane/maglev.py, issue 10): how many flows a backend change moves, what
the table costs to compute, and what it costs the kernel (map elements, a full load with nft).

    PYTHONPATH=src:. python -m bench.maglev [--keys 100000] [--services 1000] [--no-load]

Disruption is measured over `--keys` random 32-bit flow hashes mapped to slots as nft_jhash does
(reciprocal_scale): the fraction of keys whose backend changed, printed as a multiple of 1/N (1.00
is the least possible for a removal). The same for the WF2Q sequence the other algorithms use.
The load (as root, in a scratch namespace) is `gatelb apply` of `--services` services of 3 and of
10 backends, maglev against random: every slot is a map element.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Results, gatelb_cmd, log, scratch_netns
from gatelb.dataplane import maglev
from gatelb.dataplane.ruleset import compile_ruleset
from gatelb.dataplane.slots import slot_sequence
from gatelb.model import Algorithm, Backend, Protocol, ResolvedState, Service


def backends(n: int) -> list[Backend]:
    base = int(ipaddress.ip_address("198.19.0.1"))
    return [Backend(ipaddress.ip_address(base + i), 8080) for i in range(n)]


def moved(before: list[Backend], after: list[Backend]) -> float:
    return sum(a != b for a, b in zip(before, after, strict=True)) / len(before)


def disruption(keys: list[int], n: int, owners: Callable[[list[Backend], int], list[Backend]]) -> tuple[float, ...]:
    """(worst removal, addition, weight 1 -> 2 of one backend), each as moved x N."""
    bes = backends(n + 1)
    base = owners(bes[:n], n + 1)
    removal = max(moved(base, owners(bes[:n][:i] + bes[:n][i + 1:], n + 1)) for i in (0, n // 2, n - 1))
    added = moved(base, owners(bes, n + 1))
    heavier = [*bes[: n - 1], Backend(bes[n - 1].address, 8080, 2)]
    weight = moved(base, owners(heavier, n + 1))
    return removal * n, added * (n + 1), weight


def maglev_owners(keys: list[int]) -> Callable[[list[Backend], int], list[Backend]]:
    def owners(bes: list[Backend], configured: int) -> list[Backend]:
        table = maglev.maglev_table(bes, configured)
        return [bes[table[(h * len(table)) >> 32]] for h in keys]
    return owners


def wf2q_owners(keys: list[int]) -> Callable[[list[Backend], int], list[Backend]]:
    def owners(bes: list[Backend], _configured: int) -> list[Backend]:
        seq = slot_sequence([b.weight for b in bes])
        return [bes[seq[(h * len(seq)) >> 32]] for h in keys]
    return owners


def build_time(n: int, repeats: int = 3) -> float:
    bes = backends(n)
    best = float("inf")
    for _ in range(repeats):
        maglev._table.cache_clear()
        t = time.perf_counter()
        maglev.maglev_table(bes)
        best = min(best, time.perf_counter() - t)
    return best


def load_time(services: int, per_service: int, algorithm: Algorithm) -> tuple[int, float]:
    """Elements of the compiled table, and `gatelb apply` of it (a full load: nft for the
    structure, netlink for the elements) in a scratch namespace, in seconds."""
    base = int(ipaddress.ip_address("198.18.0.1"))
    svcs = tuple(Service(f"lb-{i:05}", ipaddress.ip_address(base + i), Protocol.TCP, 80,
                         tuple(backends(per_service)), algorithm=algorithm) for i in range(services))
    elements = compile_ruleset(ResolvedState(svcs)).element_count()
    listed = ", ".join(f'"{b.address}:{b.port}"' for b in backends(per_service))
    docs = ['apiVersion: gatelb.io/v1alpha1\nkind: IPPool\nmetadata: {name: bench}\n'
            'spec: {addresses: ["198.18.0.0/16"], autoAssign: false}\n']
    docs += [f"apiVersion: gatelb.io/v1alpha1\nkind: L4LB\nmetadata: {{name: {s.name}}}\n"
             f"spec: {{frontend: {{ip: {s.vip}, port: 80}}, pool: bench, algorithm: {algorithm.value}, "
             f"check: {{type: none}}, backend: [{listed}]}}\n" for s in svcs]
    with tempfile.TemporaryDirectory() as tmp, scratch_netns() as ns:
        path = Path(tmp) / "lbs.yaml"
        path.write_text("---\n".join(docs))
        t = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", ns, *gatelb_cmd("--state-dir", f"{tmp}/state", "apply", "-f",
                                                               str(path))], check=True, capture_output=True)
        took = time.perf_counter() - t
    return elements, took


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--sizes", type=int, nargs="+", default=[3, 5, 10, 20, 40, 100])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--no-load", action="store_true", help="skip the nft load (needs root)")
    args = p.parse_args()
    res = Results("maglev")
    rng = random.Random(1)
    keys = [rng.getrandbits(32) for _ in range(args.keys)]
    res.sample_load()
    t = res.table("Flows moved by a backend change (x 1/N)", [
        "N", "slots", "maglev: remove one", "maglev: add one", "maglev: weight 1->2 (fraction)",
        "weight 1->2: least possible", "WF2Q: remove one", "WF2Q: weight 1->2 (fraction)"],
        note=f"{args.keys} keys; a removal's least possible is 1.00")
    for n in args.sizes:
        log(f"disruption N={n}")
        m = disruption(keys, n, maglev_owners(keys))
        w = disruption(keys, n, wf2q_owners(keys))
        least = 2 / (n + 1) - 1 / n
        t.rows.append([str(n), str(maglev.table_size(n + 1)), f"{m[0]:.2f}", f"{m[1]:.2f}", f"{m[2]:.3f}",
                       f"{least:.3f}", f"{w[0]:.2f}", f"{w[2]:.3f}"])
    res.sample_load()
    t = res.table("Computing the table (uncached, best of 3)", ["backends", "slots", "ms"])
    for n in (10, 40, 163, 1000):
        t.rows.append([str(n), str(maglev.table_size(n)), f"{build_time(n) * 1000:.1f}"])
    if not args.no_load:
        res.sample_load()
        t = res.table(f"`gatelb apply` of {args.services} services (full load)",
                      ["backends each", "algorithm", "elements", "apply s"])
        for per_service in (3, 10):
            for algorithm in (Algorithm.RANDOM, Algorithm.MAGLEV):
                log(f"load {per_service} {algorithm.value}")
                elements, took = load_time(args.services, per_service, algorithm)
                t.rows.append([str(per_service), algorithm.value, str(elements), f"{took:.2f}"])
        res.sample_load()
    print(res.markdown())
    res.write()


if __name__ == "__main__":
    main()
