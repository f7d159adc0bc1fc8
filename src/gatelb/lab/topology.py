"""`Lab`: a small gateway network in network namespaces, built in a fraction of a second and always
torn down.

::

    client (eth0)                                   gw                              beI (eth0)
    192.0.2.10/24, 192.0.2.200/24   <-veth->  to-client 192.0.2.1/24
    2001:db8:1::10/64                         2001:db8:1::1/64
    default via the gw                        br-be 198.51.100.1/24    <-veth->  198.51.100.(10+I)/24
                                              2001:db8:2::1/64                   2001:db8:2::(10+I)/64
                                              (to-beI ports)                     default via the gw

The gw forwards (IPv4 and IPv6, inside its namespace only). The VIP ranges 203.0.113.0/24 and
2001:db8:100::/64 are assigned nowhere: the client routes everything to the gw, where the load
balancer's DNAT rules (``lab.ns("gw")``) pick a backend, and the backends' default routes bring
the replies back through the gw, so the backends see the client's own address.

The client's second address 192.0.2.200 exists for source-range tests: `SOURCE_RANGE_INSIDE`
(192.0.2.0/25) includes 192.0.2.10 and excludes 192.0.2.200.

Typical use::

    with Lab(backends=3) as lab:
        lab.start_backends()                       # TCP/UDP 8080, HTTP 80 in every backend
        lab.run("gw", ["nft", "-f", "-"], input=ruleset)
        result = lab.connect_many("tcp", "203.0.113.10", 80, count=30)
        assert result.backends == {"be1", "be2", "be3"}
        with lab.hold("203.0.113.10", 80) as conn:
            ...                                    # change the configuration
            assert conn.exchange("still there") == "still there"
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from gatelb.lab import lifecycle, naming
from gatelb.lab.held import HeldConnection
from gatelb.lab.procs import LineReader, stop_process
from gatelb.lab.results import ClientResult
from gatelb.lab.running import RunningClient

CLIENT_V4 = "192.0.2.10"
CLIENT_V4_OUTSIDE = "192.0.2.200"  # second client address, outside SOURCE_RANGE_INSIDE
CLIENT_V6 = "2001:db8:1::10"
GW_CLIENT_V4 = "192.0.2.1"
GW_CLIENT_V6 = "2001:db8:1::1"
GW_BACKEND_V4 = "198.51.100.1"
GW_BACKEND_V6 = "2001:db8:2::1"
SOURCE_RANGE_INSIDE = "192.0.2.0/25"  # includes CLIENT_V4, excludes CLIENT_V4_OUTSIDE
VIP_V4_NET = "203.0.113.0/24"
VIP_V6_NET = "2001:db8:100::/64"
MAX_BACKENDS = 200  # backend I gets 198.51.100.(10+I)

DEFAULT_TCP_PORT = 8080
DEFAULT_UDP_PORT = 8080
DEFAULT_HTTP_PORT = 80
COMMAND_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 15.0


def backend_v4(i: int) -> str:
    """IPv4 address of backend `i` (1-based)."""
    return f"198.51.100.{10 + i}"


def backend_v6(i: int) -> str:
    """IPv6 address of backend `i` (1-based)."""
    return f"2001:db8:2::{10 + i}"


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


def _gw_script(lab: Lab) -> str:
    lines = [
        f"link add to-client type veth peer name eth0 netns {lab.client}",
        "link add br-be type bridge forward_delay 0",
    ]
    for i in lab.backend_ids:
        lines.append(f"link add to-be{i} type veth peer name eth0 netns {lab.backend(i)}")
        lines.append(f"link set to-be{i} master br-be up")
        # Hairpin mode, as kubelet sets on its pod bridge: with br_netfilter active (common on
        # hosts that run containers) a DNAT back to a host on the same bridge is bridged, not
        # routed, and a bridge port otherwise never sends a frame back where it came from.
        lines.append(f"link set to-be{i} type bridge_slave hairpin on")
    lines += [
        "link set lo up",
        "link set to-client up",
        "link set br-be up",
        f"addr add {GW_CLIENT_V4}/24 dev to-client",
        f"addr add {GW_CLIENT_V6}/64 dev to-client nodad",
        f"addr add {GW_BACKEND_V4}/24 dev br-be",
        f"addr add {GW_BACKEND_V6}/64 dev br-be nodad",
    ]
    return "\n".join(lines) + "\n"


def _end_script(v4: Sequence[str], v6: str, gw_v4: str, gw_v6: str) -> str:
    lines = ["link set lo up", "link set eth0 up"]
    lines += [f"addr add {a}/24 dev eth0" for a in v4]
    lines += [f"addr add {v6}/64 dev eth0 nodad", f"route add default via {gw_v4}",
              f"route add ::/0 via {gw_v6}"]
    return "\n".join(lines) + "\n"


def _sysctls(gw: bool) -> list[str]:
    no_dad = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
    # The kernel limits ICMP errors per peer (a burst of about 6, then one a second). Tests and
    # benchmarks send many UDP probes from one client to VIPs without backends, whose refusals are
    # ICMP port unreachable; on a real gateway the limit is a feature, in the lab it makes results
    # depend on what ran before.
    no_icmp_limit = ["net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0"]
    gateway = ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", *no_icmp_limit]
    return [*no_dad, *gateway] if gw else no_dad


class Lab:
    """The gateway network of the module docstring, in namespaces named ``glb<pid>-<token>-<role>``.

    Roles: ``client``, ``gw``, ``be1`` .. ``beN``; every method taking `ns` accepts a role or a full
    namespace name. The constructor does no I/O; `up()` (or ``with``) builds the network and
    `close()` (idempotent) stops every process the lab started and deletes every namespace, also on
    exceptions and at interpreter exit; `lifecycle.install_signal_handlers()` extends that to
    SIGTERM/SIGHUP/SIGINT for long-running programs such as the demo.
    """

    def __init__(self, backends: int = 3) -> None:
        if not 1 <= backends <= MAX_BACKENDS:
            raise ValueError(f"Lab: backends: {backends} is not in 1-{MAX_BACKENDS}")
        self.backend_count = backends
        self.lab_id = ""
        self._procs: list[subprocess.Popen[bytes]] = []
        self._backends: dict[int, subprocess.Popen[bytes]] = {}
        self._backend_args: list[str] = []
        self._tmp: Path | None = None
        self._closed = False

    # -- names -----------------------------------------------------------------------------------

    @property
    def backend_ids(self) -> range:
        """1 .. N."""
        return range(1, self.backend_count + 1)

    @property
    def client(self) -> str:
        return self.ns("client")

    @property
    def gw(self) -> str:
        return self.ns("gw")

    def backend(self, i: int) -> str:
        """Namespace name of backend `i` (1-based)."""
        return self.ns(f"be{i}")

    @property
    def namespaces(self) -> list[str]:
        return [self.client, self.gw, *(self.backend(i) for i in self.backend_ids)]

    def ns(self, role: str) -> str:
        """Full namespace name for a role (``client``, ``gw``, ``beI``) or a full name."""
        if not self.lab_id:
            raise LabError("Lab: not up")
        return role if role.startswith(self.lab_id + "-") else f"{self.lab_id}-{role}"

    @property
    def tmpdir(self) -> Path:
        """A private directory, deleted by close(): status files and backend logs live here."""
        if self._tmp is None:
            raise LabError("Lab: not up")
        return self._tmp

    # -- lifecycle -------------------------------------------------------------------------------

    def up(self) -> Lab:
        """Create the namespaces and links. On any failure everything created so far is removed."""
        if self.lab_id:
            raise LabError(f"Lab {self.lab_id}: already up")
        self.lab_id = naming.new_lab_id()
        lifecycle.register(self)
        try:
            self._tmp = Path(tempfile.mkdtemp(prefix=f"{self.lab_id}-"))
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        self._ip([], "".join(f"netns add {ns}\n" for ns in self.namespaces))
        # Before any link exists (links copy `default` when created): no DAD anywhere. nodad on
        # our addresses is not enough: while the gw's link-local address is tentative the kernel
        # sends no neighbour solicitation for *forwarded* IPv6 packets, and the first ~1 s of
        # traffic to the backends would be lost.
        self._wait_all([self._spawn(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                                     *_sysctls(ns == self.gw)], None) for ns in self.namespaces])
        self._ip(["-n", self.gw], _gw_script(self))
        self._wait_all([
            self._spawn_ip(["-n", self.client], _end_script(
                [CLIENT_V4, CLIENT_V4_OUTSIDE], CLIENT_V6, GW_CLIENT_V4, GW_CLIENT_V6)),
            *(self._spawn_ip(["-n", self.backend(i)], _end_script(
                [backend_v4(i)], backend_v6(i), GW_BACKEND_V4, GW_BACKEND_V6)) for i in self.backend_ids),
        ])

    def _wait_all(self, pending: list[tuple[subprocess.Popen[str], str]]) -> None:
        """Wait for commands started together: in parallel, as each `ip` costs a few milliseconds."""
        for proc, what in pending:
            _, err = proc.communicate(timeout=COMMAND_TIMEOUT_S)
            if proc.returncode != 0:
                raise LabError(f"Lab {self.lab_id}: {what} failed: {err.strip()}")

    def _spawn_ip(self, opts: list[str], script: str) -> tuple[subprocess.Popen[str], str]:
        return self._spawn(["ip", *opts, "-batch", "-"], script)

    def _spawn(self, argv: list[str], script: str | None) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdin is not None
        if script is not None:
            proc.stdin.write(script)
        proc.stdin.close()
        proc.stdin = None  # communicate() must not flush the closed pipe
        return proc, " ".join(argv)

    def _ip(self, opts: list[str], script: str) -> None:
        proc, what = self._spawn_ip(opts, script)
        _, err = proc.communicate(timeout=COMMAND_TIMEOUT_S)
        if proc.returncode != 0:
            raise LabError(f"Lab {self.lab_id}: {what} failed: {err.strip()}\n{script}")

    def close(self) -> None:
        """Stop every process the lab started, then delete every namespace it created. Idempotent."""
        if self._closed or not self.lab_id:
            return
        self._closed = True
        with lifecycle.signals_deferred():
            for proc in self._procs:
                stop_process(proc)
            prefix = self.lab_id + "-"
            naming.delete_namespaces([n for n in naming.list_namespaces() if n.startswith(prefix)])
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
            lifecycle.unregister(self)

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands --------------------------------------------------------------------------------

    def run(self, ns: str, argv: Sequence[str], *, input: str | None = None, check: bool = True,
            timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside namespace `ns` and wait; text output is captured. With `check`, a
        non-zero exit raises LabError quoting stderr."""
        cmd = ["ip", "netns", "exec", self.ns(ns), *argv]
        done = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise LabError(f"Lab {self.lab_id}: {' '.join(cmd)} exited {done.returncode}: "
                           f"{done.stderr.strip()}")
        return done

    def popen(self, ns: str, argv: Sequence[str], *, stdin: int | IO[Any] | None = subprocess.PIPE,
              stdout: int | IO[Any] | None = subprocess.PIPE,
              stderr: int | IO[Any] | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        """Start `argv` inside namespace `ns` in its own process group; close() stops it (the
        whole group) if it is still running. Streams are binary."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(ns), *argv], stdin=stdin, stdout=stdout,
                                stderr=stderr, start_new_session=True)
        self._procs.append(proc)
        return proc

    def python(self, ns: str, module: str, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
        """`popen` of ``python -m module args`` with this interpreter (so the venv's packages)."""
        return self.popen(ns, [sys.executable, "-m", module, *args], **kw)

    # -- backends --------------------------------------------------------------------------------

    def status_file(self, i: int) -> Path:
        """The file backend `i` reads its HTTP status from (absent: --http-status, i.e. 200)."""
        return self.tmpdir / f"be{i}.status"

    def set_backend_status(self, i: int, status: int | None) -> None:
        """Make backend `i` answer HTTP requests with `status` from now on (None: back to 200)."""
        path = self.status_file(i)
        if status is None:
            path.unlink(missing_ok=True)
        else:
            tmp = path.with_suffix(".tmp")  # rename: the server never reads a half-written file
            tmp.write_text(f"{status}\n")
            tmp.replace(path)

    def backend_log(self, i: int) -> str:
        """What backend `i` wrote to stderr (for failure messages)."""
        path = self.tmpdir / f"be{i}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_backends(self, *, tcp: int | None = DEFAULT_TCP_PORT, udp: int | None = DEFAULT_UDP_PORT,
                       http: int | None = DEFAULT_HTTP_PORT, http_status: int = 200) -> None:
        """Start a `backend_server` in every backend namespace and wait until all listen.
        A port of None disables that service. The ports are remembered for `start_backend`."""
        self._backend_args = [f"--http-status={http_status}"]
        for flag, port in (("--tcp", tcp), ("--udp", udp), ("--http", http)):
            if port is not None:
                self._backend_args.append(f"{flag}={port}")
        started = [(i, self._launch_backend(i)) for i in self.backend_ids]
        for i, proc in started:
            self._wait_ready(i, proc)

    def start_backend(self, i: int) -> None:
        """(Re)start backend `i` with the ports of the last `start_backends` and wait until it listens."""
        if not self._backend_args:
            raise LabError(f"Lab {self.lab_id}: start_backends() first")
        if self.backend_running(i):
            raise LabError(f"Lab {self.lab_id}: be{i} is already running")
        self._wait_ready(i, self._launch_backend(i))

    def kill_backend(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Stop backend `i` (default SIGKILL, like a crash) and wait until it is gone: new
        connections to it are refused from then on."""
        proc = self._backends.pop(i, None)
        if proc is not None:
            stop_process(proc, sig=sig)

    def backend_running(self, i: int) -> bool:
        proc = self._backends.get(i)
        return proc is not None and proc.poll() is None

    def _launch_backend(self, i: int) -> subprocess.Popen[bytes]:
        if not 1 <= i <= self.backend_count:
            raise LabError(f"Lab {self.lab_id}: no backend {i} (1-{self.backend_count})")
        with open(self.tmpdir / f"be{i}.log", "ab") as log:
            # --watch-stdin: the server exits when this process dies and the pipe closes.
            proc = self.python(self.backend(i), "gatelb.lab.backend_server", f"--name=be{i}",
                               f"--status-file={self.status_file(i)}", "--watch-stdin",
                               *self._backend_args, stderr=log)
        self._backends[i] = proc
        return proc

    def _wait_ready(self, i: int, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        try:
            line = LineReader(proc.stdout.fileno()).readline(READY_TIMEOUT_S)
        except TimeoutError:
            line = None
        if line != "ready":
            raise LabError(f"Lab {self.lab_id}: be{i} did not become ready: {self.backend_log(i)}")

    # -- client ----------------------------------------------------------------------------------

    def connect_many(self, proto: str, target: str, port: int, count: int = 1, *, source: str | None = None,
                     timeout: float = 2.0, concurrency: int = 8, first_port: int | None = None) -> ClientResult:
        """From the client namespace, make `count` new connections (`proto`: tcp, udp, http) to
        target:port, `concurrency` at a time, each limited to `timeout` s; see `ClientResult`.
        `source` binds the client side, e.g. to CLIENT_V4_OUTSIDE. `first_port` (tcp): attempt i
        from source port first_port + i, reusable by a later call (see gatelb.lab.client)."""
        args = [sys.executable, "-m", "gatelb.lab.client", proto, f"--target={target}", f"--port={port}",
                f"--count={count}", f"--timeout={timeout}", f"--concurrency={concurrency}"]
        if source:
            args.append(f"--source={source}")
        if first_port is not None:
            args.append(f"--first-port={first_port}")
        limit = 15 + timeout * (count // max(1, concurrency) + 1)
        done = self.run("client", args, timeout=limit)
        lines = done.stdout.strip().splitlines()
        if not lines:
            raise LabError(f"Lab {self.lab_id}: the client printed nothing: {done.stderr.strip()}")
        return ClientResult.from_json(lines[-1])

    def start_client(self, proto: str, target: str, port: int, count: int, *, rate: float | None = None,
                     source: str | None = None, timeout: float = 2.0) -> RunningClient:
        """Like `connect_many`, but paced at `rate` attempts/s (each recording its start time) and in
        the background: returns at once; `.result()` waits for the `ClientResult`. `proto` may also
        be ``udpflow``: one UDP socket sending `count` datagrams (see `gatelb.lab.client`)."""
        args = [f"--target={target}", f"--port={port}", f"--count={count}", f"--timeout={timeout}"]
        if rate is not None:
            args.append(f"--rate={rate}")
        if source:
            args.append(f"--source={source}")
        proc = self.python("client", "gatelb.lab.client", proto, *args, stdin=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
        return RunningClient(proc, 15 + timeout + count / (rate or 10.0))

    def hold(self, target: str, port: int, *, source: str | None = None,
             timeout: float = 2.0) -> HeldConnection:
        """Open one TCP connection from the client namespace and keep it; returns once the backend
        greeted (raises `ConnectionLost` if it did not). Closed by its close() or by the lab's."""
        args = ["hold", f"--target={target}", f"--port={port}", f"--timeout={timeout}"]
        if source:
            args.append(f"--source={source}")
        conn = HeldConnection(self.python("client", "gatelb.lab.client", *args), timeout)
        try:
            conn.wait_connected()
        except BaseException:
            conn.close()
            raise
        return conn
