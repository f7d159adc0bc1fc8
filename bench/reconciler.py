"""The reconciler's measured targets: a real `gatelb run` process in a scratch namespace, in both
modes, at N services x 10 endpoints.

Kubernetes mode (`gatelb run --kubeconfig K --backend-mode pod`) against the API stand-in
(tests/k8s_standin, real HTTP), which runs on a thread of this process that joined the same
namespace (tests/k8s_standin/in_netns.py). The stand-in starts warm: N Services (type
LoadBalancer) and one EndpointSlice of 10 endpoints each, an IPPool, written straight into its
store before gatelb starts.

  - first full sync: process start to the kernel loaded (the `sync` line's wall_time), and to the
    last Service's status written (the stand-in's commit of it);
  - one EndpointSlice changed (one endpoint replaced): the time just before the stand-in commits
    the write (which is before the API call would return) to the daemon's `sync` wall_time;
  - one Service added whose EndpointSlice already exists: the same start, to the `sync` line and
    to the commit of its status, whichever is later;
  - restart over the existing table (nothing changed): process start to the daemon's `ready`
    line (first round over everything finished), the kernel's generation before and after,
    full reloads and API writes during the restart;
  - the daemon's peak RSS (VmHWM) at the end of each run.

File mode (`gatelb run -f DIR`), a directory of N files with one L4LB each:

  - one file changed (a backend replaced) by rename into place: just before the rename to the
    `sync` wall_time;
  - restart as above; peak RSS.

    python -m bench.reconciler                          # N = 1,000 and 10,000, both modes
    python -m bench.reconciler --modes kube --sizes 10000 --changes 200
    python -m bench.reconciler --quick                  # smoke run: N = 50, a few changes
"""

from __future__ import annotations

import argparse
import gc
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    Results,
    exit_on_signals,
    log,
    parse_sizes,
    replace_file,
    require_root,
    run_measured,
    scratch_netns,
    wait_quiet,
)
from bench.logged_daemon import LoggedDaemon
from gatelb.agent.runtime import parse_time

MIB = 1024
API = "gatelb.io/v1alpha1"
POOL = "198.18.0.0/16"
LEASES = "coordination.k8s.io/v1/leases"
TARGETS = {
    "slice_p50_ms": 50.0, "slice_p99_ms": 150.0, "service_add_ms": 200.0,
    "first_kernel_s": 5.0, "first_status_s": 30.0, "restart_s": 3.0, "file_change_ms": 30.0, "rss_mib": 150.0,
}


# ---------------------------------------------------------------------------------------------
# Statistics and the kernel


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def dist(values: list[float], unit: str = "ms", digits: int = 1) -> str:
    if not values:
        return "n/a"
    return (f"p50 {pct(values, 50):.{digits}f}, p99 {pct(values, 99):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f}) {unit}, n={len(values)}")


def dist_json(values: list[float]) -> dict[str, Any]:
    return {"p50": pct(values, 50), "p99": pct(values, 99), "min": min(values, default=float("nan")),
            "max": max(values, default=float("nan")), "n": len(values), "values": values}


def generation_of(ns: str) -> int | None:
    out = run_measured(["nft", "list", "set", "inet", "gatelb", "generation"], netns=ns)
    if out.rc != 0:
        return None
    text = out.stdout.split("elements = {", 1)
    return int(text[1].split("}", 1)[0].strip(), 0) if len(text) == 2 else None


def backends_in_kernel(ns: str, vip: str, port: int, slots: int = 10) -> str:
    """The be4 map's slots of one frontend, as nft prints them."""
    keys = ", ".join(f"{vip} . tcp . {port} . {k}" for k in range(slots))
    return run_measured(["nft", "get", "element", "inet", "gatelb", "be4", f"{{ {keys} }}"], netns=ns).stdout


def frontend_in_kernel(ns: str, vip: str, port: int) -> bool:
    out = run_measured(["nft", "get", "element", "inet", "gatelb", "svc4", f"{{ {vip} . tcp . {port} }}"], netns=ns)
    return out.rc == 0 and vip in out.stdout


def moved_endpoint(r: int) -> str:
    """A replacement endpoint address no service starts with (TEST-NET-3)."""
    return f"203.0.113.{r % 200 + 1}"


# ---------------------------------------------------------------------------------------------
# The daemon


