"""`gatelb demo`, act "ha": an active-standby pair keeps established connections over a power loss.

The scenario of `gatelb.lab.ha` (the one tests/netns/test_ha.py checks in detail): the FRR router
and switch of the BGP act, two gateways running ``gatelb run --node gw1|gw2`` on one file with an
active-standby GatewayGroup (keepalived for the role, conntrackd replicating connection state),
three backends whose default route is the group's backend gateway address, `nat: dnat` (the
backends see the client's address). It shows who is active, connections held open through it,
the active's power loss, the standby committing the replicated state and taking over with the
connections still answering, and the old active returning as standby without breaking anything.

Every step waits for what it shows with a deadline (`DemoFailed` names what did not happen);
`run_ha_act` returns the figures it measured (`HaFacts`), which the netns test checks.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from gatelb.cli.demo.bgp import DemoFailed, frr_missing
from gatelb.lab.bgp import CLIENT, GATEWAYS, ROUTER, ROUTER_BFDD, ROUTER_BGPD
from gatelb.lab.daemon import LabDaemon
from gatelb.lab.ha import BACKEND_GATEWAY, CONFIG, WEB, Flow, HaLab
from gatelb.lab.results import ClientResult

CONVERGE_S = 40.0  # first BGP sessions (FRR start, connect retry, open)
ROLE_S = 15.0
FAILOVER_S = 5.0
HELD = 20
PACED_RATE = 20.0
PACED_N = 80
RETURNING = 10  # connections opened through the new active before the old one returns


@dataclass(frozen=True)
class HaFacts:
    """What the HA act measured."""

    held: int  # connections held open through gw1 before its power loss
    held_backends: frozenset[str]
    held_sources: frozenset[str]  # what the backends saw as the client's address
    replicated: int  # entries in gw2's external cache before the power loss
    kept: int  # of `held`, still answering through gw2 after it
    longest_pause_s: float
    took_over_ms: float  # power loss -> gw2's role is active
    committed: int  # entries gw2 committed into its kernel
    during: ClientResult  # paced new connections across the power loss
    outage_s: float  # first to last failed new connection (0: none failed)
    holder_after: frozenset[str]  # who holds the backend gateway address
    returned_role: str  # gw1's role after it came back
    opened_via_new_active: int
    broken_by_return: int


def frr_or_tools_missing() -> str | None:
    if reason := frr_missing():
        return reason
    missing = [t for t in ("keepalived", "conntrackd") if not (shutil.which(t) or shutil.which(f"/usr/sbin/{t}"))]
    if missing:
        return (f"the HA act needs {' and '.join(missing)}: apt-get install {' '.join(missing)} "
                "(./quickstart setup does)")
    return None


class HaDemo:
    def __init__(self, lab: HaLab, console: Console) -> None:
        self.lab = lab
        self.console = console

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float) -> float:
        t0 = time.monotonic()
        while not check():
            if time.monotonic() - t0 > timeout:
                raise DemoFailed(f"{what}: not within {timeout:.0f} s. The router says:\n"
                                 f"{self.lab.router_vtysh('show ip bgp')}")
            time.sleep(0.01)
        return time.monotonic() - t0

    def gateway(self, name: str, node: str) -> LabDaemon:
        return LabDaemon(self.lab, CONFIG, name=name, ns=node, extra_args=("--node", node)).start()

    @staticmethod
    def ha(daemon: LabDaemon) -> dict[str, Any]:
        info: dict[str, Any] = daemon.status()["info"].get("ha") or {}
        return info

    def upstream_up(self, daemon: LabDaemon) -> bool:
        return bool((self.ha(daemon).get("upstream") or {}).get("bgpEstablished"))

    def run(self) -> HaFacts:
        c = self.console
        c.rule("[bold]gatelb demo: an active-standby pair keeps connections over a gateway's power loss[/bold]")
        c.print(f"lab {self.lab.lab_id}: client {CLIENT} -- rtr {ROUTER} (FRR) -- switch -+- gw1 / gw2 -- lan -- "
                "be1 be2 be3\n"
                "  both gateways: `gatelb run -f gatelb.yaml --node gw1|gw2` with the same file: GatewayGroup edge\n"
                f"    (mode: active-standby, stateSync: true, backendGateway {BACKEND_GATEWAY}/24: the backends'\n"
                f"    default route), L4LB web {WEB}:80 with nat: dnat (the backends see the client's address);\n"
                "    keepalived elects the active member, conntrackd (FTFW) replicates every connection to the "
                "standby", highlight=False)
        self.lab.start_backends(http=None)
        self.lab.start_router(ROUTER_BGPD, ROUTER_BFDD)

        c.rule("gw1 active, gw2 standby")
        gw1 = self.gateway("gw1", "gw1")
        gw1.wait_event("ha-role", where=lambda e: e["role"] == "active", timeout=ROLE_S)
        # until its BGP session is up gw1 has no upstream, and a healthy gw2 would rightly take over
        self.wait_until("gw1's BGP session", lambda: self.upstream_up(gw1), CONVERGE_S)
        gw2 = self.gateway("gw2", "gw2")
        gw2.wait_event("ha-role", where=lambda e: e["role"] == "standby", timeout=ROLE_S)
        self.wait_until("gw2's BGP session", lambda: self.upstream_up(gw2), CONVERGE_S)
        self.wait_until("the VIP routed via gw1 only",
                        lambda: self.lab.router_next_hops(f"{WEB}/32") == {GATEWAYS["gw1"]}, CONVERGE_S)
        self.wait_until("gw2 VRRP BACKUP", lambda: self.ha(gw2).get("vrrp") == "BACKUP", FAILOVER_S)
        c.print(f"the router routes {WEB} via gw1 (gw2 announces a prepended path, its backup); gw1 holds "
                f"{BACKEND_GATEWAY}: {sorted(self.lab.holder())}")
        self.show_status(gw2)

        flows = [Flow(self.lab.hold(WEB, 80, timeout=5.0)).start() for _ in range(HELD)]
        time.sleep(1.0)  # a few exchanges each; the state reaches gw2
        replicated = int((self.ha(gw2).get("sync") or {}).get("external", 0))
        backends = Counter(f.backend for f in flows)
        c.print(f"{HELD} connections held open through gw1, each exchanging a line every 100 ms, on "
                f"{', '.join(f'{b}: {n}' for b, n in sorted(backends.items()))}; the backends see the client as "
                f"{', '.join(sorted({str(f.seen_source) for f in flows}))}; gw2 has {replicated} replicated entries")

        c.rule("power loss: gw1's links go down and every process in it dies")
        paced = self.lab.start_client("tcp", WEB, 80, count=PACED_N, rate=PACED_RATE, timeout=0.5)
        time.sleep(1.0)
        t_fail = time.time()
        self.lab.power_off("gw1")
        became = gw2.wait_event("ha-role", after=t_fail, where=lambda e: e["role"] == "active", timeout=FAILOVER_S)
        commit = gw2.wait_event("ha-commit", after=t_fail, timeout=FAILOVER_S)
        self.wait_until("the VIP via gw2", lambda: self.lab.router_next_hops(f"{WEB}/32") == {GATEWAYS["gw2"]},
                        FAILOVER_S)
        time.sleep(2.0)  # the held connections keep exchanging through gw2
        during = paced.result()
        failed = [a.at for a in during.attempts if not a.ok and a.at is not None and a.at >= t_fail - 0.05]
        outage = max(failed) - min(failed) + 1 / PACED_RATE if failed else 0.0
        kept = [f for f in flows if f.alive]
        took_ms = (float(became["wall_time"]) - t_fail) * 1000
        pause = max((f.max_gap_s for f in kept), default=0.0)
        c.print(f"gw2 became active {took_ms:.0f} ms after the power loss (VRRP), committed the "
                f"{commit['entries']} replicated entries into its kernel ({commit['commit_ms']} ms), took "
                f"{BACKEND_GATEWAY} (gratuitous ARP) and the router's route (BFD)")
        c.print(f"  held connections still answering: [bold]{len(kept)} of {HELD}[/bold] (the same connection, "
                f"the same backend; the longest pause {pause:.2f} s)")
        c.print(f"  {len(during.attempts)} new connections paced at {PACED_RATE:.0f}/s across it: {during.ok} "
                f"answered; new connections failed for [bold]{outage:.2f} s[/bold]\n", highlight=False)
        self.show_status(gw2)

        c.rule("gw1 powers on again: it syncs and stays standby")
        fresh = [Flow(self.lab.hold(WEB, 80, timeout=5.0)).start() for _ in range(RETURNING)]
        self.lab.reboot("gw1")
        t_on = time.time()
        gw1b = self.gateway("gw1-again", "gw1")
        gw1b.wait_event("ha-role", after=t_on, where=lambda e: e["role"] == "standby", timeout=ROLE_S)
        self.wait_until("gw1's BGP session", lambda: self.upstream_up(gw1b), CONVERGE_S)
        time.sleep(2.0)
        broken = [f for f in fresh if not f.alive]
        role = str(self.ha(gw1b).get("role"))
        c.print(f"gw1 is back as {role}; of {RETURNING} connections opened through gw2 before it came back, "
                f"[bold]{len(broken)}[/bold] broke (no preemption, and it attracts nothing before it has the state)")
        for f in [*flows, *fresh]:
            f.stop()

        facts = HaFacts(
            held=HELD, held_backends=frozenset(str(b) for b in backends),
            held_sources=frozenset(str(f.seen_source) for f in flows), replicated=replicated, kept=len(kept),
            longest_pause_s=pause, took_over_ms=took_ms, committed=int(commit["entries"]), during=during,
            outage_s=outage, holder_after=frozenset(self.lab.holder()), returned_role=role,
            opened_via_new_active=RETURNING, broken_by_return=len(broken))
        self.show_summary(facts)
        return facts

    def show_status(self, daemon: LabDaemon) -> None:
        ha = self.ha(daemon)
        sync = ha.get("sync") or {}
        self.console.print(f"  [dim]gw2# gatelb status[/dim] -> ha {ha.get('group')}: active {ha.get('active')}; "
                           f"this member gw2: {ha.get('role')} (vrrp {ha.get('vrrp')}); "
                           f"{sync.get('internal', 0)} connections of its own, {sync.get('external', 0)} replicated "
                           "from the peer", highlight=False)

    def show_summary(self, f: HaFacts) -> None:
        table = Table(title="measured in this run", title_justify="left")
        table.add_column("what")
        table.add_column("result", justify="right")
        table.add_row("held connections kept over gw1's power loss", f"{f.kept} of {f.held}")
        table.add_row("gw1 power loss -> gw2 active", f"{f.took_over_ms:.0f} ms")
        table.add_row("new connections failing (first to last failure)", f"{f.outage_s:.2f} s")
        table.add_row("connections broken by gw1's return", f"{f.broken_by_return} of {f.opened_via_new_active}")
        self.console.print(table)


def run_ha_act(console: Console) -> HaFacts:
    """Build the HA lab, play the act, tear everything down (also on errors and signals)."""
    if reason := frr_or_tools_missing():
        raise DemoFailed(reason)
    lab = HaLab()
    with lab:
        return HaDemo(lab, console).run()
