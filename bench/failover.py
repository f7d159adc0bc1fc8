"""Failover benchmark: how long a dead backend keeps receiving new connections.

One lab (client, gw, be1..be3 with the lab's TCP greeting server on 8080) and `gatelb run` in the
gw with one L4LB 203.0.113.10:80 -> be1..be3:8080 (random) checked every 100 ms (timeout 100 ms,
fall 3, rise 2: a detection window of interval x fall + timeout = 400 ms). Each run:

  1. every backend is up and in the data path;
  2. a paced client in the client namespace opens a new TCP connection every 5 ms (open loop,
     each attempt noting its start time and outcome);
  3. 0.5 s in, one backend (be1, be2, be3 in turn) is SIGKILLed;
  4. from the client's timeline and the daemon's JSON log:
     - last new connection: kill -> start of the last new connection that was sent to the dead
       backend (refused by its host: only connections DNATed to it are refused). THE figure;
     - removed: kill -> the sync that took it out of the kernel (daemon `sync` line, `wall_time`),
       an upper bound of the first one at any connection rate;
     - detected: kill -> the health line that reported it down;
     - failed: client connections that failed in the run;
     - late: connections refused although they started after that sync (expected: none);
  5. the backend is restarted and the run waits until it is back in the data path.

The victims rotate because a backend that goes down more than 3 times in 2 minutes is damped
(held out longer when it comes back); going down is never delayed, so the figures are unaffected,
only the wait in step 5.

    python -m bench.failover              # 12 runs
    python -m bench.failover --quick      # 2 runs: the smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make `import bench` work
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Results, Stats, log, require_root, summarize
from gatelb.agent.runtime import parse_time
from gatelb.lab import Lab, LabDaemon
from gatelb.lab.daemon import Event
from gatelb.lab.topology import backend_v4

VIP, VIP_PORT, BACKEND_PORT = "203.0.113.10", 80, 8080
INTERVAL_MS, TIMEOUT_MS, FALL, RISE = 100, 100, 3, 2
WINDOW_MS = INTERVAL_MS * FALL + TIMEOUT_MS
TARGET_MS = 500
BACKENDS = 3
# New connections per second offered by the client: one every 10 ms gives the dead backend one
# about every 30 ms; much faster and the Python client starts competing with the daemon for the
# two cores (at 200/s health lines came up to 100 ms late).
RATE = 100.0
LEAD_S = 0.5  # client running before the kill
TAIL_S = 1.0  # client running after the kill (> the detection window, with room)


def config() -> str:
    backends = ", ".join(f"{backend_v4(i)}:{BACKEND_PORT}" for i in range(1, BACKENDS + 1))
    return f"""\
apiVersion: gatelb.io/v1alpha1
kind: IPPool
metadata: {{name: bench}}
spec: {{addresses: ["203.0.113.0/28"]}}
---
apiVersion: gatelb.io/v1alpha1
kind: L4LB
metadata: {{name: web}}
spec:
  frontend: {{ip: {VIP}, port: {VIP_PORT}}}
  backend: [{backends}]
  check: {{type: tcp, interval: {INTERVAL_MS}, timeout: {TIMEOUT_MS}, fall: {FALL}, rise: {RISE}}}
