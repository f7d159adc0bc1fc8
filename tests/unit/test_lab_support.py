"""Pure parts of the lab support: namespace-name parsing (what lab cleanup may touch) and the
conftest rule that a skipped netns test fails under CI=true."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from gatelb.lab.naming import LabName, parse
from gatelb.lab.results import Attempt, ClientResult


def test_only_lab_names_parse() -> None:
    assert parse("glb1234-0a1f-gw") == LabName(pid=1234, token="0a1f", role="gw")
    assert parse("glb1234-0a1f-be12") == LabName(pid=1234, token="0a1f", role="be12")
    assert LabName(pid=1234, token="0a1f", role="gw").lab_id == "glb1234-0a1f"
    others = ("glbdbg", "glbk1234", "glbh1234", "glb1234-0a1f-router", "glb1234-xyzw-gw", "x-glb1-0000-gw")
    for other in others:
        assert parse(other) is None, other


def test_client_result_round_trips_through_json() -> None:
    attempts = [Attempt(ok=True, backend="be1", seen_source="192.0.2.10", status=200),
                Attempt(ok=True, backend="be2", seen_source="192.0.2.10", status=500),
                Attempt(ok=False, error="timeout")]
    result = ClientResult.from_attempts("http", "203.0.113.1", 80, attempts)
    again = ClientResult.from_json(result.to_json())
    assert again == result
    assert (again.ok, again.failed) == (2, 1)
    assert again.per_backend == {"be1": 1, "be2": 1}
    assert again.statuses == {200: 1, 500: 1}
    assert again.failures == {"timeout": 1}
    assert again.sources == {"192.0.2.10"}


def test_ci_turns_skipped_netns_tests_into_failures(tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    (tests / "netns").mkdir(parents=True)
    (tests / "unit").mkdir()
    shutil.copy(Path(__file__).parents[1] / "conftest.py", tests / "conftest.py")
    skipping = "import pytest\n\ndef test_{0}() -> None:\n    pytest.skip('not here')\n"
    (tests / "netns" / "test_n.py").write_text(skipping.format("n"))
    (tests / "unit" / "test_u.py").write_text(skipping.format("u"))
    env = {**os.environ, "CI": "true"}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", str(tests)]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 skipped" in done.stdout
    assert "FAILED" in done.stdout and "test_n.py::test_n" in done.stdout