@dataclass
class Restart:
    ready_s: float = float("nan")  # process start to the `ready` line
    synced_s: float = float("nan")  # process start to the `synced` line
    adopted: bool = False
    generation_before: int | None = None
    generation_after: int | None = None
    syncs: int = 0  # sync lines (kernel transactions) during the restart
    full: int = 0
    api_writes: int = -1  # Kubernetes: writes gatelb sent during the restart (-1: file mode)
    rss_kib: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def restart(ns: str, old: LoggedDaemon, args: list[str], state_dir: str, timeout_s: float,
            count_writes: Callable[[], int] | None = None, settle_s: float = 2.0) -> tuple[Restart, LoggedDaemon]:
    """Stop `old`, start the daemon again over the table it left; nothing changed meanwhile."""
    r = Restart()
    t = time.monotonic()
    old.stop()
    log(f"stopped in {time.monotonic() - t:.2f} s")
    r.generation_before = generation_of(ns)
    wait_quiet(5.0)
    writes0 = count_writes() if count_writes else 0
    d = LoggedDaemon(ns, args, state_dir)
    ready = d.wait(lambda e: e.get("event") == "ready", timeout_s, "ready after restart")
    r.ready_s = parse_time(ready["time"]) - d.started
    synced = d.events("synced")
    r.synced_s = parse_time(synced[0]["time"]) - d.started if synced else float("nan")
    time.sleep(settle_s)  # anything the restart would still do (a late sync, status writes) shows up
    r.adopted = bool(d.events("adopted"))
    syncs = d.events("sync")
    r.syncs, r.full = len(syncs), sum(1 for e in syncs if e.get("full"))
    r.generation_after = generation_of(ns)
    if count_writes:
        r.api_writes = count_writes() - writes0
    r.rss_kib = d.peak_rss_kib()
    return r, d


# ---------------------------------------------------------------------------------------------
# Kubernetes mode


def svc_name(i: int) -> str:
    return f"s{i:05}"


def endpoint_addresses(i: int) -> list[str]:
    out = []
    for k in range(10):
        a, b = divmod((i * 10 + k) % 65534 + 1, 256)
        out.append(f"198.19.{a}.{b}")
    return out


def service_body(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "ports": [{"name": "tcp", "port": 80, "protocol": "TCP"}]}}


