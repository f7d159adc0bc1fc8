"""agent/guard.py without a kernel: which commits and generations lead to a repair. The netns tier
(tests/netns/test_kernel_repair.py) proves the same against real notifications."""

from __future__ import annotations

import asyncio
from collections import Counter

from gatelb.agent.guard import KernelGuard
from gatelb.kernel.monitor import Commit
from gatelb.kernel.nft import OWN_COMMITTERS


class FakeReconciler:
    def __init__(self, expected: int | None) -> None:
        self.expected_generation = expected
        self.resyncs: list[str] = []

    def resync(self, reason: str) -> None:
        self.resyncs.append(reason)


def commit(pid: int, tables: dict[tuple[str, str], Counter[str]]) -> Commit:
    return Commit(portid=pid, pid=pid, process="nft", tables=tables)


def test_foreign_commit_on_our_table_resyncs_and_own_does_not() -> None:
    rec = FakeReconciler(7)
    guard = KernelGuard(rec, lambda: 7, None)
    OWN_COMMITTERS.note(424242)
    guard.note(commit(424242, {("inet", "gatelb"): Counter({"element added": 3})}))
    assert rec.resyncs == []
    guard.note(commit(515151, {("inet", "gatelb"): Counter({"table deleted": 1})}))
    guard.note(commit(515151, {("inet", "gatelb"): Counter({"rule added": 1})}))
    guard.note(commit(515151, {("inet", "other"): Counter({"table deleted": 1})}))
    assert rec.resyncs == ["table-deleted", "table-changed"]


def check(expected: int | None, kernel: int | None) -> list[str]:
    rec = FakeReconciler(expected)
    guard = KernelGuard(rec, lambda: kernel, None)
    asyncio.run(guard._check_generation())
    return rec.resyncs


def test_generation_check() -> None:
    assert check(5, 5) == []
    assert check(5, None) == ["table-missing"]
    assert check(5, 9) == ["drift"]
    assert check(None, None) == []  # a round is running, or nothing applied yet


def test_generation_check_ignores_a_round_that_ran_meanwhile() -> None:
    rec = FakeReconciler(5)

    def read() -> int:
        rec.expected_generation = 6  # our own round committed while the kernel was read
        return 6

    asyncio.run(KernelGuard(rec, read, None)._check_generation())
    assert rec.resyncs == []
