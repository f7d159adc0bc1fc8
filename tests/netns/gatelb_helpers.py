"""Driving the real `gatelb` command inside a lab's gw namespace, for the acceptance tests.

`Gatelb` runs the one-shot commands (apply, plan, delete, flush, status) as separate processes, the
way a user would, and returns exit code and output; `Daemon` runs `gatelb run` in the background
with JSON logs, lets a test wait for its events, and is always stopped (context manager; the lab
stops it too if a test dies first). `write_atomically` replaces a file the way editors do, so a
watching daemon never reads half a file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatelb.lab.procs import stop_process
from gatelb.lab.topology import DEFAULT_TCP_PORT, Lab, backend_v4, backend_v6

from ..conftest import netns_unavailable

CLI_TIMEOUT_S = 60.0  # generous: a busy 2-core machine can take seconds to start Python
EVENT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class Gatelb:
    """The `gatelb` CLI with one state directory, run in `lab`'s gw namespace."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.state_dir = workdir / "state"
        self.config_dir = workdir / "config"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self._files = 0

    def cli(self, *args: str) -> Outcome:
        argv = [sys.executable, "-m", "gatelb.cli.main", "--state-dir", str(self.state_dir), *args]
        done = self.lab.run("gw", argv, check=False, timeout=CLI_TIMEOUT_S)
        return Outcome(done.returncode, done.stdout, done.stderr)

    def write(self, text: str, name: str | None = None) -> Path:
        """Write a configuration file (a fresh name each time unless `name` is given)."""
        if name is None:
            self._files += 1
            name = f"config-{self._files}.yaml"
        path = self.config_dir / name
        write_atomically(path, text)
        return path

    def apply(self, text: str) -> Outcome:
        return self.cli("apply", "-f", str(self.write(text)))

    def apply_ok(self, text: str) -> str:
        out = self.apply(text)
        assert out.code == 0, f"gatelb apply failed ({out.code}):\n{out.output}"
        return out.stdout

    def plan(self, text: str) -> Outcome:
        return self.cli("plan", "-f", str(self.write(text)))

    def delete(self, text: str) -> Outcome:
        return self.cli("delete", "-f", str(self.write(text)))

    def flush(self) -> Outcome:
        return self.cli("flush")

    def status(self) -> dict[str, Any]:
        out = self.cli("status", "-o", "json")
        assert out.code == 0, f"gatelb status failed ({out.code}):\n{out.output}"
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

    def lb_status(self, name: str) -> dict[str, Any]:
        for lb in self.status()["loadBalancers"]:
            if lb["name"] == name:
                return dict(lb)
        raise AssertionError(f"L4LB {name} is not in `gatelb status`")

    def vip(self, name: str) -> str:
        ip = self.lb_status(name)["frontend"]["ip"]
        assert ip, f"L4LB {name} has no frontend address"
        return str(ip)

    def state_text(self) -> str:
        path = self.state_dir / "state.json"
        return path.read_text() if path.exists() else ""

    # -- the kernel, read directly --------------------------------------------------------------

    def nft(self, *args: str) -> Outcome:
        done = self.lab.run("gw", ["nft", *args], check=False)
        return Outcome(done.returncode, done.stdout, done.stderr)

    def ruleset(self) -> str:
        return self.lab.run("gw", ["nft", "list", "ruleset"]).stdout

    def table(self, *flags: str) -> str:
        """`nft list table inet gatelb` ('' when the table does not exist)."""
        out = self.nft(*flags, "list", "table", "inet", "gatelb")
        return out.stdout if out.code == 0 else ""

    def daemon(self, config: Path, *extra: str, health: bool = False) -> Daemon:
        return Daemon(self, config, list(extra), health=health)

    def kube_daemon(self, kubeconfig: Path, *extra: str, health: bool = False) -> Daemon:
        """`gatelb run --kubeconfig KUBECONFIG` (its `config` is the kubeconfig: no rewrite())."""
        return Daemon(self, kubeconfig, list(extra), health=health, source=["--kubeconfig", str(kubeconfig)])


