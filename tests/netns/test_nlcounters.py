"""`gatelb status` reads counters with a netlink dump; it must agree with nft's own JSON listing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[2]

SCRIPT = """
from tests.unit.test_dataplane import example_state
from gatelb.dataplane import compile_full
from gatelb.kernel.nft import NftCli
from gatelb.kernel.counters import parse_table
from gatelb.kernel.nlcounters import read_counters
nft = NftCli()
assert read_counters().generation is None            # no table yet
nft.apply(compile_full(example_state(), generation=7))
# counters with known values (nft can set them when adding an element)
F4 = "203.0.113.10 . tcp . 198.51.100.12 . 8080"
C6 = "2001:db8:100::1 . tcp . 2001:db8:2::12 . 8080"
# (each backend's shard is its address & 15: .12 -> 12, ::12 -> 2)
nft.apply(f"delete element inet gatelb flows4_12 {{ {F4} }}\\n"
          f"add element inet gatelb flows4_12 {{ {F4} counter packets 12 bytes 3456 }}\\n"
          f"delete element inet gatelb replies4_12 {{ {F4} }}\\n"
          f"add element inet gatelb replies4_12 {{ {F4} counter packets 10 bytes 1000 }}\\n"
          f"delete element inet gatelb conns6_2 {{ {C6} }}\\n"
          f"add element inet gatelb conns6_2 {{ {C6} counter packets 5 bytes 300 }}\\n")
fast, reference = read_counters(), parse_table(nft.list_table_json())
assert fast == reference, (fast, reference)
assert fast.generation == 7
assert fast.flows[("203.0.113.10", "tcp", "198.51.100.12", 8080)].bytes == 4456  # both directions
assert fast.new_connections[("2001:db8:100::1", "tcp", "2001:db8:2::12", 8080)] == 5
# The raw-key reader (status, metrics) looks up the same figures for every key.
from ipaddress import ip_address
from gatelb.kernel.nlcounters import read_counters_raw
from gatelb.model import Protocol
raw = read_counters_raw()
assert raw.generation == 7 and raw.raw["flows4_12"] and raw.raw["replies4_12"]
for (vip, proto, addr, port), c in reference.flows.items():
    got = raw.lookup(ip_address(vip), Protocol(proto), ip_address(addr), port)
    assert got == (c, reference.new_connections[(vip, proto, addr, port)]), (vip, addr, got)
# Asked by key (status NAME): the same figures for those backends; a key the kernel lacks
# falls back to the whole dump.
from gatelb.kernel.nlcounters import read_counters_for
one = [(ip_address("203.0.113.10"), Protocol.TCP, ip_address("198.51.100.12"), 8080),
       (ip_address("2001:db8:100::1"), Protocol.TCP, ip_address("2001:db8:2::12"), 8080)]
some = read_counters_for(one)
assert some.generation == 7 and sum(len(v) for v in some.raw.values()) == 6, some
for key in one:
    assert some.lookup(*key) == raw.lookup(*key), key
missing = read_counters_for([(ip_address("203.0.113.99"), Protocol.TCP, ip_address("198.51.100.12"), 8080)])
assert missing.raw == raw.raw
print("ok", len(fast.flows), len(fast.new_connections))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"glbc{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_netlink_counter_dump_equals_nft_json(netns: str) -> None:
    done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", SCRIPT],
                          capture_output=True, text=True, cwd=HERE, check=False)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stdout + done.stderr


RULES_SCRIPT = """
from tests.unit.test_dataplane import example_state
from gatelb.dataplane import compile_full
from gatelb.dataplane.render import rule_counts as compiled_counts
from gatelb.dataplane import compile_ruleset
from gatelb.kernel.nft import NftCli
from gatelb.kernel.nlrules import rule_counts
nft = NftCli()
assert rule_counts() is None and nft.rule_counts() is None   # no table yet
nft._run(["add", "table", "inet", "other"])
nft._run(["add", "chain", "inet", "other", "c"])
nft._run(["add", "rule", "inet", "other", "c", "counter"])
assert rule_counts() is None                                 # another table's chains are not ours
nft.apply(compile_full(example_state(), generation=7))
fast = rule_counts()
nft._prefix = ["env"]  # NftCli's nft listing (not the netlink reader), for the reference
reference = nft.rule_counts()
assert fast == reference == compiled_counts(compile_ruleset(example_state()).chains), (fast, reference)
assert len(fast) > 100 and sum(fast.values()) > len(fast), fast
nft._run(["flush", "table", "inet", "gatelb"])                 # what the adoption check must see
flushed = rule_counts()
assert flushed == nft.rule_counts() and not any(flushed.values()) and set(flushed) == set(fast), flushed
print("ok", len(fast), sum(fast.values()))
"""


def test_netlink_rule_counts_equal_nft_listing(netns: str) -> None:
    done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", RULES_SCRIPT],
                          capture_output=True, text=True, cwd=HERE, check=False)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stdout + done.stderr
