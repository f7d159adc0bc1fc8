"""BGP graceful restart through real FRR: gw1 peers with `enableGracefulRestart: true`, gw2 without
(two BGPPeer objects for the same router, one per gateway); the router (FRR, configured by the
test) is a graceful-restart helper (FRR's default), BFD as usual (no `check-control-plane-failure`:
see docs/announce.md).

In order:
- SIGTERM of gw2 (no graceful restart) still withdraws at once;
- SIGTERM of gw1 (graceful restart): the router keeps gw1's route (stale) well past BFD's
  detection time, the client's held connection and new connections keep working through it;
- gw1 comes back with one VIP fewer (changed while it was down): after the new session's
  End-of-RIB the router has the kept VIP as a fresh route and the removed one is gone; the
  kept VIP's route was never missing, and the held connection still works;
- a power loss of gw1 (graceful restart on) is still noticed through BFD within 1 s: the router
  does not keep a dead gateway's routes as stale;
- an FRR that already runs on a gateway (here a bgpd of its own in gw2) is not shared by
  gatelb's own FRR: gatelb says so clearly (pointing to --frr-vty-socket) and announces nothing.
"""

from __future__ import annotations

import signal
import threading
import time

from gatelb.lab.bgp import GATEWAYS, ROUTER, SOLO, UPSTREAM, WEB, BgpLab, l4lb_doc
from gatelb.lab.daemon import LabDaemon
from gatelb.lab.topology import backend_v4

from .test_announce_bgp import CONVERGE_S, wait_for

GW1, GW2 = GATEWAYS["gw1"], GATEWAYS["gw2"]
# The shared upstream peer for gw2 only, and one with graceful restart for gw1.
assert "connectTime: 1s}" in UPSTREAM
PEERS = UPSTREAM.replace("connectTime: 1s}", "connectTime: 1s, nodes: [gw2]}") + f"""---
apiVersion: gatelb.io/v1alpha1
kind: BGPPeer
metadata: {{name: upstream-gr}}
spec: {{myASN: 64512, peerASN: 64500, peerAddress: {ROUTER}, bfdProfile: fast, holdTime: 3s, keepaliveTime: 1s,
       connectTime: 1s, enableGracefulRestart: true, nodes: [gw1]}}
"""
WEB_LB = l4lb_doc("web", WEB, [f"{backend_v4(1)}:8080", f"{backend_v4(2)}:8080"])
CONFIG = "---\n".join([PEERS, WEB_LB, l4lb_doc("solo", SOLO, [f"{backend_v4(1)}:8080"])])
CONFIG_WITHOUT_SOLO = "---\n".join([PEERS, WEB_LB])

ROUTER_BGPD = f"""router bgp 64500
 bgp router-id {ROUTER}
 no bgp ebgp-requires-policy
 bgp bestpath as-path multipath-relax
""" + "".join(f""" neighbor {a} remote-as 64512
 neighbor {a} timers 1 3
 neighbor {a} timers connect 1
 neighbor {a} advertisement-interval 0
 neighbor {a} bfd profile fast
""" for a in (GW1, GW2)) + """ address-family ipv4 unicast
  maximum-paths 8
 exit-address-family
exit
"""


