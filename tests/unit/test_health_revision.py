"""HealthMonitor.revision: it moves when what `gatelb status` shows may change (including a first
check that only changes a reason), and stays put while nothing changes."""

from __future__ import annotations

import asyncio

from gatelb.health import HealthChange, HealthMonitor, ProbeResult, TargetKey
from gatelb.model import CheckType, HealthCheck, IPAddress

from .test_health_monitor import FAST, A, B, until


def test_revision_follows_what_status_shows() -> None:
    healthy = {A.address: True, B.address: True}

    async def prober(address: IPAddress, port: int, check: HealthCheck) -> ProbeResult:
        await asyncio.sleep(0)
        ok = healthy[address]
        return ProbeResult(ok, "connected" if ok else "connect refused", 0.1)

    def reason(monitor: HealthMonitor, key: TargetKey) -> str:
        return next(r.reason for r in monitor.snapshot() if r.key == key)

    async def main() -> None:
        changes: list[HealthChange] = []
        monitor = HealthMonitor(changes.extend, jitter=0.0, prober=prober)
        monitor.set({A: FAST})
        first = monitor.revision
        task = asyncio.create_task(monitor.run())
        try:
            # The first check confirms the assumed-up state: no transition, but a new reason.
            await until(lambda: reason(monitor, A) == "first check passed: connected")
            assert changes == [] and monitor.revision > first
            settled = monitor.revision
            await asyncio.sleep(0.05)  # ten more passing probes
            assert monitor.revision == settled
            monitor.set({A: FAST})  # the same set: nothing to show differently
            assert monitor.revision == settled
            monitor.set({A: FAST, B: FAST})
            assert monitor.revision > settled
            settled = monitor.revision
            monitor.set({A: FAST, B: HealthCheck(type=CheckType.NONE)})
            assert monitor.revision > settled
            settled = monitor.revision
            healthy[A.address] = False
            await until(lambda: bool(changes))
            assert monitor.revision > settled
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
