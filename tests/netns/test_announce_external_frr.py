"""BGP through an FRR that already runs on the gateway (`gatelb run --frr-vty-socket DIR`), real FRR.

gw1 runs the "user's" FRR (started by the test, its own files): the session to the upstream
router, an outbound policy of the user's that lets out their own network and gatelb's tagged
routes, and one network of the user's. gatelb starts no FRR there and adds only its own part.

In order:
- a BGPPeer whose myASN is not the user's `router bgp`: a clear error naming the field, nothing
  added;
- the router gets both VIPs via gw1's FRR, beside the user's own network; a client reaches the
  backends through the VIP;
- all backends of one VIP down: withdrawn, back when they are up; the user's lines never change;
- gatelb killed (SIGKILL): the user's FRR keeps announcing; the next run (with one VIP fewer)
  adopts the part from the running configuration and removes the VIP the configuration lost;
- SIGTERM with graceful restart on the BGPPeer: the part stays; the next run adopts it and adds
  only the VIP that came back;
- the user's bgpd restarts (from its own file, without gatelb's part): gatelb adds its part again;
- SIGTERM: gatelb's networks are withdrawn at the router at once, the user's session and network
  stay, and the running configuration is the user's again, exactly.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from gatelb.lab.bgp import GATEWAYS, ROUTER, ROUTER_BFDD, SOLO, UPSTREAM, WEB, BgpLab, l4lb_doc
from gatelb.lab.daemon import LabDaemon
from gatelb.lab.topology import backend_v4

from .test_announce_bgp import CONVERGE_S, wait_for

GW1 = GATEWAYS["gw1"]
USER_NET = "198.18.7.0/24"
USER_BGPD = f"""router bgp 64512
 bgp router-id {GW1}
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor {ROUTER} remote-as 64500
 neighbor {ROUTER} timers 1 3
 neighbor {ROUTER} timers connect 1
 neighbor {ROUTER} advertisement-interval 0
 neighbor {ROUTER} bfd profile fast
 address-family ipv4 unicast
  network {USER_NET}
  neighbor {ROUTER} route-map user-out out
 exit-address-family
exit
ip prefix-list user-nets seq 5 permit {USER_NET}
route-map user-out permit 10
 match ip address prefix-list user-nets
exit
route-map user-out permit 20
 match tag 64179
exit
"""
WEB_LB = l4lb_doc("web", WEB, [f"{backend_v4(1)}:8080", f"{backend_v4(2)}:8080"])
CONFIG = "---\n".join([UPSTREAM, WEB_LB, l4lb_doc("solo", SOLO, [f"{backend_v4(1)}:8080"])])
CONFIG_WITHOUT_SOLO = "---\n".join([UPSTREAM, WEB_LB])
assert "connectTime: 1s}" in UPSTREAM
CONFIG_WITHOUT_SOLO_GR = CONFIG_WITHOUT_SOLO.replace("connectTime: 1s}",
                                                     "connectTime: 1s, enableGracefulRestart: true}")
assert "myASN: 64512" in UPSTREAM
WRONG_ASN = CONFIG.replace("myASN: 64512", "myASN: 64513")


def users_lines(running: str) -> list[str]:
    """The running configuration without gatelb's part (its route-maps and networks)."""
    out: list[str] = []
    skipping = ""  # in a gatelb route-map: until its "exit" and the "!" after it
    for line in running.splitlines():
        if line.startswith("route-map gatelb-"):
            skipping = "exit"
        elif skipping and line == skipping:
            skipping = "!" if line == "exit" else ""
        elif not skipping and " route-map gatelb-" not in line:
            out.append(line)
    return out


def restart_bgpd(lab: BgpLab, d: Path) -> None:
    """Stop the user's bgpd and start it again from its startup file, as `systemctl restart` would."""
    pid = int((d / "bgpd.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    lab.run("gw1", ["/usr/lib/frr/bgpd", "-d", "-u", "frr", "-g", "frr", "-f", str(d / "bgpd.conf"),
                    "-i", str(d / "bgpd.pid"), "-z", str(d / "zserv.api"), "--vty_socket", str(d), "-A", "127.0.0.1"])


