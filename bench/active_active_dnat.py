"""The return-path rule of active-active groups, measured (docs/ha.md): `nat: dnat` breaks the
flows whose answers do not come back through the member that forwarded them.

    PYTHONPATH=src:. python -m bench.active_active_dnat [--flows 300] [--nat dnat|fullnat]

The active-active lab (`gatelb.lab.active_active`: FRR router with ECMP and BFD, switch, two
gateways running `gatelb run --node gw1|gw2` on one file, three backends) with the L4LB's `nat`
set by `--nat`, and every backend's default route through gw1, as on a LAN with one router
address. `--flows` new connections from fixed source ports: ECMP sends about half through gw2;
with dnat their answers go to gw1, which has no state for them, so they time out; with fullnat
every backend answers the member that sent the flow. Prints how many were answered and how the
failures were reported.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from bench.common import log, machine_info, machine_line, require_root
from gatelb.lab.active_active import BACKENDS, GROUP, WEB
from gatelb.lab.bgp import GATEWAY_LAN, GATEWAYS, ROUTER_BFDD, ROUTER_BGPD, UPSTREAM, BgpLab, l4lb_doc
from gatelb.lab.daemon import LabDaemon
from gatelb.lab.topology import backend_v4

CONVERGE_S = 40.0
FIRST_PORT = 42000


def measure(flows: int, nat: str) -> tuple[int, Counter[str], float]:
    config = "---\n".join([UPSTREAM, GROUP, l4lb_doc("web", WEB, [f"{backend_v4(i)}:8080" for i in BACKENDS],
                                                       nat=nat)])
    with BgpLab(backends=len(BACKENDS)) as lab:
        lab.start_backends(udp=None, http=None)
        lab.start_router(ROUTER_BGPD, ROUTER_BFDD)
        for i in BACKENDS:
            lab.run(f"be{i}", ["ip", "route", "replace", "default", "via", GATEWAY_LAN["gw1"]])
        for g in GATEWAYS:
            LabDaemon(lab, config, name=g, ns=g, extra_args=("--node", g)).start()
        both = set(GATEWAYS.values())
        t0 = time.monotonic()
        while lab.router_next_hops(f"{WEB}/32") != both:
            if time.monotonic() - t0 > CONVERGE_S:
                raise RuntimeError(f"no ECMP route to {WEB} within {CONVERGE_S:.0f} s")
            time.sleep(0.05)
        ecmp_s = time.monotonic() - t0
        result = lab.connect_many("tcp", WEB, 80, flows, timeout=1.0, first_port=FIRST_PORT)
        return result.ok, Counter(result.failures), ecmp_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flows", type=int, default=300)
    p.add_argument("--nat", choices=["dnat", "fullnat"], default="dnat")
    a = p.parse_args(argv)
    require_root()
    log(machine_line(machine_info()))
    ok, failures, ecmp_s = measure(a.flows, a.nat)
    log(f"nat {a.nat}, backends routing through gw1, ECMP route after {ecmp_s:.1f} s: {ok} of {a.flows} new "
        f"connections answered; failed: {dict(failures) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
