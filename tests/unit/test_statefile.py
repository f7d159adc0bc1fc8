"""State file: round trip, atomic replacement, clear errors for damaged files."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from pathlib import Path

import pytest

from gatelb.agent.applied import AppliedRecord
from gatelb.agent.statefile import StateFileError, StateStore, StoredState, state_dir
from gatelb.model import (
    AddressRange,
    Affinity,
    Backend,
    CheckType,
    HealthCheck,
    IPPool,
    LoadBalancer,
    ObjectRef,
    Protocol,
    ResolvedState,
    Service,
)

ip = ipaddress.ip_address
WEB = LoadBalancer(name="web", port=53, protocol=Protocol.UDP, backends=(Backend(ip("198.51.100.11"), 5353, 3),),
                   affinity=Affinity(60), source_ranges=(ipaddress.ip_network("192.0.2.0/24"),),
                   check=HealthCheck(CheckType.UDP, payload="ping", expect="pong", expected_statuses=((200, 204),)))
SAMPLE = StoredState(
    allocations={"web": "203.0.113.10", "api-v6": "2001:db8:100::1"},
    pools={"web": "public", "api-v6": None},
    applied=AppliedRecord(
        generation=3,
        services=ResolvedState((Service("web", ip("203.0.113.10"), Protocol.UDP, 53, WEB.backends,
                                        affinity=Affinity(60)),)),
        load_balancers=(WEB,),
        pools=(IPPool("public", (AddressRange(ip("203.0.113.0"), ip("203.0.113.15")),), avoid_buggy_ips=True),),
        origins={"web": ObjectRef("file", "/etc/gatelb/web.yaml")},
        sources=("file /etc/gatelb",), health={"web|198.51.100.11|5353": {"state": "up", "since": 1.5, "reason": ""}},
        errors=("L4LB x: spec.pool: unknown IPPool 'y'",), applied_at=12.5, daemon=True, info={"leader": True}),
)


def test_missing_file_is_an_empty_state(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "nowhere").load() == StoredState()
    assert not (tmp_path / "nowhere").exists()  # loading creates nothing


def test_round_trip_and_file_format(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.save(SAMPLE)
    assert store.load() == SAMPLE
    data = json.loads(store.path.read_text())
    assert data["version"] == 2
    assert data["allocations"] == SAMPLE.allocations and data["pools"] == SAMPLE.pools
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600  # the whole configuration: private
    assert os.listdir(store.directory) == ["state.json"]  # no temp file left behind


def test_save_replaces_the_previous_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(SAMPLE)
    store.save(StoredState(allocations={"db": "203.0.113.1"}))
    assert store.load() == StoredState(allocations={"db": "203.0.113.1"}, pools={}, applied=None)


def test_not_serialisable_applied_writes_nothing(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(SAMPLE)
    assert SAMPLE.applied is not None
    bad = AppliedRecord(generation=1, services=ResolvedState(), info={"when": object()})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        store.save(StoredState(applied=bad))
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        store.save(StoredState(applied=AppliedRecord(generation=1, services=ResolvedState(), applied_at=float("nan"))))
    assert store.load() == SAMPLE


def test_failed_rename_keeps_the_old_file_and_removes_the_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path)
    store.save(SAMPLE)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        store.save(StoredState())
    monkeypatch.undo()
    assert store.load() == SAMPLE
    assert os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            "{not json",
            r"corrupt \(not JSON: Expecting property name enclosed in double quotes at line 1, column 2\)",
        ),
        ("", r"corrupt \(not JSON: Expecting value at line 1, column 1\)"),
        ("[1, 2]", r"expected a JSON object"),
        ('{"version": 3}', r"unsupported version 3 \(this gatelb reads version 2\)"),
        ('{"version": 2, "applied": {"generation": 1}}', r"'applied' is damaged \(KeyError: 'services'\)"),
        ('{"allocations": {}}', r"unsupported version None"),
        ('{"version": 1, "allocations": {"web": 5}}', r"'allocations' must map names to addresses"),
        ('{"version": 1, "allocations": []}', r"'allocations' must map names to addresses"),
        ('{"version": 1, "pools": {"web": 1}}', r"'pools' must map names to names"),
        ('{"version": 1, "applied": [1]}', r"'applied' must be an object or null"),
    ],
)
def test_damaged_file_gives_an_error_naming_the_file(tmp_path: Path, content: str, problem: str) -> None:
    store = StateStore(tmp_path)
    store.path.write_text(content)
    with pytest.raises(StateFileError, match=rf"^{tmp_path}/state.json: {problem}"):
        store.load()


def test_a_version_1_file_keeps_its_allocations_and_drops_the_free_form_record(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.write_text('{"version": 1, "allocations": {"web": "203.0.113.10"}, "pools": {"web": "public"}, '
                          '"applied": {"generation": 4, "sourceText": "..."}}')
    assert store.load() == StoredState({"web": "203.0.113.10"}, {"web": "public"}, None)


def test_minimal_file_defaults(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.write_text('{"version": 1}')
    assert store.load() == StoredState()


def test_state_dir_precedence() -> None:
    assert state_dir("/x", {"GATELB_STATE_DIR": "/y"}) == Path("/x")
    assert state_dir(None, {"GATELB_STATE_DIR": "/y"}) == Path("/y")
    assert state_dir(None, {}) == Path("/var/lib/gatelb")


def test_constructor_does_no_io(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()
    store.save(StoredState())
    assert store.path.is_file()


def test_the_daemons_memoised_save_writes_the_same_document(tmp_path: Path) -> None:
    """The daemon's writer splices the memoised record after the other keys: the file must read
    back the same as a plain save, released allocations included."""
    from dataclasses import replace

    from gatelb.agent.applied import JsonMemo
    from gatelb.agent.statefile import Released

    state = replace(SAMPLE, released={"gone": Released("203.0.113.9", 5.0)})
    plain, memoised = StateStore(tmp_path / "a"), StateStore(tmp_path / "b")
    plain.save(state)
    memo = JsonMemo()
    memoised.save(state, memo=memo)
    memoised.save(state, memo=memo)  # the second save reuses the memo's text
    assert memoised.load() == plain.load() == state
    assert json.loads(memoised.path.read_text()) == json.loads(plain.path.read_text())
