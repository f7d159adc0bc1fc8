"""Announcement failover benchmark (issue 9): the BgpLab scenario (gatelb.lab.bgp: an FRR router,
a switch, two gateways running `gatelb run --node`, BFD 100 ms x 3, health checks 100 ms x 3 with
a 100 ms timeout: a 400 ms detection window). Each round:

  - power loss: gw1's links go down and every process in it is killed; the figure is the time
    until the router's kernel route to the VIP has only gw2 (polled every 10 ms); gw1 is then
    powered on again (links up, `gatelb run` restarted) and the round waits for ECMP again;
  - all backends of a VIP down: be1 (the only backend of `solo`) is SIGKILLed; the figure is the
    time until the router has no route to solo's VIP; be1 is restarted and solo comes back.

    python -m bench.announce_failover            # 5 rounds
    python -m bench.announce_failover --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if not __package__:  # run as a script: make `import bench` work
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatelb.lab.bgp import CONFIG, GATEWAYS, ROUTER_BFDD, ROUTER_BGPD, SOLO, WEB, BgpLab
from gatelb.lab.daemon import LabDaemon


def wait(check: Callable[[], bool], timeout: float) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("timed out")
        time.sleep(0.01)
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    power: list[float] = []
    withdraw: list[float] = []
    both = set(GATEWAYS.values())
    with BgpLab(backends=2) as lab:
        lab.start_backends(udp=None, http=None)
        lab.start_router(ROUTER_BGPD, ROUTER_BFDD)
        for g in GATEWAYS:
            LabDaemon(lab, CONFIG, name=g, ns=g, extra_args=("--node", g)).start()
        first = wait(lambda: lab.router_next_hops(f"{WEB}/32") == both, 60)
        print(f"first ECMP route after start: {first:.2f} s")
        for r in range(a.rounds):
            time.sleep(1.0)
            t0 = time.monotonic()
            lab.kill_backend(1)
            withdraw.append(wait(lambda: not lab.router_next_hops(f"{SOLO}/32"), 10) * 1000)
            lab.start_backend(1)
            wait(lambda: lab.router_next_hops(f"{SOLO}/32") == both, 30)
            time.sleep(1.0)
            t0 = time.monotonic()
            lab.power_off("gw1")
            power.append(wait(lambda: lab.router_next_hops(f"{WEB}/32") == {GATEWAYS["gw2"]}, 10) * 1000)
            lab.run("gw1", ["sh", "-c", "ip link set up0 up; ip link set lan0 up"])
            LabDaemon(lab, CONFIG, name=f"gw1-{r}", ns="gw1", extra_args=("--node", "gw1")).start()
            back = wait(lambda: lab.router_next_hops(f"{WEB}/32") == both, 60)
            print(f"round {r + 1}: withdrawn {withdraw[-1]:.0f} ms, power loss converged {power[-1]:.0f} ms, "
                  f"gw1 back in ECMP after {back:.1f} s (started {time.monotonic() - t0:.1f} s ago)")
    for name, xs in (("power loss -> route converged (ms)", power), ("all backends down -> withdrawn (ms)", withdraw)):
        print(f"{name}: median {statistics.median(xs):.0f}, min {min(xs):.0f}, max {max(xs):.0f}, n={len(xs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
