"""`gatelb demo --act bgp` end to end: the act's measured facts and what it printed, then that it
left nothing behind; and that SIGTERM in the middle of the act removes everything it created
(namespaces, gatelb, the gateways' and the router's FRR)."""

from __future__ import annotations

import io
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from gatelb.cli.demo.bgp import BgpFacts, run_bgp_act
from gatelb.lab import naming
from gatelb.lab.bgp import GATEWAY_LAN, GATEWAYS

from ..conftest import netns_unavailable

CONNECTIONS = 20
BOTH = frozenset(GATEWAYS.values())
SURVIVOR = frozenset({GATEWAYS["gw2"]})
REPO = Path(__file__).resolve().parents[2]


def lab_namespaces(pid: int) -> list[str]:
    return [n for n in naming.list_namespaces() if n.startswith(f"{naming.PREFIX}{pid}-")]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes whose command line contains `text` (e.g. a lab's directory)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def gateways(result_sources: frozenset[str]) -> set[str]:
    by_address = {a: g for g, a in GATEWAY_LAN.items()}
    return {by_address[s] for s in result_sources}


@pytest.fixture(autouse=True)
def needs_frr() -> None:
    if reason := netns_unavailable():
        pytest.skip(reason)
    if shutil.which("vtysh") is None:
        pytest.fail("FRR is not installed (apt-get install frr frr-pythontools; ./quickstart setup does)")


def test_bgp_act_facts_and_output() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, color_system=None)
    before = lab_namespaces(os.getpid())
    t0 = time.monotonic()
    f: BgpFacts = run_bgp_act(console, CONNECTIONS)
    took = time.monotonic() - t0
    text = out.getvalue()
    print(text)
    print(f"the act took {took:.1f} s")

    # ECMP through both gateways, BFD up on both sessions
    assert f.ecmp_next_hops == BOTH
    assert f.bfd == dict.fromkeys(BOTH, "up")
    assert "nexthop via 192.0.2.130" in text and "nexthop via 192.0.2.131" in text  # `ip route show` at the router
    assert "B>* 203.0.113.10/32" in text  # vtysh's view
    assert f.through_vip.ok == CONNECTIONS, f.through_vip
    assert f.through_vip.backends == {"be1", "be2"}
    assert gateways(f.through_vip.sources) == {"gw1", "gw2"}

    # power loss: dropped by BFD (the hold time would take 3 s), new connections carry on via gw2
    assert f.survivor_next_hops == SURVIVOR
    assert f.power_loss_ms < 1000, f.power_loss_ms
    during = f.during_power_loss
    assert during.failed <= 2, during.failures  # one established through gw1 at the very moment may be lost
    late = [a for a in during.attempts if a.at is not None and a.at > f.converged_at]
    assert late and all(a.ok and gateways(frozenset({a.seen_source or ""})) == {"gw2"} for a in late)
    retransmitted = [a for a in during.attempts if a.at is not None and f.power_off_at <= a.at <= f.converged_at
                     and a.ok and a.latency_ms >= 900]
    assert retransmitted, "no connection was sent to the dead gateway during the BFD detection"
    assert gateways(frozenset(a.seen_source or "" for a in retransmitted)) == {"gw2"}
    assert f.after_power_loss.ok == CONNECTIONS, f.after_power_loss
    assert gateways(f.after_power_loss.sources) == {"gw2"}
    assert f"had only gw2 {f.power_loss_ms:.0f} ms after the power loss" in text

    # all backends of solo down: withdrawn (web, which still has be2, stays); back when be1 is
    assert f.solo_withdrawn.ok == 0
    assert set(f.solo_withdrawn.failures) <= {"unreachable", "timeout"}, f.solo_withdrawn.failures
    assert f.web_next_hops_while_solo_down == SURVIVOR
    assert f.withdrawn_ms < 2000, f.withdrawn_ms
    assert "(nothing: no route)" in text
    assert f.solo_returned_next_hops == SURVIVOR
    assert f.solo_after_return.ok == CONNECTIONS // 2 and f.solo_after_return.backends == {"be1"}

    # gw1 powered on again: both next hops, and traffic through both
    assert f.final_next_hops == BOTH
    assert f.final.ok == CONNECTIONS, f.final
    assert gateways(f.final.sources) == {"gw1", "gw2"}
    assert "measured in this run" in text

    assert lab_namespaces(os.getpid()) == before
    assert not processes_mentioning(f"{naming.PREFIX}{os.getpid()}-")


def test_sigterm_during_the_bgp_act_removes_everything() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]), "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "gatelb.cli.main", "demo", "--act", "bgp",
                             "--connections", "100"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + 60
    try:
        # in the middle of it: the router's FRR, both gateways' gatelb and FRR (gw2's bgpd last) run
        lab = f"{naming.PREFIX}{proc.pid}-"
        while not [p for p in processes_mentioning(lab) if "/gw2/state/frr/bgpd.pid" in p]:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            ready, _, _ = select.select([proc.stdout], [], [], 0.05)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                assert chunk, f"the demo ended early:\n{seen.decode(errors='replace')}"
                seen += chunk
        namespaces = lab_namespaces(proc.pid)
        assert {n.rsplit("-", 1)[1] for n in namespaces} >= {"rtr", "sw", "gw1", "gw2", "client"}
        assert [p for p in processes_mentioning(lab) if "/rtr-frr/bgpd.pid" in p]  # the router's FRR
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, (seen + rest).decode(errors="replace")
    assert lab_namespaces(proc.pid) == []
    assert processes_mentioning(f"{naming.PREFIX}{proc.pid}-") == []


def test_ha_act_keeps_connections_over_the_power_loss() -> None:
    from gatelb.cli.demo.ha import HaFacts, run_ha_act

    out = io.StringIO()
    console = Console(file=out, width=140, color_system=None)
    before = lab_namespaces(os.getpid())
    f: HaFacts = run_ha_act(console)
    text = out.getvalue()
    print(text)

    assert len(f.held_backends) >= 2 and f.held_sources == {"192.0.2.10"}  # dnat: the client's own address
    assert f.replicated >= f.held, f.replicated  # the standby had the state before the loss
    assert f.kept >= f.held - 1, f.kept  # the floor: at least 19 of 20
    assert f.committed >= f.held
    assert f.outage_s < 1.0, f.during.failures
    assert f.holder_after == {"gw2"}
    assert f.returned_role == "standby" and f.broken_by_return == 0
    assert f"{f.kept} of {f.held}" in text and "measured in this run" in text

    assert lab_namespaces(os.getpid()) == before
    assert not processes_mentioning(f"{naming.PREFIX}{os.getpid()}-")
