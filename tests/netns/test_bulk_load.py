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
import ipaddress
from gatelb.model import Protocol
class Broken(NftCli):
    def load_elements(self, elements):
        # a verdict to a chain that does not exist: the kernel refuses the whole batch
        elements = dict(elements)
        key = (ipaddress.ip_address("203.0.113.99"), Protocol.TCP, 80)
        elements["svc4"] = {**elements["svc4"], key: "goto no_such_chain"}
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


SEQUENCE = """
import random, sys
from gatelb.agent.engine import DataplaneSync
from gatelb.kernel.nft import NftCli
from gatelb.dataplane import compile_full
from tests.unit.test_dataplane import _random_state
rng = random.Random(int(sys.argv[1]))
nft = NftCli()
sync = DataplaneSync(nft, indexed=bool(int(sys.argv[1]) % 2))
calls = {"nft": 0, "netlink": 0}
apply, elements = nft.apply, nft.apply_elements
def counted_apply(script):
    calls["nft"] += 1
    apply(script)
def counted_elements(deletes, adds):
    calls["netlink"] += 1
    elements(deletes, adds)
nft.apply, nft.apply_elements = counted_apply, counted_elements
state = None
for _ in range(8):
    state = _random_state(rng)
    sync.sync(state)
print(compile_full(state, generation=sync.generation), end="")
print(calls, file=sys.stderr)
"""


@pytest.mark.parametrize("seed", range(6))
def test_netlink_increments_match_a_fresh_load(two_namespaces: tuple[str, str], seed: int) -> None:
    """Element-only increments go over netlink; after any sequence the kernel holds exactly what
    a fresh nft load of the last state gives."""
    inc_ns, fresh_ns = two_namespaces
    done = subprocess.run(["ip", "netns", "exec", inc_ns, sys.executable, "-c", SEQUENCE, str(seed)],
                          capture_output=True, text=True, cwd=HERE, check=False)
    assert done.returncode == 0, done.stderr
    subprocess.run(["ip", "netns", "exec", fresh_ns, "nft", "-f", "-"], input=done.stdout, text=True, check=True)
    assert listing(inc_ns) == listing(fresh_ns)


def test_backend_change_goes_over_netlink(two_namespaces: tuple[str, str]) -> None:
    script = """
from gatelb.agent.engine import DataplaneSync
from gatelb.kernel.nft import NftCli
from gatelb.model import ResolvedState, Service
from tests.unit.test_dataplane import example_state
nft = NftCli()
sync = DataplaneSync(nft, indexed=True)
sync.sync(example_state())
used = []
nft.apply = lambda script: used.append("nft")
web = example_state().by_name()["web"]
# be2 goes down: 3 slots instead of 4, a different (pre-created) pick chain, elements only
moved = Service(web.name, web.vip, web.protocol, web.port, web.backends[:1] + web.backends[2:],
                source_ranges=web.source_ranges, idle_backends=web.idle_backends + web.backends[1:2])
sync.sync(ResolvedState(tuple(moved if s.name == "web" else s for s in example_state().services)))
print("nft" if used else "netlink", sync.generation)
"""
    ns = two_namespaces[0]
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script],
                          capture_output=True, text=True, cwd=HERE, check=False)
    assert done.stdout.split() == ["netlink", "2"], done.stdout + done.stderr
    gen = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "set", "inet", "gatelb", "generation"],
                         capture_output=True, text=True, check=True).stdout
    assert "elements = { 0x00000002 }" in gen or "elements = { 2 }" in gen, gen