def test_gatelb_adds_only_its_part_to_the_users_frr(bgp_lab: BgpLab) -> None:
    lab = bgp_lab
    vty = lab.tmpdir / "gw1-user-frr"
    lab.start_frr("gw1", vty, USER_BGPD, ROUTER_BFDD)

    def user_vtysh(*commands: str) -> str:
        argv = ["vtysh", "--vty_socket", str(vty)]
        for c in commands:
            argv += ["-c", c]
        return lab.run("gw1", argv).stdout

    def running() -> str:
        return user_vtysh("show running-config")

    wait_for("the user's network at the router", lambda: lab.router_next_hops(USER_NET) == {GW1}, CONVERGE_S, lab)
    before = running()
    args = ("--node", "gw1", "--frr-vty-socket", str(vty))

    # myASN not the user's: a clear error naming the object and field, nothing added
    t0 = time.time()
    wrong = LabDaemon(lab, WRONG_ASN, name="gw1-wrong", ns="gw1", extra_args=args).start()
    failed = wrong.wait_event("announce-failed", after=t0, timeout=10)
    assert "BGPPeer upstream: spec.myASN: 64513, but the FRR at" in failed["error"], failed
    assert "runs `router bgp 64512`" in failed["error"], failed
    assert wrong.stop() == 0
    assert running() == before

    gw = LabDaemon(lab, CONFIG, name="gw1", ns="gw1", extra_args=args).start()
    took = wait_for("both VIPs via the user's FRR", lambda: lab.router_next_hops(f"{WEB}/32") == {GW1}
                    and lab.router_next_hops(f"{SOLO}/32") == {GW1}, 10.0, lab)
    print(f"VIPs at the router {took:.2f} s after gatelb's first sync")
    assert not gw.events("frr-started")  # gatelb started no FRR of its own
    assert lab.router_next_hops(USER_NET) == {GW1}
    result = lab.connect_many("tcp", WEB, 80, count=20)
    assert result.ok == 20, result
    added = running()
    assert users_lines(added) == before.splitlines(), added  # the user's lines, untouched
    assert f"  network {WEB}/32 route-map gatelb-net-" in added
    assert (gw.state_dir / "frr-external.conf").read_text().count(" network ") == 2
    # status: the user's session as FRR reports it
    wait_for("status: web announced to an Established peer", lambda: [
        (b["peer"], b["session"], b["bfd"]) for lb in gw.status()["loadBalancers"] if lb["name"] == "web"
        for b in lb["announced"]["bgp"]] == [("upstream", "Established", "up")], 10.0, lab)

    # health: all backends of solo down -> withdrawn; back when up; web and the user's net stay
    t_kill = time.time()
    lab.kill_backend(1)
    gone = wait_for("solo withdrawn", lambda: not lab.router_next_hops(f"{SOLO}/32"), 5.0, lab)
    print(f"all backends down -> withdrawn at the router: {gone:.3f} s")
    event = gw.wait_event("announce", after=t_kill, where=lambda e: f"{SOLO}/32" in e["withdrawn"])
    assert event["frr"] == "external"
    assert lab.router_next_hops(f"{WEB}/32") == {GW1} and lab.router_next_hops(USER_NET) == {GW1}
    assert users_lines(running()) == before.splitlines()
    lab.start_backend(1)
    back = wait_for("solo announced again", lambda: lab.router_next_hops(f"{SOLO}/32") == {GW1}, 5.0, lab)
    print(f"backend up -> announced again: {back:.3f} s")

    # gatelb killed: the user's FRR keeps gatelb's part; the next run adopts it and drops solo
    gw.signal(signal.SIGKILL)
    gw.wait(timeout=5)
    assert lab.router_next_hops(f"{WEB}/32") == {GW1}
    again = LabDaemon(lab, CONFIG_WITHOUT_SOLO_GR, name="gw1", ns="gw1", extra_args=args)
    missing: list[float] = []
    again.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10 and lab.router_next_hops(f"{SOLO}/32"):
        if lab.router_next_hops(f"{WEB}/32") != {GW1}:
            missing.append(time.monotonic() - t0)
        time.sleep(0.02)
    assert not lab.router_next_hops(f"{SOLO}/32"), "the removed VIP's leftover route was not withdrawn"
    assert not missing, "web's route went missing while the next run adopted it"
    assert lab.router_next_hops(f"{WEB}/32") == {GW1}
    assert users_lines(running()) == before.splitlines()

    # SIGTERM with graceful restart on the BGPPeer: gatelb's part stays, the user's FRR keeps announcing
    again.signal(signal.SIGTERM)
    assert again.wait(timeout=10) == 0, again.log_text()[-3000:]
    assert again.events("frr-external-kept")
    assert lab.router_next_hops(f"{WEB}/32") == {GW1}
    last = LabDaemon(lab, CONFIG, name="gw1", ns="gw1", extra_args=args).start()  # solo is back
    wait_for("solo announced by the next run", lambda: lab.router_next_hops(f"{SOLO}/32") == {GW1}, 5.0, lab)
    assert lab.router_next_hops(f"{WEB}/32") == {GW1}
    # adopted as it was: one vtysh run adding solo's network alone (configure, router bgp,
    # address-family, network, exit-address-family, exit, end) and sending the route-map it uses
    # again (route-map, set tag, exit: read back, it may be zebra's alone), web untouched
    assert [e["commands"] for e in last.events("announce")] == [10]

    # the user's bgpd restarts (from its own file: without gatelb's part): gatelb adds it again
    t_restart = time.time()
    restart_bgpd(lab, vty)
    last.wait_event("frr-external-gone", after=t_restart)
    last.wait_event("announce", after=t_restart, timeout=10)
    readded = running()
    assert f"  network {WEB}/32 route-map gatelb-net-" in readded and f"  network {SOLO}/32 route-map" in readded
    assert users_lines(readded) == before.splitlines()
    wait_for("both VIPs again after the user's bgpd restarted", lambda: lab.router_next_hops(f"{WEB}/32")
             == {GW1} and lab.router_next_hops(f"{SOLO}/32") == {GW1}, CONVERGE_S, lab)
    print(f"user's bgpd restarted -> VIPs at the router again {time.time() - t_restart:.2f} s later")

    # SIGTERM: gatelb's networks withdrawn at once, the user's session and network stay
    again = last
    t0 = time.monotonic()
    again.signal(signal.SIGTERM)
    wait_for("web withdrawn on SIGTERM", lambda: not lab.router_next_hops(f"{WEB}/32"), 2.0, lab)
    print(f"SIGTERM -> withdrawn at the router: {time.monotonic() - t0:.3f} s")
    assert again.wait(timeout=10) == 0, again.log_text()[-3000:]
    assert again.events("withdrawn")[-1]["networks"] == 2
    assert running() == before
    assert lab.router_next_hops(USER_NET) == {GW1}
    assert '"bgpState":"Established"' in user_vtysh(f"show bgp neighbors {ROUTER} json").replace(" ", "")
