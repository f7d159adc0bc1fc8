"""Reloads must never hurt: a content that loses (most of) its load balancers in one step is held
back, applied only when it stays so; anything else passes at once."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from gatelb.sources.base import Contribution
from gatelb.sources.file.directory import FileSource, mass_removal

from .test_file_source import Rounds, lb, pool, put

HOLD = 0.3


def test_what_counts_as_a_mass_removal() -> None:
    assert mass_removal(1, 0) and mass_removal(10, 0) and mass_removal(10, 4) and mass_removal(4, 1)
    assert not mass_removal(0, 0) and not mass_removal(3, 1) and not mass_removal(10, 5)
    assert not mass_removal(10, 12) and not mass_removal(2, 1)


def run(path: Path, body, hold_s: float = HOLD) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        source = FileSource(path, hold_s=hold_s)
        rounds = Rounds(source)
        task = asyncio.create_task(source.run(rounds.notify))
        try:
            first = await rounds.next()
            assert first.full
            await body(rounds)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


async def quiet(rounds: Rounds, seconds: float) -> list[Contribution]:
    """Every contribution handed over within `seconds`."""
    got: list[Contribution] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            got.append(await rounds.next(timeout=left))
        except TimeoutError:
            break
    return got


def test_a_truncated_file_rewritten_at_once_removes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gatelb")
    f = tmp_path / "lbs.yaml"
    put(f, pool(), lb("a", 80), lb("b", 81))

    async def body(rounds: Rounds) -> None:
        f.write_text("")  # what `: > file` (or an editor's first write) leaves for a moment
        await asyncio.sleep(HOLD / 2)
        put(f, pool(), lb("a", 80), lb("b", 82))
        got = await quiet(rounds, HOLD * 3)
        assert [dict(c.load_balancers) for c in got if c.load_balancers] == [
            {"b": rounds.source.desired().load_balancers[1]}]  # only the real change, never a removal

    run(f, body)
    assert "reload-held" in caplog.text and "reload-hold-ended" in caplog.text


def test_an_empty_file_that_stays_empty_removes_everything_after_the_hold(tmp_path: Path) -> None:
    f = tmp_path / "lbs.yaml"
    put(f, pool(), lb("a", 80), lb("b", 81))

    async def body(rounds: Rounds) -> None:
        emptied = time.monotonic()
        f.write_text("")
        c = await rounds.next(timeout=5)
        assert dict(c.load_balancers) == {"a": None, "b": None}
        assert time.monotonic() - emptied >= HOLD

    run(f, body)


def test_a_directory_losing_most_files_is_held_too_and_small_changes_are_not(tmp_path: Path) -> None:
    put(tmp_path / "pool.yaml", pool())
    for i in range(6):
        put(tmp_path / f"lb{i}.yaml", lb(f"lb{i}", 1000 + i))

    async def body(rounds: Rounds) -> None:
        t0 = time.monotonic()
        (tmp_path / "lb5.yaml").unlink()  # one of six: at once
        c = await rounds.next()
        assert dict(c.load_balancers) == {"lb5": None} and time.monotonic() - t0 < HOLD
        t0 = time.monotonic()
        for i in range(4):  # four of five: held
            (tmp_path / f"lb{i}.yaml").unlink()
        c = await rounds.next()
        assert set(c.load_balancers) == {"lb0", "lb1", "lb2", "lb3"}
        assert time.monotonic() - t0 >= HOLD

    run(tmp_path, body)


def test_without_a_hold_an_empty_file_applies_at_once(tmp_path: Path) -> None:
    f = tmp_path / "lbs.yaml"
    put(f, pool(), lb("a", 80))

    async def body(rounds: Rounds) -> None:
        t0 = time.monotonic()
        f.write_text("")
        c = await rounds.next()
        assert dict(c.load_balancers) == {"a": None} and time.monotonic() - t0 < 1.0

    run(f, body, hold_s=0)
