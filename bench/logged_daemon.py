"""`gatelb run` in a namespace for the benchmarks, with its JSON log lines parsed on a reader thread.

The control-plane and reconciler benchmarks both time the daemon by its `sync` log events and read
its peak RSS and CPU from /proc, so they share this one class.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import gatelb_cmd, netns_prefix


class LoggedDaemon:
    """`gatelb run ... --log-format json --no-health` in a namespace; every JSON log line is kept."""

    profile_dir: Path | None = None  # --profile: run each daemon under cProfile, one file per start
    log_dir: Path | None = None  # --logs: keep each daemon's log lines
    _starts = 0

    def __init__(self, ns: str, args: list[str], state_dir: str) -> None:
        cmd = [*netns_prefix(ns), *gatelb_cmd("run", *args, "--log-format", "json", "--no-health")]
        if self.profile_dir is not None:
            LoggedDaemon._starts += 1
            out = self.profile_dir / f"gatelb-{LoggedDaemon._starts}.prof"
            i = cmd.index("-m")
            cmd[i:i] = ["-m", "cProfile", "-o", str(out)]
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "GATELB_STATE_DIR": state_dir})
        self.lines: list[dict[str, Any]] = []
        self.other: list[str] = []
        self._new: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                ev = json.loads(line)
            except ValueError:
                self.other.append(line.rstrip())
                continue
            if isinstance(ev, dict):
                self.lines.append(ev)
                self._new.put(ev)

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout_s: float, what: str) -> dict[str, Any]:
        """The first line (from now on, or already seen and not yet consumed) matching `pred`."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                tail = "\n".join([json.dumps(x) for x in self.lines[-15:]] + self.other[-15:])
                raise RuntimeError(f"{what}: not within {timeout_s:.0f} s (daemon rc={self.proc.poll()}):\n{tail}")
            try:
                ev = self._new.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if pred(ev):
                return ev

    def wait_sync(self, after: float, timeout_s: float = 30.0) -> dict[str, Any]:
        return self.wait(lambda e: e.get("event") == "sync" and int(e.get("changes", 0)) > 0
                         and float(e.get("wall_time", 0)) >= after, timeout_s, "sync after a change")

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.lines if e.get("event") == name]

    def peak_rss_kib(self) -> int:
        # `ip netns exec` execs the interpreter in place, so this pid is the daemon itself.
        return status_field(self.proc.pid, "VmHWM:")

    def cpu_s(self) -> float:
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._reader.join(timeout=5)
        if self.log_dir is not None:
            path = self.log_dir / f"gatelb-{self.proc.pid}.log"
            path.write_text("".join(json.dumps(x) + "\n" for x in self.lines) + "\n".join(self.other))


def status_field(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
