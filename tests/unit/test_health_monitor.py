"""HealthMonitor bookkeeping with a scripted prober: no sockets, no timing assertions."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from gatelb.health import HealthChange, HealthMonitor, ProbeResult, Status, TargetKey
from gatelb.model import CheckType, HealthCheck, IPAddress

A = TargetKey("web", ipaddress.ip_address("192.0.2.10"), 80)
B = TargetKey("web", ipaddress.ip_address("2001:db8::10"), 80)
C = TargetKey("api", ipaddress.ip_address("192.0.2.11"), 8080)
FAST = HealthCheck(type=CheckType.TCP, interval_ms=5, timeout_ms=5, rise=2, fall=3)


class ScriptedProber:
    """Answers each target as `healthy[key]` says; records every call; can hold probes at a gate."""

    def __init__(self) -> None:
        self.healthy: dict[tuple[IPAddress, int], bool] = {}
        self.calls: list[tuple[IPAddress, int, HealthCheck]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, address: IPAddress, port: int, check: HealthCheck) -> ProbeResult:
        self.calls.append((address, port, check))
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        ok = self.healthy.get((address, port), True)
        return ProbeResult(ok, "connected" if ok else "connect refused", 0.1)

    def count(self, key: TargetKey) -> int:
        return sum(1 for a, p, _ in self.calls if (a, p) == (key.address, key.port))


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[HealthChange]] = []

    def __call__(self, batch: list[HealthChange]) -> None:
        self.batches.append(batch)

    @property
    def changes(self) -> list[tuple[TargetKey, Status]]:
        return [(c.key, c.status) for b in self.batches for c in b]


async def until(pred: Callable[[], bool], limit_s: float = 5.0) -> None:
    async with asyncio.timeout(limit_s):
        while not pred():
            await asyncio.sleep(0.001)


def run(body: Callable[[HealthMonitor, ScriptedProber, Recorder], Coroutine[Any, Any, None]]) -> None:
    """Run `body` with a monitor whose run() task is alive, then cancel it and check it cleaned up."""

    async def main() -> None:
        prober, recorder = ScriptedProber(), Recorder()
        monitor = HealthMonitor(recorder, jitter=0.0, prober=prober)
        task = asyncio.create_task(monitor.run(), name="health")
        await asyncio.sleep(0)
        try:
            await body(monitor, prober, recorder)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("health-probe")]
        assert leftovers == []

    asyncio.run(main())


def test_constructor_and_set_start_nothing_without_a_loop() -> None:
    prober = ScriptedProber()
    monitor = HealthMonitor(Recorder(), prober=prober)
    monitor.set({A: FAST, B: FAST})  # no running loop needed: nothing is started before run()
    assert monitor.is_up(A) and monitor.is_up(B)
    assert [r.key for r in monitor.snapshot()] == [A, B]
    assert "assumed up" in monitor.snapshot()[0].reason
    assert prober.calls == []


def test_first_set_is_assumed_up_and_later_additions_wait() -> None:
    async def body(monitor: HealthMonitor, prober: ScriptedProber, rec: Recorder) -> None:
        monitor.set({A: FAST})
        assert monitor.is_up(A)
        monitor.set({A: FAST, C: FAST})
        assert not monitor.is_up(C)  # added while running: no traffic before a successful check
        await until(lambda: monitor.is_up(C))
        assert (C, Status.UP) in rec.changes
        assert (A, Status.UP) not in rec.changes  # assumed up and confirmed: not a transition

    run(body)


def test_fall_and_rise_are_reported_with_reasons() -> None:
    async def body(monitor: HealthMonitor, prober: ScriptedProber, rec: Recorder) -> None:
        monitor.set({A: FAST})
        await until(lambda: prober.count(A) >= 2)
        prober.healthy[(A.address, A.port)] = False
        await until(lambda: (A, Status.DOWN) in rec.changes)
        down = next(c for b in rec.batches for c in b if c.status is Status.DOWN)
        assert (down.previous, down.reason) == (Status.UP, "3/3 failures: connect refused")
        assert not monitor.is_up(A)
        row = monitor.snapshot()[0]
        assert row.last is not None and row.last.detail == "connect refused"
        prober.healthy[(A.address, A.port)] = True
        await until(lambda: monitor.is_up(A))
        assert rec.changes[-1] == (A, Status.UP)
        assert monitor.snapshot()[0].reason == "2/2 successes"

    run(body)


def test_transitions_in_one_tick_come_in_one_batch() -> None:
    async def body(monitor: HealthMonitor, prober: ScriptedProber, rec: Recorder) -> None:
        prober.gate = asyncio.Event()
        prober.healthy = {(A.address, A.port): False, (B.address, B.port): False}
        monitor.set({A: FAST, B: FAST})
        await until(lambda: len(prober.calls) == 2)  # both probes in flight, held at the gate
        prober.gate.set()
        await until(lambda: bool(rec.batches))
        assert sorted(c.key.sort_key() for c in rec.batches[0]) == [A.sort_key(), B.sort_key()]

    run(body)


def test_removed_targets_stop_and_are_forgotten() -> None:
    async def body(monitor: HealthMonitor, prober: ScriptedProber, rec: Recorder) -> None:
        monitor.set({A: FAST, C: FAST})
        await until(lambda: prober.count(C) >= 2)
        monitor.set({A: FAST})
        with pytest.raises(KeyError):
            monitor.is_up(C)
        seen = prober.count(C)
        await until(lambda: prober.count(A) >= prober.count(C) + 5)
        assert prober.count(C) <= seen + 1  # at most the probe that was already in flight

    run(body)


def test_changed_check_restarts_probing_and_keeps_status() -> None:
    async def body(monitor: HealthMonitor, prober: ScriptedProber, rec: Recorder) -> None:
        monitor.set({A: FAST})
        await until(lambda: prober.count(A) >= 2)
        http = HealthCheck(type=CheckType.HTTP, interval_ms=5, timeout_ms=5, request_path="/ready")
        monitor.set({A: http})
        assert monitor.is_up(A)
        await until(lambda: prober.calls[-1][2] == http)
        assert monitor.snapshot()[0].check is CheckType.HTTP

    run(body)


def test_type_none_is_up_and_never_probed() -> None:
    async def body(monitor: HealthMonitor, prober: ScriptedProber, rec: Recorder) -> None:
        monitor.set({A: FAST})
        prober.healthy[(A.address, A.port)] = False
        await until(lambda: not monitor.is_up(A))
        monitor.set({A: HealthCheck(type=CheckType.NONE), C: HealthCheck(type=CheckType.NONE)})
        assert monitor.is_up(A) and monitor.is_up(C)
        await asyncio.sleep(0.03)
        assert prober.count(C) == 0
        assert monitor.snapshot()[1].reason == "no health check (type none)"

    run(body)


def test_a_failing_callback_does_not_stop_the_monitor(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def explode(batch: list[HealthChange]) -> None:
        calls.append(len(batch))
        raise RuntimeError("agent bug")

    async def main() -> None:
        prober = ScriptedProber()
        monitor = HealthMonitor(explode, jitter=0.0, prober=prober)
        monitor.set({A: FAST})
        task = asyncio.create_task(monitor.run())
        try:
            prober.healthy[(A.address, A.port)] = False
            await until(lambda: not monitor.is_up(A))
            prober.healthy[(A.address, A.port)] = True
            await until(lambda: monitor.is_up(A))
            await until(lambda: len(calls) == 2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="gatelb.health"):
        asyncio.run(main())
    assert "on_change callback failed" in caplog.text
    events = [r.__dict__ for r in caplog.records if r.__dict__.get("event") == "health"]
    assert [(e["lb"], e["state"]) for e in events] == [("web", "down"), ("web", "up")]
    assert events[0]["backend"] == "192.0.2.10:80"


def test_run_twice_is_refused() -> None:
    async def body(monitor: HealthMonitor, prober: ScriptedProber, rec: Recorder) -> None:
        with pytest.raises(RuntimeError, match="already running"):
            await monitor.run()

    run(body)


def test_probes_overlap_when_timeout_exceeds_interval_and_stale_results_are_dropped() -> None:
    slow = HealthCheck(type=CheckType.TCP, interval_ms=5, timeout_ms=1000, rise=2, fall=3)

    class FirstProbeHangs(ScriptedProber):
        async def __call__(self, address: IPAddress, port: int, check: HealthCheck) -> ProbeResult:
            self.calls.append((address, port, check))
            if len(self.calls) == 1:
                assert self.gate is not None
                await self.gate.wait()
                return ProbeResult(False, "connect timeout after 1000 ms", 1000.0)
            return ProbeResult(True, "connected", 0.1)

    async def main() -> None:
        prober = FirstProbeHangs()
        prober.gate = asyncio.Event()
        monitor = HealthMonitor(Recorder(), jitter=0.0, prober=prober)
        monitor.set({A: slow})
        task = asyncio.create_task(monitor.run())
        try:
            await until(lambda: len(prober.calls) >= 4)  # the hanging probe did not hold back the rest
            prober.gate.set()
            await asyncio.sleep(0.01)
            row = monitor.snapshot()[0]
            assert row.last is not None and row.last.detail == "connected"  # the old timeout was ignored
            assert row.failures == 0 and row.status is Status.UP
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_probes_in_flight_are_bounded_per_target_and_in_all() -> None:
    """55 silent targets probed every 5 ms that never answer: never more than 3 probes of one
    target, nor more than the global bound, in flight."""
    silent = HealthCheck(type=CheckType.TCP, interval_ms=5, timeout_ms=2000, rise=2, fall=3)
    keys = [TargetKey("web", ipaddress.ip_address(f"198.51.100.{100 + i}"), 80) for i in range(55)]

    async def main() -> None:
        prober = ScriptedProber()
        prober.gate = asyncio.Event()  # never set: every probe hangs
        monitor = HealthMonitor(Recorder(), jitter=0.0, prober=prober, per_target=3, max_in_flight=100)
        monitor.set(dict.fromkeys(keys, silent))
        task = asyncio.create_task(monitor.run())
        try:
            await until(lambda: monitor.skipped > 55 * 5)
            assert monitor.in_flight == len(prober.calls) == 100  # the rest wait for a slot
            assert all(sum(1 for a, _, _ in prober.calls if a == k.address) <= 3 for k in keys)
            tasks = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__.endswith("_probe_once")]  # type: ignore[union-attr]
            assert len(tasks) == 55 * 3
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_default_bound_follows_the_file_descriptor_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from gatelb.health import monitor as mod

    monkeypatch.setattr(mod.resource, "getrlimit", lambda _: (1024, 1024))
    assert mod.default_max_in_flight() == 512
    monkeypatch.setattr(mod.resource, "getrlimit", lambda _: (1 << 20, 1 << 20))
    assert mod.default_max_in_flight() == mod.MAX_IN_FLIGHT


def test_a_target_recorded_down_starts_down_until_its_first_result() -> None:
    async def body(monitor: HealthMonitor, prober: ScriptedProber, rec: Recorder) -> None:
        prober.gate = asyncio.Event()
        monitor.seed({A: "3/3 failures: connect refused"})
        monitor.set({A: FAST, C: FAST})
        assert not monitor.is_up(A) and monitor.is_up(C)  # C: assumed up, as always at start
        assert "down before the restart" in monitor.snapshot()[1].reason
        prober.gate.set()
        await until(lambda: monitor.is_up(A))  # the first (good) result decides at once
        assert rec.changes[0] == (A, Status.UP)

    run(body)


def test_a_backend_going_down_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gatelb.health")

    async def body(monitor: HealthMonitor, prober: ScriptedProber, rec: Recorder) -> None:
        monitor.set({A: FAST})
        await until(lambda: monitor.snapshot()[0].last is not None)
        prober.healthy[(A.address, A.port)] = False
        await until(lambda: not monitor.is_up(A))

    run(body)
    downs = [r for r in caplog.records if getattr(r, "state", "") == "down"]
    assert downs and all(r.levelno == logging.WARNING for r in downs)
