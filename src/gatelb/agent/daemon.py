"""`gatelb run`: the reconcile loop.

    triggers (start, file change, SIGHUP, health change) -> gather -> resolve -> sync -> record

One coroutine does all syncing, so syncs never overlap; triggers that arrive while a sync runs
are coalesced into the next one. A file that fails to validate is reported and ignored: the last
good configuration keeps serving. A failed kernel transaction is retried as a full resync with
backoff. State is written to the state directory off the hot path, at most once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatelb.agent.applied import services_from_json, services_to_json
from gatelb.agent.engine import DataplaneSync
from gatelb.agent.lock import StateLocked, state_lock
from gatelb.agent.runtime import event, setup_logging, supervise
from gatelb.agent.statefile import StateStore, StoredState
from gatelb.agent.status import health_key
from gatelb.dataplane.changes import udp_flows_to_flush
from gatelb.health.monitor import HealthChange, HealthMonitor, TargetKey
from gatelb.ipam.lb import Allocation, IncrementalAllocator
from gatelb.kernel.conntrack import flush_flows
from gatelb.kernel.nft import Nft, NftCli, NftError
from gatelb.model import (
    Backend,
    DesiredState,
    HealthCheck,
    IPAddress,
    ResolvedState,
    ValidationError,
    ValidationErrors,
)
from gatelb.resolve import Resolver
from gatelb.sources.cached import CachedLoader

SAVE_INTERVAL_S = 1.0
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)


class Agent:
    def __init__(self, path: Path, store: StateStore, nft: Nft, health: bool = True) -> None:
        self._path = path
        self._store = store
        self._sync = DataplaneSync(nft, indexed=True)
        self._health_enabled = health
        self._monitor = HealthMonitor(self._on_health) if health else None
        self._config: Config | None = None
        self._text: str | None = None
        # Incremental versions of load/allocate/resolve: a change to one of 10,000 L4LBs costs
        # work proportional to the change (each is tested equal to the plain function).
        self._loader = CachedLoader()
        self._allocator = IncrementalAllocator()
        self._resolver = Resolver()
        self._health_dirty: set[str] = set()
        self._triggered_at = 0.0
        self._reload_ms = 0.0
        self._reload_detail: dict[str, float] = {}
        # Frontend addresses by L4LB name: the recorded ones until the first load, then IPAM's.
        self._addresses: Mapping[str, IPAddress] = {}
        self._pending: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._dirty = False
        self._failures = 0
        self._resolved: ResolvedState | None = None
        self._save_wanted: asyncio.Event | None = None
        self._saved_health = -1  # the monitor's revision in the state file

    # -- triggers -----------------------------------------------------------------------------

    def trigger(self, why: str) -> None:
        if not self._pending:
            self._triggered_at = time.time()
        self._pending.add(why)
        if self._wake is not None:
            self._wake.set()

    def _on_health(self, changes: list[HealthChange]) -> None:
        # gatelb.health already logs every transition (one structured line each).
        self._health_dirty.update(c.key.lb for c in changes)
        self.trigger("health")
        # Health shows in `gatelb status`, even when the data path does not change.
        self._dirty = True
        if self._save_wanted is not None:
            self._save_wanted.set()

    # -- main ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> bool:
        """Until `stop`; False when a task died (the process then exits non-zero)."""
        self._wake = asyncio.Event()
        self._save_wanted = asyncio.Event()
        self._adopt_previous()
        self.trigger("start")
        tasks = {"reconcile": self._reconcile_loop(), "file-watch": self._watch_file(),
                 "state-save": self._save_loop()}
        if self._monitor is not None:
            tasks["health"] = self._monitor.run()
        healthy = await supervise(tasks, stop)
        self._save()
        return healthy

    def _adopt_previous(self) -> None:
        """Take over the table a previous run left, so a restart reloads nothing and keeps
        affinity entries and counters."""
        stored = self._store.load()
        self._addresses = _addresses(stored.allocations)
        applied = stored.applied or {}
        if applied.get("services") is not None and applied.get("generation"):
            previous = services_from_json(applied["services"])
            if self._sync.adopt(previous, int(applied["generation"])):
                event(logging.INFO, "adopted", generation=applied["generation"], services=len(previous.services))

    async def _reconcile_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            triggers, self._pending = self._pending, set()
            self._reload_ms = 0.0
            self._reload_detail = {}
            if triggers & {"start", "file", "signal"}:
                t0 = time.perf_counter()
                self._reload()
                self._reload_ms = (time.perf_counter() - t0) * 1000
            if self._config is None:
                continue
            if not self._apply(sorted(triggers)):
                delay = RETRY_BACKOFF_S[min(self._failures - 1, len(RETRY_BACKOFF_S) - 1)]
                await asyncio.sleep(delay)
                self.trigger("retry")

    def _reload(self) -> None:
        t0 = time.perf_counter()
        try:
            text = self._path.read_text()
        except OSError as err:
            event(logging.ERROR, "config-unreadable", file=str(self._path), error=err.strerror)
            return
        if text == self._text and self._config is not None:
            return
        try:
            t1 = time.perf_counter()
            desired = self._loader.load(text, str(self._path))
            t2 = time.perf_counter()
            allocation = self._allocator.allocate(desired, self._addresses)
            config = Config(desired, allocation)
            self._reload_detail = {"read_ms": round((t1 - t0) * 1000, 1), "load_ms": round((t2 - t1) * 1000, 1),
                                   "allocate_ms": round((time.perf_counter() - t2) * 1000, 1),
                                   "documents_reused": self._loader.hits, "documents_parsed": self._loader.misses}
        except (ValidationErrors, ValidationError) as err:
            errors = [str(e) for e in getattr(err, "errors", [err])]
            event(logging.ERROR, "config-invalid", file=str(self._path), errors=errors,
                  keeping="last good configuration" if self._config else "nothing applied yet")
            return
        self._config, self._text = config, text
        self._addresses = config.allocation.addresses
        if self._monitor is not None:
            self._monitor.set(_health_targets(config))

    def _usable(self, lb: str, backend: Backend) -> bool:
        if self._monitor is None:
            return True
        try:
            return self._monitor.is_up(TargetKey(lb, backend.address, backend.port))
        except KeyError:
            return True  # first resolve after a reload, before set(): the monitor adds it as up

    def _apply(self, triggers: list[str]) -> bool:
        assert self._config is not None
        resolved = self._resolver.resolve(self._config.desired, self._config.allocation, self._usable,
                                          self._health_dirty)
        self._health_dirty.clear()
        try:
            result = self._sync.sync(resolved)
        except NftError as err:
            self._failures += 1
            event(logging.ERROR, "sync-failed", error=str(err)[:2000], attempt=self._failures)
            return False
        self._failures = 0
        if result.full:
            # Everything loaded so far (10,000 services are millions of objects) is long-lived:
            # move it out of the cyclic collector's view, whose full passes over it would
            # otherwise add 100 ms or more to random increments.
            gc.collect()
            gc.freeze()
        previous, self._resolved = self._resolved, resolved
        if previous is not None:
            self._flush_udp(previous, resolved)
        if result.script or triggers != ["health"]:
            self._dirty = True
            assert self._save_wanted is not None
            self._save_wanted.set()
        if result.script:
            now = time.time()
            event(logging.INFO, "sync", trigger=",".join(triggers), full=result.full, changes=result.changes,
                  reload_ms=round(self._reload_ms, 3), **self._reload_detail,
                  compile_ms=round(result.compile_s * 1000, 3), apply_ms=round(result.apply_s * 1000, 3),
                  duration_ms=round(self._reload_ms + (result.compile_s + result.apply_s) * 1000, 3),
                  since_trigger_ms=round((now - self._triggered_at) * 1000, 3), wall_time=now,
                  generation=result.generation)
        return True

    def _flush_udp(self, previous: ResolvedState, resolved: ResolvedState) -> None:
        flows = udp_flows_to_flush(previous.by_name(), resolved)
        if flows:
            hits = flush_flows(flows)
            event(logging.INFO, "conntrack-flush", flows=len(flows), deleted=hits,
                  backends=sorted({str(f.backend) for f in flows}))

    async def _watch_file(self) -> None:
        # Watch the directory, not the file: editors and config management replace files by rename.
        from watchfiles import awatch

        target = self._path.resolve()
        async for changes in awatch(target.parent, step=5, debounce=200, recursive=False):
            if any(Path(p).resolve() == target for _, p in changes):
                self.trigger("file")

    async def _save_loop(self) -> None:
        """Write the state file soon after a change, but at most once per SAVE_INTERVAL_S, in a
        thread: at 10,000 services it takes a noticeable fraction of a second."""
        assert self._save_wanted is not None
        while True:
            # Also wake up every interval: a first check that confirms an assumed-up backend changes
            # only its reason, reports no transition, and would otherwise never reach the file.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._save_wanted.wait(), SAVE_INTERVAL_S)
            if not self._save_wanted.is_set() and not self._health_revised():
                continue
            self._save_wanted.clear()
            snapshot = self._snapshot()
            if snapshot is not None:
                await asyncio.to_thread(_write_state, self._store, *snapshot)
            await asyncio.sleep(SAVE_INTERVAL_S)

    def _health_revised(self) -> bool:
        return self._monitor is not None and self._monitor.revision != self._saved_health

    def _snapshot(self) -> tuple[StoredState, ResolvedState | None, Mapping[str, IPAddress]] | None:
        """What to write, taken on the event loop: the monitor and the configuration change there,
        so a worker thread must not read them. Serialising happens in the thread."""
        if self._config is None or not self._sync.has_applied:
            return None
        self._dirty = False
        health: dict[str, dict[str, Any]] = {}
        if self._monitor is not None:
            self._saved_health = self._monitor.revision
            for st in self._monitor.snapshot():
                health[health_key(st.key.lb, str(st.key.address), st.key.port)] = {
                    "state": st.status.value, "since": st.since_wall, "reason": st.reason}
        state = StoredState(
            allocations={},  # filled in the worker thread (10,000 str() calls)
            pools=dict(self._config.allocation.pool_of),
            applied={"generation": self._sync.generation, "source": str(self._path), "sourceText": self._text,
                     "services": [], "health": health, "appliedAt": time.time(), "daemon": True},
        )
        return state, self._resolved, self._addresses

    def _save(self) -> None:
        snapshot = self._snapshot()
        if snapshot is not None:
            _write_state(self._store, *snapshot)


def _write_state(store: StateStore, state: StoredState, resolved: ResolvedState | None,
                 addresses: Mapping[str, IPAddress]) -> None:
    # ResolvedState is immutable and `addresses` is never mutated (each allocation is a new
    # dict), so serialising them off the event loop is safe.
    state.allocations.update((name, str(ip)) for name, ip in addresses.items())
    if resolved is not None and state.applied is not None:
        state.applied["services"] = services_to_json(resolved)
    store.save(state)


@dataclass(frozen=True)
class Config:
    """The last configuration that loaded and allocated without errors."""

    desired: DesiredState
    allocation: Allocation


def _addresses(recorded: dict[str, str]) -> dict[str, IPAddress]:
    out: dict[str, IPAddress] = {}
    for name, ip in recorded.items():
        with contextlib.suppress(ValueError):  # a damaged record only loses its pinning
            out[name] = ipaddress.ip_address(ip)
    return out


def _health_targets(config: Config) -> dict[TargetKey, HealthCheck]:
    return {
        TargetKey(lb.name, b.address, b.port): lb.check
        for lb in config.desired.load_balancers
        if lb.active
        for b in lb.backends
    }



def run_daemon(path: Path, state_dir: Path, log_format: str, health: bool = True) -> int:
    setup_logging(log_format)
    try:
        with state_lock(state_dir):
            return asyncio.run(_main(Agent(path, StateStore(state_dir), NftCli(), health)))
    except StateLocked as err:
        print(f"gatelb run: {err}", file=sys.stderr)
        return 1


async def _main(agent: Agent) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, agent.trigger, "signal")
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    event(logging.INFO, "started", pid=__import__("os").getpid())
    healthy = await agent.run(stop)
    event(logging.INFO, "stopped")
    return 0 if healthy else 1


