"""`gatelb demo`, act "bgp": two gateways announce their VIPs to an upstream router over BGP with BFD.

The scenario of `gatelb.lab.bgp` (the one tests/netns/test_announce_bgp.py and
bench/announce_failover.py measure): an upstream router running FRR with a configuration the
demo writes, a switch, two gateways running ``gatelb run --node gw1|gw2`` on the same file, two
backends behind them. It shows the router's ECMP route to the VIP, a client behind the router
reaching the backends through both gateways, a gateway's power loss noticed by BFD, a VIP whose
backends are all down withdrawn and announced again, and the lost gateway coming back.

Every step waits for what it shows with a deadline (`DemoFailed` names what did not happen);
`run_bgp_act` returns the figures it measured (`BgpFacts`), which the netns test checks.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from gatelb.cli.demo.show import failures_text, show_paths
from gatelb.lab.bgp import (
    CLIENT,
    CONFIG,
    FRR_LIB,
    GATEWAY_LAN,
    GATEWAYS,
    ROUTER,
    ROUTER_BFDD,
    ROUTER_BGPD,
    SOLO,
    WEB,
    BgpLab,
)
from gatelb.lab.daemon import LabDaemon
from gatelb.lab.results import ClientResult

CONVERGE_S = 40.0  # first sessions: FRR start, connect retry, BGP open (about 8 s here)
FAILOVER_S = 5.0  # BFD 100 ms x 3 needs 0.3 s; BGP's hold time (3 s) would be the fallback
SURVIVOR = "gw2"
LOST = "gw1"
PACED_RATE = 100.0  # new connections per second across the power loss
PACED_S = 1.5
RETRANSMIT_MS = 900.0  # a first SYN lost on the dead path comes back after the kernel's 1 s RTO


class DemoFailed(RuntimeError):
    """A step of the demo did not happen within its deadline."""


@dataclass(frozen=True)
class BgpFacts:
    """What the BGP act measured (times from the event that caused them)."""

    ecmp_s: float  # both gateways started -> the router has both as next hops
    ecmp_next_hops: frozenset[str]
    bfd: dict[str, str]  # peer address -> BFD state at the router, before the power loss
    through_vip: ClientResult
    power_loss_ms: float  # gw1's links down and its processes killed -> the route has only gw2
    survivor_next_hops: frozenset[str]
    during_power_loss: ClientResult  # paced connections across it
    power_off_at: float  # UNIX time, to line up with `during_power_loss.attempts[i].at`
    converged_at: float
    after_power_loss: ClientResult
    withdrawn_ms: float  # solo's only backend killed -> no route to solo at the router
    solo_withdrawn: ClientResult  # connections to solo meanwhile
    web_next_hops_while_solo_down: frozenset[str]
    solo_returned_ms: float  # the backend restarted (listening) -> solo's route is back
    solo_returned_next_hops: frozenset[str]
    solo_after_return: ClientResult
    lost_back_s: float  # gw1 powered on, gatelb started -> ECMP again
    final_next_hops: frozenset[str]
    final: ClientResult


def frr_missing() -> str | None:
    missing = [] if shutil.which("vtysh") else ["vtysh"]
    missing += [str(FRR_LIB / d) for d in ("zebra", "bgpd", "bfdd", "frr-reload.py") if not (FRR_LIB / d).exists()]
    if missing:
        return f"the BGP act needs FRR ({', '.join(missing)} missing): apt-get install frr frr-pythontools " \
               "(./quickstart setup does)"
    return None


class BgpDemo:
    def __init__(self, lab: BgpLab, console: Console, connections: int) -> None:
        self.lab = lab
        self.console = console
        self.n = connections
        self.gateway_of = {a: g for g, a in GATEWAY_LAN.items()}  # full NAT: the address backends see
        self.name_of = {a: g for g, a in GATEWAYS.items()}

    # -- helpers ------------------------------------------------------------------------------------

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float) -> float:
        """Poll `check` every 10 ms; the seconds it took. DemoFailed with the router's view after `timeout`."""
        t0 = time.monotonic()
        while not check():
            if time.monotonic() - t0 > timeout:
                raise DemoFailed(f"{what}: not within {timeout:.0f} s. The router says:\n"
                                 f"{self.lab.router_vtysh('show ip bgp summary')}\n"
                                 f"{self.lab.router_vtysh('show bfd peers brief')}")
            time.sleep(0.01)
        return time.monotonic() - t0

    def hops(self, vip: str) -> frozenset[str]:
        return frozenset(self.lab.router_next_hops(f"{vip}/32"))

    def hops_text(self, hops: frozenset[str]) -> str:
        if not hops:
            return "[red]no route[/red]"
        return " + ".join(f"{self.name_of.get(h, h)} ({h})" for h in sorted(hops))

    def show_route(self, vip: str) -> None:
        """The router's kernel route to `vip` (what forwards packets), as `ip route` prints it."""
        cmd = f"ip route show exact {vip}/32"
        out = self.lab.run("rtr", cmd.split()).stdout.rstrip() or "(nothing: no route)"
        self.console.print(f"  [dim]rtr# {cmd}[/dim]")
        self.console.print(out, markup=False, highlight=False)

    def show_bgp_routes(self) -> None:
        """FRR's view (`show ip route bgp`) without the legend of route codes."""
        lines = self.lab.router_vtysh("show ip route bgp").splitlines()
        body = [ln for ln in lines if ln.strip() and not ln.startswith(("Codes:", "       "))]
        self.console.print("  [dim]rtr# vtysh -c 'show ip route bgp'[/dim]")
        self.console.print("\n".join(body) or "(no BGP routes)", markup=False, highlight=False)

    def bfd_peers(self) -> dict[str, dict[str, object]]:
        peers = json.loads(self.lab.router_vtysh("show bfd peers json") or "[]")
        return {str(p["peer"]): p for p in peers}

    def start_gateway(self, name: str, node: str) -> LabDaemon:
        return LabDaemon(self.lab, CONFIG, name=name, ns=node, extra_args=("--node", node)).start()

    # -- the act ------------------------------------------------------------------------------------

    def run(self) -> BgpFacts:
        c = self.console
        c.rule("[bold]gatelb demo: two gateways announce the VIPs over BGP with BFD[/bold]")
        top = f"  client {CLIENT} -- rtr {ROUTER} -- switch -+- gw1 {GATEWAYS['gw1']} -+- be1 198.51.100.11"
        fork = top.index("+- gw1")
        under_rtr = top.index("rtr")
        c.print(f"lab {self.lab.lab_id}:\n{top}\n"
                f"{'(FRR, AS 64500)'.rjust(under_rtr + 15)}{'+- gw2 '.rjust(fork - under_rtr - 15 + 7)}"
                f"{GATEWAYS['gw2']} -+- be2 198.51.100.12\n"
                "  both gateways: `gatelb run -f gatelb.yaml --node gw1|gw2` with the same file:\n"
                "    BGPPeer upstream (AS 64512 -> 64500), BFDProfile fast (100 ms x 3),\n"
                f"    L4LB web {WEB}:80 -> be1, be2 and L4LB solo {SOLO}:80 -> be1 only,\n"
                "    full NAT (replies return through the gateway that took the connection), TCP checks "
                "100 ms x 3", highlight=False)
        self.lab.start_backends(udp=None, http=None)
        self.lab.start_router(ROUTER_BGPD, ROUTER_BFDD)
        c.print(Panel((ROUTER_BGPD + ROUTER_BFDD).rstrip(), title="the router's FRR configuration (written by the "
                      "demo)", title_align="left", expand=False, style="dim"))

        c.rule("BGP: both gateways are next hops (ECMP)")
        t0 = time.monotonic()
        for g in GATEWAYS:
            self.start_gateway(g, g)
        started = time.monotonic() - t0
        both = frozenset(GATEWAYS.values())
        ecmp_s = self.wait_until("both gateways as ECMP next hops of web", lambda: self.hops(WEB) == both, CONVERGE_S)
        c.print(f"gatelb started in both gateways ({started:.1f} s: first sync, its own FRR); the router had an "
                f"ECMP route to {WEB} [bold]{ecmp_s:.1f} s[/bold] later (FRR start, connect retry, BGP open)")
        self.show_route(WEB)
        self.show_bgp_routes()
        self.wait_until("BFD up with both gateways",
                        lambda: all(self.bfd_peers().get(a, {}).get("status") == "up" for a in both), 10.0)
        peers = self.bfd_peers()
        table = Table(title="BFD sessions at the router", title_justify="left")
        for col in ("peer", "state", "receive / transmit", "multiplier", "detection"):
            table.add_column(col)
        for a in sorted(both):
            p = peers[a]
            rx, tx, mult = p.get("receive-interval", "?"), p.get("transmit-interval", "?"), p.get("detect-multiplier")
            detect = f"{int(str(rx)) * int(str(mult))} ms" if str(rx).isdigit() and str(mult).isdigit() else "?"
            table.add_row(f"{self.name_of[a]} {a}", str(p.get("status")), f"{rx} / {tx} ms", str(mult), detect)
        c.print(table)
        through = self.lab.connect_many("tcp", WEB, 80, self.n)
        show_paths(c, f"web {WEB}:80 from the client behind the router: {self.n} new connections "
                      "(the router hashes each one to a gateway)", through, self.gateway_of)

        c.rule(f"power loss: {LOST}'s links go down and every process in it dies")
        paced = self.lab.start_client("tcp", WEB, 80, int(PACED_RATE * PACED_S), rate=PACED_RATE, timeout=3.0)
        time.sleep(0.6)  # the client is running (its interpreter starts in ~0.2 s)
        t_off, w_off = time.monotonic(), time.time()
        self.lab.power_off(LOST)
        survivor = frozenset({GATEWAYS[SURVIVOR]})
        self.wait_until(f"the router drops {LOST}", lambda: self.hops(WEB) == survivor, FAILOVER_S)
        power_ms = (time.monotonic() - t_off) * 1000
        w_conv = w_off + power_ms / 1000
        c.print(f"the router's route to {WEB} had only {SURVIVOR} [bold]{power_ms:.0f} ms[/bold] after the power "
                "loss (BFD: 3 missed packets of 100 ms)")
        self.show_route(WEB)
        during = paced.result()
        self.show_during(during, w_off, w_conv)
        after = self.lab.connect_many("tcp", WEB, 80, self.n)
        show_paths(c, f"web after the power loss: {self.n} new connections", after, self.gateway_of)

        c.rule(f"every backend of solo {SOLO} down: the route is withdrawn")
        t_kill = time.monotonic()
        self.lab.kill_backend(1)
        self.wait_until("solo withdrawn", lambda: not self.hops(SOLO), FAILOVER_S)
        withdrawn_ms = (time.monotonic() - t_kill) * 1000
        web_hops = self.hops(WEB)
        c.print(f"be1 (solo's only backend) killed; the router had no route to {SOLO} [bold]{withdrawn_ms:.0f} ms"
                f"[/bold] later (health checks 100 ms x 3, then the announcement); web (be2 left) still goes to "
                f"{self.hops_text(web_hops)}")
        self.show_route(SOLO)
        solo_down = self.lab.connect_many("tcp", SOLO, 80, 10)
        c.print(f"  10 connections to solo now: {solo_down.ok} answered ({failures_text(solo_down) or 'none failed'}): "
                "no gateway attracts traffic it cannot serve\n", highlight=False)
        t_start = time.monotonic()
        self.lab.start_backend(1)
        started_s = time.monotonic() - t_start
        t_up = time.monotonic()
        self.wait_until("solo announced again", lambda: self.hops(SOLO) == survivor, FAILOVER_S * 2)
        returned_ms = (time.monotonic() - t_up) * 1000
        solo_hops = self.hops(SOLO)
        c.print(f"be1 restarted (listening after {started_s:.1f} s); solo's route was back "
                f"[bold]{returned_ms:.0f} ms[/bold] later (2 checks passed, then the announcement): "
                f"{self.hops_text(solo_hops)}")
        solo_back = self.lab.connect_many("tcp", SOLO, 80, self.n // 2)
        show_paths(c, f"solo {SOLO}:80 again: {self.n // 2} new connections", solo_back, self.gateway_of)

        c.rule(f"{LOST} powers on again")
        # Links down flushed the routes through them: the default route comes back as at boot.
        self.lab.run(LOST, ["sh", "-c", f"ip link set up0 up; ip link set lan0 up; "
                                        f"ip route replace default via {ROUTER}"])
        t_on = time.monotonic()
        self.start_gateway(f"{LOST}-again", LOST)
        self.wait_until(f"{LOST} back as a next hop", lambda: self.hops(WEB) == both, CONVERGE_S)
        back_s = time.monotonic() - t_on
        final_hops = self.hops(WEB)
        c.print(f"links up and gatelb started in {LOST}: the router had both next hops again after "
                f"[bold]{back_s:.1f} s[/bold]: {self.hops_text(final_hops)}")
        final = self.lab.connect_many("tcp", WEB, 80, self.n)
        show_paths(c, f"web with both gateways again: {self.n} new connections", final, self.gateway_of)

        facts = BgpFacts(
            ecmp_s=ecmp_s, ecmp_next_hops=both, bfd={a: str(peers[a].get("status")) for a in both},
            through_vip=through, power_loss_ms=power_ms, survivor_next_hops=survivor, during_power_loss=during,
            power_off_at=w_off, converged_at=w_conv, after_power_loss=after, withdrawn_ms=withdrawn_ms,
            solo_withdrawn=solo_down, web_next_hops_while_solo_down=web_hops, solo_returned_ms=returned_ms,
            solo_returned_next_hops=solo_hops, solo_after_return=solo_back, lost_back_s=back_s,
            final_next_hops=final_hops, final=final)
        self.show_summary(facts)
        return facts

    def show_during(self, during: ClientResult, w_off: float, w_conv: float) -> None:
        """The paced connections across the power loss. Those the router still hashed to the dead
        gateway lost their first SYN; the kernel retransmits it after its 1 s initial RTO, and by
        then the route has only the survivor: slow, but answered."""
        window = [a for a in during.attempts if a.at is not None and w_off <= a.at <= w_conv]
        slow = [a for a in window if a.ok and a.latency_ms >= RETRANSMIT_MS]
        via = Counter(self.gateway_of.get(a.seen_source or "", "?") for a in slow)
        self.console.print(
            f"  {len(during.attempts)} new connections paced at {PACED_RATE:.0f}/s across the power loss: "
            f"{during.ok} answered, {during.failed} failed{' (' + failures_text(during) + ')' if during.failed else ''}"
            f"\n  of the {len(window)} started before the router knew, {len(slow)} took >= "
            f"{RETRANSMIT_MS / 1000:.1f} s (first SYN lost on {LOST}, the retransmission 1 s later answered via "
            f"{', '.join(f'{g}: {n}' for g, n in sorted(via.items())) or '-'})\n", highlight=False)

    def show_summary(self, f: BgpFacts) -> None:
        table = Table(title="measured in this run", title_justify="left")
        table.add_column("what")
        table.add_column("time", justify="right")
        table.add_row("gateways started -> router has both as ECMP next hops", f"{f.ecmp_s:.1f} s")
        table.add_row(f"{LOST} power loss -> router's route has only {SURVIVOR} (BFD 100 ms x 3)",
                      f"{f.power_loss_ms:.0f} ms")
        table.add_row("all backends of solo down -> route withdrawn at the router", f"{f.withdrawn_ms:.0f} ms")
        table.add_row("backend listening again -> route back at the router", f"{f.solo_returned_ms:.0f} ms")
        table.add_row(f"{LOST} powered on -> both next hops again", f"{f.lost_back_s:.1f} s")
        self.console.print(table)


def run_bgp_act(console: Console, connections: int = 60) -> BgpFacts:
    """Build the BGP lab, play the act, tear everything down (also on errors and signals)."""
    if reason := frr_missing():
        raise DemoFailed(reason)
    lab = BgpLab(backends=2)
    with lab:
        return BgpDemo(lab, console, connections).run()
