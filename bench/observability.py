"""`gatelb status` and a `/metrics` scrape at N load balancers x 10 backends (issue 11).

For each N, in a scratch namespace: `gatelb apply` loads the workload (bench/gen.py), then
  - `gatelb status` with no daemon (the state record and the kernel's counter sets), the table
    (one line per load balancer above 200) and `-o json` (every backend);
  - `gatelb run --no-health` adopts the table (nothing reloaded); then, round after round:
    `gatelb status`, `gatelb status NAME`, `gatelb status -o json` (answered by the daemon over
    its socket) and one `/metrics` scrape (HTTP GET on 127.0.0.1:9469 to the last byte).
Every figure is end to end: process start to exit for the CLI, request to the body's end for
the scrape. Targets (issue 11): status under 1 s and a scrape under 0.5 s at 10,000.

    python -m bench.observability                 # N = 1,000 and 10,000, 5 rounds
    python -m bench.observability --quick         # N = 50, 2 rounds (the smoke test)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import gen
from bench.common import (
    PYTHON,
    Results,
    gatelb_cmd,
    log,
    netns_prefix,
    parse_sizes,
    require_root,
    run_measured,
    scratch_netns,
    summarize,
    wait_quiet,
)

ADDRESS = "127.0.0.1:9469"
TARGETS = {"status": 1.0, "scrape": 0.5}

SCRAPE = """
import sys, time, urllib.request
t = time.perf_counter()
body = urllib.request.urlopen(sys.argv[1], timeout=60).read()
print(time.perf_counter() - t, len(body), body.count(b"\\n"))
"""


def _cli(ns: str, state: Path, *args: str) -> float:
    done = run_measured(gatelb_cmd("--state-dir", str(state), *args), netns=ns).check()
    return done.wall_s


def _scrape(ns: str) -> tuple[float, int, int]:
    done = run_measured([PYTHON, "-c", SCRAPE, f"http://{ADDRESS}/metrics"], netns=ns).check()
    seconds, size, lines = done.stdout.split()
    return float(seconds), int(size), int(lines)


def _wait_ready(ns: str, timeout_s: float = 300.0) -> None:
    """Until /healthz says a round succeeded (the daemon adopted the table and went over it)."""
    probe = ("import json, urllib.request; "
             f"print(json.load(urllib.request.urlopen('http://{ADDRESS}/healthz', timeout=5))['lastUpdated'])")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = subprocess.run([*netns_prefix(ns), PYTHON, "-c", probe], capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip() not in ("", "None"):
            return
        time.sleep(0.5)
    raise RuntimeError("the daemon did not report a successful round")


def measure(n: int, rounds: int, results: Results) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n}
    with tempfile.TemporaryDirectory(prefix="glbb-obs-") as tmp, scratch_netns() as ns:
        work = Path(tmp)
        config = work / "gatelb.yaml"
        config.write_text(gen.gatelb_yaml(gen.services(n)))
        state = work / "state"
        log(f"N={n}: loading")
        _cli(ns, state, "apply", "-q", "-f", str(config))
        name = gen.lb_name(n // 2)
        local_table, local_json = [], []
        for _ in range(rounds):
            wait_quiet()
            results.sample_load()
            local_table.append(_cli(ns, state, "status"))
            local_json.append(_cli(ns, state, "status", "-o", "json"))
        out["local_table_s"], out["local_json_s"] = summarize(local_table), summarize(local_json)
        log(f"N={n}: starting the daemon")
        with open(work / "log.jsonl", "wb") as logf:
            daemon = subprocess.Popen([*netns_prefix(ns), *gatelb_cmd("--state-dir", str(state), "run", "--no-health",
                                                                       "-f", str(config), "--log-format", "json",
                                                                       "--metrics-address", ADDRESS)],
                                      stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        try:
            _wait_ready(ns)
            _scrape(ns)  # the first scrape builds every backend's label text once
            table, single, full_json, scrape = [], [], [], []
            size = lines = 0
            for _ in range(rounds):
                wait_quiet()
                results.sample_load()
                table.append(_cli(ns, state, "status"))
                single.append(_cli(ns, state, "status", name))
                full_json.append(_cli(ns, state, "status", "-o", "json"))
                seconds, size, lines = _scrape(ns)
                scrape.append(seconds)
            out.update(daemon_table_s=summarize(table), daemon_name_s=summarize(single),
                       daemon_json_s=summarize(full_json), scrape_s=summarize(scrape), scrape_bytes=size,
                       scrape_lines=lines)
            log(f"N={n}: status {out['daemon_table_s'].fmt()}, scrape {out['scrape_s'].fmt()} ({size} bytes)")
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="N = 50, 2 rounds")
    a = p.parse_args(argv)
    require_root()
    sizes, rounds = ([50], 2) if a.quick else (parse_sizes(a.sizes), a.rounds)
    results = Results("observability", ["python -m bench.observability", *(argv or sys.argv[1:])])
    rows = [measure(n, rounds, results) for n in sizes]
    results.data["sizes"] = rows
    t = results.table(
        "gatelb status and /metrics at N L4LBs x 10 backends",
        ["N", "status (daemon)", "status NAME (daemon)", "status -o json (daemon)", "/metrics scrape",
         "scrape size", "status (no daemon)", "status -o json (no daemon)"],
        note="Seconds, median (min-max) over the rounds; CLI figures from process start to exit, the scrape "
             "from request to the body's last byte. Targets at 10,000: status under 1 s, scrape under 0.5 s.")
    for r in rows:
        t.rows.append([str(r["n"]), r["daemon_table_s"].fmt(), r["daemon_name_s"].fmt(), r["daemon_json_s"].fmt(),
                       r["scrape_s"].fmt(), f"{r['scrape_bytes'] / 1e6:.1f} MB, {r['scrape_lines']} lines",
                       r["local_table_s"].fmt(), r["local_json_s"].fmt()])
    print(results.markdown())
    json_path, _ = results.write()
    log(f"wrote {json_path}")
    print(json.dumps({"missed": [f"N={r['n']} {k}" for r in rows if r["n"] >= 10000
                                 for k, key in (("status", "daemon_table_s"), ("scrape", "scrape_s"))
                                 if r[key].median > TARGETS[k]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
