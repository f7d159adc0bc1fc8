"""gatelb's own conntrackd (Debian's `conntrackd`, 1.4.x): start, adopt, stop, and its commands.

- Started in gatelb's network namespace from the rendered file (`conntrackd -C FILE`, in the
  foreground of its own session), with its socket, lock file and log under `<state-dir>/conntrackd/`.
  A conntrackd of a previous run (found by its command line, which names our file) is adopted; a
  lock file without a process is a crash's leftover and is removed, or conntrackd would refuse to
  start.
- Commands go through conntrackd's own client mode (`conntrackd -C FILE -c|-f|-R|-B|-n|-t|-s`),
  which talks to the daemon over the UNIX socket named in the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from gatelb.announce.log import event

CONNTRACKD = "/usr/sbin/conntrackd"
START_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 10.0


class ConntrackdError(RuntimeError):
    pass


class Conntrackd:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.applied: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        return self.directory / "conntrackd.conf"

    @property
    def log_file(self) -> Path:
        return self.directory / "conntrackd.out"

    def pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        self._proc = None
        want = str(self.config_file).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            except OSError:
                continue
            if argv and argv[0].endswith(b"conntrackd") and want in argv and "-C" in [a.decode() for a in argv] \
                    and state != "Z" and len([a for a in argv if a]) == 3:  # the daemon, not a client command
                return int(entry.name)
        return None

    def running(self) -> bool:
        return self.pid() is not None

    def apply(self, text: str) -> bool:
        """Run conntrackd with `text`; a changed text restarts it (conntrackd has no reload).
        Returns whether it was (re)started."""
        if not os.path.exists(CONNTRACKD):
            raise ConntrackdError(f"state sync needs conntrackd: {CONNTRACKD} is missing (apt-get install conntrackd)")
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        if self.running():
            if self.applied is None:
                with contextlib.suppress(OSError):
                    self.applied = self.config_file.read_text()
            if text == self.applied:
                return False
            self.stop()
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_file)
        self._start()
        self.applied = text
        return True

    def _start(self) -> None:
        for leftover in ("conntrackd.lock", "conntrackd.ctl"):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / leftover).unlink()
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen([CONNTRACKD, "-C", str(self.config_file)], stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.directory / "conntrackd.ctl").exists():
            if self._proc.poll() is not None:
                raise ConntrackdError(f"conntrackd exited ({self._proc.returncode}): {self._tail()}")
            if time.monotonic() > deadline:
                raise ConntrackdError(f"conntrackd did not start within {START_TIMEOUT_S} s: {self._tail()}")
            time.sleep(0.01)
        event(logging.INFO, "conntrackd-started", pid=self._proc.pid, directory=str(self.directory))

    def _tail(self) -> str:
        texts = []
        for f in (self.log_file, self.directory / "conntrackd.log"):
            with contextlib.suppress(OSError):
                texts.append(f.read_text()[-600:])
        return " | ".join(texts)

    def command(self, flag: str, *more: str) -> str:
        done = subprocess.run([CONNTRACKD, "-C", str(self.config_file), flag, *more], capture_output=True,
                              text=True, timeout=COMMAND_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise ConntrackdError(f"conntrackd {flag}: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def stats(self) -> dict[str, int]:
        """A few counters of `conntrackd -s`: the caches' entries and the messages received."""
        return parse_stats(self.command("-s"))

    def stop(self, timeout: float = 5.0) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.pid() == pid and time.monotonic() < deadline:
                time.sleep(0.01)
            if self.pid() == pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
            self._proc = None
        self.applied = None


_SECTION = re.compile(r"^(cache|message tracking|network statistics|UDP traffic)", re.I)


def parse_stats(text: str) -> dict[str, int]:
    """`conntrackd -s` -> {"internal": N, "external": N, "recv_msgs": N, "sent_msgs": N, ...}.

    The output is a report for people; the numbers read here are stable across 1.4.x:
    ``cache internal:`` / ``cache external:`` sections with ``current active connections: N``,
    and the ``UDP traffic`` section with ``N Bytes sent ... N Pckts sent`` and ``recv`` lines."""
    out: dict[str, int] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        low = line.lower()
        if low.startswith("cache internal"):
            section = "internal"
        elif low.startswith("cache external"):
            section = "external"
        elif _SECTION.match(line):
            section = low.split(":")[0]
        m = re.search(r"current active connections:\s*(\d+)", line)
        if m and section in ("internal", "external"):
            out[section] = int(m.group(1))
        for direction in ("sent", "recv"):
            m = re.search(rf"(\d+)\s+Pckts {direction}", line)
            if m:
                out[f"{direction}_pckts"] = out.get(f"{direction}_pckts", 0) + int(m.group(1))
            m = re.search(rf"(\d+)\s+Bytes {direction}", line)
            if m:
                out[f"{direction}_bytes"] = out.get(f"{direction}_bytes", 0) + int(m.group(1))
    return out