"""


@dataclass
class Figures:
    last_new_ms: list[float] = field(default_factory=list)
    removed_ms: list[float] = field(default_factory=list)
    detected_ms: list[float] = field(default_factory=list)
    failed: list[float] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)
    late: list[float] = field(default_factory=list)
    no_hit_runs: int = 0  # runs in which no connection happened to pick the dead backend

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: summarize(v) for k, v in self.__dict__.items() if isinstance(v, list)}
        out["no_hit_runs"] = self.no_hit_runs
        return out


def _about(index: int) -> Any:
    prefix = f"{backend_v4(index)}:"
    return lambda e: str(e.get("backend", "")).startswith(prefix)


def one_run(lab: Lab, daemon: LabDaemon, victim: int, figs: Figures) -> float | None:
    """One kill, measured; returns the "last new connection" figure (ms), None if nothing hit it."""
    client = lab.start_client("tcp", VIP, VIP_PORT, count=int((LEAD_S + TAIL_S) * RATE), rate=RATE, timeout=1.0)
    time.sleep(LEAD_S)
    killed = time.time()
    lab.kill_backend(victim)
    about = _about(victim)
    down = daemon.wait_event("health", after=killed, where=lambda e: about(e) and e["state"] == "down")
    removed = daemon.wait_event("sync", after=parse_time(down["time"]) - 0.001,
                                where=lambda e: "health" in str(e["trigger"]))
    result = client.result()
    refused = [a.at for a in result.attempts if a.error == "refused" and a.at is not None]
    last_new = (max(refused) - killed) * 1000 if refused else None
    if last_new is not None:
        figs.last_new_ms.append(last_new)
    else:
        figs.no_hit_runs += 1
    figs.removed_ms.append((float(removed["wall_time"]) - killed) * 1000)
    figs.detected_ms.append((parse_time(down["time"]) - killed) * 1000)
    figs.failed.append(result.failed)
    figs.late.append(sum(1 for at in refused if at > float(removed["wall_time"])))
    figs.attempts.append(len(result.attempts))
    unexpected = {k: v for k, v in result.failures.items() if k != "refused"}
    if unexpected:
        log(f"  unexpected client failures: {unexpected}")
    restarted = time.time()
    lab.start_backend(victim)
    up: Event = daemon.wait_event("health", after=restarted, timeout=60,
                                  where=lambda e: about(e) and e["state"] == "up")
    daemon.wait_event("sync", after=parse_time(up["time"]) - 0.001, where=lambda e: "health" in str(e["trigger"]))
    return last_new


def _row(label: str, s: Stats, unit: str = "ms", digits: int = 0) -> list[str]:
    if s.n == 0:
        return [label, "n/a", "n/a", "n/a", "0"]
    return [label, f"{s.median:.{digits}f} {unit}", f"{s.min:.{digits}f} {unit}", f"{s.max:.{digits}f} {unit}",
            str(s.n)]


def report(res: Results, figs: Figures, runs: int) -> None:
    last = summarize(figs.last_new_ms)
    met = last.n > 0 and last.max < TARGET_MS
    note = (f"Checks every {INTERVAL_MS} ms, timeout {TIMEOUT_MS} ms, fall {FALL}, rise {RISE} (detection window "
            f"{WINDOW_MS} ms); {BACKENDS} backends, random selection, a new TCP connection every "
            f"{1000 / RATE:.0f} ms ({RATE * (LEAD_S + TAIL_S):.0f} per run); {runs} runs, one backend SIGKILLed "
            f"per run. Target: last new connection < {TARGET_MS} ms: {'met' if met else 'NOT met'} "
            f"(max {last.max:.0f} ms)."
            + (f" {figs.no_hit_runs} run(s) had no connection to the dead backend." if figs.no_hit_runs else ""))
    t = res.table("Failover: a backend dies (time from its death)", ["figure", "median", "min", "max", "runs"], note)
    t.rows.append(_row("last new connection it receives", last))
    t.rows.append(_row("taken out of the kernel (sync)", summarize(figs.removed_ms)))
    t.rows.append(_row("reported down (health line)", summarize(figs.detected_ms)))
    t.rows.append(_row("failed client connections per run", summarize(figs.failed), unit=""))
    t.rows.append(_row("refused after it was taken out", summarize(figs.late), unit=""))
    res.data = {"params": {"interval_ms": INTERVAL_MS, "timeout_ms": TIMEOUT_MS, "fall": FALL, "rise": RISE,
                           "backends": BACKENDS, "rate": RATE, "runs": runs, "target_ms": TARGET_MS},
                "figures": figs.to_json(), "target_met": met}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=12, help="kills to measure (default 12)")
    p.add_argument("--quick", action="store_true", help="2 runs: checks that the benchmark works")
    a = p.parse_args(argv)
    require_root()
    runs = 2 if a.quick else a.runs
    shown = argv if argv is not None else sys.argv[1:]
    res = Results("failover", ["python -m bench.failover", *shown])
    figs = Figures()
    with Lab(backends=BACKENDS) as lab:
        lab.start_backends(udp=None, http=None)
        with LabDaemon(lab, config()) as daemon:
            time.sleep(3 * INTERVAL_MS / 1000)  # every backend passes its first check
            for run in range(runs):
                victim = run % BACKENDS + 1
                last_new = one_run(lab, daemon, victim, figs)
                last = "none" if last_new is None else f"+{last_new:.0f} ms"
                log(f"run {run + 1}/{runs}: be{victim} killed; last new connection {last}, removed "
                    f"+{figs.removed_ms[-1]:.0f} ms, {figs.failed[-1]:.0f} failed")
    report(res, figs, runs)
    json_path, md_path = res.write()
    print(res.markdown())
    log(f"results: {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
