"""Announcements at scale (issue 9): N VIPs announced over BGP to a real FRR router (the BgpLab
topology of gatelb.lab.bgp; only gw1 runs `gatelb run --node gw1 --no-health`).

For each N:
  - start: the time from starting `gatelb run` until the router's kernel has a route for every
    one of the N VIPs (`ip -4 route show proto bgp`, polled every 50 ms), and, from the
    `announce` event, how long gatelb's own FRR apply took;
  - `gatelb status -o json` and the table (each load balancer with where it is announced);
  - one change, `--changes` times: one L4LB in the middle of the list is disabled (its route must
    go) and enabled again (it must come back), by rewriting the file; the figure is the time from
    the rewrite until the router's kernel route is gone / back (polled every 10 ms), and the
    `announce` event's duration_ms (gatelb's FRR apply alone).

    python -m bench.announce_scale                    # 1,000 and 10,000
    python -m bench.announce_scale --sizes 1000 --changes 3
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if not __package__:  # run as a script: make `import bench` work
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, machine_line
from gatelb.lab.bgp import ROUTER_BFDD, ROUTER_BGPD, BgpLab, upstream
from gatelb.lab.daemon import LabDaemon
from gatelb.lab.topology import backend_v4

VIP_BASE = ipaddress.IPv4Address("198.18.0.1")


def config(n: int, disabled: int | None = None) -> str:
    docs = [upstream("bench", "198.18.0.0/15")]
    backends = f'["{backend_v4(1)}:8080", "{backend_v4(2)}:8080"]'
    for i in range(n):
        state = "  state: disable\n" if i == disabled else ""
        docs.append(f"""apiVersion: gatelb.io/v1alpha1
kind: L4LB
metadata: {{name: lb{i}}}
spec:
{state}  frontend: {{ip: {VIP_BASE + i}, port: 80}}
  backend: {backends}
  nat: fullnat
""")
    return "---\n".join(docs)


def bgp_routes(lab: BgpLab) -> int:
    out = lab.run("rtr", ["ip", "-4", "route", "show", "proto", "bgp"]).stdout
    return out.count("\n")


def has_route(lab: BgpLab, prefix: str) -> bool:
    return bool(lab.run("rtr", ["ip", "-4", "route", "show", "exact", prefix]).stdout.strip())


def wait(check: Callable[[], bool], timeout: float, every: float) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("timed out")
        time.sleep(every)
    return time.monotonic() - t0


def one_size(n: int, changes: int) -> dict[str, object]:
    middle = n // 2
    prefix = f"{VIP_BASE + middle}/32"
    with BgpLab(backends=2) as lab:
        lab.start_router(ROUTER_BGPD, ROUTER_BFDD)
        gw = LabDaemon(lab, config(n), name="gw1", ns="gw1", extra_args=("--node", "gw1", "--no-health"))
        t0 = time.monotonic()
        gw.start(timeout=300)
        synced = time.monotonic() - t0
        all_in = wait(lambda: bgp_routes(lab) >= n, 600, 0.05) + synced
        first = gw.wait_event("announce", timeout=120)
        print(f"N={n}: first sync after {synced:.2f} s; router has all {n} routes after {all_in:.2f} s "
              f"(FRR apply {first['duration_ms']:.0f} ms)", flush=True)
        status_s = []
        for output in ("json", "table"):
            t = time.monotonic()
            out = lab.run("gw1", [*gw._gatelb(), "status", "-o", output], timeout=120).stdout
            status_s.append(time.monotonic() - t)
            if output == "json":
                doc = json.loads(out)
                announced = sum(1 for lb in doc["loadBalancers"] if (lb.get("announced") or {}).get("bgp"))
        print(f"  gatelb status: -o json {status_s[0]:.2f} s ({announced} load balancers announced over BGP), "
              f"table {status_s[1]:.2f} s", flush=True)
        gone: list[float] = []
        back: list[float] = []
        apply_ms: list[float] = []
        parts: list[dict[str, object]] = []  # where each apply's time went
        for _ in range(changes):
            time.sleep(1.0)
            t_mark = time.time()
            t = time.monotonic()
            gw.write_config(config(n, disabled=middle))
            gone.append(wait(lambda: not has_route(lab, prefix), 120, 0.01))
            ev = gw.wait_event("announce", after=t_mark, timeout=60)
            apply_ms.append(float(ev["duration_ms"]))
            parts.append({k: ev.get(k) for k in ("render_ms", "diff_ms", "vtysh_ms", "write_ms", "commands")})
            time.sleep(1.0)
            t_mark = time.time()
            t = time.monotonic()
            gw.write_config(config(n))
            back.append(wait(lambda: has_route(lab, prefix), 120, 0.01))
            ev = gw.wait_event("announce", after=t_mark, timeout=60)
            apply_ms.append(float(ev["duration_ms"]))
            parts.append({k: ev.get(k) for k in ("render_ms", "diff_ms", "vtysh_ms", "write_ms", "commands")})
            print(f"  change: withdrawn at the router {gone[-1] * 1000:.0f} ms, back {back[-1] * 1000:.0f} ms "
                  f"(FRR apply {apply_ms[-2]:.0f} / {apply_ms[-1]:.0f} ms: {parts[-1]}); load {os.getloadavg()[0]:.1f}",
                  flush=True)
        gw.stop(timeout=30)
    return {"n": n, "status_json_s": status_s[0], "status_table_s": status_s[1], "first_sync_s": synced,
            "router_all_s": all_in, "first_apply_ms": first["duration_ms"],
            "withdraw_ms": [x * 1000 for x in gone], "announce_ms": [x * 1000 for x in back],
            "apply_ms": apply_ms, "apply_parts": parts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--changes", type=int, default=3)
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args(argv)
    print(machine_line(machine_info()), flush=True)
    print(f"load before: {os.getloadavg()}", flush=True)
    results = []
    for n in (int(x) for x in a.sizes.split(",")):
        results.append(one_size(n, a.changes))
        r = results[-1]
        print(f"N={n}: withdraw median {statistics.median(r['withdraw_ms']):.0f} ms, "  # type: ignore[arg-type]
              f"announce median {statistics.median(r['announce_ms']):.0f} ms; load {os.getloadavg()}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
