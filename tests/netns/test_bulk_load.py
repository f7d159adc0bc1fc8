"""A full load into an empty kernel sends its bulk elements over netlink (kernel/nlelements.py):
the kernel must end up with exactly what nft alone would have loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatelb.dataplane import compile_full

from ..unit.test_dataplane import example_state

HERE = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str]]:
    names = (f"glbb{os.getpid()}a", f"glbb{os.getpid()}b")
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)
    try:
        yield names
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], check=False)


LOADER = """
import sys
from gatelb.agent.engine import DataplaneSync
from gatelb.kernel.nft import NftCli
from tests.unit.test_dataplane import example_state
nft = NftCli()
assert nft.bulk_elements
result = DataplaneSync(nft).sync(example_state())
assert result.full and "add element inet gatelb be4" not in result.script, result.script
print("ok")
"""


def listing(ns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"],
                         capture_output=True, text=True, check=True).stdout
    return sorted(out.replace(" th dport", " tcp dport").split())


def test_netlink_bulk_load_equals_nft_load(two_namespaces: tuple[str, str]) -> None:
    bulk_ns, nft_ns = two_namespaces
    done = subprocess.run(["ip", "netns", "exec", bulk_ns, sys.executable, "-c", LOADER],
                          capture_output=True, text=True, cwd=HERE, check=False)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
    subprocess.run(["ip", "netns", "exec", nft_ns, "nft", "-f", "-"], input=compile_full(example_state()),
                   text=True, check=True)
    assert listing(bulk_ns) == listing(nft_ns)


def test_rejected_bulk_batch_leaves_no_table(two_namespaces: tuple[str, str]) -> None:
    ns = two_namespaces[0]
    bad = """
from gatelb.agent.engine import DataplaneSync
from gatelb.kernel.nft import NftCli, NftError
from gatelb.model import ResolvedState
from tests.unit.test_dataplane import example_state
import gatelb.dataplane.ruleset as r
class Broken(NftCli):
    def load_elements(self, elements):
        # a verdict to a chain that does not exist: the kernel refuses the whole batch
        elements = dict(elements)
        elements["svc4"] = {**elements["svc4"], "203.0.113.99 . tcp . 80": "goto no_such_chain"}
        super().load_elements(elements)
try:
    DataplaneSync(Broken()).sync(example_state())
except NftError as e:
    print("refused:", e)
"""
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", bad],
                          capture_output=True, text=True, cwd=HERE, check=False)
    assert "refused:" in done.stdout, done.stdout + done.stderr
    tables = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"],
                            capture_output=True, text=True, check=True).stdout
    assert "gatelb" not in tables
