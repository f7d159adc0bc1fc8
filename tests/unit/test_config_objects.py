"""Configuration kinds other than IPPool and L4LB (announcements, DNS providers) travel from the
file source through the reconciler to consumers, with the same rules as everything else:
duplicates across files are errors, a bad one changes nothing, removal is a change."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gatelb.agent.engine import DataplaneSync
from gatelb.agent.reconciler import Reconciler
from gatelb.kernel.fake import FakeNft
from gatelb.model import ConfigObject, ObjectRef, SyncedState
from gatelb.sources.file import FileSource, loader


@dataclass(frozen=True)
class Widget(ConfigObject):
    KIND: ClassVar[str] = "Widget"
    size: int = 0


def parse_widget(raw: dict[str, Any]) -> tuple[ConfigObject | None, list[tuple[str, str]]]:
    size = (raw.get("spec") or {}).get("size")
    if not isinstance(size, int) or size < 1:
        return None, [("spec.size", f"{size!r} is not a positive integer")]
    return Widget(name=raw["metadata"]["name"], size=size), []


def widget(name: str, size: object) -> str:
    return f"apiVersion: gatelb.io/v1alpha1\nkind: Widget\nmetadata: {{name: {name}}}\nspec: {{size: {size}}}\n"


class Recorder:
    def __init__(self) -> None:
        self.states: list[SyncedState] = []

    def set(self, state: SyncedState) -> None:
        self.states.append(state)


@pytest.fixture(autouse=True)
def widget_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(loader.CONFIG_KINDS, "Widget", parse_widget)


def test_config_objects_reach_consumers_and_follow_edits(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(widget("w1", 3))
    (tmp_path / "b.yaml").write_text(widget("w2", 5))

    async def go() -> None:
        src = FileSource(tmp_path, watch=False)
        rec = Recorder()
        r = Reconciler([src], DataplaneSync(FakeNft(), indexed=True), consumers=[rec])
        await src.run(r.notifier(src))
        await r.round()
        assert rec.states[-1].config_of(Widget) == {"w1": Widget("w1", 3), "w2": Widget("w2", 5)}
        assert rec.states[-1].config_changed

        (tmp_path / "b.yaml").write_text(widget("w2", 6))
        src.refresh([str(tmp_path / "b.yaml")])
        r.notifier(src)("file")
        await r.round()
        assert rec.states[-1].config_of(Widget)["w2"].size == 6

        # the same name in two files: an error naming both, nothing changes
        (tmp_path / "c.yaml").write_text(widget("w1", 9))
        src.refresh([str(tmp_path / "c.yaml")])
        r.notifier(src)("file")
        report = await r.run_round()
        assert report is not None and report.rejected
        assert "Widget w1 is defined in more than one file" in str(next(iter(report.rejected.values()))[0])
        assert rec.states[-1].config_of(Widget)["w1"].size == 3

        # a bad one is rejected with the field named
        (tmp_path / "c.yaml").write_text(widget("w3", 0))
        src.refresh([str(tmp_path / "c.yaml")])
        r.notifier(src)("file")
        report = await r.run_round()
        assert report is not None
        assert "Widget w3: spec.size: 0 is not a positive integer" in [
            str(e) for errs in report.rejected.values() for e in errs]

        # removal is a change like any other
        (tmp_path / "c.yaml").unlink()
        (tmp_path / "a.yaml").unlink()
        src.refresh([str(tmp_path / "c.yaml"), str(tmp_path / "a.yaml")])
        r.notifier(src)("file")
        await r.round()
        state = rec.states[-1]
        assert set(state.config) == {ObjectRef("Widget", "w2")} and state.config_changed

    asyncio.run(go())
