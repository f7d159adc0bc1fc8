"""`gatelb run --kubeconfig`: the reconcile loop with Kubernetes as the source.

    informers (Services, EndpointSlices, Nodes, Namespaces, IPPools, L4LBs) -> synced gate
    -> [leader] Service IPAM -> to_model -> L4LB IPAM -> resolve (health) -> DataplaneSync
    -> [leader] status, annotations, Events

Nothing is programmed before every informer's first list is in. Every instance programs its own
data path; only the Lease holder allocates and writes back. A follower serves the addresses the
leader wrote into Service status (the ones marked with our pool annotation), so two gateways
agree without talking to each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from gatelb.agent.engine import DataplaneSync
from gatelb.agent.runtime import event, setup_logging, supervise
from gatelb.dataplane.changes import udp_flows_to_flush
from gatelb.health.monitor import HealthChange, HealthMonitor, TargetKey
from gatelb.ipam.lb import Allocation, allocate_partial
from gatelb.ipam.services import AllocationError, ServicePool, allocate_services
from gatelb.kernel.conntrack import flush_flows
from gatelb.kernel.nft import Nft, NftCli
from gatelb.model import (
    Backend,
    CheckType,
    DesiredState,
    IPAddress,
    LBState,
    ResolvedState,
    ValidationError,
    ValidationErrors,
)
from gatelb.resolve import resolve
from gatelb.sources.kubernetes.api import WATCHED, KubeApi, Obj, connect
from gatelb.sources.kubernetes.informer import Informer
from gatelb.sources.kubernetes.lease import LeaseElector
from gatelb.sources.kubernetes.status import StatusWriter
from gatelb.sources.kubernetes.translate import (
    ANN_POOL_RECORD,
    IPPOOL,
    L4LB,
    SERVICE,
    Cluster,
    Options,
    _dig,
    is_ours,
    l4lbs,
    owner_of,
    pools,
    service_requests,
    status_addresses,
    to_model,
)
from gatelb.sources.standalone import load_file

log = logging.getLogger("gatelb")
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_S = 0.05  # let a burst of watch events land before one reconcile handles them all


@dataclass(frozen=True)
class KubeSettings:
    options: Options
    lease_namespace: str = "gatelb-system"
    lease_name: str = "gatelb-ipam"
    identity: str = ""
    health: bool = True
    file: Path | None = None


@dataclass
class _Round:
    """What one reconcile decided, for the write-back."""

    cluster: Cluster
    leader: bool
    assigned: dict[str, tuple[IPAddress, ...]]
    pools_of: dict[str, tuple[str, ...]]
    failures: dict[str, AllocationError]
    errors: list[ValidationError]
    allocation: Allocation
    desired: DesiredState
    resolved: ResolvedState


class KubeAgent:
    def __init__(self, api: KubeApi, nft: Nft, settings: KubeSettings) -> None:
        self._api = api
        self._settings = settings
        self._sync = DataplaneSync(nft, indexed=True)
        self._informers = {k.name: Informer(api, k, self.trigger) for k in WATCHED}
        identity = settings.identity or f"{socket.gethostname()}-{os.getpid()}"
        self._elector = LeaseElector(api, settings.lease_namespace, settings.lease_name, identity,
                                     lambda leader: self.trigger("leader"))
        self._writer = StatusWriter(api)
        self._monitor = HealthMonitor(self._on_health) if settings.health else None
        self._assigned: dict[str, tuple[IPAddress, ...]] = {}
        self._l4lb_recorded: dict[str, IPAddress] | None = None
        self._file_state = DesiredState()
        self._resolved: ResolvedState | None = None
        self._wake: asyncio.Event | None = None
        self._failures = 0
        self.rounds = 0

    @property
    def resolved(self) -> ResolvedState:
        """What the data path serves now (after the last successful sync)."""
        return self._resolved or ResolvedState()

    @property
    def is_leader(self) -> bool:
        return self._elector.is_leader

    # -- triggers -----------------------------------------------------------------------------

    def trigger(self, why: str = "") -> None:
        if self._wake is not None:
            self._wake.set()

    def _on_health(self, changes: list[HealthChange]) -> None:
        self.trigger("health")

    def _usable(self, lb: str, backend: Backend) -> bool:
        if self._monitor is None:
            return True
        try:
            return self._monitor.is_up(TargetKey(lb, backend.address, backend.port))
        except KeyError:
            return True

    # -- main ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> bool:
        """Until `stop`; False when a task died."""
        self._wake = asyncio.Event()
        self._load_file()
        tasks = {f"informer-{name}": inf.run() for name, inf in self._informers.items()}
        tasks.update(lease=self._elector.run(), reconcile=self._reconcile_loop())
        if self._monitor is not None:
            tasks["health"] = self._monitor.run()
        return await supervise(tasks, stop)

    def _load_file(self) -> None:
        path = self._settings.file
        if path is None:
            return
        try:
            self._file_state = load_file(path)
        except (OSError, ValidationErrors, ValidationError) as err:
            errors = [str(e) for e in getattr(err, "errors", [err])]
            event(logging.ERROR, "config-invalid", file=str(path), errors=errors, keeping="Kubernetes objects only")

    async def _reconcile_loop(self) -> None:
        assert self._wake is not None
        await asyncio.gather(*(inf.synced.wait() for inf in self._informers.values()))
        event(logging.INFO, "synced", kinds=sorted(self._informers))
        while True:
            await asyncio.sleep(BATCH_S)
            self._wake.clear()
            try:
                await self._round()
                self._failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self._failures += 1
                self._sync.force_full()
                event(logging.ERROR, "reconcile-failed", error=repr(err)[:2000], attempt=self._failures)
                await asyncio.sleep(RETRY_BACKOFF_S[min(self._failures - 1, len(RETRY_BACKOFF_S) - 1)])
                continue
            await self._wake.wait()

    # -- one round ----------------------------------------------------------------------------

    def _cluster(self) -> Cluster:
        objs = {name: dict(inf.objects) for name, inf in self._informers.items()}
        return Cluster(**objs)

    def _decide(self) -> _Round:
        cluster = self._cluster()
        opts = self._settings.options
        pool_list, errors = pools(cluster)
        pool_list += [ServicePool(p) for p in self._file_state.pools if p.name not in {q.name for q in pool_list}]
        requests, req_errors = service_requests(cluster, opts)
        errors += req_errors
        own, _ = l4lbs(cluster)
        if self._l4lb_recorded is None:  # start-up: what the L4LB objects' status says they had
            self._l4lb_recorded = _l4lb_status_addresses(cluster)
        reserved = {ip: f"L4LB {owner_of(n)[1]}" for n, ip in self._l4lb_recorded.items()}
        reserved.update({lb.frontend_ip: f"L4LB {owner_of(lb.name)[1]}" for lb in own if lb.frontend_ip})
        reserved.update({lb.frontend_ip: f"L4LB {lb.name}" for lb in self._file_state.load_balancers
                         if lb.frontend_ip})
        leader = self._elector.is_leader
        failures: dict[str, AllocationError] = {}
        pools_of: dict[str, tuple[str, ...]] = {}
        if leader:
            current = {r.key: status_addresses(cluster.services[r.key]) for r in requests}
            current.update({k: v for k, v in self._assigned.items() if k in current})
            alloc, failures = allocate_services(pool_list, requests, current, reserved)
            snap = alloc.snapshot()
            assigned = {k: a.addresses for k, a in snap.items()}
            pools_of = {k: a.pools for k, a in snap.items()}
            self._assigned = assigned
        else:
            assigned = {r.key: status_addresses(cluster.services[r.key]) for r in requests
                        if _dig(cluster.services[r.key], "metadata", "annotations", ANN_POOL_RECORD)}
        translation = to_model(cluster, opts, assigned)
        errors += translation.errors
        file_lbs = tuple(lb for lb in self._file_state.load_balancers)
        desired = DesiredState(tuple(p.pool for p in pool_list), translation.desired.load_balancers + file_lbs)
        allocation, alloc_errors = allocate_partial(desired, self._l4lb_recorded)
        errors += alloc_errors
        self._l4lb_recorded = {n: ip for n, ip in allocation.addresses.items() if n.startswith("l4lb/")}
        if self._monitor is not None:
            self._monitor.set({TargetKey(lb.name, b.address, b.port): lb.check for lb in desired.load_balancers
                               if lb.active and lb.check.type is not CheckType.NONE for b in lb.backends})
        resolved = resolve(desired, allocation, self._usable)
        return _Round(cluster, leader, assigned, pools_of, failures, errors, allocation, desired, resolved)

    async def _round(self) -> None:
        r = self._decide()
        result = await asyncio.to_thread(self._sync.sync, r.resolved)
        previous, self._resolved = self._resolved, r.resolved
        self.rounds += 1
        if previous is not None:
            flows = udp_flows_to_flush(previous.by_name(), r.resolved)
            if flows:
                await asyncio.to_thread(flush_flows, flows)
        if result.script:
            event(logging.INFO, "sync", full=result.full, changes=result.changes, leader=r.leader,
                  services=len(r.resolved.services), generation=result.generation)
        if r.leader:
            await self._write_back(r)

    # -- write-back (leader only) ------------------------------------------------------------

    async def _write_back(self, r: _Round) -> None:
        served = {owner_of(s.name)[1] for s in r.resolved.services if s.name.startswith("svc/")}
        opts = self._settings.options
        for key, svc in sorted(r.cluster.services.items()):
            await self._guard(self._write_service(svc, key, r, served, is_ours(svc, opts)))
        for err in r.errors:
            await self._guard(self._report(err, r))
        for key, obj in sorted(r.cluster.l4lbs.items()):
            await self._guard(self._write_l4lb(obj, key, r))

    async def _write_service(self, svc: Obj, key: str, r: _Round, served: set[str], ours: bool) -> None:
        if ours and key in served and key in r.assigned:
            await self._writer.service_served(svc, r.assigned[key], r.pools_of.get(key, ()))
        elif ours and key in r.failures:
            err = r.failures[key]
            await self._writer.event(svc, SERVICE, "Warning", "AllocationFailed", f"{err.reason}: {err.message}")
            await self._writer.service_released(svc)
        elif not ours and _dig(svc, "metadata", "annotations", ANN_POOL_RECORD) is not None:
            await self._writer.service_released(svc)

    async def _report(self, err: ValidationError, r: _Round) -> None:
        kind, key = (err.kind, err.name)
        if kind == L4LB and key.startswith(("svc/", "l4lb/")):  # a generic-IPAM error on an internal LB
            kind, key = owner_of(key)
        source = {SERVICE: r.cluster.services, IPPOOL: r.cluster.ippools, L4LB: r.cluster.l4lbs}.get(kind, {})
        obj = source.get(key)
        if obj is not None and kind != L4LB:  # L4LB problems go to its status
            await self._writer.event(obj, kind, "Warning", "InvalidConfiguration", str(err))

    async def _write_l4lb(self, obj: Obj, key: str, r: _Round) -> None:
        name = f"l4lb/{key}"
        problems = [str(e) for e in r.errors if e.name in (key, name) and e.kind == L4LB]
        ip = r.allocation.addresses.get(name)
        lb = next((x for x in r.desired.load_balancers if x.name == name), None)
        if problems:
            await self._writer.l4lb_status(obj, "Error", "; ".join(problems), None)
        elif lb is not None and lb.state is LBState.DISABLE:
            await self._writer.l4lb_status(obj, "Disabled", "spec.state is disable", ip)
        elif lb is not None and ip is not None:
            up = next((len(s.backends) for s in r.resolved.services if s.name == name), 0)
            await self._writer.l4lb_status(obj, "Active", f"{up}/{len(lb.backends)} backends serving", ip)

    @staticmethod
    async def _guard(write: Any) -> None:
        """One failed write (e.g. the object was deleted meanwhile) must not stop the others."""
        try:
            await write
        except ApiException as err:
            event(logging.WARNING, "write-back-failed", status=err.status, error=str(err.reason)[:300])


def _l4lb_status_addresses(cluster: Cluster) -> dict[str, IPAddress]:
    import ipaddress

    out: dict[str, IPAddress] = {}
    for key, obj in cluster.l4lbs.items():
        text = _dig(obj, "status", "frontendIP")
        with contextlib.suppress(ValueError, TypeError):
            out[f"l4lb/{key}"] = ipaddress.ip_address(text)
    return out



def run_kube(kubeconfig: str | None, settings: KubeSettings, log_format: str) -> int:
    setup_logging(log_format)
    return asyncio.run(_main(kubeconfig, settings))


async def _main(kubeconfig: str | None, settings: KubeSettings) -> int:
    client = await connect(kubeconfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = KubeAgent(KubeApi(client), NftCli(), settings)
    event(logging.INFO, "started", pid=os.getpid(), source="kubernetes", backend_mode=settings.options.backend_mode)
    try:
        healthy = await agent.run(stop)
    finally:
        await client.close()
    event(logging.INFO, "stopped")
    return 0 if healthy else 1
