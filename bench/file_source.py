"""The file source's share of an incremental update: a directory of N files (one L4LB each), one
file changed by rename into place.

For each N it measures
  - the first full load (read, parse, validate, cross-file checks) and its full collect();
  - refresh: re-reading, hashing, parsing and validating the changed file, and the incremental
    checks across files (what run() does on the watcher's event);
  - collect: computing the contribution (one L4LB) against the committed state, and commit;
  - notify: through run() and watchfiles, from the rename to the source's notify() call
    (includes watchfiles' STEP_MS quiet period).

    python -m bench.file_source                   # N = 1000, 10000
    python -m bench.file_source --sizes 1000 --repeats 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from gatelb.sources.file.directory import FileSource

API = "gatelb.io/v1alpha1"


def lb_text(i: int, port: int) -> str:
    a, b = divmod(i + 1, 256)
    doc = {"apiVersion": API, "kind": "L4LB", "metadata": {"name": f"lb{i}"},
           "spec": {"frontend": {"ip": f"198.18.{a}.{b}", "port": port},
                    "backend": [f"198.19.{a}.{b}:{8080 + k}" for k in range(10)]}}
    return yaml.safe_dump(doc, sort_keys=False)


def write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def make(d: Path, n: int) -> None:
    pool = {"apiVersion": API, "kind": "IPPool", "metadata": {"name": "bench"},
            "spec": {"addresses": ["198.18.0.0/16"]}}
    (d / "00-pool.yaml").write_text(yaml.safe_dump(pool))
    for i in range(n):
        (d / f"lb{i:05}.yaml").write_text(lb_text(i, 80))


def ms(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return f"median {statistics.median(values) * 1000:.3f} ms, p95 {p95 * 1000:.3f} ms"


def measure(n: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="gatelb-bench-") as tmp:
        d = Path(tmp)
        make(d, n)
        source = FileSource(d)
        t0 = time.perf_counter()
        source.load()
        t1 = time.perf_counter()
        c = source.collect()
        t2 = time.perf_counter()
        assert c is not None and len(c.load_balancers) == n and not c.errors
        source.commit(c)
        print(f"N={n}: first load {(t1 - t0) * 1000:.0f} ms, full collect {(t2 - t1) * 1000:.1f} ms")
        refresh, collect = [], []
        for r in range(repeats):
            i = (r * 7919) % n
            f = d / f"lb{i:05}.yaml"
            write(f, lb_text(i, 1000 + r))
            parsed = source.parsed
            t0 = time.perf_counter()
            changed = source.refresh([str(f)])
            t1 = time.perf_counter()
            c = source.collect()
            assert c is not None
            source.commit(c)
            t2 = time.perf_counter()
            assert changed == [str(f)] and source.parsed == parsed + 1 and list(c.load_balancers) == [f"lb{i}"]
            refresh.append(t1 - t0)
            collect.append(t2 - t1)
        print(f"  refresh one file: {ms(refresh)}")
        print(f"  collect + commit: {ms(collect)}")
        print(f"  notify after rename (watchfiles): {ms(asyncio.run(through_watcher(d, n, repeats)))}")


async def through_watcher(d: Path, n: int, repeats: int) -> list[float]:
    source = FileSource(d)
    woken = asyncio.Event()
    at: list[float] = []

    def notify(why: str) -> None:
        at.append(time.perf_counter())
        woken.set()

    task = asyncio.create_task(source.run(notify))
    await asyncio.wait_for(woken.wait(), 120)
    woken.clear()
    c = source.collect()
    assert c is not None
    source.commit(c)
    out: list[float] = []
    try:
        for r in range(repeats):
            i = (r * 104729) % n
            f = d / f"lb{i:05}.yaml"
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            write(f, lb_text(i, 20000 + r))
            await asyncio.wait_for(woken.wait(), 10)
            woken.clear()
            out.append(at[-1] - t0)
            c = source.collect()
            assert c is not None and list(c.load_balancers) == [f"lb{i}"]
            source.commit(c)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    for n in (int(s) for s in args.sizes.split(",")):
        measure(n, args.repeats)


if __name__ == "__main__":
    main()
