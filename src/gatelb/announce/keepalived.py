"""gatelb's own keepalived (VRRP only), in the namespace gatelb runs in, with everything under
`<state-dir>/keepalived/`: keepalived.conf, pid files, the notify FIFO, track files, the log.
Nothing in /etc/keepalived, no systemd.

- keepalived runs in the foreground of its own session (`-n`, so its log is a file gatelb
  chose; its own session, so a killed gatelb leaves it serving and the next run adopts it by
  its pid file, like FRR).
- A changed configuration is applied with SIGHUP: keepalived reloads and keeps the state of the
  instances that stay (a MASTER stays MASTER, no VIP moves). A health change only rewrites a
  track file, which keepalived watches itself.
- Stop (SIGTERM): keepalived sends priority-0 adverts and removes its VIPs, so the backups take
  over at once rather than after the master-down interval.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

from gatelb.announce.l2 import Link
from gatelb.announce.log import event

KEEPALIVED = "/usr/sbin/keepalived"
START_TIMEOUT_S = 10.0


class KeepalivedError(RuntimeError):
    pass


def read_links() -> dict[str, Link]:
    """This namespace's interfaces and addresses (`ip -json addr`)."""
    done = subprocess.run(["ip", "-json", "addr", "show"], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise KeepalivedError(f"ip addr show: {done.stderr.strip()}")
    import ipaddress

    links = {}
    for item in json.loads(done.stdout or "[]"):
        addrs = []
        for a in item.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                addrs.append(ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}"))
        links[item["ifname"]] = Link(item["ifname"], tuple(addrs), "UP" in item.get("flags", []))
    return links


class Keepalived:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.applied: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tracks: dict[Path, str] = {}

    @property
    def config_file(self) -> Path:
        return self.directory / "keepalived.conf"

    @property
    def fifo(self) -> Path:
        return self.directory / "notify.fifo"

    @property
    def log_file(self) -> Path:
        return self.directory / "keepalived.log"

    def _pid(self, which: str) -> int | None:
        try:
            pid = int((self.directory / f"{which}.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        zombie = status.rsplit(")", 1)[-1].split()[0] == "Z"
        # Only our own keepalived: started with our configuration file.
        return pid if not zombie and str(self.config_file).encode() in cmdline else None

    def running(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
        return self._pid("keepalived") is not None and self._pid("vrrp") is not None

    def prepare(self) -> None:
        if not os.path.exists(KEEPALIVED):
            raise KeepalivedError(f"L2 announcements need keepalived: {KEEPALIVED} is missing "
                                  "(apt-get install keepalived)")
        (self.directory / "track").mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        if self.fifo.exists() and not stat.S_ISFIFO(self.fifo.stat().st_mode):
            self.fifo.unlink()
        if not self.fifo.exists():
            os.mkfifo(self.fifo, 0o600)

    def open_fifo(self) -> int:
        """Read end of the notify FIFO, never blocking: opened read-write, it never reports EOF
        when keepalived restarts, and keepalived's writes never block on it."""
        return os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def write_tracks(self, tracks: dict[Path, str]) -> None:
        for path, text in tracks.items():
            if self._tracks.get(path) == text and path.exists():
                continue
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            tmp.replace(path)  # keepalived reads the file when it changes (inotify)
            self._tracks[path] = text

    def apply(self, text: str, tracks: dict[Path, str]) -> bool:
        """Make keepalived run `text` with these track values: start it, or reload it with
        SIGHUP when the text changed. Returns whether the configuration was (re)loaded."""
        self.prepare()
        self.write_tracks(tracks)
        if self.running():
            if self.applied is None:  # a previous run's keepalived: its configuration is the file
                with contextlib.suppress(OSError):
                    self.applied = self.config_file.read_text()
            if text == self.applied:
                return False
            self._write(text)
            pid = self._pid("keepalived")
            if pid is None:
                raise KeepalivedError("keepalived stopped while reloading")
            os.kill(pid, signal.SIGHUP)
            self.applied = text
            event(logging.INFO, "keepalived-reloaded", pid=pid)
            return True
        adopted = self._pid("keepalived") is not None
        self._write(text)
        self._start()
        self.applied = text
        event(logging.INFO, "keepalived-started", directory=str(self.directory), restarted=adopted)
        return True

    def _write(self, text: str) -> None:
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_file)

    def _start(self) -> None:
        self.stop()  # half of a previous instance (one of its processes died)
        argv = [KEEPALIVED, "--vrrp", "--dont-fork", "--log-console", "--no-syslog", "--log-detail",
                "-f", str(self.config_file), "-p", str(self.directory / "keepalived.pid"),
                "-r", str(self.directory / "vrrp.pid")]
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.running():
            if self._proc is not None and self._proc.poll() is not None:
                raise KeepalivedError(f"keepalived exited ({self._proc.returncode}): {self._tail()}")
            if time.monotonic() > deadline:
                raise KeepalivedError(f"keepalived did not start within {START_TIMEOUT_S} s: {self._tail()}")
            time.sleep(0.01)

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_file.read_text()[-800:]
        return ""

    def stop(self, timeout: float = 5.0) -> None:
        pids = [p for w in ("keepalived", "vrrp") if (p := self._pid(w)) is not None]
        for pid in pids[:1]:  # the parent stops its VRRP child (priority-0 adverts, VIPs removed)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            if self._proc is not None:
                self._proc.poll()
            time.sleep(0.01)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
            self._proc = None
        self.applied = None


def _alive(pid: int) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return st.rsplit(")", 1)[-1].split()[0] != "Z"


def parse_notify(line: str) -> tuple[str, str, int] | None:
    """`INSTANCE "gatelb-lan0-v4-1" MASTER 254` -> (instance, state, priority)."""
    parts = line.strip().split()
    if len(parts) != 4 or parts[0] != "INSTANCE":
        return None
    try:
        return parts[1].strip('"'), parts[2], int(parts[3])
    except ValueError:
        return None
