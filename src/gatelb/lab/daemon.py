"""`gatelb run` inside the lab's gateway namespace, for netns tests, benchmarks and demos.

::

    with LabDaemon(lab, CONFIG) as daemon:          # starts it and waits for its first sync
        t = time.time()
        lab.kill_backend(2)
        daemon.wait_event("sync", after=t, where=lambda e: e["trigger"] == "health")
        daemon.write_config(CONFIG2)                 # picked up by the daemon's file watch
        daemon.status()                              # `gatelb status -o json` in the gw, parsed
    # stopped here (SIGTERM, then SIGKILL), also on exceptions; the lab stops it too

The daemon logs one JSON object per line (``--log-format json``) to a file in the lab's private
directory; `events()` parses it. Every object has ``time`` (UNIX seconds) and ``event`` (``sync``,
``health``, ``conntrack-flush``, ``config-invalid``, ...), plus the fields of that event.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gatelb.agent.runtime import parse_time
from gatelb.lab.procs import stop_process
from gatelb.lab.topology import Lab, LabError

Event = dict[str, Any]
START_TIMEOUT_S = 20.0


class LabDaemon:
    """One `gatelb run` in `lab`'s gw namespace. The constructor does no I/O; `start()` (or ``with``)
    writes the configuration and starts the daemon; `stop()` is idempotent."""

    def __init__(self, lab: Lab, config: str, *, name: str = "gatelb", extra_args: tuple[str, ...] = (),
                 ns: str = "gw") -> None:
        self._lab = lab
        self._ns = ns
        self._config = config
        self._name = name
        self._extra = extra_args
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def directory(self) -> Path:
        return self._lab.tmpdir / self._name

    @property
    def config_path(self) -> Path:
        return self.directory / "gatelb.yaml"

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    @property
    def log_path(self) -> Path:
        return self.directory / "log.jsonl"

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> LabDaemon:
        """Start the daemon and wait until it has applied the configuration once."""
        if self._proc is not None:
            raise LabError(f"{self._name}: already started")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.write_config(self._config)
        with open(self.log_path, "wb") as log:
            self._proc = self._lab.popen(self._ns, [*self._gatelb(), "run", "-f", str(self.config_path),
                                                "--log-format", "json", *self._extra],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            self.wait_event("sync", timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 2.0) -> int | None:
        """SIGTERM (then SIGKILL after `timeout` s); returns the exit status, None if it never started."""
        if self._proc is None:
            return None
        stop_process(self._proc, timeout=timeout)
        return self._proc.returncode

    def wait(self, timeout: float = 10.0) -> int | None:
        """Wait for the daemon to exit by itself (after a signal() of ours: a second SIGTERM would
        end it at once, with exit 1, by design); stop() it if it has not exited within `timeout`."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise LabError(f"{self._name} did not exit within {timeout} s:\n{self.log_text()[-4000:]}") from None

    def signal(self, sig: int) -> None:
        """Send `sig` to the daemon (SIGTERM, SIGHUP) without waiting."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    def __enter__(self) -> LabDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- configuration and status -----------------------------------------------------------------

    def write_config(self, text: str) -> None:
        """Replace the configuration file atomically (rename), as configuration management does."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    def status(self) -> dict[str, Any]:
        """`gatelb status -o json`, run in the gw namespace against the daemon's state directory."""
        done = self._lab.run(self._ns, [*self._gatelb(), "status", "-o", "json"])
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    def _gatelb(self) -> list[str]:
        return [sys.executable, "-m", "gatelb.cli.main", "--state-dir", str(self.state_dir)]

    # -- log --------------------------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None, *, after: float | None = None) -> list[Event]:
        """Parsed log lines, oldest first; only event `name` and only those logged after `after`
        (UNIX time) when given. Lines that are not JSON (a traceback) are skipped."""
        out: list[Event] = []
        for line in self.log_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                e: Event = json.loads(line)
            except ValueError:
                continue  # the line being written right now
            if (name is None or e.get("event") == name) and (after is None or parse_time(e.get("time", 0)) > after):
                out.append(e)
        return out

    def wait_event(self, name: str, *, after: float | None = None, where: Callable[[Event], bool] | None = None,
                   timeout: float = 5.0) -> Event:
        """The first event `name` (after `after`, matching `where`); LabError with the log after
        `timeout` s or if the daemon exits."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events(name, after=after):
                if where is None or where(e):
                    return e
            if not self.running():
                raise LabError(f"{self._name} exited before logging {name!r}:\n{self.log_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise LabError(f"{self._name} did not log {name!r} within {timeout} s:\n{self.log_text()[-4000:]}")
            time.sleep(0.02)
