"""Disk full while the daemon saves its state: it logs, keeps serving, and retries until the
write succeeds (agent/record.py)."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from gatelb.agent import record
from gatelb.agent.applied import JsonMemo
from gatelb.agent.record import RecordWriter
from gatelb.agent.statefile import StateStore, StoredState
from gatelb.model import SyncedState


class FullDisk(StateStore):
    """A store whose first `failures` saves fail with ENOSPC, as on a full disk."""

    def __init__(self, directory: Path, failures: int) -> None:
        super().__init__(directory)
        self.left = failures
        self.attempts = 0

    def save(self, state: StoredState, memo: JsonMemo | None = None) -> None:
        self.attempts += 1
        if self.left > 0:
            self.left -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        super().save(state, memo)


def synced(generation: int) -> SyncedState:
    return SyncedState(generation=generation, load_balancers={}, origins={}, addresses={}, pools=(),
                       pool_of={}, services={}, errors={})


def test_a_full_disk_is_retried_and_the_writer_keeps_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(record, "SAVE_INTERVAL_S", 0.01)
    store = FullDisk(tmp_path, failures=3)
    writer = RecordWriter(store, ("file x",))

    async def main() -> None:
        task = asyncio.create_task(writer.run())
        writer.set(synced(7))
        async with asyncio.timeout(5):
            while not store.path.exists():
                assert not task.done(), task
                await asyncio.sleep(0.01)
        writer.set(synced(8))  # and it goes on after the disk recovered
        async with asyncio.timeout(5):
            while (stored := store.load()).applied is None or stored.applied.generation != 8:
                await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert store.attempts >= 5 and writer.failures == 0
    assert caplog.text.count("state-save-failed") == 3


def test_the_writer_ends_when_cancelled_as_a_state_arrives(tmp_path: Path) -> None:
    """A stop that coincides with a last set(): with asyncio.wait_for (Python 3.11) the task lost
    the cancellation and never ended, so the daemon's shutdown took the full grace period and
    exited 1 ("shutdown-stuck")."""
    writer = RecordWriter(StateStore(tmp_path), ("file x",))

    async def main() -> None:
        task = asyncio.create_task(writer.run())
        await asyncio.sleep(0.01)  # waiting for a state
        writer.set(synced(1))
        task.cancel()  # in the same step
        done, _ = await asyncio.wait({task}, timeout=1.0)
        assert done, "the writer did not end when cancelled"
        assert task.cancelled()

    asyncio.run(main())
