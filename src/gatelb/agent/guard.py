"""The daemon notices and repairs what happens to the kernel behind its back.

- Our table deleted, flushed (`nft flush ruleset`, a distribution's nftables reload) or edited by
  anyone else: the nftables notification arrives within milliseconds (kernel/monitor.py); a
  warning is logged and the reconciler reloads the whole table (Reconciler.resync).
- Notifications lost (buffer overflow), or no monitor at all (not permitted): a generation check
  every CHECK_INTERVAL_S (one tiny netlink dump) catches a missing table or one whose generation
  differs from what we applied.
- Other tables that can drop or rewrite traffic to our VIPs (kernel/foreign.py): checked at start
  and after any other table changes, logged when the findings change; never touched.

Runs as the daemon's supervised task "kernel-guard"; the checks that talk to the kernel run in a
thread, the notification parsing is cheap (header and one attribute per message).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from gatelb.agent.runtime import event
from gatelb.dataplane.ruleset import FAMILY, TABLE
from gatelb.kernel.foreign import Hazard, QueryJson, hazards
from gatelb.kernel.monitor import Commit, NftMonitor

CHECK_INTERVAL_S = 5.0
FOREIGN_MIN_SPACING_S = 1.0  # a program that commits constantly must not make us run nft constantly


class Repairable(Protocol):
    """What the guard needs from the reconciler (agent/reconciler.py)."""

    @property
    def expected_generation(self) -> int | None: ...

    def resync(self, reason: str) -> None: ...


class KernelGuard:
    def __init__(self, reconciler: Repairable, read_generation: Callable[[], int | None],
                 query_json: QueryJson | None, interval_s: float = CHECK_INTERVAL_S) -> None:
        self._reconciler = reconciler
        self._read_generation = read_generation
        self._query = query_json
        self._interval = interval_s
        self._wake = asyncio.Event()
        self._check_due = False
        self._foreign_due = query_json is not None
        self._foreign_at = 0.0
        self.hazards: list[Hazard] = []
        self.repairs = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        monitor = NftMonitor()
        fd = -1
        try:
            fd = monitor.open()
            loop.add_reader(fd, self._readable, monitor)
        except OSError as err:
            event(logging.WARNING, "kernel-monitor-unavailable", error=str(err),
                  fallback=f"generation check every {self._interval:g} s")
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
                except TimeoutError:
                    self._check_due = True
                self._wake.clear()
                if self._check_due:
                    self._check_due = False
                    await self._check_generation()
                if self._foreign_due and time.monotonic() - self._foreign_at >= FOREIGN_MIN_SPACING_S:
                    self._foreign_due = False
                    await self._check_foreign()
                elif self._foreign_due:
                    loop.call_later(FOREIGN_MIN_SPACING_S, self._wake.set)
        finally:
            if fd >= 0:
                loop.remove_reader(fd)
            monitor.close()

    # -- notifications -----------------------------------------------------------------------

    def _readable(self, monitor: NftMonitor) -> None:
        try:
            commits, lost = monitor.read()
        except OSError as err:
            event(logging.WARNING, "kernel-monitor-error", error=str(err))
            commits, lost = [], True
        for commit in commits:
            self.note(commit)
        if lost:
            # Someone's change may be among the lost messages: the generation tells.
            self._check_due = True
            self._wake.set()

    def note(self, commit: Commit) -> None:
        if commit.ours:
            return
        mine = commit.touched(FAMILY, TABLE)
        if mine is not None:
            deleted = mine.get("table deleted", 0) > 0
            self.repairs += 1
            event(logging.WARNING, "table-changed-externally", table=f"{FAMILY} {TABLE}",
                  by_pid=commit.pid, by_process=commit.process, changes=dict(sorted(mine.items())),
                  action="full resync")
            self._reconciler.resync("table-deleted" if deleted else "table-changed")
        if any(key != (FAMILY, TABLE) for key in commit.tables) and self._query is not None:
            self._foreign_due = True
            self._wake.set()

    # -- checks ------------------------------------------------------------------------------

    async def _check_generation(self) -> None:
        expected = self._reconciler.expected_generation
        if expected is None:
            return  # a round runs (or nothing applied yet): nothing to compare with
        try:
            kernel = await asyncio.to_thread(self._read_generation)
        except OSError as err:
            event(logging.WARNING, "generation-check-failed", error=str(err))
            return
        if self._reconciler.expected_generation != expected or kernel == expected:
            return  # in step, or a round of ours ran meanwhile
        self.repairs += 1
        event(logging.WARNING, "table-missing" if kernel is None else "table-drift", table=f"{FAMILY} {TABLE}",
              expected_generation=expected, kernel_generation=kernel, action="full resync")
        self._reconciler.resync("table-missing" if kernel is None else "drift")

    async def _check_foreign(self) -> None:
        assert self._query is not None
        self._foreign_at = time.monotonic()
        try:
            found = await asyncio.to_thread(hazards, self._query)
        except Exception as err:  # a check that cannot run must not end the daemon
            event(logging.WARNING, "foreign-check-failed", error=repr(err)[:500])
            return
        if found == self.hazards:
            return
        self.hazards = found
        if found:
            event(logging.WARNING, "foreign-rules", count=len(found), findings=[str(h) for h in found[:20]],
                  action="left alone")
        else:
            event(logging.INFO, "foreign-rules-cleared")
