"""`gatelb run`: the daemon for every mode, composed around the one reconciler.

    sources (file/directory, Kubernetes, or both) -> Reconciler -> kernel
                                                  -> consumers: state record, Kubernetes status, metrics
    health monitor <-> Reconciler (fed before backends are resolved; transitions trigger a round)
    http task: /metrics, /healthz (--metrics-address), /status on <state-dir>/gatelb.sock

This module only wires things together and runs them under one supervisor: a task that dies ends
the process (exit 1) so that the service manager restarts it, and SIGTERM/SIGINT always end it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatelb.agent.client import SOCKET_NAME
from gatelb.agent.engine import DataplaneSync
from gatelb.agent.guard import KernelGuard
from gatelb.agent.lock import StateLocked, TableOwned, state_lock, table_lock
from gatelb.agent.metrics import DEFAULT_HEALTHZ_TIMEOUT_S, Metrics
from gatelb.agent.reconciler import Consumer, Reconciler, run_sources
from gatelb.agent.record import RecordWriter, health_records
from gatelb.agent.runtime import SHUTDOWN_S, event, exit_after, raise_nofile, setup_logging, supervise
from gatelb.agent.server import Server
from gatelb.agent.statefile import StateFileError, StateStore
from gatelb.agent.status import counters_for, live_status
from gatelb.dns.updater import DNSUpdater, Report, SecretLookup
from gatelb.health.feed import HealthFeed
from gatelb.health.monitor import HealthChange, HealthMonitor, TargetKey
from gatelb.health.probes import probe
from gatelb.kernel.addresses import HostAddresses
from gatelb.kernel.conntrack import flush_flows
from gatelb.kernel.nft import Nft, NftCli
from gatelb.kernel.nlcounters import read_generation
from gatelb.model import Backend, IPAddress, SyncedState
from gatelb.sources.base import Source

if TYPE_CHECKING:  # the Kubernetes client library costs about 50 MiB of RSS: file mode never loads it
    from gatelb.announce.l2_speaker import L2Election
    from gatelb.sources.kubernetes.source import KubeSettings


@dataclass
class Parts:
    """What a mode adds to the daemon: its sources, consumers and extra supervised tasks."""

    sources: list[Source] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    tasks: dict[str, Coroutine[Any, Any, Any]] = field(default_factory=dict)
    info: Callable[[], dict[str, Any]] | None = None  # mode-specific facts for the state record
    on_hup: list[Callable[[], None]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # DNS records: Kubernetes Events for conflicts, and Secrets holding TSIG keys (Kubernetes mode).
    dns_report: Report | None = None
    dns_secrets: SecretLookup | None = None
    # L2 ownership decided outside keepalived (Kubernetes: a Lease per VIP); the announcer uses it.
    l2_election: L2Election | None = None
    # Events about announcements (Kubernetes): (load balancers, type, reason, message).
    announce_event: Callable[[tuple[str, ...], str, str, str], None] | None = None
    # An FRR that already runs on the gateway (its vty socket directory): BGP goes through it,
    # gatelb adds only its own part and starts no FRR (`gatelb run --frr-vty-socket`)
    frr_vty_socket: Path | None = None
    # Where a VIP is announced and how, for `gatelb status` (announce.Announcer.where), and
    # extra Prometheus collectors (the BGP/BFD session series)
    announced: Callable[[str | None], dict[str, Any]] | None = None
    collectors: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Endpoints:
    """The daemon's HTTP endpoints (agent/server.py): the metrics address (None: off), the local
    status socket (None: none; tests that drive a Daemon in-process), the /healthz limit."""

    metrics: tuple[str, int] | None = None
    socket: Path | None = None
    healthz_timeout_s: float = DEFAULT_HEALTHZ_TIMEOUT_S


class Daemon:
    def __init__(self, parts: Parts, store: StateStore, nft: Nft, health: bool = True,
                 host_address: Callable[[IPAddress], bool] | None = None,
                 endpoints: Endpoints | None = None) -> None:
        self.parts = parts
        self.store = store
        self.nft = nft
        self.endpoints = endpoints or Endpoints()
        info = parts.info
        self.metrics = Metrics(problems=(lambda: list(info().get("problems") or [])) if info else None,
                               healthz_timeout_s=self.endpoints.healthz_timeout_s)
        self.monitor = HealthMonitor(self._on_health, prober=self.metrics.timed(probe)) if health else None
        self.reconciler = Reconciler(
            parts.sources, DataplaneSync(nft, indexed=True),
            usable=self._usable if self.monitor is not None else None,
            health=HealthFeed(self.monitor) if self.monitor is not None else None,
            flush_udp=flush_flows, host_address=host_address,
        )
        # DNS records (gatelb.dns): a consumer with its own task, idle while no DNSProvider exists.
        self.dns = DNSUpdater(store.path.parent / "dns.json", parts.dns_report, parts.dns_secrets)
        self.writer = RecordWriter(store, tuple(s.name for s in parts.sources), self.monitor, self._info)
        self.reconciler.consumers += [self.writer, *parts.consumers, self.dns]
        self.metrics.attach(self.reconciler, self.monitor)
        for collector in parts.collectors:
            self.metrics.registry.register(collector)
        # Repairs what others do to our table, warns about their tables (agent/guard.py).
        self.guard = KernelGuard(self.reconciler, read_generation, nft.query_json)

    def _info(self) -> dict[str, Any]:
        info = dict(self.parts.info()) if self.parts.info is not None else {}
        if dns := self.dns.info():
            info["dns"] = dns
        return info

    def _on_health(self, changes: list[HealthChange]) -> None:
        self.metrics.health_changed(changes)
        self.reconciler.health_changed({c.key.lb for c in changes})

    async def status(self, name: str | None, backends: bool | None = True) -> dict[str, Any] | None:
        """`gatelb status [NAME]` answered from memory plus one kernel counter read (None: no
        such load balancer)."""
        state = self.reconciler.last_state
        if state is None:
            state = SyncedState(0, {}, {}, {}, (), {}, {}, {})
        if name is not None and name not in state.load_balancers:
            return None
        health = health_records(self.monitor, name)  # on the loop: the monitor changes there
        info = self._info()
        chosen = None if name is None else [s for n, s in state.services.items() if n == name]
        counters = await asyncio.to_thread(counters_for, self.nft, chosen)
        data = await asyncio.to_thread(live_status, state, counters, health,
                                       tuple(s.name for s in self.parts.sources), info, name, backends,
                                       self.parts.announced)
        data["foreignRules"] = [h.as_dict() for h in self.guard.hazards]  # kept current by the guard
        return data

    def _usable(self, lb: str, backend: Backend) -> bool:
        assert self.monitor is not None
        try:
            return self.monitor.is_up(TargetKey(lb, backend.address, backend.port))
        except KeyError:
            return True  # not health-checked (check type none)

    def adopt_previous(self) -> None:
        """Addresses and the table a previous run left: a restart moves no VIP and reloads nothing."""
        stored = self.store.load()
        # Also the addresses of load balancers removed lately: one that comes back gets its own.
        self.reconciler.remember(stored.addresses(time.time()))
        self.writer.seed(stored)
        if self.monitor is not None and stored.applied is not None:
            self.monitor.seed(recorded_down(stored.applied.health))
        if stored.applied is not None:
            self.reconciler.adopt(stored.applied.services, stored.applied.generation)

    def hup(self) -> None:
        event(logging.INFO, "reload-requested", signal="SIGHUP")
        for callback in self.parts.on_hup:
            callback()

    async def run(self, stop: asyncio.Event) -> bool:
        # Start-up builds millions of long-lived objects (the state record, every source object,
        # the first round's services): the cyclic collector's passes over them would cost
        # seconds and free nothing. The reconciler turns it back on after its first round.
        gc.disable()
        self.adopt_previous()
        tasks: dict[str, Coroutine[Any, Any, Any]] = {
            "reconcile": self.reconciler.run(),
            "sources": run_sources(self.reconciler, self.parts.sources),
            "state-save": self.writer.run(),
            "kernel-guard": self.guard.run(),
            "dns": self.dns.run(),
            **self.parts.tasks,
        }
        if self.monitor is not None:
            tasks["health"] = self.monitor.run()
        if self.endpoints.metrics is not None or self.endpoints.socket is not None:
            tasks["http"] = Server(self.metrics, self.status, self.endpoints.metrics, self.endpoints.socket).run()
        try:
            healthy = await supervise(tasks, stop)
        finally:
            gc.enable()  # stopped before the first round
        self.writer.save_now()
        return healthy


def recorded_down(health: dict[str, Any]) -> dict[TargetKey, str]:
    """The targets the record shows down (keys `lb|address|port`, status.health_key), and why."""
    import ipaddress

    out: dict[TargetKey, str] = {}
    for key, row in health.items():
        try:
            lb, address, port = key.rsplit("|", 2)
            if isinstance(row, dict) and row.get("state") == "down":
                out[TargetKey(lb, ipaddress.ip_address(address), int(port))] = str(row.get("reason", ""))
        except ValueError:
            continue  # a damaged row only loses its state
    return out


async def _main(make_parts: Callable[[], Coroutine[Any, Any, Parts]], store: StateStore, health: bool,
                node: str, endpoints: Endpoints, allow_host_addresses: bool = False) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        # SIGTERM always ends the process. A plain signal handler (not loop.add_signal_handler)
        # runs between bytecodes even while the event loop is busy; the first signal stops in
        # order with a deadline (exit_after), a second one ends the process at once.
        if stopping:
            os._exit(1)
        stopping.append(signum)
        exit_after(SHUTDOWN_S * 2)
        loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    parts = await make_parts()
    add_announcer(parts, node, store.directory)
    host = None if allow_host_addresses else HostAddresses()
    daemon = Daemon(parts, store, NftCli(), health, host, endpoints)
    if host is not None:
        parts.on_hup.insert(0, host.refresh)  # SIGHUP also reads the host's addresses again
    loop.add_signal_handler(signal.SIGHUP, daemon.hup)
    event(logging.INFO, "started", pid=os.getpid(), sources=[s.name for s in parts.sources])
    try:
        healthy = await daemon.run(stop)
        exit_after(SHUTDOWN_S)  # whatever hangs from here on (a closer, a thread in a system call) ends too
    finally:
        for close in parts.closers:
            await close()
    event(logging.INFO, "stopped", signal=signal.Signals(stopping[0]).name if stopping else None)
    return 0 if healthy else 1


def run_daemon(make_parts: Callable[[], Coroutine[Any, Any, Parts]], state_dir: Path, log_format: str,
               health: bool = True, node: str = "", allow_host_addresses: bool = False,
               metrics_address: tuple[str, int] | None = None,
               healthz_timeout_s: float = DEFAULT_HEALTHZ_TIMEOUT_S) -> int:
    setup_logging(log_format)
    before, after = raise_nofile()
    if after != before:
        event(logging.INFO, "nofile-raised", before=before, after=after)
    endpoints = Endpoints(metrics_address, state_dir / SOCKET_NAME, healthz_timeout_s)
    try:
        with state_lock(state_dir), table_lock():
            return asyncio.run(_main(make_parts, StateStore(state_dir), health, node or socket.gethostname(),
                                     endpoints, allow_host_addresses))
    except (StateLocked, TableOwned) as err:
        print(f"gatelb run: {err}", file=sys.stderr)
        return 1
    except StateFileError as err:
        print(f"gatelb run: {err}", file=sys.stderr)
        return 1


def file_parts(paths: Sequence[Path], allow_empty: bool = False) -> Parts:
    """`gatelb run -f FILE|DIR`: the file source; SIGHUP re-reads every file. `allow_empty`: a
    content that lost most of its load balancers is applied without the grace period."""
    from gatelb.sources.file import FileSource

    sources = [FileSource(p, hold_s=0.0) if allow_empty else FileSource(p) for p in paths]
    def rescan(source: FileSource) -> Callable[[], None]:
        def hup() -> None:
            changed = source.rescan()
            event(logging.INFO, "reloaded", source=source.name,
                  changed_files=changed[:20] if changed else "no changes")
        return hup

    return Parts(sources=list(sources), on_hup=[rescan(s) for s in sources])


async def kube_parts(kubeconfig: str | None, settings: KubeSettings, files: Sequence[Path] = (),
                     allow_empty: bool = False) -> Parts:
    """`gatelb run --kubeconfig K [-f FILE]`: the cluster as a source and as the status
    write-back consumer, plus the standalone files if given."""
    import socket

    from gatelb.sources.kubernetes.api import KubeApi, connect
    from gatelb.sources.kubernetes.l2lease import L2LeaseElection
    from gatelb.sources.kubernetes.source import KubeSource

    client = await connect(kubeconfig)
    kube = KubeSource(KubeApi(client), settings)
    election = L2LeaseElection(KubeApi(client), settings.lease_namespace, settings.node or socket.gethostname(),
                               settings.l2_lease_duration_s)
    parts = file_parts(files, allow_empty)
    # After the files: their pools are known when the Service IPAM runs in the same round.
    parts.sources.append(kube)
    parts.consumers.append(kube)
    parts.info = kube.info
    parts.dns_report = kube.report
    parts.dns_secrets = kube.read_secret
    parts.closers.append(client.close)
    parts.l2_election = election
    parts.announce_event = kube.announce_event
    parts.tasks["l2-leases"] = election.run()
    return parts


# -- announcements (gatelb.announce) -------------------------------------------------------------


def add_announcer(parts: Parts, node: str, state_dir: Path) -> None:
    """BGP/BFD through gatelb's own FRR (under <state-dir>/frr), ARP/NDP through its own keepalived
    (<state-dir>/keepalived): a consumer of the synced state with its own task. Each starts only
    once the configuration asks for it; stopping the task withdraws every route first. Where the
    L2 VIPs are owned goes to the state record (`info`, key "l2"). An active-standby GatewayGroup
    adds its own conntrackd (<state-dir>/conntrackd) and the role (key "ha"), in the same task."""
    from gatelb.announce import Announcer
    from gatelb.announce.frr_external import ExternalFrr
    from gatelb.announce.notes import Note
    from gatelb.announce.peers import PeerCollector

    external = None
    if parts.frr_vty_socket is not None:  # BGP through the gateway's own FRR: gatelb adds its part only
        external = ExternalFrr(parts.frr_vty_socket, state_dir / "frr-external.conf")
    announcer = Announcer(node, state_dir / "frr", l2_directory=state_dir / "keepalived", election=parts.l2_election,
                          external=external)
    parts.consumers.append(announcer)
    parts.tasks["announce"] = announcer.run()
    if (post := parts.announce_event) is not None:
        def report(notes: list[Note]) -> None:
            for n in notes:
                post(n.lbs, n.type, n.reason, n.message)

        announcer.report = report
    parts.announced = announcer.where
    parts.collectors.append(PeerCollector(lambda: announcer.peer_states))
    mode_info = parts.info

    def info() -> dict[str, Any]:
        return {**(mode_info() if mode_info else {}), **announcer.info()}

    parts.info = info
