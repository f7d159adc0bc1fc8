"""The supervisor: a task that dies ends everything promptly; a task that ignores cancellation
cannot hold the process (it is reported after the grace period)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from gatelb.agent.runtime import raise_nofile, supervise


async def forever() -> None:
    await asyncio.Event().wait()


async def dies() -> None:
    await asyncio.sleep(0.01)
    raise OSError(24, "Too many open files")


async def stubborn() -> None:
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)


def test_a_task_that_dies_stops_everything_at_once(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[bool, float]:
        t0 = time.monotonic()
        ok = await supervise({"reconcile": dies(), "health": forever()}, asyncio.Event(), grace_s=1.0)
        return ok, time.monotonic() - t0

    ok, took = asyncio.run(main())
    assert not ok and took < 0.5
    assert "task-died" in caplog.text


def test_a_task_that_ignores_cancellation_does_not_hold_the_stop(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[bool, float]] = []

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        t0 = time.monotonic()
        ok = await supervise({"stuck": stubborn(), "fine": forever()}, stop, grace_s=0.3)
        seen.append((ok, time.monotonic() - t0))
        for t in asyncio.all_tasks():
            if t.get_name() == "stuck":
                t.get_coro().close()  # type: ignore[union-attr]  # let asyncio.run finish

    with contextlib.suppress(RuntimeError):  # asyncio.run may complain about the closed coroutine
        asyncio.run(main())
    assert seen and not seen[0][0] and 0.3 <= seen[0][1] < 1.0, seen
    assert "shutdown-stuck" in caplog.text


def test_raise_nofile_never_lowers_the_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        before, after = raise_nofile()
        assert before == 256 and after == resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 256
        assert after == min(hard, 1 << 20) or hard == resource.RLIM_INFINITY
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