class Daemon:
    """`gatelb run -f CONFIG --log-format json --no-health` in the gw namespace (or another
    source: Gatelb.kube_daemon).

    Health checks are off unless asked for: these tests are about configuration and the data
    path, and the health tier has its own tests; with them on, a busy machine could mark a backend
    down mid-test. start() again after stop() is a restart with the same state directory (the log
    file is appended to: pass `after=` to wait_event).
    """

    def __init__(self, gatelb: Gatelb, config: Path, extra: list[str], health: bool = False,
                 source: list[str] | None = None) -> None:
        self.gatelb = gatelb
        self.config = config
        self._source = source or ["-f", str(config)]
        self.log_path = gatelb.state_dir.parent / "daemon.log"
        self._extra = extra if health else ["--no-health", *extra]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        if self._proc is not None:
            raise RuntimeError("gatelb run: already started")
        argv = [sys.executable, "-m", "gatelb.cli.main", "--state-dir", str(self.gatelb.state_dir), "run",
                *self._source, "--log-format", "json", *self._extra]
        with open(self.log_path, "ab") as log:
            self._proc = self.gatelb.lab.popen("gw", argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout=10)
            self._proc = None

    def signal(self, sig: int) -> None:
        """Send `sig` to the daemon (`ip netns exec` execs it: the child is gatelb itself)."""
        assert self._proc is not None and self._proc.poll() is None, "gatelb run is not running"
        self._proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        """The exit code, once it has exited (fails after `timeout` s)."""
        assert self._proc is not None
        code = self._proc.wait(timeout)
        self._proc = None
        return code

    def __enter__(self) -> Daemon:
        return self if self._proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # the last line may be half written
        return out

    def wait_event(self, name: str, after: int = 0, timeout: float = EVENT_TIMEOUT_S) -> dict[str, Any]:
        """The first event called `name` among events[after:]; fails after `timeout` s, or at once
        if the daemon exited."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events()[after:]:
                if e.get("event") == name:
                    return e
            if self._proc is None or self._proc.poll() is not None:
                raise AssertionError(f"gatelb run exited before logging {name!r}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"gatelb run did not log {name!r} within {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def rewrite(self, text: str) -> int:
        """Replace the configuration file; returns the event count before, for `wait_event(after=)`."""
        mark = len(self.events())
        write_atomically(self.config, text)
        return mark


@pytest.fixture(scope="module", name="lab")
def module_lab() -> Iterator[Lab]:
    """One lab for a whole test module (import this fixture to use it): building labs per test
    would dominate the run time."""
    with shared_lab() as lab:
        yield lab


@pytest.fixture(name="gl")
def gatelb_cli(lab: Lab, tmp_path: Path) -> Iterator[Gatelb]:
    """The gatelb CLI with a fresh state directory; the gw's table is reset before and after."""
    reset_gw(lab)
    yield Gatelb(lab, tmp_path)
    reset_gw(lab)


def reset_gw(lab: Lab) -> None:
    """Between tests sharing one lab: no gatelb table, no conntrack entries in the gw namespace
    (both belong to the lab, which the tests created)."""
    lab.run("gw", ["nft", "add table inet gatelb; delete table inet gatelb"])
    lab.run("gw", ["conntrack", "-F"], check=False)  # absent tool or empty table: nothing to do


@contextmanager
def shared_lab() -> Iterator[Lab]:
    """One lab for a whole test module (a lab per test would cost more than most tests), with
    TCP and UDP echo backends on 8080 in be1..be3. Tests reset the gw with `reset_gw`."""
    if reason := netns_unavailable():
        pytest.skip(reason)
    with Lab(backends=3) as lab:
        lab.start_backends(http=None)
        yield lab


# -- configuration text ------------------------------------------------------------------------

API = "gatelb.io/v1alpha1"
# The pool every test configuration carries: it covers the VIPs the tests use (203.0.113.0/25 and
# the first addresses of 2001:db8:100::/64) and leaves 203.0.113.128/25 outside every pool.
POOL_V4 = "203.0.113.0/25"
POOL_V6 = "2001:db8:100::/120"


def document(kind: str, name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump({"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": spec},
                          sort_keys=False)


def pool(name: str = "public", addresses: tuple[str, ...] = (POOL_V4, POOL_V6), auto: bool = True) -> str:
    return document("IPPool", name, {"addresses": list(addresses), "autoAssign": auto})


def l4lb(name: str, **spec: Any) -> str:
    """An L4LB document; keyword names are the spec's own (camelCase) field names."""
    return document("L4LB", name, spec)


def config(*docs: str, with_pool: bool = True) -> str:
    """A multi-document file: the standard pool (unless told otherwise) and `docs`."""
    return "---\n".join([pool(), *docs] if with_pool else list(docs))


def backends(weights: tuple[int, ...] = (1, 1, 1), *, v6: bool = False, port: int = DEFAULT_TCP_PORT,
             skip: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Backend entries for be1..beN of the lab (N = len(weights)), leaving out the numbers in `skip`."""
    address = backend_v6 if v6 else backend_v4
    return [{"address": address(i), "port": port, "weight": w}
            for i, w in enumerate(weights, start=1) if i not in skip]
