"""gatelb's own FRR instance (zebra, bfdd, bgpd from Debian's `frr`), in the namespace gatelb runs
in, with everything under `<state-dir>/frr/`: per-daemon startup files, vty sockets, the zebra
socket, pid files, the log. Nothing in /etc/frr, no systemd.

- Each daemon starts from its own file (a combined file makes bgpd reject the other daemons'
  sections) and drops to user frr, which must be able to reach the directory. The file is its
  part of the rendered configuration (frr_config.daemon_files):
  everything is there before the first session opens (a graceful restart's End-of-RIB must
  carry every prefix), and 10,000 VIPs need no reload at start.
- Changes: only prefixes (and whole route-map entries) changed -> one vtysh run of those lines;
  anything else -> FRR's frr-reload.py, which diffs against the running configuration. A change
  never restarts anything or drops a session.
- `frr.conf` is written once FRR runs it: a restart of gatelb that adopts the daemons diffs
  against it.
- A previous run's daemons (gatelb killed, FRR still running, found by their pid files) are
  adopted: sessions survive a restart of gatelb itself.
- Stop: every neighbor is shut down first (a Cease notification: the router withdraws our routes
  at once, without waiting for BFD or the hold time), then the daemons are stopped; with
  graceful restart for some peer, those are not shut down and the daemons are killed (no Cease,
  no BFD admin-down: the router keeps the routes as stale).
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import signal
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from gatelb.announce.frr_config import daemon_files, quick_changes
from gatelb.announce.log import event

DAEMONS = ("zebra", "bfdd", "bgpd")
FRR_LIB = Path("/usr/lib/frr")
VTYSH = "/usr/bin/vtysh"
RELOAD = FRR_LIB / "frr-reload.py"
USER = "frr"
START_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0



def run_vtysh(vty_socket: Path, commands: Sequence[str], binary: str = VTYSH) -> str:
    """Run `commands` (each one `-c`) in the FRR whose vty sockets are in `vty_socket`; its output."""
    argv = [binary, "--vty_socket", str(vty_socket)]
    for c in commands:
        argv += ["-c", c]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise FrrError(f"vtysh --vty_socket {vty_socket} {' '.join(commands)}: "
                       f"{(done.stderr + done.stdout).strip()[-500:]}")
    return done.stdout

class FrrError(RuntimeError):
    pass


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


BGP_PORT_HEX = f"{179:04X}"


def _listeners(port_hex: str) -> list[str]:
    """The sockets listening on TCP port `port_hex` in this network namespace (inode numbers)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                w = line.split()
                if w[1].rsplit(":", 1)[1] == port_hex and w[3] == "0A":
                    found.append(w[9])
    return found


def _owner(inode: str) -> str:
    target = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return f"{Path(f'/proc/{pid}/comm').read_text().strip()} (pid {pid})"
    return "another process"


def check_bgp_port() -> None:
    """gatelb's bgpd needs TCP port 179 of this namespace to itself: an FRR (or any BGP speaker)
    that already runs here would take the router's connections. That FRR can be used instead,
    with `gatelb run --frr-vty-socket DIR` (docs/announce.md, "An FRR that already runs on the
    gateway")."""
    listeners = _listeners(BGP_PORT_HEX)
    if listeners:
        raise FrrError(f"BGP announcements: TCP port 179 is already taken by {_owner(listeners[0])} in this "
                       f"network namespace. gatelb's own FRR cannot share the port: to announce through the "
                       f"FRR that already runs here, run gatelb with --frr-vty-socket <its vty socket "
                       f"directory, e.g. /var/run/frr> (docs/announce.md); or stop that bgpd")


def _reachable_by(path: Path, uid: int, gids: set[int]) -> Path | None:
    """The first parent of `path` the user cannot traverse, or None."""
    for parent in [*reversed(path.parents)]:
        st = parent.stat()
        mode = st.st_mode
        if st.st_uid == uid and mode & stat.S_IXUSR:
            continue
        if st.st_gid in gids and mode & stat.S_IXGRP:
            continue
        if mode & stat.S_IXOTH:
            continue
        return parent
    return None