def slice_body(name: str, addresses: list[str]) -> dict[str, Any]:
    return {"metadata": {"name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]}


class Cluster:
    """The stand-in in the namespace, warm with N Services; notes when each Service's status lands."""

    SVC, SLICE, POOLS, NS = ("v1/services", "discovery.k8s.io/v1/endpointslices", f"{API}/ippools",
                             "v1/namespaces")

    def __init__(self, ns: str) -> None:
        from tests.k8s_standin.in_netns import StandinInNetns

        self.standin = StandinInNetns(ns, crds=True, crd_init_s=0.0, history=200_000)
        self.standin.start()
        self.status_at: dict[str, float] = {}  # Service name -> time.time() its ingress was committed
        self.writes = 0  # gatelb's writes (status, annotations, Events; not the Lease renewals)
        self._harness = False

        async def hook(server: Any, client: Any) -> None:
            store = server.store
            commit = store._commit

            def counted(res: Any, key: tuple[str, str, str], obj: dict[str, Any], kind: str) -> Any:
                out = commit(res, key, obj, kind)
                if not self._harness and res.rid != LEASES:
                    self.writes += 1
                if res.rid == self.SVC and ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress"):
                    self.status_at.setdefault(key[2], time.time())
                return out

            store._commit = counted

        self.call(hook)

    def call(self, fn: Callable[[Any, Any], Any], timeout: float = 600.0) -> Any:
        return self.standin.call(fn, timeout)

    def _write(self, fn: Callable[[Any], Any]) -> Any:
        """Run fn(store) on the stand-in's loop as the harness (not counted as gatelb's writes)."""
        async def go(server: Any, client: Any) -> Any:
            self._harness = True
            try:
                return fn(server.store)
            finally:
                self._harness = False

        return self.call(go)

    def populate(self, n: int) -> None:
        def fill(store: Any) -> None:
            res = store.resources
            store.create(res[self.NS], "", {"metadata": {"name": "gatelb-system"}})
            store.create(res[self.POOLS], "", {"apiVersion": API, "kind": "IPPool", "metadata": {"name": "bench"},
                                               "spec": {"addresses": [POOL]}})
            for i in range(n):
                store.create(res[self.SVC], "default", service_body(svc_name(i)))
                store.create(res[self.SLICE], "default", slice_body(svc_name(i), endpoint_addresses(i)))

        self._write(fill)
        # The stand-in is Python in this process: its own full collections (up to 1.5 s over the
        # event history it keeps) would stall its event loop, and with it the watch events whose
        # delay is measured. A real API server has no such pause; keep the stand-in's out.
        gc.collect()
        gc.freeze()
        gc.disable()

    def ingress(self, name: str) -> str | None:
        def get(store: Any) -> str | None:
            obj = store.objects.get((self.SVC, "default", name)) or {}
            ing = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            return ing[0]["ip"] if ing else None

        return self._write(get)  # type: ignore[no-any-return]

    def replace_slice(self, name: str, addresses: list[str]) -> float:
        """Returns time.time() just before the store commits the write."""
        def put(store: Any) -> float:
            body = slice_body(name, addresses)
            t0 = time.time()
            store.update(store.resources[self.SLICE], "default", f"{name}-1", body, None)
            return t0

        return self._write(put)  # type: ignore[no-any-return]

    def create(self, kind: str, body: dict[str, Any]) -> float:
        def make(store: Any) -> float:
            t0 = time.time()
            store.create(store.resources[kind], "default", body)
            return t0

        return self._write(make)  # type: ignore[no-any-return]

    def kubeconfig(self, path: Path) -> None:
        path.write_text(self.standin.kubeconfig_yaml())

    def close(self) -> None:
        self.standin.close()
        gc.enable()


@dataclass
class KubeFigures:
    n: int
    first_kernel_s: float = float("nan")  # process start -> every Service in the kernel (sync line)
    first_synced_s: float = float("nan")  # process start -> informers synced (lists done)
    first_sync_duration_ms: float = float("nan")  # the daemon's duration_ms of the syncs until then
    first_status_s: float = float("nan")  # process start -> the last Service's status committed
    status_writes: int = 0
    standin_cpu_status_s: float = float("nan")  # this process's CPU (the stand-in) during the status phase
    daemon_cpu_status_s: float = float("nan")
    slice_ms: list[float] = field(default_factory=list)
    slice_daemon_ms: list[float] = field(default_factory=list)  # the daemon's since_trigger_ms
    slice_prepare_ms: list[float] = field(default_factory=list)
    slice_apply_ms: list[float] = field(default_factory=list)
    add_kernel_ms: list[float] = field(default_factory=list)
    add_status_ms: list[float] = field(default_factory=list)
    add_ms: list[float] = field(default_factory=list)  # the later of the two
    add_daemon_ms: list[float] = field(default_factory=list)
    full_resyncs: int = 0
    verified: bool = False
    rss_kib: int = 0
    restart: Restart = field(default_factory=Restart)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in vars(self).items():
            if isinstance(v, list):
                out[k] = dist_json(v)
            elif isinstance(v, Restart):
                out[k] = v.to_json()
            else:
                out[k] = v
        return out


def kube_mode(n: int, changes: int, adds: int, workdir: Path) -> KubeFigures:
    figs = KubeFigures(n)
    with scratch_netns() as ns, tempfile.TemporaryDirectory(prefix="glbb-state-") as state:
        cluster = Cluster(ns)
        d: LoggedDaemon | None = None
        try:
            log(f"kube N={n}: filling the stand-in")
            cluster.populate(n)
            kubeconfig = workdir / f"kubeconfig-{ns}.yaml"
            cluster.kubeconfig(kubeconfig)
            args = ["--kubeconfig", str(kubeconfig), "--backend-mode", "pod"]
            wait_quiet(10.0)
            log(f"kube N={n}: starting gatelb run")
            writes0 = cluster.writes
            cpu0 = time.process_time()
            d = LoggedDaemon(ns, args, state)
            timeout = 60.0 + n * 0.02
            # Not simply the first full sync: before the Lease is ours the daemon is a follower and
            # serves only Services with a status (none yet), so the first load may be empty.
            first = d.wait(lambda e: e.get("event") == "sync" and int(e.get("services", 0)) >= n, timeout,
                           "every Service in the kernel")
            figs.first_kernel_s = float(first["wall_time"]) - d.started
            figs.first_sync_duration_ms = sum(float(e["duration_ms"]) for e in d.events("sync"))
            figs.first_synced_s = parse_time(d.events("synced")[0]["time"]) - d.started
            deadline = time.monotonic() + 120.0 + n * 0.03
            while len(cluster.status_at) < n:
                if time.monotonic() > deadline or d.proc.poll() is not None:
                    raise RuntimeError(f"only {len(cluster.status_at)}/{n} Services got a status")
                time.sleep(0.05)
            figs.first_status_s = max(cluster.status_at.values()) - d.started
            figs.standin_cpu_status_s = time.process_time() - cpu0
            figs.daemon_cpu_status_s = d.cpu_s()
            time.sleep(1.0)
            figs.status_writes = cluster.writes - writes0
            log(f"kube N={n}: kernel {figs.first_kernel_s:.2f} s, every status {figs.first_status_s:.2f} s "
                f"({figs.status_writes} writes)")
            wait_quiet(10.0)

            for r in range(changes):
                i = (r * 7919 + n // 2) % n
                addresses = endpoint_addresses(i)
                addresses[0] = moved_endpoint(r)
                time.sleep(0.1)
                t0 = cluster.replace_slice(svc_name(i), addresses)
                ev = d.wait_sync(t0)
                figs.slice_ms.append((float(ev["wall_time"]) - t0) * 1000)
                figs.slice_daemon_ms.append(float(ev["since_trigger_ms"]))
                figs.slice_prepare_ms.append(float(ev["prepare_ms"]))
                figs.slice_apply_ms.append(float(ev["apply_ms"]))
                figs.full_resyncs += bool(ev.get("full"))
                if r == 0:
                    vip = cluster.ingress(svc_name(i))
                    assert vip is not None
                    got = backends_in_kernel(ns, vip, 80)
                    if moved_endpoint(r) not in got:
                        raise RuntimeError(f"slice change of {svc_name(i)} ({vip}) not in the kernel:\n{got}")
            log(f"kube N={n}: EndpointSlice change {dist(figs.slice_ms)}")

            for j in range(adds):
                name = f"new{j:04}"
                cluster.create(Cluster.SLICE, slice_body(name, endpoint_addresses(n + j)))
                time.sleep(0.3)
                t0 = cluster.create(Cluster.SVC, service_body(name))
                ev = d.wait_sync(t0)
                kernel_ms = (float(ev["wall_time"]) - t0) * 1000
                deadline = time.monotonic() + 30
                while name not in cluster.status_at:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"Service {name} got no status")
                    time.sleep(0.002)
                status_ms = (cluster.status_at[name] - t0) * 1000
                figs.add_kernel_ms.append(kernel_ms)
                figs.add_status_ms.append(status_ms)
                figs.add_ms.append(max(kernel_ms, status_ms))
                figs.add_daemon_ms.append(float(ev["since_trigger_ms"]))
                figs.full_resyncs += bool(ev.get("full"))
                if j == 0:
                    vip = cluster.ingress(name)
                    if vip is None or not frontend_in_kernel(ns, vip, 80):
                        raise RuntimeError(f"added Service {name} ({vip}) not in the kernel")
                time.sleep(0.2)
            log(f"kube N={n}: Service added {dist(figs.add_ms)}")
            figs.verified = True
            figs.rss_kib = d.peak_rss_kib()

            log(f"kube N={n}: restart")
            figs.restart, d = restart(ns, d, args, state, timeout, lambda: cluster.writes)
            figs.rss_kib = max(figs.rss_kib, figs.restart.rss_kib)
            log(f"kube N={n}: restart ready {figs.restart.ready_s:.2f} s, generation "
                f"{figs.restart.generation_before} -> {figs.restart.generation_after}, "
                f"{figs.restart.api_writes} API writes")
        finally:
            if d is not None:
                d.stop()
            cluster.close()
    return figs


# ---------------------------------------------------------------------------------------------
# File mode


def lb_text(i: int, moved: str | None = None) -> str:
    a, b = divmod(i + 1, 256)
    backends = [f"198.19.{a}.{b}:{8080 + k}" for k in range(10)]
    if moved:
        backends[0] = f"{moved}:8080"
    doc = {"apiVersion": API, "kind": "L4LB", "metadata": {"name": f"lb{i}"},
           "spec": {"frontend": {"ip": f"198.18.{a}.{b}", "port": 80}, "backend": backends}}
    return yaml.safe_dump(doc, sort_keys=False)


def lb_vip(i: int) -> str:
    a, b = divmod(i + 1, 256)
    return f"198.18.{a}.{b}"


def make_dir(d: Path, n: int) -> None:
    pool = {"apiVersion": API, "kind": "IPPool", "metadata": {"name": "bench"}, "spec": {"addresses": [POOL]}}
    (d / "00-pool.yaml").write_text(yaml.safe_dump(pool))
    for i in range(n):
        (d / f"lb{i:05}.yaml").write_text(lb_text(i))


@dataclass
class FileFigures:
    n: int
    first_kernel_s: float = float("nan")
    change_ms: list[float] = field(default_factory=list)
    daemon_ms: list[float] = field(default_factory=list)  # since_trigger_ms
    duration_ms: list[float] = field(default_factory=list)
    watch_ms: list[float] = field(default_factory=list)  # rename -> the watcher woke the reconciler
    full_resyncs: int = 0
    verified: bool = False
    rss_kib: int = 0
    restart: Restart = field(default_factory=Restart)

    def to_json(self) -> dict[str, Any]:
        return KubeFigures.to_json(self)  # type: ignore[arg-type]


def file_mode(n: int, changes: int, workdir: Path) -> FileFigures:
    figs = FileFigures(n)
    d = workdir / f"dir-{n}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    make_dir(d, n)
    args = ["-f", str(d)]
    with scratch_netns() as ns, tempfile.TemporaryDirectory(prefix="glbb-state-") as state:
        daemon: LoggedDaemon | None = None
        try:
            wait_quiet(10.0)
            log(f"file N={n}: starting gatelb run -f DIR")
            daemon = LoggedDaemon(ns, args, state)
            first = daemon.wait(lambda e: e.get("event") == "sync" and int(e.get("services", 0)) >= n,
                                60.0 + n * 0.02, "every L4LB in the kernel")
            figs.first_kernel_s = float(first["wall_time"]) - daemon.started
            wait_quiet(10.0)
            for r in range(changes):
                i = (r * 7919 + n // 2) % n
                time.sleep(0.1)
                t0 = replace_file(d / f"lb{i:05}.yaml", lb_text(i, moved_endpoint(r)))
                ev = daemon.wait_sync(t0)
                ms = (float(ev["wall_time"]) - t0) * 1000
                figs.change_ms.append(ms)
                figs.daemon_ms.append(float(ev["since_trigger_ms"]))
                figs.duration_ms.append(float(ev["duration_ms"]))
                figs.watch_ms.append(ms - float(ev["since_trigger_ms"]))
                figs.full_resyncs += bool(ev.get("full"))
                if r == 0:
                    got = backends_in_kernel(ns, lb_vip(i), 80)
                    if moved_endpoint(r) not in got:
                        raise RuntimeError(f"change of lb{i} not in the kernel:\n{got}")
            log(f"file N={n}: one file changed {dist(figs.change_ms)}")
            figs.verified = True
            figs.rss_kib = daemon.peak_rss_kib()
            log(f"file N={n}: restart")
            figs.restart, daemon = restart(ns, daemon, args, state, 60.0 + n * 0.02)
            figs.rss_kib = max(figs.rss_kib, figs.restart.rss_kib)
            log(f"file N={n}: restart ready {figs.restart.ready_s:.2f} s, generation "
                f"{figs.restart.generation_before} -> {figs.restart.generation_after}")
        finally:
            if daemon is not None:
                daemon.stop()
    shutil.rmtree(d, ignore_errors=True)
    return figs


# ---------------------------------------------------------------------------------------------
# Tables


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def restart_cells(r: Restart) -> list[str]:
    moved = r.generation_before != r.generation_after
    return [f"{r.ready_s:.2f} s", f"{r.synced_s:.2f} s", "yes" if r.adopted else "no",
            f"{r.generation_before} -> {r.generation_after}" + (" (moved)" if moved else ""),
            f"{r.syncs} ({r.full} full)", "-" if r.api_writes < 0 else str(r.api_writes)]


RESTART_HEADERS = ["start -> ready", "start -> synced", "adopted", "kernel generation", "syncs (full)",
                   "API writes"]


def tables(res: Results, kube: list[KubeFigures], files: list[FileFigures]) -> None:
    if kube:
        t = res.table("Kubernetes mode: one event to kernel updated (N Services x 10 endpoints, pod backends)",
                      ["N", "EndpointSlice change -> kernel", "daemon since_trigger", "daemon prepare / apply (p50)",
                       "Service added -> kernel", "-> status written", "-> both", "full resyncs", "verified"],
                      note="Milliseconds: p50, p99 (min-max), from just before the stand-in commits the write "
                           "(made in the stand-in's event loop, before the API call would return) to the "
                           "daemon's `sync` wall_time (kernel accepted the transaction), and to the stand-in's "
                           "commit of the Service's status. since_trigger is the daemon's own time from the "
                           "informer event to the kernel.")
        for f in kube:
            t.rows.append([str(f.n), dist(f.slice_ms), dist(f.slice_daemon_ms),
                           f"{pct(f.slice_prepare_ms, 50):.1f} / {pct(f.slice_apply_ms, 50):.1f} ms",
                           dist(f.add_kernel_ms), dist(f.add_status_ms), dist(f.add_ms), str(f.full_resyncs),
                           "yes" if f.verified else "no"])
        t = res.table("Kubernetes mode: first full sync from a warm API, restart, memory",
                      ["N", "start -> informers synced", "start -> every Service in the kernel",
                       "daemon's sync rounds until then",
                       "start -> every status", "gatelb writes", "CPU in status phase: stand-in / gatelb",
                       *[f"restart: {h}" for h in RESTART_HEADERS], "peak RSS (VmHWM)"],
                      note="Seconds from the process start (Popen). In the kernel: the first `sync` line counting N "
                           "services (a first load before the Lease is held can be empty: a follower serves only "
                           "Services "
                           "that have a status). Restart: SIGTERM, then the same command over "
                           "the table it left with nothing changed; `ready` is the daemon's line after its first "
                           "round over every source's complete content; the kernel generation is read with `nft "
                           "list set inet gatelb generation` before the start and 2 s after ready. API writes: "
                           "every write gatelb made (status, annotations, Events; the Lease is not counted) "
                           "during that window.")
        for f in kube:
            t.rows.append([str(f.n), f"{f.first_synced_s:.2f} s", f"{f.first_kernel_s:.2f} s",
                           f"{f.first_sync_duration_ms / 1000:.2f} s", f"{f.first_status_s:.2f} s",
                           str(f.status_writes), f"{f.standin_cpu_status_s:.1f} / {f.daemon_cpu_status_s:.1f} s",
                           *restart_cells(f.restart), f"{f.rss_kib / MIB:.0f} MiB"])
    if files:
        t = res.table("File mode: a directory of N files (one L4LB x 10 backends each), one file changed",
                      ["N", "rename -> kernel", "daemon since_trigger", "daemon duration", "file-watch delay",
                       "full resyncs", "start -> kernel (first)", *[f"restart: {h}" for h in RESTART_HEADERS[:-1]],
                       "peak RSS (VmHWM)", "verified"],
                      note="Milliseconds from just before the rename of the new file into place to the daemon's "
                           "`sync` wall_time: p50, p99 (min-max). The file-watch delay is that minus since_trigger "
                           "(rename to the watcher waking the reconciler).")
        for ff in files:
            t.rows.append([str(ff.n), dist(ff.change_ms), dist(ff.daemon_ms), dist(ff.duration_ms),
                           dist(ff.watch_ms), str(ff.full_resyncs), f"{ff.first_kernel_s:.2f} s",
                           *restart_cells(ff.restart)[:-1], f"{ff.rss_kib / MIB:.0f} MiB",
                           "yes" if ff.verified else "no"])
    t = res.table("Against the targets", ["N", "target", "measured", ""])
    for f in kube:
        r = f.restart
        rows = [
            ("EndpointSlice change p50 < 50 ms", f"{pct(f.slice_ms, 50):.1f} ms",
             pct(f.slice_ms, 50) < TARGETS["slice_p50_ms"]),
            ("EndpointSlice change p99 < 150 ms", f"{pct(f.slice_ms, 99):.1f} ms",
             pct(f.slice_ms, 99) < TARGETS["slice_p99_ms"]),
            ("Service added: status and kernel < 200 ms (p99)", f"p50 {pct(f.add_ms, 50):.1f}, p99 "
             f"{pct(f.add_ms, 99):.1f} ms", pct(f.add_ms, 99) < TARGETS["service_add_ms"]),
            ("kube first sync to the kernel < 5 s", f"{f.first_kernel_s:.2f} s",
             f.first_kernel_s < TARGETS["first_kernel_s"]),
            ("kube first sync: every status < 30 s", f"{f.first_status_s:.2f} s",
             f.first_status_s < TARGETS["first_status_s"]),
            ("kube restart: no reload, generation unchanged, < 3 s",
             f"{r.ready_s:.2f} s, {r.full} full, generation {r.generation_before} -> {r.generation_after}",
             r.ready_s < TARGETS["restart_s"] and r.full == 0 and r.generation_before == r.generation_after),
            ("kube peak RSS < 150 MB", f"{f.rss_kib / MIB:.0f} MiB ({f.rss_kib * 1024 / 1e6:.0f} MB)",
             f.rss_kib * 1024 / 1e6 < TARGETS["rss_mib"]),
        ]
        t.rows += [[str(f.n), what, got, verdict(ok)] for what, got, ok in rows]
    for ff in files:
        r = ff.restart
        rows = [
            ("file: one file changed < 30 ms (p50)", f"p50 {pct(ff.change_ms, 50):.1f}, p99 "
             f"{pct(ff.change_ms, 99):.1f} ms", pct(ff.change_ms, 50) < TARGETS["file_change_ms"]),
            ("file restart: no reload, generation unchanged, < 3 s",
             f"{r.ready_s:.2f} s, {r.full} full, generation {r.generation_before} -> {r.generation_after}",
             r.ready_s < TARGETS["restart_s"] and r.full == 0 and r.generation_before == r.generation_after),
            ("file peak RSS < 150 MB", f"{ff.rss_kib / MIB:.0f} MiB ({ff.rss_kib * 1024 / 1e6:.0f} MB)",
             ff.rss_kib * 1024 / 1e6 < TARGETS["rss_mib"]),
        ]
        t.rows += [[str(ff.n), what, got, verdict(ok)] for what, got, ok in rows]


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000", help="comma-separated N (default 1000,10000)")
    p.add_argument("--modes", default="kube,file", help="kube, file or both (default)")
    p.add_argument("--changes", type=int, default=100, help="EndpointSlice / file changes per N (default 100)")
    p.add_argument("--adds", type=int, default=20, help="Services added per N (default 20)")
    p.add_argument("--quick", action="store_true", help="smoke run: N=50, a few changes")
    p.add_argument("--workdir", type=Path, help="keep generated inputs here (default: a temporary directory)")
    p.add_argument("--profile", type=Path, help="run every daemon under cProfile, writing DIR/gatelb-K.prof "
                                                "(main thread only; the figures are then inflated)")
    p.add_argument("--logs", type=Path, help="keep every daemon's log as DIR/gatelb-PID.log")
    a = p.parse_args(argv)
    require_root()
    if a.profile:
        a.profile.mkdir(parents=True, exist_ok=True)
        LoggedDaemon.profile_dir = LoggedDaemon.log_dir = a.profile
    if a.logs:
        a.logs.mkdir(parents=True, exist_ok=True)
        LoggedDaemon.log_dir = a.logs
    exit_on_signals()
    sizes = [50] if a.quick else parse_sizes(a.sizes)
    changes, adds = (5, 2) if a.quick else (a.changes, a.adds)
    modes = [m for m in a.modes.split(",") if m]
    if set(modes) - {"kube", "file"}:
        p.error("--modes takes kube and/or file")
    shown = argv if argv is not None else sys.argv[1:]
    res = Results("reconciler", ["python -m bench.reconciler", *shown])
    kube: list[KubeFigures] = []
    files: list[FileFigures] = []
    with tempfile.TemporaryDirectory(prefix="glbb-rec-") as tmp:
        workdir = a.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for n in sizes:
            if "kube" in modes:
                res.sample_load()
                kube.append(kube_mode(n, changes, adds, workdir))
                res.sample_load()
            if "file" in modes:
                res.sample_load()
                files.append(file_mode(n, changes, workdir))
                res.sample_load()
    tables(res, kube, files)
    res.data = {"kube": [f.to_json() for f in kube], "file": [f.to_json() for f in files],
                "loadavg_samples": res.load}
    json_path, md_path = res.write()
    print(res.markdown())
    log(f"results: {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
