"""Announcing VIPs to the network: a consumer of the one reconciler.

    set(SyncedState) -> decide (pure: what this gateway announces where) -> the announcer's task
        -> FRR (BGP, BFD): render the configuration, frr-reload.py applies the difference

`Announcer.set()` is cheap (it computes the plan and wakes the task when the plan changed); the
FRR work runs in `run()`, a supervised task, in a thread. FRR is started only once a plan needs
BGP. Cancelling `run()` (SIGTERM) shuts every BGP neighbor down first (a Cease notification: the
routers withdraw our routes at once), then stops FRR.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from gatelb.announce.decide import EMPTY, Plan, decide
from gatelb.announce.frr import FrrError, FrrInstance
from gatelb.announce.frr_config import render
from gatelb.announce.log import event
from gatelb.model import IPNetwork, SyncedState, ValidationError

WATCH_S = 1.0  # how often the FRR daemons' liveness is checked
RETRY_S = 2.0


class Announcer:
    def __init__(self, node: str, directory: Path, frr: FrrInstance | None = None) -> None:
        self.node = node
        self.frr = frr or FrrInstance(directory, node)
        self.plan: Plan = EMPTY
        self.errors: list[ValidationError] = []
        self._seen = False
        self._wake = asyncio.Event()
        self._announced: tuple[IPNetwork, ...] = ()
        self._frr_up = False

    def set(self, state: SyncedState) -> None:
        plan, errors = decide(state, self.node)
        if errors:
            if [str(e) for e in errors] != [str(e) for e in self.errors]:
                event(logging.ERROR, "announce-config-invalid", errors=[str(e) for e in errors],
                      keeping="the last good announcements")
            self.errors = errors
            return
        if self.errors:
            event(logging.INFO, "announce-config-valid-again")
        self.errors = []
        if plan != self.plan or not self._seen:
            self.plan, self._seen = plan, True
            self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), WATCH_S)
                except TimeoutError:
                    if self._frr_up and len(self.frr.running()) < 3:
                        event(logging.ERROR, "frr-daemon-died", running=self.frr.running())
                        self._wake.set()
                    continue
                self._wake.clear()
                try:
                    await asyncio.to_thread(self._apply, self.plan)
                except FrrError as err:
                    event(logging.ERROR, "announce-failed", error=str(err))
                    await asyncio.sleep(RETRY_S)
                    self._wake.set()
        finally:
            if self._frr_up:
                await asyncio.shield(asyncio.to_thread(self._withdraw))

    def _apply(self, plan: Plan) -> None:
        bgp = plan.bgp
        if bgp is None and not self._frr_up:
            return
        t0 = time.perf_counter()
        if not self._frr_up or len(self.frr.running()) < 3:
            self.frr.start()
            self._frr_up = True
        changed = self.frr.apply(render(bgp, self.node, str(self.frr.log_file)))
        now = bgp.prefixes if bgp is not None else ()
        if changed:
            added = sorted(set(now) - set(self._announced), key=str)
            withdrawn = sorted(set(self._announced) - set(now), key=str)
            event(logging.INFO, "announce", prefixes=len(now), added=[str(p) for p in added[:50]],
                  withdrawn=[str(p) for p in withdrawn[:50]],
                  peers=[pp.peer.name for pp in bgp.peers] if bgp else [],
                  duration_ms=round((time.perf_counter() - t0) * 1000, 1), wall_time=time.time())
        self._announced = now

    def _withdraw(self) -> None:
        bgp = self.plan.bgp
        with contextlib.suppress(FrrError, OSError):
            if bgp is not None:
                self.frr.shutdown_neighbors(bgp.asn, [str(pp.peer.peer_address) for pp in bgp.peers])
                event(logging.INFO, "withdrawn", peers=[pp.peer.name for pp in bgp.peers], wall_time=time.time())
        self.frr.stop()
        self._frr_up = False
        event(logging.INFO, "frr-stopped")