class Watch:
    """Polls the router's route to a prefix in a thread; remembers whether it was ever missing."""

    def __init__(self, lab: BgpLab, prefix: str) -> None:
        self.lab, self.prefix = lab, prefix
        self.missing: list[float] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.lab.router_next_hops(self.prefix):
                self.missing.append(time.monotonic())
            self.polls += 1
            time.sleep(0.01)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_graceful_restart_keeps_routes_and_connections_sigterm_without_it_withdraws(bgp_lab: BgpLab) -> None:
    lab = bgp_lab
    gws = {g: LabDaemon(lab, CONFIG, name=g, ns=g, extra_args=("--node", g)) for g in GATEWAYS}
    for d in gws.values():
        d.start()
    both = {GW1, GW2}
    wait_for("both gateways as ECMP next hops", lambda: lab.router_next_hops(f"{WEB}/32") == both, CONVERGE_S, lab)
    neighbor = lab.router_vtysh(f"show ip bgp neighbors {GW1}")
    assert "Graceful Restart Capability: advertised and received" in neighbor, neighbor

    # without the option SIGTERM withdraws at once
    t0 = time.monotonic()
    gws["gw2"].signal(signal.SIGTERM)
    wait_for("gw2 withdrawn on SIGTERM", lambda: lab.router_next_hops(f"{WEB}/32") == {GW1}, 1.0, lab)
    print(f"SIGTERM without graceful restart -> withdrawn: {time.monotonic() - t0:.3f} s")
    assert gws["gw2"].wait(timeout=10) == 0

    held = lab.hold(WEB, 80)  # through gw1, the only path now
    try:
        assert held.exchange("before") == "before"
        with Watch(lab, f"{WEB}/32") as watch:
            gws["gw1"].signal(signal.SIGTERM)
            assert gws["gw1"].wait(timeout=10) == 0, gws["gw1"].log_text()[-3000:]
            assert gws["gw1"].events("frr-stopped")[-1]["graceful_restart"] == ["upstream-gr"]
            time.sleep(3.5)  # BFD's detection time (300 ms) and the hold time (3 s) have passed
            assert lab.router_next_hops(f"{WEB}/32") == {GW1}
            assert lab.router_next_hops(f"{SOLO}/32") == {GW1}
            route = lab.router_vtysh(f"show ip bgp {WEB}/32")
            assert "stale" in route.lower(), route
            assert held.exchange("while down") == "while down"
            result = lab.connect_many("tcp", WEB, 80, count=10)
            assert result.ok == 10, result

            # back, with solo removed meanwhile: End-of-RIB sweeps the stale solo, web is fresh again
            t_back = time.monotonic()
            LabDaemon(lab, CONFIG_WITHOUT_SOLO, name="gw1", ns="gw1", extra_args=("--node", "gw1")).start()
            wait_for("solo swept after End-of-RIB", lambda: not lab.router_next_hops(f"{SOLO}/32"), CONVERGE_S, lab)
            wait_for("web fresh again", lambda: "stale" not in lab.router_vtysh(f"show ip bgp {WEB}/32").lower(),
                     5.0, lab)
            print(f"restart -> re-synced (End-of-RIB): {time.monotonic() - t_back:.2f} s")
        assert watch.polls > 100 and not watch.missing, f"web's route missing at {len(watch.missing)} polls"
        assert lab.router_next_hops(f"{WEB}/32") == {GW1}
        assert held.exchange("after") == "after"
    finally:
        held.close()

    # BFD still drops a dead gateway at once, graceful restart or not
    wait_for("BFD up again", lambda: "Status: up" in lab.router_vtysh(f"show bfd peer {GW1}"), 10.0, lab)
    t0 = time.monotonic()
    lab.power_off("gw1")
    wait_for("gw1 dropped by BFD", lambda: not lab.router_next_hops(f"{WEB}/32"), 1.0, lab)
    print(f"power loss (graceful restart on) -> route gone: {time.monotonic() - t0:.3f} s")

    # an FRR already running on the gateway, without --frr-vty-socket: a clear error, nothing announced
    lab.start_frr("gw2", lab.tmpdir / "gw2-own-frr", "router bgp 64999\n")
    t0 = time.time()
    gw2 = LabDaemon(lab, CONFIG, name="gw2-again", ns="gw2", extra_args=("--node", "gw2")).start()
    failed = gw2.wait_event("announce-failed", after=t0, timeout=10)
    assert "TCP port 179 is already taken by bgpd (pid" in failed["error"], failed
    assert "run gatelb with --frr-vty-socket" in failed["error"]
    assert not lab.router_next_hops(f"{WEB}/32")
