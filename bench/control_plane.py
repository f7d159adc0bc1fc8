"""Control-plane benchmarks: full sync and incremental updates at N load balancers x 10 backends.

Full sync (each measurement in a fresh, empty network namespace):
  - `gatelb apply` end to end (process start to exit), its phases from --timings-json, the
    gatelb process's own peak RSS;
  - the same with GATELB_NFT_ONLY=1 (everything through one `nft -f` transaction instead of nft for
    the structure plus gatelb's own netlink batch for the bulk elements);
  - plain `nft -f` on the complete ruleset text gatelb loads (its --dump-nft, taken in an extra,
    untimed run: producing the text costs gatelb time it does not otherwise spend): the floor set
    by nft itself for the same ruleset;
  - the same services in kube-proxy's layouts (bench/gen.py): nftables v1.36, nftables v1.31,
    and iptables via iptables-restore.
  Variants are interleaved round by round so that drift on a shared machine hits all of them alike,
  and each waits (bounded) for idle CPUs: the kernel tears a deleted namespace's ruleset down in
  the background, which would otherwise be charged to the next measurement.

Incremental (through `gatelb run --log-format json --no-health`, N loaded): one backend added, one
removed, one L4LB added, one removed. Latency = the daemon's `wall_time` (taken after the kernel
accepted the transaction) minus the moment the new file was renamed into place.

    python -m bench.control_plane                 # N = 100, 1000, 10000
    python -m bench.control_plane --sizes 1000 --repeats 3
    python -m bench.control_plane --quick         # N = 50, 1 repeat: the smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import gen
from bench.common import (
    Results,
    RunResult,
    exit_on_signals,
    gatelb_measured_cmd,
    iptables_restore,
    log,
    parse_sizes,
    ratio,
    replace_file,
    require_root,
    run_measured,
    scratch_netns,
    summarize,
    wait_quiet,
)
from bench.logged_daemon import LoggedDaemon

PHASES = ("parse_s", "ipam_s", "compile_s", "apply_s", "total_s")
REFERENCES = ("kp-nft-1.36", "kp-nft-1.31", "kp-iptables")
MIB = 1024.0


# ---------------------------------------------------------------------------------------------
# Full sync


@dataclass
class FullSyncFigures:
    n: int
    wall: list[float] = field(default_factory=list)  # gatelb apply, process start to exit
    wall_nft_only: list[float] = field(default_factory=list)  # the same with GATELB_NFT_ONLY=1
    phases: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    gatelb_rss_kib: list[int] = field(default_factory=list)
    floor: list[RunResult] = field(default_factory=list)  # plain nft -f on gatelb's text
    refs: dict[str, list[RunResult]] = field(default_factory=dict)
    nft_text_bytes: int = 0
    iptables_variant: str = ""

    def to_json(self) -> dict[str, Any]:
        def runs(rs: list[RunResult]) -> dict[str, Any]:
            return {"wall_s": summarize([r.wall_s for r in rs]), "maxrss_kib": [r.maxrss_kib for r in rs],
                    "user_s": [r.user_s for r in rs], "sys_s": [r.sys_s for r in rs]}

        return {
            "n": self.n, "gatelb_wall_s": summarize(self.wall), "gatelb_nft_only_wall_s": summarize(self.wall_nft_only),
            "phases": {p: summarize(v) for p, v in self.phases.items()},
            "gatelb_maxrss_kib": self.gatelb_rss_kib,
            "nft_floor": runs(self.floor), "references": {k: runs(v) for k, v in self.refs.items()},
            "nft_text_bytes": self.nft_text_bytes, "iptables_restore": self.iptables_variant,
        }


def _write_inputs(n: int, workdir: Path, references: Sequence[str]) -> dict[str, Path]:
    svcs = gen.services(n)
    paths = {"yaml": workdir / f"gatelb-{n}.yaml"}
    paths["yaml"].write_text(gen.gatelb_yaml(svcs))
    for name, fn in gen.LAYOUTS.items():
        if name in references:
            paths[name] = workdir / f"{name}-{n}.nft"
            paths[name].write_text(fn(svcs))
    if "kp-iptables" in references:
        paths["kp-iptables"] = workdir / f"kp-iptables-{n}.rules"
        paths["kp-iptables"].write_text(gen.kube_proxy_iptables(svcs))
    return paths


def _gatelb_apply_once(yaml_path: Path, workdir: Path, figs: FullSyncFigures | None,
                       nft_only: bool = False, dump: Path | None = None) -> None:
    """One `gatelb apply` into a fresh namespace, its figures added to `figs` (with nft_only, only
    its wall time). With `dump`, an untimed run that writes the complete nft text there."""
    rusage, timings = workdir / "rusage.json", workdir / "timings.json"
    for stale in (rusage, timings):
        stale.unlink(missing_ok=True)
    env = {"GATELB_NFT_ONLY": "1" if nft_only else "0"}
    wait_quiet()  # the kernel may still be tearing down the previous namespace's ruleset
    with scratch_netns() as ns, tempfile.TemporaryDirectory(prefix="glbb-state-") as state:
        extra = ["--dump-nft", str(dump)] if dump else []
        cmd = gatelb_measured_cmd(str(rusage), "apply", "-f", str(yaml_path), "--timings-json", str(timings),
                                  *extra, "-q")
        res = run_measured(cmd, netns=ns, env={**env, "GATELB_STATE_DIR": state}).check()
        # An exit code of 0 with nothing in the kernel would make every figure meaningless.
        tables = run_measured(["nft", "list", "tables"], netns=ns).check().stdout
        if "gatelb" not in tables:
            raise RuntimeError(f"gatelb apply exited 0 but the namespace holds no gatelb table: {tables!r}")
    if figs is None:
        return
    if nft_only:
        figs.wall_nft_only.append(res.wall_s)
        return
    t = json.loads(timings.read_text())
    u = json.loads(rusage.read_text())
    figs.wall.append(res.wall_s)
    for p in PHASES:
        figs.phases[p].append(float(t.get(p, float("nan"))))
    figs.gatelb_rss_kib.append(int(u["self_maxrss_kib"]))


def _load(kind: str, path: Path) -> RunResult:
    """Load one ruleset file into a fresh namespace: nft -f, or iptables-restore for kp-iptables."""
    wait_quiet()
    with scratch_netns() as ns:
        if kind == "kp-iptables":
            restore, _ = iptables_restore()
            return run_measured([restore], netns=ns, stdin_path=str(path)).check()
        return run_measured(["nft", "-f", str(path)], netns=ns).check()


def full_sync(n: int, repeats: int, workdir: Path, references: Sequence[str]) -> FullSyncFigures:
    log(f"full sync N={n}: generating inputs")
    paths = _write_inputs(n, workdir, references)
    figs = FullSyncFigures(n, refs={r: [] for r in references})
    figs.iptables_variant = iptables_restore()[1] if "kp-iptables" in references else ""
    dump = workdir / f"gatelb-{n}.nft"
    log(f"full sync N={n}: gatelb apply --dump-nft (untimed)")
    _gatelb_apply_once(paths["yaml"], workdir, None, dump=dump)
    for r in range(repeats):
        log(f"full sync N={n} round {r + 1}/{repeats}: gatelb apply")
        _gatelb_apply_once(paths["yaml"], workdir, figs)
        log(f"full sync N={n} round {r + 1}/{repeats}: gatelb apply, GATELB_NFT_ONLY=1")
        _gatelb_apply_once(paths["yaml"], workdir, figs, nft_only=True)
        log(f"full sync N={n} round {r + 1}/{repeats}: nft -f on gatelb's complete text")
        figs.floor.append(_load("nft", dump))
        for ref in references:
            log(f"full sync N={n} round {r + 1}/{repeats}: {ref}")
            figs.refs[ref].append(_load(ref, paths[ref]))
    figs.nft_text_bytes = dump.stat().st_size
    return figs


def _mib(kib: Sequence[int]) -> str:
    return f"{max(kib) / MIB:.0f} MiB" if kib else "n/a"


def full_sync_tables(res: Results, all_figs: list[FullSyncFigures], references: Sequence[str]) -> None:
    t = res.table(
        "Full sync: gatelb apply into an empty namespace (N L4LBs x 10 backends)",
        ["N", "end to end", "parse+validate", "IPAM", "compile", "kernel apply", "total in-process",
         "gatelb peak RSS", "nft peak RSS (same text)", "nft text"],
        note="Seconds: median (min-max) over the rounds. End to end = process start (interpreter, "
             "imports) to exit. Peak RSS: the largest over the rounds; gatelb's own process (the nft "
             "it runs is a separate process: its peak is that of plain nft -f on the same text).",
    )
    for f in all_figs:
        ph = {p: summarize(v) for p, v in f.phases.items()}
        t.rows.append([str(f.n), summarize(f.wall).fmt(), ph["parse_s"].fmt(), ph["ipam_s"].fmt(),
                       ph["compile_s"].fmt(), ph["apply_s"].fmt(), ph["total_s"].fmt(),
                       _mib(f.gatelb_rss_kib), _mib([r.maxrss_kib for r in f.floor]),
                       f"{f.nft_text_bytes / 1e6:.1f} MB"])

    variant = next((f.iptables_variant for f in all_figs if f.iptables_variant), "")
    headers = ["N", "gatelb apply", "nft -f (same ruleset)", "gatelb / nft -f", "gatelb, nft only"]
    for ref in references:
        label = f"{ref} ({variant}-restore)" if ref == "kp-iptables" else ref
        headers += [label, f"{ref} / gatelb"]
    c = res.table("Full sync: gatelb against plain nft -f and kube-proxy's layouts (same services)", headers,
                  note="Each load into a fresh empty namespace; seconds, median (min-max). Ratios of medians. "
                       "nft -f loads gatelb's complete ruleset text (its --dump-nft); "
                       "'gatelb, nft only' is gatelb apply with GATELB_NFT_ONLY=1 (no netlink bulk batch).")
    m = res.table("Full sync: peak RSS of the loading process",
                  ["N", "gatelb (own process)", "nft -f (same ruleset)", *references])
    for f in all_figs:
        g = summarize(f.wall)
        floor = summarize([r.wall_s for r in f.floor])
        row = [str(f.n), g.fmt(), floor.fmt(), ratio(g.median, floor.median), summarize(f.wall_nft_only).fmt()]
        mrow = [str(f.n), _mib(f.gatelb_rss_kib), _mib([r.maxrss_kib for r in f.floor])]
        for ref in references:
            s = summarize([r.wall_s for r in f.refs[ref]])
            row += [s.fmt(), ratio(s.median, g.median)]
            mrow.append(_mib([r.maxrss_kib for r in f.refs[ref]]))
        c.rows.append(row)
        m.rows.append(mrow)


# ---------------------------------------------------------------------------------------------
# Incremental, through the daemon


STEPS = ("backend added", "backend removed", "L4LB added", "L4LB removed")


@dataclass
class IncrementalFigures:
    n: int
    initial_sync_s: float = float("nan")
    latency_s: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    sync_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    # Rename to the daemon noticing it: latency minus the daemon's since_trigger_ms.
    watch_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    full: dict[str, list[bool]] = field(default_factory=lambda: {s: [] for s in STEPS})
    daemon_rss_kib: int = 0
    verified: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "initial_sync_s": self.initial_sync_s,
                "latency_s": {k: summarize(v) for k, v in self.latency_s.items()},
                "sync_ms": {k: summarize(v) for k, v in self.sync_ms.items()},
                "watch_ms": {k: summarize(v) for k, v in self.watch_ms.items()},
                "full": self.full, "daemon_maxrss_kib": self.daemon_rss_kib, "verified": self.verified}


def _step_texts(n: int) -> tuple[str, list[tuple[str, str]]]:
    svcs = gen.services(n + 1)
    base, extra = svcs[:n], svcs[n]
    mid = n // 2
    target = base[mid]
    # The new endpoint comes from the unused tail of the backend range, so it is unique.
    grown = gen.BenchService(target.name, target.vip, target.port,
                             (*target.backends, gen.endpoint_of((n + 1) * 10 + 1)))
    base_text = gen.gatelb_yaml(base)
    texts = {
        "backend added": gen.gatelb_yaml([*base[:mid], grown, *base[mid + 1:]]),
        "backend removed": base_text,
        "L4LB added": gen.gatelb_yaml([*base, extra]),
        "L4LB removed": base_text,
    }
    return base_text, [(s, texts[s]) for s in STEPS]


def _has_vip(ns: str, vip: str) -> bool:
    out = run_measured(["nft", "list", "table", "inet", "gatelb"], netns=ns).stdout
    return f"{vip} " in out


def incremental(n: int, repeats: int, workdir: Path, settle_s: float = 0.3) -> IncrementalFigures:
    figs = IncrementalFigures(n)
    base_text, steps = _step_texts(n)
    extra_vip = gen.vip_of(n)
    config = workdir / f"run-{n}.yaml"
    replace_file(config, base_text)
    startup_timeout = 60.0 + n * 0.03
    with scratch_netns() as ns, tempfile.TemporaryDirectory(prefix="glbb-state-") as state:
        log(f"incremental N={n}: starting gatelb run")
        started = time.time()
        daemon = LoggedDaemon(ns, ["-f", str(config)], state)
        try:
            first = daemon.wait_sync(started, startup_timeout)
            figs.initial_sync_s = float(first["wall_time"]) - started
            verify = n <= 1000  # listing the table is itself slow at 10,000
            for r in range(repeats):
                for step, text in steps:
                    time.sleep(settle_s)
                    t0 = replace_file(config, text)
                    ev = daemon.wait_sync(t0, timeout_s=60.0)
                    figs.latency_s[step].append(float(ev["wall_time"]) - t0)
                    figs.sync_ms[step].append(float(ev.get("duration_ms", float("nan"))))
                    if "since_trigger_ms" in ev:
                        figs.watch_ms[step].append(figs.latency_s[step][-1] * 1000 - float(ev["since_trigger_ms"]))
                    figs.full[step].append(bool(ev.get("full", False)))
                    if verify and r == 0 and step in ("L4LB added", "L4LB removed"):
                        present = _has_vip(ns, extra_vip)
                        if present != (step == "L4LB added"):
                            state = "still has" if present else "lacks"
                            raise RuntimeError(f"after '{step}' the kernel {state} VIP {extra_vip}")
                log(f"incremental N={n} round {r + 1}/{repeats}: "
                    + ", ".join(f"{s} {figs.latency_s[s][-1] * 1000:.1f} ms" for s in STEPS))
            figs.verified = verify
            figs.daemon_rss_kib = daemon.peak_rss_kib()
        finally:
            daemon.stop()
    return figs


def incremental_table(res: Results, all_figs: list[IncrementalFigures]) -> None:
    t = res.table(
        "Incremental: file change to kernel updated, through `gatelb run` (N L4LBs x 10 backends loaded)",
        ["N", *STEPS, "daemon duration_ms (all steps)", "file-watch delay (all steps)", "full resyncs",
         "daemon initial sync",
         "daemon peak RSS"],
        note="Milliseconds from the rename of the new file to the daemon's wall_time after the kernel "
             "accepted the transaction: median (min-max). duration_ms is the daemon's own figure (re-read "
             "of the file, compile, apply); the file-watch delay is the latency minus the daemon's "
             "since_trigger_ms (rename to the watcher's wake-up).",
    )
    for f in all_figs:
        cells = [summarize([v * 1000 for v in f.latency_s[s]]).fmt("ms", 1) for s in STEPS]
        sync = summarize([v for s in STEPS for v in f.sync_ms[s]]).fmt("ms", 1)
        watch = summarize([v for s in STEPS for v in f.watch_ms[s]]).fmt("ms", 1)
        fulls = sum(sum(v) for v in f.full.values())
        total = sum(len(v) for v in f.full.values())
        t.rows.append([str(f.n), *cells, sync, watch, f"{fulls}/{total}", f"{f.initial_sync_s:.2f} s",
                       f"{f.daemon_rss_kib / MIB:.0f} MiB"])


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100,1000,10000", help="comma-separated N (default 100,1000,10000)")
    p.add_argument("--repeats", type=int, default=0, help="full-sync rounds (default 5, or 3 at N >= 10000)")
    p.add_argument("--inc-repeats", type=int, default=5, help="incremental rounds (default 5)")
    p.add_argument("--references", default=",".join(REFERENCES),
                   help=f"kube-proxy layouts to load alongside ('' for none; default {','.join(REFERENCES)})")
    p.add_argument("--skip-full", action="store_true")
    p.add_argument("--skip-incremental", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke run: N=50, one round")
    p.add_argument("--workdir", type=Path, help="keep generated inputs here (default: a temporary directory)")
    a = p.parse_args(argv)
    require_root()
    exit_on_signals()
    sizes = [50] if a.quick else parse_sizes(a.sizes)
    refs = tuple(r for r in a.references.split(",") if r)
    unknown = set(refs) - set(REFERENCES)
    if unknown:
        p.error(f"unknown reference layouts: {', '.join(sorted(unknown))}")
    shown = argv if argv is not None else sys.argv[1:]
    res = Results("control_plane", ["python -m bench.control_plane", *shown])
    with tempfile.TemporaryDirectory(prefix="glbb-cp-") as tmp:
        workdir = a.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        fulls: list[FullSyncFigures] = []
        incs: list[IncrementalFigures] = []
        for n in sizes:
            repeats = 1 if a.quick else (a.repeats or (3 if n >= 10000 else 5))
            res.sample_load()
            if not a.skip_full:
                fulls.append(full_sync(n, repeats, workdir, refs))
            res.sample_load()
            if not a.skip_incremental:
                incs.append(incremental(n, 1 if a.quick else a.inc_repeats, workdir))
            res.sample_load()
        if fulls:
            full_sync_tables(res, fulls, refs)
        if incs:
            incremental_table(res, incs)
        res.data = {"full_sync": [f.to_json() for f in fulls], "incremental": [f.to_json() for f in incs]}
    json_path, md_path = res.write()
    print(res.markdown())
    log(f"results: {json_path} and {md_path}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
