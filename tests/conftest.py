"""Shared test configuration.

- Tests under ``tests/netns/`` are marked ``netns`` (and under ``tests/scenarios/`` ``scenario``)
  from their path, so nobody has to remember the marker.
- netns/scenario tests are skipped when we are not root or ``ip netns`` does not work, BUT with
  ``CI=true`` any skip of such a test is reported as a failure (design rule: in CI a skipped netns
  test is a failure, not a pass).
- Fixtures: ``lab`` (a `gatelb.lab.Lab` with 3 backends, closed after the test), ``make_lab``
  (a factory for other backend counts; every lab it made is closed after the test) and
  ``bgp_lab`` (the BGP scenario: FRR router, switch, two gateway namespaces, two backends).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from gatelb.lab.bgp import ROUTER_BFDD, ROUTER_BGPD, BgpLab
from gatelb.lab.topology import Lab

TESTS_DIR = Path(__file__).resolve().parent
MARK_BY_DIR = {"netns": "netns", "scenarios": "scenario"}
MUST_RUN_IN_CI = ("netns", "scenario")


@functools.cache
def netns_unavailable() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "netns tests need root"
    if shutil.which("ip") is None:
        return "netns tests need iproute2 (`ip`)"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns` does not work here: {exc}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            top = Path(item.path).resolve().relative_to(TESTS_DIR).parts[0]
        except (ValueError, IndexError):
            continue
        if top in MARK_BY_DIR:
            item.add_marker(getattr(pytest.mark, MARK_BY_DIR[top]))


def _must_run_in_ci(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(name) for name in MUST_RUN_IN_CI)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _must_run_in_ci(item) and (reason := netns_unavailable()):
        pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if (report.skipped and os.environ.get("CI") == "true" and _must_run_in_ci(item)
            and not hasattr(report, "wasxfail")):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: a skipped netns/scenario test is a failure. Skip reason: {reason}"
    return report


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    """``make_lab(backends=N)`` -> a Lab that is up; all are closed after the test."""
    labs: list[Lab] = []

    def make(backends: int = 3) -> Lab:
        if reason := netns_unavailable():
            pytest.skip(reason)
        lab = Lab(backends=backends)
        labs.append(lab)
        return lab.up()

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()


@pytest.fixture
def lab(make_lab: Callable[..., Lab]) -> Lab:
    """A `Lab` with 3 backends (no backend processes yet: call ``lab.start_backends()``)."""
    return make_lab()


@contextlib.contextmanager
def running_bgp_lab(backends: int = 2, router_bgpd: str = ROUTER_BGPD) -> Iterator[BgpLab]:
    """The BGP scenario of `gatelb.lab.bgp` with the upstream router's FRR running (its bgpd
    configured by `router_bgpd`) and `backends` backends serving; the test starts the gateways."""
    if reason := netns_unavailable():
        pytest.skip(reason)
    if shutil.which("vtysh") is None:
        pytest.fail("FRR is not installed (apt-get install frr frr-pythontools; ./quickstart setup does)")
    with BgpLab(backends=backends) as lab:
        lab.start_backends(udp=None, http=None)
        lab.start_router(router_bgpd, ROUTER_BFDD)
        yield lab


@pytest.fixture
def bgp_lab() -> Iterator[BgpLab]:
    """`running_bgp_lab()`: two backends, the standard router."""
    with running_bgp_lab() as lab:
        yield lab
