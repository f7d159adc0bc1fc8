"""Prometheus metrics and readiness of `gatelb run`, fed by the reconciler.

    Reconciler --set(SyncedState)--> Metrics   (consumer: which backends exist, pools)
               --round_done/failed-> Metrics   (observer: sync durations, errors, readiness)
    HealthMonitor --probe results, transitions--> Metrics
    scrape: Metrics.render() reads the kernel's counter sets once (kernel/nlcounters.py)

Series about the daemon itself (sync, pools, health checks) are prometheus-client metrics in our
own registry. The per-backend series are written by `_BackendSeries` in the same text format:
at 10,000 load balancers x 10 backends they are 500,000 samples, which prometheus-client's
generic exposition formats in about 4 s; here each backend's label text is built once when a
sync changes it, and a scrape formats only the numbers that moved (docs/observability.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gatelb.agent.reconciler import Reconciler, RoundReport
from gatelb.dataplane.layout import COUNTER_SETS, FAMILY_SETS, Role, counter_shard
from gatelb.health.monitor import HealthChange, HealthMonitor, TargetKey
from gatelb.health.probes import ProbeResult
from gatelb.kernel.counters import RawCounts, counter_key
from gatelb.kernel.nlcounters import RawDump, dump_raw
from gatelb.model import HealthCheck, IPAddress, LoadBalancer, Service, SyncedState

# The `*_created` series double every counter's size and say nothing a restart counter would not.
disable_created_metrics()  # type: ignore[no-untyped-call]

# /healthz turns 503 when a change has waited longer than this for a successful sync.
DEFAULT_HEALTHZ_TIMEOUT_S = 30.0
SYNC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PROBE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

Prober = Callable[[IPAddress, int, HealthCheck], Awaitable[ProbeResult]]
Problems = Callable[[], list[str]]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass(slots=True)
class _Row:
    """One backend of one load balancer: its label text, where to find its numbers, and the
    lines of the last scrape (most backends' numbers do not change between two scrapes: their
    lines are reused, not formatted again)."""

    labels: str  # lb="...",backend="..."
    flows: str  # counter set names (family and shard): client -> backend
    replies: str  # backend -> client
    conns: str
    key: bytes  # raw counter key
    target: TargetKey
    serving: bool
    new: int = -1
    flow: tuple[int, int] = (-1, -1)
    reply: tuple[int, int] = (-1, -1)
    up: int = -1
    new_line: str = ""
    packets_line: str = ""  # both directions' lines
    bytes_line: str = ""
    up_line: str = ""


def _rows(name: str, lb: LoadBalancer, svc: Service | None) -> list[_Row]:
    if svc is None:
        return []  # not programmed: the kernel has no counters for it
    serving = {b.key for b in svc.backends}
    sets = FAMILY_SETS[svc.vip.version]
    lb_label = _escape(name)
    rows = []
    for b in lb.backends:
        shard = counter_shard(b.address)
        rows.append(_Row(f'lb="{lb_label}",backend="{b}"', sets.flows[shard], sets.replies[shard], sets.conns[shard],
                         counter_key(svc.vip, svc.protocol, b.address, b.port), TargetKey(name, b.address, b.port),
                         b.key in serving))
    return rows


def _info_line(name: str, svc: Service, pool: str | None) -> str:
    vip = f"[{svc.vip}]" if svc.vip.version == 6 else str(svc.vip)
    return (f'gatelb_lb_info{{lb="{_escape(name)}",frontend="{vip}:{svc.port}",protocol="{svc.protocol.value}",'
            f'algorithm="{svc.algorithm.value}",pool="{_escape(pool or "")}"}} 1\n')


_HEADERS = {
    "up": ("gatelb_backend_up", "gauge",
           "1 while the backend passes its health check (or is not checked), else 0"),
    "serving": ("gatelb_backend_serving", "gauge",
                "1 while the backend takes new connections (up, weight > 0, not draining), else 0"),
    "new": ("gatelb_backend_new_connections_total", "counter", "New connections sent to the backend (kernel counter)"),
    "packets": ("gatelb_backend_packets_total", "counter",
                "Packets of the backend's connections; direction in: client to backend, out: backend to client "
                "(kernel counter)"),
    "bytes": ("gatelb_backend_bytes_total", "counter",
              "Bytes (IP packets, headers included) of the backend's connections; direction in: client to backend, "
              "out: backend to client (kernel counter)"),
    "info": ("gatelb_lb_info", "gauge", "One per programmed load balancer: its frontend, protocol, algorithm, pool"),
}


def _header(kind: str) -> str:
    name, typ, text = _HEADERS[kind]
    return f"# HELP {name} {text}\n# TYPE {name} {typ}\n"


class _BackendSeries:
    """The per-backend rows, rebuilt only for the load balancers a sync changed; a scrape
    formats only the numbers that moved since the previous one."""

    def __init__(self) -> None:
        # Two locks: set() runs on the event loop and must never wait for a scrape in progress.
        self._handoff = threading.Lock()  # guards _state and _dirty, held for an assignment
        self._lock = threading.Lock()  # one scrape at a time updates the rows and their lines
        self._state: SyncedState | None = None
        self._dirty: set[str] | None = None  # None: everything
        self._rows: dict[str, list[_Row]] = {}
        self._flat: list[_Row] = []
        self._groups: dict[str, list[_Row]] = {}  # flows set name (family and shard) -> its rows
        # Per group, the digests of its three sets when its rows were last updated: a shard whose
        # counters did not move since is not gone over again (its lines are current).
        self._seen: dict[str, tuple[bytes | None, ...]] = {}
        # Text that changes only with a sync: the serving and info series.
        self._static = ""

    def set(self, state: SyncedState) -> None:
        with self._handoff:
            if state.changed is None or self._state is None:
                self._dirty = None
            elif self._dirty is not None:
                self._dirty |= state.changed
            self._state = state

    def _current(self) -> list[_Row]:
        """Called with the lock held."""
        state, dirty = self._state, self._dirty
        if state is None or (dirty is not None and not dirty):
            return self._flat
        self._dirty = set()
        if dirty is None:
            self._rows = {}
        for name in state.load_balancers.keys() if dirty is None else dirty:
            lb = state.load_balancers.get(name)
            if lb is None:
                self._rows.pop(name, None)
            else:
                self._rows[name] = _rows(name, lb, state.services.get(name))
        names = sorted(self._rows)
        self._flat = [r for n in names for r in self._rows[n]]
        self._seen = {}  # rows rebuilt: their numbers are not known yet
        self._groups = {layout.name: [] for layout in COUNTER_SETS if layout.role is Role.FLOWS}
        for r in self._flat:
            self._groups[r.flows].append(r)
        serving = "".join(f"gatelb_backend_serving{{{r.labels}}} {1 if r.serving else 0}\n" for r in self._flat)
        info = "".join(_info_line(n, state.services[n], state.pool_of.get(n)) for n in names if n in state.services)
        self._static = _header("serving") + serving + _header("info") + info
        return self._flat

    def render(self, parts: Iterable[RawDump], up: Callable[[TargetKey], bool] | None) -> str:
        """`parts`: the kernel's counter sets, each part holding whole shards (the three sets of
        one family and shard). One part with every set is the rule: formatting a shard while
        the kernel dumps the next ones was measured slower (the dump threads, which release
        the GIL for every message, wait for the formatting thread to give it back: up to the
        5 ms switch interval each time), docs/benchmarks.md, Observability."""
        with self._lock:
            rows = self._current()
            groups = self._groups
            pending = set(groups)
            for part in parts:
                for name in [n for n in pending if n in part.sets]:
                    pending.discard(name)
                    rows_of = groups[name]
                    first = rows_of[0] if rows_of else None
                    seen = None if first is None else tuple(
                        part.digests.get(n) for n in (first.flows, first.replies, first.conns))
                    if seen is not None and None not in seen and self._seen.get(name) == seen:
                        self._update_up(rows_of, up)  # the kernel's numbers of this shard did not move
                        continue
                    self._update(rows_of, part.sets, up)
                    if seen is not None and None not in seen:
                        self._seen[name] = seen
            for name in pending:  # not in the kernel (no table): zeros
                self._seen.pop(name, None)
                self._update(groups[name], {}, up)
            return "".join((
                _header("up"), "".join([r.up_line for r in rows]), self._static,
                _header("new"), "".join([r.new_line for r in rows]),
                _header("packets"), "".join([r.packets_line for r in rows]),
                _header("bytes"), "".join([r.bytes_line for r in rows])))

    @staticmethod
    def _update_up(rows: list[_Row], up: Callable[[TargetKey], bool] | None, fresh: bool = False) -> None:
        """`up` None: no health checks, every backend is up (only fresh rows need their line)."""
        if up is None and not fresh:
            return
        for r in rows:
            is_up = 1 if up is None or up(r.target) else 0
            if is_up != r.up:
                r.up = is_up
                r.up_line = f"gatelb_backend_up{{{r.labels}}} {is_up}\n"

    @staticmethod
    def _update(rows: list[_Row], sets: dict[str, RawCounts], up: Callable[[TargetKey], bool] | None) -> None:
        """New lines for the rows (one shard's) whose numbers moved."""
        if not rows:
            return
        empty: RawCounts = {}
        zero = (0, 0)
        first = rows[0]
        flows, replies, conns = (sets.get(first.flows, empty), sets.get(first.replies, empty),
                                 sets.get(first.conns, empty))
        for r in rows:
            key = r.key
            new = conns.get(key, zero)[0]
            if new != r.new:
                r.new = new
                r.new_line = f"gatelb_backend_new_connections_total{{{r.labels}}} {new}\n"
            flow = flows.get(key, zero)
            reply = replies.get(key, zero)
            if flow != r.flow or reply != r.reply:
                r.flow, r.reply = flow, reply
                r.packets_line = (f'gatelb_backend_packets_total{{{r.labels},direction="in"}} {flow[0]}\n'
                                  f'gatelb_backend_packets_total{{{r.labels},direction="out"}} {reply[0]}\n')
                r.bytes_line = (f'gatelb_backend_bytes_total{{{r.labels},direction="in"}} {flow[1]}\n'
                                f'gatelb_backend_bytes_total{{{r.labels},direction="out"}} {reply[1]}\n')
        _BackendSeries._update_up(rows, up, fresh=True)


class _PoolCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._metrics.state
        total = GaugeMetricFamily("gatelb_pool_addresses_total", "Addresses in the pool", labels=["pool"])
        used = GaugeMetricFamily("gatelb_pool_addresses_in_use", "Addresses of the pool held by load balancers",
                                 labels=["pool"])
        lbs = GaugeMetricFamily("gatelb_load_balancers", "Load balancers, by whether the kernel serves them",
                                labels=["programmed"])
        if state is not None:
            in_use: dict[str, set[IPAddress]] = {}
            for name, pool_name in state.pool_of.items():
                ip = state.addresses.get(name)
                if pool_name is not None and ip is not None:
                    in_use.setdefault(pool_name, set()).add(ip)  # shared addresses count once
            for pool in state.pools:
                total.add_metric([pool.name], sum(r.size for r in pool.ranges))
                used.add_metric([pool.name], len(in_use.get(pool.name, ())))
            lbs.add_metric(["true"], len(state.services))
            lbs.add_metric(["false"], len(state.load_balancers) - len(state.services))
        yield total
        yield used
        yield lbs


def _rfc3339(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class Metrics:
    """Consumer, round observer and health hooks in one; `render()` is the /metrics body and
    `health()` the /healthz verdict. Constructing it does no I/O."""

    def __init__(self, problems: Problems | None = None, healthz_timeout_s: float = DEFAULT_HEALTHZ_TIMEOUT_S,
                 read_kernel: Callable[[], Iterable[RawDump]] = lambda: [dump_raw()]) -> None:
        self._reconciler: Reconciler | None = None
        self._monitor: HealthMonitor | None = None
        self._problems = problems
        self._timeout = healthz_timeout_s
        self._read_kernel = read_kernel
        self.state: SyncedState | None = None
        self.last_ok: float | None = None  # UNIX time of the last successful round
        self.last_error: str | None = None  # the last round's error, None once one succeeded
        self._backends = _BackendSeries()
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.sync_duration = Histogram("gatelb_sync_duration_seconds",
                                       "Rounds that changed the kernel: trigger handled to kernel updated",
                                       ["kind"], buckets=SYNC_BUCKETS, registry=r)
        self.sync_errors = Counter("gatelb_sync_errors", "Rounds whose kernel transaction was refused", registry=r)
        self.sync_last = Gauge("gatelb_sync_last_timestamp_seconds", "UNIX time of the last successful round",
                               registry=r)
        pending = Gauge("gatelb_changes_pending", "Changes (triggers) not yet applied by a successful round",
                        registry=r)
        pending.set_function(lambda: self._reconciler.pending if self._reconciler else 0)
        oldest = Gauge("gatelb_changes_pending_oldest_seconds",
                       "Age of the oldest change not yet applied (0: none)", registry=r)
        oldest.set_function(lambda: max(0.0, time.time() - since) if (since := self._pending_since()) else 0.0)
        self.generation = Gauge("gatelb_sync_generation", "Generation number of the table the kernel serves",
                                registry=r)
        self.probe_duration = Histogram("gatelb_health_probe_duration_seconds", "Health probes, by outcome",
                                        ["check", "result"], buckets=PROBE_BUCKETS, registry=r)
        self.transitions = Counter("gatelb_health_transitions", "Backend health transitions", ["to"], registry=r)
        r.register(_PoolCollector(self))

    def attach(self, reconciler: Reconciler, monitor: HealthMonitor | None) -> None:
        """The daemon's reconciler (pending changes) and health monitor (backend up), made after
        this object because the monitor's prober is `timed()`."""
        self._reconciler, self._monitor = reconciler, monitor
        reconciler.consumers.append(self)
        reconciler.observers.append(self)

    def _pending_since(self) -> float | None:
        return self._reconciler.pending_since if self._reconciler is not None else None

    # -- feeds ---------------------------------------------------------------------------------

    def set(self, state: SyncedState) -> None:
        self.state = state
        self.generation.set(state.generation)
        self._backends.set(state)

    def round_done(self, report: RoundReport, seconds: float) -> None:
        now = time.time()
        self.last_ok, self.last_error = now, None
        self.sync_last.set(now)
        if report.result is not None:
            self.sync_duration.labels("full" if report.result.full else "partial").observe(seconds)

    def round_failed(self, error: str, seconds: float) -> None:
        self.last_error = error
        self.sync_errors.inc()

    def timed(self, prober: Prober) -> Prober:
        """`prober` recording each probe's duration (the health monitor's prober)."""
        async def probe(address: IPAddress, port: int, check: HealthCheck) -> ProbeResult:
            t0 = time.perf_counter()
            result = await prober(address, port, check)
            self.probe_duration.labels(check.type.value, "success" if result.ok else "failure").observe(
                time.perf_counter() - t0)
            return result
        return probe

    def health_changed(self, changes: list[HealthChange]) -> None:
        for c in changes:
            self.transitions.labels(c.status.value).inc()

    # -- scrape and readiness --------------------------------------------------------------------

    def _up(self, key: TargetKey) -> bool:
        if self._monitor is None:
            return True
        try:
            return self._monitor.is_up(key)
        except KeyError:
            return True  # not health-checked (check type none)

    def render(self) -> bytes:
        """The /metrics body. Blocking (a kernel dump): call it in a thread."""
        counters = self._read_kernel()
        up = None if self._monitor is None else self._up  # None: no health checks, all up
        return self._backends.render(counters, up).encode() + generate_latest(self.registry)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """kube-proxy's /healthz: healthy while the last round succeeded and no change has waited
        longer than the timeout; in Kubernetes mode also not while the source has problems."""
        now = time.time()
        since = self._pending_since()
        problems = self._problems() if self._problems is not None else []
        waited = None if since is None else now - since
        reasons = []
        if self.last_error is not None:
            reasons.append(f"the last sync failed: {self.last_error.splitlines()[0][:300]}")
        if waited is not None and waited > self._timeout:
            reasons.append(f"a change has waited {waited:.1f} s for a sync (limit {self._timeout:g} s)")
        reasons.extend(problems)
        body: dict[str, Any] = {
            "lastUpdated": _rfc3339(self.last_ok),
            "currentTime": _rfc3339(now),
            "healthy": not reasons,
            "pendingChanges": self._reconciler.pending if self._reconciler is not None else 0,
            "oldestPendingSince": _rfc3339(since),
            "problems": reasons,
        }
        return not reasons, body
