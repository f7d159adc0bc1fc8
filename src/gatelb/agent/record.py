"""The state record as a consumer: after each sync, what was applied goes to the state file.

Written off the event loop (serialising 10,000 services takes a noticeable fraction of a
second) and at most once per SAVE_INTERVAL_S; health changes that do not change the data path
(a first check confirming an assumed state) are written too, so `gatelb status` shows them.
A failed write (disk full) is logged and retried; the daemon keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from gatelb.agent.applied import AppliedRecord, HealthRecord, JsonMemo
from gatelb.agent.runtime import event
from gatelb.agent.statefile import Released, StateStore, StoredState, released_after
from gatelb.agent.status import health_key
from gatelb.health.monitor import HealthMonitor
from gatelb.model import SyncedState

SAVE_INTERVAL_S = 1.0


def health_records(monitor: HealthMonitor | None, lb: str | None = None) -> dict[str, HealthRecord]:
    if monitor is None:
        return {}
    return {health_key(st.key.lb, str(st.key.address), st.key.port):
            {"state": st.status.value, "since": st.since_wall, "reason": st.reason}
            for st in monitor.snapshot(lb)}


def stored_state(state: SyncedState, sources: tuple[str, ...], health: dict[str, HealthRecord],
                 daemon: bool, info: dict[str, Any] | None = None,
                 released: dict[str, Released] | None = None) -> StoredState:
    applied = AppliedRecord(
        generation=state.generation,
        services=state.resolved(),
        load_balancers=tuple(state.load_balancers[n] for n in sorted(state.load_balancers)),
        pools=state.pools,
        origins=dict(state.origins),
        sources=sources,
        health=health,
        errors=tuple(str(e) for errs in state.errors.values() for e in errs),
        applied_at=time.time(),
        daemon=daemon,
        info=info or {},
    )
    return StoredState(allocations={n: str(ip) for n, ip in state.addresses.items()},
                       pools=dict(state.pool_of), applied=applied, released=dict(released or {}))


class RecordWriter:
    """Consumer: keeps <state-dir>/state.json up to date with the last synced state."""

    def __init__(self, store: StateStore, sources: tuple[str, ...], monitor: HealthMonitor | None = None,
                 info: Callable[[], dict[str, Any]] | None = None) -> None:
        self._store = store
        self._sources = sources
        self._monitor = monitor
        self._info = info
        self._state: SyncedState | None = None
        self._wanted = asyncio.Event()
        self._saved_health = -1
        self._saved_info: dict[str, Any] | None = None
        # The allocations of the last snapshot and the addresses of removed load balancers, so a
        # load balancer that comes back after a restart gets its address again (statefile.Released).
        self._allocations: dict[str, str] = {}
        self._released: dict[str, Released] = {}
        self._memo = JsonMemo()  # written after every sync: encode only what changed
        self.failures = 0

    def seed(self, stored: StoredState) -> None:
        """What the previous run recorded (the daemon calls it before the first sync)."""
        self._allocations = dict(stored.allocations)
        self._released = dict(stored.released)

    def set(self, state: SyncedState) -> None:
        self._state = state
        self._wanted.set()

    def _revised(self) -> bool:
        """Health or the mode's facts (leadership, problems) changed since the last write: those
        show in `gatelb status` even when the data path does not change."""
        if self._monitor is not None and self._monitor.revision != self._saved_health:
            return True
        return self._info is not None and self._state is not None and self._info() != self._saved_info

    def _snapshot(self) -> tuple[SyncedState, dict[str, HealthRecord], dict[str, Any], dict[str, Released]] | None:
        """Taken on the event loop: the monitor changes there. Serialising happens in a thread."""
        if self._state is None:
            return None
        if self._monitor is not None:
            self._saved_health = self._monitor.revision
        info = self._info() if self._info else {}
        self._saved_info = info
        state = self._state
        if state.addresses.keys() != self._allocations.keys() or self._released:
            self._released = released_after(self._allocations, self._released, state.addresses, time.time())
            self._allocations = {n: str(ip) for n, ip in state.addresses.items()}
        return state, health_records(self._monitor), info, self._released

    def _write(self, state: SyncedState, health: dict[str, HealthRecord], info: dict[str, Any],
               released: dict[str, Released]) -> None:
        self._store.save(stored_state(state, self._sources, health, daemon=True, info=info, released=released),
                         memo=self._memo)

    async def run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that arrives
            # as the event is set, and the task then never ends (seen at shutdown).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SAVE_INTERVAL_S):
                    await self._wanted.wait()
            if not self._wanted.is_set() and not self._revised():
                continue
            self._wanted.clear()
            snapshot = self._snapshot()
            if snapshot is not None:
                try:
                    await asyncio.to_thread(self._write, *snapshot)
                    self.failures = 0
                except OSError as err:
                    self.failures += 1
                    self._wanted.set()  # retry after the interval
                    event(logging.ERROR, "state-save-failed", file=str(self._store.path), error=str(err),
                          attempt=self.failures)
            await asyncio.sleep(SAVE_INTERVAL_S)

    def save_now(self) -> None:
        """On shutdown, in the caller's thread."""
        snapshot = self._snapshot()
        if snapshot is not None:
            try:
                self._write(*snapshot)
            except OSError as err:
                event(logging.ERROR, "state-save-failed", file=str(self._store.path), error=str(err))
