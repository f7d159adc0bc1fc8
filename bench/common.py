"""Shared instruments for the benchmarks: machine facts, repeated runs, scratch namespaces,
process measurement (wall time, CPU, peak RSS) and the results writer.

Everything that touches the network does so inside namespaces created here (names start with
`glbb`) and deleted on the way out, even on failure.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
PYTHON = sys.executable


def _export_repo_path() -> None:
    """Processes we start (`python -m bench.rss_wrapper`, `-m bench.connprobe` in lab namespaces)
    import the bench package whatever their working directory."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *parts])


_export_repo_path()


# ---------------------------------------------------------------------------------------------
# Machine


def _first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _git_revision() -> str:
    rev = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return f"{rev}{'+dirty' if dirty else ''}"


def machine_info() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_mib": _mem_total_mib(),
        "kernel": platform.release(),
        "nft": _first_line(["nft", "--version"]),
        "iptables": _first_line(["iptables", "--version"]),
        "python": platform.python_version(),
        "git": _git_revision(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def machine_line(info: dict[str, Any]) -> str:
    return (f"{info['cores']} cores ({info['cpu']}), {info['memory_mib']} MiB, kernel {info['kernel']}, "
            f"{info['nft']}, {info['iptables']}, Python {info['python']}, gatelb {info['git']}")


# ---------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class Stats:
    median: float
    min: float
    max: float
    n: int
    values: tuple[float, ...] = ()

    def fmt(self, unit: str = "s", digits: int = 3) -> str:
        if self.n == 0:
            return "n/a"
        if self.n == 1:
            return f"{self.median:.{digits}f} {unit}".strip()
        return f"{self.median:.{digits}f} ({self.min:.{digits}f}-{self.max:.{digits}f}) {unit}".strip()


def summarize(values: Sequence[float]) -> Stats:
    if not values:
        return Stats(float("nan"), float("nan"), float("nan"), 0)
    return Stats(statistics.median(values), min(values), max(values), len(values), tuple(values))


def repeat(fn: Callable[[], float], times: int) -> Stats:
    """Run `fn` (which returns one measurement) `times` times."""
    return summarize([fn() for _ in range(times)])


def best_time(fn: Callable[[], object], repeats: int, before: Callable[[], object] = lambda: None) -> float:
    """The fastest of `repeats` timed calls of `fn`, each after an untimed `before()` (a cache
    cleared, a garbage collection), in seconds."""
    times = []
    for _ in range(repeats):
        before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def ratio(a: float, b: float) -> str:
    if not b or b != b or a != a:
        return "n/a"
    return f"{a / b:.2f}x"


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass
class RunResult:
    """One finished process: wall time as seen from here, CPU and peak RSS from the kernel (wait4)."""

    cmd: list[str]
    rc: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kib: int  # the largest RSS of the process or any descendant it waited for
    stdout: str
    stderr: str

    def check(self) -> RunResult:
        if self.rc != 0:
            raise RuntimeError(f"{' '.join(self.cmd)} exited {self.rc}:\n{self.stderr[-4000:]}")
        return self


def netns_prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


TIME = "/usr/bin/time"


def run_measured(cmd: Sequence[str], *, netns: str | None = None, timeout_s: float = 900.0,
                 env: dict[str, str] | None = None, stdin_path: str | None = None) -> RunResult:
    """Run a command to completion and measure it.

    Peak RSS and CPU come from GNU time (`/usr/bin/time -f`), not from our own wait4: a process
    spawned from Python starts life with vfork, and Linux carries the *parent's* high-water RSS
    into the child's ru_maxrss across exec, so wait4 here would report at least this harness's
    own peak (hundreds of MB after generating a 10,000-service ruleset). time forks from a tiny
    process, so its child's figure is the command's own. `ip netns exec` execs the command in
    place, so the measured process IS the command (plus any children it waited for).
    """
    with tempfile.TemporaryDirectory(prefix="glbb-run-") as tmp:
        usage_path = os.path.join(tmp, "usage")
        full = [*netns_prefix(netns), *cmd]
        wrapped = [TIME, "-f", "%M %U %S", "-o", usage_path, *full] if os.path.exists(TIME) else full
        out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        with open(out_path, "wb") as out, open(err_path, "wb") as err, \
                open(stdin_path or os.devnull, "rb") as stdin:
            start = time.perf_counter()
            proc = subprocess.Popen(wrapped, stdout=out, stderr=err, stdin=stdin,
                                    env={**os.environ, **(env or {})})
            # A blocking wait: Popen.wait(timeout=...) polls with sleeps of up to 50 ms, which
            # quantises short wall times. The timer enforces the limit instead.
            killer = threading.Timer(timeout_s, proc.kill)
            killer.start()
            try:
                rc = proc.wait()
            finally:
                killer.cancel()
            wall = time.perf_counter() - start
            if rc == -signal.SIGKILL and wall >= timeout_s:
                raise RuntimeError(f"{' '.join(full)} did not finish within {timeout_s:.0f} s")
        maxrss, user, system = _read_usage(usage_path)
        stdout, stderr = (Path(f).read_text(errors="replace") for f in (out_path, err_path))
        return RunResult(full, rc, wall, user, system, maxrss, stdout, stderr)


def _read_usage(path: str) -> tuple[int, float, float]:
    """GNU time's "%M %U %S" line (the last line: earlier ones may say 'Command exited with ...')."""
    try:
        last = Path(path).read_text().strip().splitlines()[-1].split()
        return int(last[0]), float(last[1]), float(last[2])
    except (OSError, IndexError, ValueError):
        return 0, float("nan"), float("nan")


def gatelb_cmd(*args: str) -> list[str]:
    """The gatelb command as this interpreter runs it (same code as the `gatelb` console script)."""
    return [PYTHON, "-m", "gatelb.cli.main", *args]


def gatelb_measured_cmd(rusage_json: str, *args: str) -> list[str]:
    """gatelb run through bench.rss_wrapper, which records the gatelb process's OWN peak RSS
    (RUSAGE_SELF) apart from nft's (RUSAGE_CHILDREN)."""
    return [PYTHON, "-m", "bench.rss_wrapper", rusage_json, *args]


def iptables_restore() -> tuple[str, str]:
    """(path, variant) of the iptables-restore we load the iptables reference layout with.

    Debian's default `iptables` is the nft variant (iptables-nft), which is what a kube-proxy node
    runs today, so it comes first; legacy only if the nft variant is missing.
    """
    for name, variant in (("iptables-nft-restore", "nft"), ("iptables-legacy-restore", "legacy")):
        path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
        if path:
            return path, variant
    raise RuntimeError("neither iptables-nft-restore nor iptables-legacy-restore is installed")


# ---------------------------------------------------------------------------------------------
# Namespaces


def unique_name(prefix: str = "glbb") -> str:
    # /run/netns names and interface names stay short: prefix + 8 hex digits.
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@contextmanager
def scratch_netns(prefix: str = "glbb") -> Iterator[str]:
    """A fresh, empty network namespace with `lo` up; always deleted afterwards."""
    name = unique_name(prefix)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def wait_quiet(max_s: float = 10.0, busy_below: float = 0.35, window_s: float = 0.25) -> float:
    """Wait until the machine's CPUs are mostly idle (or `max_s` passed); returns the time waited.

    Deleting a namespace hands its conntrack entries, sockets and rules to a kernel worker that keeps
    running after `ip netns del` returns; a scenario measured right after a big teardown would pay
    for it. Other people's work on this shared machine can keep it busy: hence the bound.
    """
    start = time.monotonic()
    while time.monotonic() - start < max_s:
        b0, t0 = _cpu_times()
        time.sleep(window_s)
        b1, t1 = _cpu_times()
        if t1 > t0 and (b1 - b0) / (t1 - t0) < busy_below:
            break
    return time.monotonic() - start


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP end a benchmark like Ctrl-C does: through the `finally` blocks, so daemons
    are stopped and scratch namespaces deleted. (A background job of a non-interactive shell
    ignores SIGINT, so SIGTERM is how one stops it.)"""
    def _raise(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("this benchmark needs root (it creates network namespaces)")


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |",
                 "|" + "|".join("---" for _ in self.headers) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"


class Results:
    """Collects figures and tables of one benchmark run; writes JSON + markdown under bench/results/."""

    def __init__(self, name: str, argv: Sequence[str] | None = None) -> None:
        self.name = name
        self.machine = machine_info()
        self.command = " ".join(argv if argv is not None else [Path(sys.argv[0]).name, *sys.argv[1:]])
        self.data: dict[str, Any] = {}
        self.tables: list[Table] = []
        self.load: list[float] = []

    def sample_load(self) -> None:
        """Note the 1-minute load average: this machine has 2 cores shared with other people's work,
        and a figure taken while the load was high deserves less trust."""
        self.load.append(os.getloadavg()[0])

    def table(self, title: str, headers: list[str], note: str = "") -> Table:
        t = Table(title, headers, note=note)
        self.tables.append(t)
        return t

    def markdown(self) -> str:
        head = (f"## {self.name}\n\nMachine: {machine_line(self.machine)}\n\n"
                f"Command: `{self.command}`\n\n")
        if self.load:
            head += (f"Load average (1 min) while measuring: {min(self.load):.2f}-{max(self.load):.2f} "
                     f"({self.machine['cores']} cores)\n\n")
        return head + "\n".join(t.markdown() for t in self.tables)

    def write(self, results_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
        results_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = results_dir / f"{self.name}-{stamp}"
        payload = {"name": self.name, "machine": self.machine, "command": self.command, "loadavg": self.load,
                   "data": _jsonable(self.data), "tables": [asdict(t) for t in self.tables]}
        json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
        md_path.write_text(self.markdown())
        return json_path, md_path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Stats):
        return {"median": obj.median, "min": obj.min, "max": obj.max, "n": obj.n, "values": list(obj.values)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def log(msg: str) -> None:
    """Progress on stderr, so stdout carries only the tables."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


_SIZE = re.compile(r"^\d+(k)?$")


def parse_sizes(text: str) -> list[int]:
    """'100,1000,10k' -> [100, 1000, 10000]."""
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        if not _SIZE.match(part):
            raise ValueError(f"not a size: {part!r}")
        sizes.append(int(part[:-1]) * 1000 if part.endswith("k") else int(part))
    return sizes


def replace_file(path: Path, text: str) -> float:
    """Write `text` beside `path` (a dot file: the file source ignores those), then rename it into
    place, as editors and ConfigMap updates do; returns time.time() just before the rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    t0 = time.time()
    os.replace(tmp, path)
    return t0
