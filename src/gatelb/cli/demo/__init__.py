"""`gatelb demo`: live load balancing in network namespaces, in acts that each build their own lab.

- ``basic``: one gateway, three HTTP backends: spread, weights, affinity, an IPv6 VIP, the client's
  address preserved, backend failover, `gatelb status` (`gatelb.cli.demo.basic`).
- ``bgp``: an FRR router, a switch, two gateways announcing the VIPs over BGP with BFD: ECMP, a
  gateway's power loss, a VIP withdrawn when its backends are down and back (`gatelb.cli.demo.bgp`).
- ``ha``: an active-standby pair (keepalived, conntrackd) behind the same router: the active's
  power loss keeps the established connections, and its return breaks none (`gatelb.cli.demo.ha`).

Everything an act creates is removed when it ends, also on Ctrl-C, SIGTERM or SIGHUP.
"""

from __future__ import annotations

import subprocess

from rich.console import Console

from gatelb.cli.demo.basic import run_basic_act
from gatelb.cli.demo.bgp import DemoFailed, run_bgp_act
from gatelb.cli.demo.ha import frr_or_tools_missing, run_ha_act
from gatelb.lab import lifecycle

ACTS = ("all", "basic", "bgp", "ha")
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def run_demo(connections: int = 300, act: str = "all") -> int:
    if act not in ACTS:
        raise ValueError(f"gatelb demo: --act: {act!r} is not one of {', '.join(ACTS)}")
    console = Console(width=max(100, Console().width))
    restore = lifecycle.install_signal_handlers()
    try:
        if act == "all" and (reason := frr_or_tools_missing()):
            raise DemoFailed(reason)  # before the first act, not after it
        if act in ("all", "basic"):
            run_basic_act(console, connections)
        if act in ("all", "bgp"):
            run_bgp_act(console, max(20, connections // 5))
        if act in ("all", "ha"):
            run_ha_act(console)
        console.print("\n[green]demo finished; every namespace and process it created is gone[/green]")
        return 0
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted; cleaned up[/yellow]")
        return EXIT_INTERRUPTED
    except (RuntimeError, subprocess.TimeoutExpired) as exc:  # DemoFailed, LabError, a client that hung
        console.print(f"\n[red]demo failed:[/red] {exc}", markup=True, highlight=False)
        console.print("[yellow]cleaned up: every namespace and process it created is gone[/yellow]")
        return EXIT_FAILED
    finally:
        restore()