class FrrInstance:
    def __init__(self, directory: Path, hostname: str) -> None:
        self.directory = directory
        self.hostname = hostname
        self.applied: str | None = None
        self.timings: dict[str, float] = {}  # of the last apply: where its time went (the `announce` event)

    @property
    def log_file(self) -> Path:
        return self.directory / "frr.log"

    @property
    def config_file(self) -> Path:
        return self.directory / "frr.conf"

    def _pid(self, daemon: str) -> int | None:
        try:
            pid = int((self.directory / f"{daemon}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        # Only our own daemon: the right program, started with our pid file.
        ours = str(self.directory / f"{daemon}.pid").encode() in cmdline
        return pid if comm == daemon and ours else None

    def running(self) -> list[str]:
        return [d for d in DAEMONS if self._pid(d) is not None]

    def prepare(self) -> None:
        for tool in (VTYSH, str(RELOAD), *(str(FRR_LIB / d) for d in DAEMONS)):
            if not os.path.exists(tool):
                raise FrrError(f"BGP announcements need FRR: {tool} is missing (apt-get install frr frr-pythontools)")
        user = pwd.getpwnam(USER)
        gid = grp.getgrnam(USER).gr_gid
        self.directory.mkdir(parents=True, exist_ok=True)
        blocked = _reachable_by(self.directory / "x", user.pw_uid, {gid, *os.getgrouplist(USER, gid)})
        if blocked is not None:
            raise FrrError(f"FRR runs as user {USER}, which cannot enter {blocked}: make it traversable "
                           f"(chmod o+x {blocked}) or choose another --state-dir")
        os.chown(self.directory, user.pw_uid, gid)
        os.chmod(self.directory, 0o750)
        vtysh_conf = self.directory / "vtysh.conf"
        if not vtysh_conf.exists():
            vtysh_conf.write_text("service integrated-vtysh-config\n")

    @property
    def candidate_file(self) -> Path:
        return self.directory / "frr.conf.new"

    def start(self, text: str | None = None) -> None:
        """Start the daemons that are not running (adopting the others); idempotent. A daemon
        started now reads its part of `text` (the rendered configuration) as its startup file."""
        self.prepare()
        user = pwd.getpwnam(USER)
        files = daemon_files(text) if text is not None else {}
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        started = []
        for daemon in DAEMONS:
            if self._pid(daemon) is not None:
                continue
            if daemon == "bgpd":
                check_bgp_port()
            # A killed daemon's sockets stay behind (graceful-restart stop, power loss): without
            # them the waits below see this start's sockets, not the last run's.
            for stale in (f"{daemon}.vty", *(["zserv.api"] if daemon == "zebra" else [])):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / stale).unlink()
            conf = self.directory / f"{daemon}.conf"
            conf.write_text(files.get(daemon) or f"hostname {self.hostname}\nlog file {self.log_file} informational\n")
            os.chmod(conf, 0o600)  # it may hold BGP passwords
            os.chown(conf, user.pw_uid, user.pw_gid)
            argv = [str(FRR_LIB / daemon), "-d", "-u", USER, "-g", USER, "-f", str(conf),
                    "-i", str(self.directory / f"{daemon}.pid"), "-z", str(self.directory / "zserv.api"),
                    "--vty_socket", str(self.directory), "-A", "127.0.0.1"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
            if done.returncode != 0:
                raise FrrError(f"{daemon} did not start ({done.returncode}): {done.stderr.strip()[-500:]}")
            started.append(daemon)
            if daemon == "zebra":
                self._wait_for(self.directory / "zserv.api")
        for daemon in started:
            self._wait_for(self.directory / f"{daemon}.vty")
        if started:
            # Every daemon fresh from its part of `text`: that is the running configuration
            # (unless a line was refused: the log says so, and frr-reload.py then repairs).
            # Some daemons adopted: apply everything again (frr-reload.py diffs).
            self.applied = None
            if text is not None and len(started) == len(DAEMONS):
                refused = self._refused_lines(log_start)
                if refused:
                    event(logging.ERROR, "frr-startup-refused", lines=refused[:10])
                else:
                    self._applied(text)
            event(logging.INFO, "frr-started", daemons=started, directory=str(self.directory),
                  from_startup_files=self.applied is not None)
        else:
            # What the previous run applied last (frr.conf is only written once applied), so
            # that a restart of gatelb sends FRR only what changed meanwhile
            with contextlib.suppress(OSError):
                self.applied = self.config_file.read_text()
            event(logging.INFO, "frr-adopted", daemons=list(DAEMONS), directory=str(self.directory))

    def _refused_lines(self, offset: int) -> list[str]:
        """Startup-file lines a daemon refused, from what the log got since `offset` (FRR logs
        "No such command on config line N: ..." and starts anyway)."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                log = f.read().decode(errors="replace")
        except OSError:
            return []
        return [line for line in log.splitlines() if " on config line " in line]

    def _wait_for(self, path: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not path.exists():
            if time.monotonic() > deadline:
                raise FrrError(f"FRR: {path} did not appear within {START_TIMEOUT_S} s (see {self.log_file})")
            time.sleep(0.01)

    def apply(self, text: str) -> bool:
        """Make the running configuration `text` (frr-reload.py: only the difference is sent).
        Returns False when nothing needed doing."""
        if text == self.applied:
            return False
        t0 = time.perf_counter()
        quick = quick_changes(self.applied, text) if self.applied is not None else None
        t1 = time.perf_counter()
        if quick is not None:
            self.vtysh_batch(quick)
            t2 = time.perf_counter()
            self._applied(text)
            self.timings = {"diff_ms": _ms(t1 - t0), "vtysh_ms": _ms(t2 - t1),
                            "write_ms": _ms(time.perf_counter() - t2), "commands": len(quick)}
            return True
        self._write(self.candidate_file, text)
        argv = ["python3", str(RELOAD), "--reload", "--stdout", "--bindir", "/usr/bin",
                "--confdir", str(self.directory), "--rundir", str(self.directory),
                "--vty_socket", str(self.directory), str(self.candidate_file)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise FrrError(f"frr-reload.py failed ({done.returncode}): {(done.stderr + done.stdout).strip()[-1500:]}")
        self._applied(text)
        self.timings = {"diff_ms": _ms(t1 - t0), "reload_ms": _ms(time.perf_counter() - t1)}
        return True

    def _applied(self, text: str) -> None:
        """`text` is the running configuration now: frr.conf says so (a restart of gatelb reads it)."""
        self.applied = text
        self._write(self.config_file, text)

    @staticmethod
    def _write(path: Path, text: str) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o600)  # it may hold BGP passwords
        tmp.replace(path)

    def vtysh_batch(self, commands: list[str]) -> None:
        """Several configuration commands in one vtysh run (read from stdin, stops at an error)."""
        if not commands:
            return
        done = subprocess.run([VTYSH, "--vty_socket", str(self.directory)], input="\n".join(commands) + "\nend\n",
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
        if done.returncode != 0 or "% " in done.stdout:
            self.applied = None  # unknown state: the next apply goes through frr-reload.py
            with contextlib.suppress(OSError):
                self.config_file.unlink()
            raise FrrError(f"vtysh: {(done.stderr + done.stdout).strip()[-800:]}")

    def vtysh(self, *commands: str) -> str:
        return run_vtysh(self.directory, commands)

    def shutdown_neighbors(self, asn: int, neighbors: list[str]) -> None:
        if neighbors:
            self.vtysh("configure terminal", f"router bgp {asn}", *(f"neighbor {n} shutdown" for n in neighbors))

    def stop(self, timeout: float = 5.0, graceful_restart: bool = False) -> None:
        """Stop the daemons. `graceful_restart`: SIGKILL, so that bgpd sends no Cease (FRR's own
        shutdown sends one, which makes the router flush our routes at once) and bfdd no
        admin-down: the session just ends, and the router's graceful-restart helper keeps our
        routes as stale until we are back (End-of-RIB) or its restart timer runs out."""
        # bgpd first when graceful: its TCP session's FIN reaches the router at once, long before
        # BFD's detection time; the router's helper is then in graceful restart already when BFD
        # goes down, and keeps the routes
        order = reversed(DAEMONS) if graceful_restart else DAEMONS
        pids = [p for d in order if (p := self._pid(d)) is not None]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if graceful_restart else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.applied = None
