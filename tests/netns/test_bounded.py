"""Issue 13, "resources stay bounded; no hang, ever", against a real `gatelb run` in a lab:
55 silent backends probed every 100 ms with a 2 s timeout under `ulimit -n 1024` (the systemd
default) keep the daemon within its descriptors, working (a file change is applied), and SIGTERM
ends it promptly; a backend recorded down before a restart stays out until its first probe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gatelb.lab.procs import stop_process
from gatelb.lab.topology import Lab

from .gatelb_helpers import Gatelb, config, gatelb_cli, l4lb, module_lab  # noqa: F401 - fixtures

SILENT = [f"198.51.100.{100 + i}" for i in range(55)]  # on the backend bridge, but nobody there


def events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def wait_for(log: Path, name: str, proc: subprocess.Popen[bytes], after: int = 0, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(e.get("event") == name for e in events(log)[after:]):
        assert proc.poll() is None, f"gatelb run exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {name!r} within {timeout} s:\n{log.read_text()}"
        time.sleep(0.05)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_silent_backends_under_ulimit_1024_stay_bounded_and_sigterm_ends_it(gl: Gatelb, lab: Lab) -> None:
    check = {"interval": 100, "timeout": 2000}
    lb = l4lb("silent", frontend={"ip": "203.0.113.10", "port": 80}, check=check,
              backend=[{"address": a, "port": 8080} for a in SILENT])
    path = gl.write(config(lb), "gatelb.yaml")
    log = gl.state_dir.parent / "bounded.log"
    argv = [sys.executable, "-m", "gatelb.cli.main", "--state-dir", str(gl.state_dir), "run", "-f", str(path),
            "--log-format", "json"]
    script = "ulimit -n 1024 && exec " + " ".join(argv)  # hard and soft: the daemon cannot raise it
    with open(log, "ab") as out:
        proc = lab.popen("gw", ["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        wait_for(log, "sync", proc)
        peak = 0
        deadline = time.monotonic() + 5.0  # 2.5 s was enough to exhaust the descriptors before
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            peak = max(peak, open_fds(proc.pid))
            time.sleep(0.05)
        print(f"peak descriptors: {peak}")
        assert peak < 400, f"{peak} descriptors open"  # 55 x 3 probes in flight at most, and the rest
        assert not [e for e in events(log) if e.get("event") == "task-died"], log.read_text()
        # Still working: a change is applied.
        mark = len(events(log))
        path.write_text(config(l4lb("silent", frontend={"ip": "203.0.113.10", "port": 81}, check=check,
                                    backend=[{"address": a, "port": 8080} for a in SILENT])))
        wait_for(log, "sync", proc, after=mark)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        assert time.monotonic() - t0 < 5.0 and code == 0, log.read_text()
    finally:
        if proc.poll() is None:
            stop_process(proc, timeout=5)


def test_a_backend_recorded_down_stays_out_after_a_restart_until_its_first_probe(gl: Gatelb, lab: Lab) -> None:
    """be1 is down when the daemon stops. The restarted daemon adopts the table as it is: if it
    assumed be1 up, its first round would put be1 back (a sync) until the first probe failed."""
    lb = l4lb("web", frontend={"ip": "203.0.113.10", "port": 80}, check={"interval": 200, "timeout": 1000},
              backend=[{"address": f"198.51.100.1{i}", "port": 8080} for i in (1, 2)])
    path = gl.write(config(lb), "gatelb.yaml")
    lab.kill_backend(1)
    try:
        with gl.daemon(path, health=True) as daemon:
            daemon.wait_event("health")  # be1 found down
            time.sleep(1.5)  # the record is written at most once a second
        state = json.loads((gl.state_dir / "state.json").read_text())
        assert state["applied"]["health"]["web|198.51.100.11|8080"]["state"] == "down", state["applied"]["health"]
        restarted = gl.daemon(path, health=True)
        mark = len(restarted.events())  # the log file is shared with the first run
        with restarted:
            restarted.wait_event("adopted", after=mark)
            time.sleep(2.0)  # several probe intervals: the first results are in
            names = [e.get("event") for e in restarted.events()[mark:]]
            assert "sync" not in names, restarted.log()  # nothing to change: be1 was never put back
            rows = {b["address"]: b for b in gl.lb_status("web")["backends"]}
            assert rows["198.51.100.11"]["state"] == "down", rows
    finally:
        lab.start_backend(1)
