"""Allocations of removed load balancers are kept (with a time and an expiry) in the state
record, so an object that returns gets its address back, after a restart too."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from gatelb.agent import commands
from gatelb.agent.daemon import Daemon, Parts
from gatelb.agent.statefile import Released, StateStore, StoredState, released_after
from gatelb.kernel.fake import FakeNft
from gatelb.sources.static import StaticSource

API = "gatelb.io/v1alpha1"


def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": spec}


def config(tmp_path: Path, *names: str) -> str:
    docs = [doc("IPPool", "p", {"addresses": ["203.0.113.10-203.0.113.20"]})]
    docs += [doc("L4LB", n, {"frontend": {"port": 80}, "backend": ["198.51.100.11:8080"]}) for n in names]
    path = tmp_path / f"{'-'.join(names) or 'none'}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def test_released_after_records_releases_and_expires_them() -> None:
    got = released_after({"a": "203.0.113.10", "b": "203.0.113.11"}, {"old": Released("203.0.113.30", 0.0)},
                         {"b": object()}, at=100.0, keep_s=50.0)
    assert got == {"a": Released("203.0.113.10", 100.0)}  # "old" expired
    back = released_after({"b": "x"}, got, {"a": object(), "b": object()}, at=101.0, keep_s=50.0)
    assert back == {}  # a came back: no longer a release


def test_a_returning_load_balancer_gets_its_address_back_from_the_record(tmp_path: Path) -> None:
    ctx = commands.Context(StateStore(tmp_path / "state"), FakeNft())
    commands.apply_path(ctx, config(tmp_path, "a", "b", "c"))
    first = ctx.store.load().allocations
    assert first == {"a": "203.0.113.10", "b": "203.0.113.11", "c": "203.0.113.12"}
    commands.apply_path(ctx, config(tmp_path, "c"))
    stored = ctx.store.load()
    assert set(stored.released) == {"a", "b"} and stored.released["b"].ip == "203.0.113.11"
    # A new process (each apply is one) and b comes back: .11 again, not the lowest free .10.
    commands.apply_path(ctx, config(tmp_path, "b", "c"))
    stored = ctx.store.load()
    assert stored.allocations["b"] == "203.0.113.11" and set(stored.released) == {"a"}


def test_expired_releases_are_no_hints(tmp_path: Path) -> None:
    stored = StoredState(allocations={"x": "203.0.113.1"},
                         released={"old": Released("203.0.113.2", 0.0), "new": Released("203.0.113.3", 990.0)})
    assert stored.hints(now=1000.0, keep_s=100.0) == {"x": "203.0.113.1", "new": "203.0.113.3"}


def test_the_daemon_gives_back_addresses_released_before_a_restart(tmp_path: Path) -> None:
    ctx = commands.Context(StateStore(tmp_path / "state"), FakeNft())
    commands.apply_path(ctx, config(tmp_path, "a", "b", "c"))
    commands.apply_path(ctx, config(tmp_path, "c"))  # a and b released (.10 and .11)
    from gatelb.sources.standalone import load_text

    desired = load_text(Path(config(tmp_path, "b", "c")).read_text())
    daemon = Daemon(Parts(sources=[StaticSource("file b-c", desired)]), ctx.store, ctx.nft, health=False)

    async def main() -> None:
        daemon.adopt_previous()
        source = daemon.parts.sources[0]
        await source.run(daemon.reconciler.notifier(source))
        assert await daemon.reconciler.round()

    asyncio.run(main())
    state = daemon.reconciler.last_state
    assert state is not None and str(state.addresses["b"]) == "203.0.113.11"
