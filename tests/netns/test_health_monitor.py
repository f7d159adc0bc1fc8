"""HealthMonitor against real servers: kill one, it is reported down within the detection window
(interval x fall + timeout); bring it back, it is reported up after `rise` successes."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterator

import pytest

from gatelb.health import HealthChange, HealthMonitor, Status, TargetKey
from gatelb.model import CheckType, HealthCheck

from .health_helpers import probe_namespace, run_in_netns

INTERVAL_MS, TIMEOUT_MS, FALL, RISE = 100, 100, 3, 2
WINDOW_S = (INTERVAL_MS * FALL + TIMEOUT_MS) / 1000  # the promised detection time
SLACK_S = 0.15  # event-loop and scheduler delays on a busy 2-core machine


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    with probe_namespace("m") as name:
        yield name


def fast(kind: CheckType, timeout_ms: int = TIMEOUT_MS) -> HealthCheck:
    return HealthCheck(type=kind, interval_ms=INTERVAL_MS, timeout_ms=timeout_ms, rise=RISE, fall=FALL)


class Watcher:
    """Collects transitions with the time they were reported."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, HealthChange]] = []
        self.event = asyncio.Event()

    def __call__(self, batch: list[HealthChange]) -> None:
        self.seen.extend((time.monotonic(), c) for c in batch)
        self.event.set()

    async def wait_for(self, key: TargetKey, status: Status, limit_s: float = 3.0) -> float:
        async with asyncio.timeout(limit_s):
            while True:
                for at, change in self.seen:
                    if change.key == key and change.status is status:
                        return at
                self.event.clear()
                await self.event.wait()


class HttpBackend:
    """A tiny HTTP server whose answers can be switched: "ok" (200), "error" (500), "hang"."""

    def __init__(self, host: str) -> None:
        self.host, self.mode, self.port = host, "ok", 0
        self.server: asyncio.Server | None = None
        self.released = asyncio.Event()  # ends every hanging handler, so none outlives the test

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.released.set()
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if self.mode == "hang":
                await self.released.wait()
            code = b"200 OK" if self.mode == "ok" else b"500 Internal Server Error"
            writer.write(b"HTTP/1.1 " + code + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def kill_and_restart(host: str, kind: CheckType) -> tuple[float, float, str]:
    backend, other = HttpBackend(host), HttpBackend(host)
    await backend.start()
    await other.start()
    key = TargetKey("web", ipaddress.ip_address(host), backend.port)
    bystander = TargetKey("web", ipaddress.ip_address(host), other.port)
    watcher = Watcher()
    monitor = HealthMonitor(watcher)
    monitor.set({key: fast(kind), bystander: fast(kind)})
    task = asyncio.create_task(monitor.run(), name="health")
    try:
        await asyncio.sleep(INTERVAL_MS / 1000 * 3)  # steady state: both checked and up
        assert monitor.is_up(key) and monitor.is_up(bystander) and watcher.seen == []
        killed = time.monotonic()
        await backend.stop()
        down_after = await watcher.wait_for(key, Status.DOWN) - killed
        reason = next(c.reason for _, c in watcher.seen if c.key == key)
        await backend.start()  # same port
        restarted = time.monotonic()
        up_after = await watcher.wait_for(key, Status.UP) - restarted
        assert monitor.is_up(bystander) and all(c.key == key for _, c in watcher.seen)
        return down_after, up_after, reason
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await other.stop()
        await backend.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("kind", [CheckType.TCP, CheckType.HTTP])
def test_killed_backend_goes_down_in_the_window_and_comes_back(ns: str, host: str, kind: CheckType) -> None:
    down_after, up_after, reason = run_in_netns(ns, kill_and_restart(host, kind))
    assert reason == f"{FALL}/{FALL} failures: connect refused"
    assert down_after < WINDOW_S + SLACK_S, down_after
    # Up needs `rise` successes: the first may come at once, the rest an interval apart.
    assert up_after < INTERVAL_MS / 1000 * RISE + SLACK_S, up_after


async def misbehave(mode: str, timeout_ms: int = TIMEOUT_MS) -> tuple[float, str]:
    backend = HttpBackend("127.0.0.1")
    await backend.start()
    key = TargetKey("web", ipaddress.ip_address("127.0.0.1"), backend.port)
    watcher = Watcher()
    monitor = HealthMonitor(watcher)
    monitor.set({key: fast(CheckType.HTTP, timeout_ms)})
    task = asyncio.create_task(monitor.run(), name="health")
    try:
        await asyncio.sleep(INTERVAL_MS / 1000 * 3)
        assert monitor.is_up(key)
        broke = time.monotonic()
        backend.mode = mode  # the port stays open: only the HTTP check can tell
        down_after = await watcher.wait_for(key, Status.DOWN) - broke
        row = monitor.snapshot()[0]
        return down_after, row.reason
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await backend.stop()


def test_http_500_takes_backend_down_although_port_is_open(ns: str) -> None:
    down_after, reason = run_in_netns(ns, misbehave("error"))
    assert reason == f"{FALL}/{FALL} failures: HTTP 500"
    assert down_after < WINDOW_S + SLACK_S, down_after


@pytest.mark.parametrize("timeout_ms", [TIMEOUT_MS, 3 * TIMEOUT_MS])
def test_hanging_backend_goes_down_by_timeouts_within_the_window(ns: str, timeout_ms: int) -> None:
    down_after, reason = run_in_netns(ns, misbehave("hang", timeout_ms))
    assert reason == f"{FALL}/{FALL} failures: HTTP response timeout after {timeout_ms} ms"
    # With a timeout longer than the interval, probes overlap: still interval x fall + timeout,
    # not fall x timeout.
    assert down_after < (INTERVAL_MS * FALL + timeout_ms) / 1000 + SLACK_S, down_after
