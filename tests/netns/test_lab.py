"""The lab itself: the network comes up as documented, the client reaches every backend directly
(IPv4 and IPv6; TCP, UDP, HTTP) and the backends see the client's own address; close() leaves no
namespace and no process behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gatelb.lab import ConnectionLost, Lab, cleanup_leftovers
from gatelb.lab.naming import list_namespaces
from gatelb.lab.topology import (
    CLIENT_V4,
    CLIENT_V4_OUTSIDE,
    CLIENT_V6,
    GW_CLIENT_V4,
    backend_v4,
    backend_v6,
)

PORTS = {"tcp": 8080, "udp": 8080, "http": 80}


def sysctl(lab: Lab, ns: str, key: str) -> str:
    return lab.run(ns, ["sysctl", "-n", key]).stdout.strip()


def test_namespaces_addresses_and_forwarding(lab: Lab) -> None:
    assert set(lab.namespaces) <= set(list_namespaces())
    assert [n.removeprefix(lab.lab_id + "-") for n in lab.namespaces] == ["client", "gw", "be1", "be2", "be3"]
    client_addrs = lab.run("client", ["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
    for addr in (f"{CLIENT_V4}/24", f"{CLIENT_V4_OUTSIDE}/24", f"{CLIENT_V6}/64"):
        assert addr in client_addrs
    assert "tentative" not in client_addrs  # nodad: usable at once
    assert f"default via {GW_CLIENT_V4}" in lab.run("client", ["ip", "route"]).stdout
    assert sysctl(lab, "gw", "net.ipv4.ip_forward") == "1"
    assert sysctl(lab, "gw", "net.ipv6.conf.all.forwarding") == "1"
    assert sysctl(lab, "client", "net.ipv4.ip_forward") == "0"
    for ns in lab.namespaces:  # lo up everywhere
        assert "UP" in lab.run(ns, ["ip", "-o", "link", "show", "lo"]).stdout
    # The VIP ranges are nowhere: only the load balancer's DNAT makes them reachable.
    for ns in lab.namespaces:
        out = lab.run(ns, ["ip", "-o", "addr"]).stdout
        assert "203.0.113." not in out and "2001:db8:100:" not in out


@pytest.mark.parametrize("family", ["v4", "v6"])
@pytest.mark.parametrize("proto", ["tcp", "udp", "http"])
def test_client_reaches_every_backend_directly(lab: Lab, proto: str, family: str) -> None:
    lab.start_backends()
    address, client = (backend_v4, CLIENT_V4) if family == "v4" else (backend_v6, CLIENT_V6)
    for i in lab.backend_ids:
        result = lab.connect_many(proto, address(i), PORTS[proto], count=3)
        assert result.per_backend == {f"be{i}": 3}, result.failures
        assert result.sources == {client}
        if proto == "http":
            assert result.statuses == {200: 3}


def test_second_source_address_is_seen_by_the_backend(lab: Lab) -> None:
    lab.start_backends(udp=None, http=None)
    result = lab.connect_many("tcp", backend_v4(2), 8080, count=2, source=CLIENT_V4_OUTSIDE)
    assert result.per_backend == {"be2": 2}
    assert result.sources == {CLIENT_V4_OUTSIDE}


def test_held_connection_kill_and_restart(lab: Lab) -> None:
    lab.start_backends(udp=None, http=None)
    with lab.hold(backend_v6(1), 8080) as conn:
        assert (conn.backend, conn.seen_source) == ("be1", CLIENT_V6)
        assert conn.exchange("one") == "one"
        assert conn.exchange("two words") == "two words"
        lab.kill_backend(1)
        with pytest.raises(ConnectionLost):
            conn.exchange("three")
    assert lab.connect_many("tcp", backend_v4(1), 8080, count=2).failures == {"refused": 2}
    lab.start_backend(1)
    assert lab.connect_many("tcp", backend_v4(1), 8080, count=2).per_backend == {"be1": 2}


def test_http_status_can_be_switched(lab: Lab) -> None:
    lab.start_backends(tcp=None, udp=None)
    lab.set_backend_status(3, 500)
    assert lab.connect_many("http", backend_v4(3), 80, count=2).statuses == {500: 2}
    lab.set_backend_status(3, None)
    assert lab.connect_many("http", backend_v4(3), 80, count=2).statuses == {200: 2}


def test_close_leaves_no_namespace_and_no_process() -> None:
    lab = Lab(backends=2)
    with lab:
        lab.start_backends()
        conn = lab.hold(backend_v4(1), 8080)
        assert conn.exchange("x") == "x"
        pids = [p.pid for p in lab._procs]
        tmpdir = lab.tmpdir
        prefix = lab.lab_id + "-"
    assert len(pids) == 3  # two backends, one held connection
    assert not [n for n in list_namespaces() if n.startswith(prefix)]
    assert not tmpdir.exists()
    for pid in pids:  # reaped and gone (a recycled pid would not be running our module)
        cmdline = Path(f"/proc/{pid}/cmdline")
        assert not cmdline.exists() or b"gatelb.lab" not in cmdline.read_bytes()
    lab.close()  # idempotent


def test_cleanup_removes_only_namespaces_of_dead_creators() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = f"glb{dead.pid}-dead-gw"
    alive = f"glb{os.getpid()}-a11e-gw"
    subprocess.run(["ip", "netns", "add", orphan], check=True)
    try:
        subprocess.run(["ip", "netns", "add", alive], check=True)
        removed = cleanup_leftovers()
        assert orphan in removed and alive not in removed
        assert alive in list_namespaces() and orphan not in list_namespaces()
    finally:
        for ns in (orphan, alive):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


DNAT_RULESET = """
table inet glblabtest {
    chain pre {
        type nat hook prerouting priority dstnat;
        ip daddr 203.0.113.10 meta l4proto { tcp, udp } th dport 80 dnat ip to numgen inc mod 3 map {
            0 : 198.51.100.11, 1 : 198.51.100.12, 2 : 198.51.100.13 } : 8080
        ip6 daddr 2001:db8:100::10 tcp dport 80 dnat ip6 to numgen inc mod 3 map {
            0 : 2001:db8:2::11, 1 : 2001:db8:2::12, 2 : 2001:db8:2::13 } : 8080
    }
}
"""


@pytest.mark.parametrize(("proto", "vip", "client"), [
    ("tcp", "203.0.113.10", CLIENT_V4),
    ("udp", "203.0.113.10", CLIENT_V4),
    ("tcp", "2001:db8:100::10", CLIENT_V6),
])
def test_the_topology_serves_a_gateway_dnat(lab: Lab, proto: str, vip: str, client: str) -> None:
    """What the lab is for: a DNAT on the gw spreads new connections to a VIP over the backends,
    the replies come back through the gw, and the backends see the client's own address."""
    lab.start_backends(http=None)
    lab.run("gw", ["nft", "-f", "-"], input=DNAT_RULESET)
    result = lab.connect_many(proto, vip, 80, count=6, concurrency=1)
    assert result.per_backend == {"be1": 2, "be2": 2, "be3": 2}, result.failures
    assert result.sources == {client}
