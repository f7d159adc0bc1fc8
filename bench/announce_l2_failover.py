"""L2 failover benchmark (issue 9, target: owner power loss -> VIP served again under 1 s).

The L2Lab scenario (gatelb.lab.l2): a client on the same segment as two gateways running
`gatelb run --node`, keepalived VRRP adverts every 100 ms. Each round, while the client opens
100 new TCP connections a second to the VIP (each given 300 ms):

  - power loss: gw1's links go down and every process in it is killed;
  - "held": the time until gw2 has the VIP as an address (polled every 10 ms);
  - "served again": from the power loss to the end of the first connection a backend answered
    after the first one that failed (the client's neighbour entry followed gw2's gratuitous ARP);
  - gw1 is powered on again (links up, `gatelb run` restarted) and the round waits until it
    holds its VIP again (preemption).

    python -m bench.announce_l2_failover            # 5 rounds
    python -m bench.announce_l2_failover --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: make `import bench` work
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatelb.lab.daemon import LabDaemon
from gatelb.lab.l2 import CONFIG, UP, WEB, L2Lab

RATE = 100.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    held: list[float] = []
    served: list[float] = []
    with L2Lab(backends=2) as lab:
        lab.start_backends(udp=None, http=None)
        for g in UP:
            LabDaemon(lab, CONFIG, name=g, ns=g, extra_args=("--node", g)).start()
        lab.wait_holder(WEB, "gw1", 30)
        for r in range(a.rounds):
            time.sleep(1.0)
            client = lab.start_client("tcp", WEB, 80, count=int(RATE * 2.5), rate=RATE, timeout=0.3)
            time.sleep(0.5)
            t_off = time.time()
            t0 = time.monotonic()
            lab.power_off("gw1")
            held.append(lab.wait_holder(WEB, "gw2", 5) * 1000)
            result = client.result()
            after = [x for x in result.attempts if x.at is not None and x.at >= t_off]
            # connections opened in the few ms `ip link set down` takes still succeed: the outage
            # starts with the first failure, and ends with the first success opened after it
            broken = min((x.at or 0) for x in after if not x.ok)
            ok = [x for x in after if x.ok and (x.at or 0) > broken]
            if not ok:
                raise RuntimeError(f"round {r + 1}: no connection served after the power loss: {result.failures}")
            first = min(ok, key=lambda x: (x.at or 0) + x.latency_ms / 1000)
            served.append(((first.at or 0) + first.latency_ms / 1000 - t_off) * 1000)
            failed = len(after) - len(ok)
            lab.run("gw1", ["sh", "-c", "ip link set up0 up; ip link set lan0 up"])
            LabDaemon(lab, CONFIG, name=f"gw1-{r}", ns="gw1", extra_args=("--node", "gw1")).start()
            back = lab.wait_holder(WEB, "gw1", 30)
            print(f"round {r + 1}: held by gw2 after {held[-1]:.0f} ms, served again after {served[-1]:.0f} ms "
                  f"({failed} of {len(after)} connections failed), gw1 owner again {back:.1f} s after restart "
                  f"({time.monotonic() - t0:.1f} s after the power loss)")
    for name, xs in (("power loss -> VIP held by gw2 (ms)", held), ("power loss -> VIP served again (ms)", served)):
        print(f"{name}: median {statistics.median(xs):.0f}, min {min(xs):.0f}, max {max(xs):.0f}, n={len(xs)}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
