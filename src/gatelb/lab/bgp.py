"""`BgpLab`: an upstream router, a switch and two gateways, for the announcement scenarios.

::

    client 192.0.2.10/26 -- rtr 192.0.2.1/26
                            rtr eth1 192.0.2.129/26 --+
                                                      sw: br-up (a bridge in its own namespace)
                   gw1 up0 192.0.2.130/26 ------------+
                   gw2 up0 192.0.2.131/26 ------------+
                   gw1 lan0 198.51.100.1/24 ----------+
                   gw2 lan0 198.51.100.2/24 ----------sw: br-be
                   beI eth0 198.51.100.(10+I)/24 -----+

The router runs FRR with a configuration the test writes (`start_router`); every namespace has
its own files under the lab's directory, which is made traversable for user frr. The switch keeps
the router's link up when a gateway "loses power" (`power_off`: its links down, every process in
it killed), so only BFD or BGP can tell the router.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from gatelb.lab import naming
from gatelb.lab.topology import Lab, LabError, backend_v4

CLIENT = "192.0.2.10"
ROUTER_CLIENT = "192.0.2.1"
ROUTER = "192.0.2.129"
GATEWAYS = {"gw1": "192.0.2.130", "gw2": "192.0.2.131"}
GATEWAY_LAN = {"gw1": "198.51.100.1", "gw2": "198.51.100.2"}
FRR_LIB = Path("/usr/lib/frr")


class BgpLab(Lab):
    def __init__(self, backends: int = 2) -> None:
        super().__init__(backends)

    @property
    def namespaces(self) -> list[str]:
        return [self.ns("client"), self.ns("rtr"), self.ns("sw"), *(self.ns(g) for g in GATEWAYS),
                *(self.backend(i) for i in self.backend_ids)]

    def _build(self) -> None:
        os.chmod(self.tmpdir, 0o755)  # FRR's daemons run as user frr and keep their files below
        self._ip([], "".join(f"netns add {ns}\n" for ns in self.namespaces))
        forward = ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.icmp_ratelimit=0"]
        extra = {"rtr": [*forward, "net.ipv4.fib_multipath_hash_policy=1"], "gw1": forward, "gw2": forward}
        self._wait_all([self._spawn(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                                     "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
                                     *extra.get(ns.rsplit("-", 1)[1], [])], None) for ns in self.namespaces])
        sw = ["link add br-up type bridge forward_delay 0", "link add br-be type bridge forward_delay 0",
              f"link add p-rtr type veth peer name eth1 netns {self.ns('rtr')}", "link set lo up"]
        for g in GATEWAYS:
            sw += [f"link add u-{g} type veth peer name up0 netns {self.ns(g)}",
                   f"link add l-{g} type veth peer name lan0 netns {self.ns(g)}"]
        for i in self.backend_ids:
            sw.append(f"link add b-be{i} type veth peer name eth0 netns {self.backend(i)}")
        ports = ["p-rtr", *(f"u-{g}" for g in GATEWAYS)]
        sw += [f"link set {p} master br-up up" for p in ports]
        sw += [f"link set {p} master br-be up" for p in [*(f"l-{g}" for g in GATEWAYS),
                                                       *(f"b-be{i}" for i in self.backend_ids)]]
        sw += ["link set br-up up", "link set br-be up"]
        self._ip(["-n", self.ns("sw")], "\n".join(sw) + "\n")
        self._ip([], f"link add eth0 netns {self.client} type veth peer name to-client netns {self.ns('rtr')}\n")
        rtr = ["link set lo up", "link set eth1 up", "link set to-client up",
               f"addr add {ROUTER_CLIENT}/26 dev to-client", f"addr add {ROUTER}/26 dev eth1"]
        client = ["link set lo up", "link set eth0 up", f"addr add {CLIENT}/26 dev eth0",
                  f"route add default via {ROUTER_CLIENT}"]
        pending = [self._spawn_ip(["-n", self.ns("rtr")], "\n".join(rtr) + "\n"),
                   self._spawn_ip(["-n", self.client], "\n".join(client) + "\n")]
        for g, up in GATEWAYS.items():
            pending.append(self._spawn_ip(["-n", self.ns(g)], "\n".join([
                "link set lo up", "link set up0 up", "link set lan0 up", f"addr add {up}/26 dev up0",
                f"addr add {GATEWAY_LAN[g]}/24 dev lan0", f"route add default via {ROUTER}"]) + "\n"))
        for i in self.backend_ids:
            pending.append(self._spawn_ip(["-n", self.backend(i)], "\n".join([
                "link set lo up", "link set eth0 up", f"addr add {backend_v4(i)}/24 dev eth0",
                f"route add default via {GATEWAY_LAN['gw1']}"]) + "\n"))
        self._wait_all(pending)

    # -- the router's FRR -------------------------------------------------------------------------

    @property
    def router_dir(self) -> Path:
        return self.tmpdir / "rtr-frr"

    def start_router(self, bgpd: str, bfdd: str = "") -> None:
        """Start zebra, bfdd and bgpd in the router namespace, each from its own file."""
        self.start_frr("rtr", self.router_dir, bgpd, bfdd)

    def start_frr(self, role: str, d: Path, bgpd: str, bfdd: str = "") -> None:
        """An FRR of its own (files in `d`) in namespace `role`: the router's, or one that
        already runs on a gateway."""
        d.mkdir(exist_ok=True)
        files = {"zebra": f"hostname {role}\n", "bfdd": bfdd, "bgpd": bgpd}
        for daemon, text in files.items():
            (d / f"{daemon}.conf").write_text(f"log file {d}/frr.log informational\n{text}")
        for path in [d, *d.iterdir()]:
            shutil.chown(path, "frr", "frr")
        for daemon in files:
            self.run(role, [str(FRR_LIB / daemon), "-d", "-u", "frr", "-g", "frr", "-f", str(d / f"{daemon}.conf"),
                             "-i", str(d / f"{daemon}.pid"), "-z", str(d / "zserv.api"), "--vty_socket", str(d),
                             "-A", "127.0.0.1"])
            if daemon == "zebra":
                self._wait_path(d / "zserv.api")
        for daemon in files:
            self._wait_path(d / f"{daemon}.vty")

    def _wait_path(self, path: Path, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise LabError(f"{path} did not appear")
            time.sleep(0.01)

    def router_vtysh(self, *commands: str) -> str:
        argv = ["vtysh", "--vty_socket", str(self.router_dir)]
        for c in commands:
            argv += ["-c", c]
        return self.run("rtr", argv).stdout

    def router_next_hops(self, prefix: str) -> set[str]:
        """The router's kernel route to `prefix`: its next-hop addresses (empty: no route)."""
        out = self.run("rtr", ["ip", "-4", "route", "show", "exact", prefix]).stdout
        return {w[i + 1] for line in out.splitlines() if (w := line.split()) for i, x in enumerate(w[:-1])
                if x == "via"}

    # -- failures -----------------------------------------------------------------------------------

    def power_off(self, gw: str) -> None:
        """All links of `gw` down and every process in it killed at once, like a power loss."""
        self.run(gw, ["sh", "-c", "ip link set up0 down; ip link set lan0 down"])
        for pids in naming.namespace_pids([self.ns(gw)]).values():
            for pid in pids:
                if pid != os.getpid():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)


# -- the scenario: both gateways get the same file; the router peers with both -----------------

WEB, SOLO, OFF = "203.0.113.10", "203.0.113.11", "203.0.113.12"
CHECK = "{type: tcp, interval: 100, timeout: 100, fall: 3, rise: 2}"


def l4lb_doc(name: str, frontend: str, backends: list[str], nat: str = "fullnat", check: str = CHECK) -> str:
    """One L4LB document of the scenarios (`frontend` quoted: IPv6 addresses contain colons)."""
    listed = ", ".join(f'"{b}"' for b in backends)
    return f"""apiVersion: gatelb.io/v1alpha1
kind: L4LB
metadata: {{name: {name}}}
spec:
  frontend: {{ip: "{frontend}", port: 80}}
  backend: [{listed}]
  nat: {nat}
  check: {check}
"""


def upstream(pool: str = "public", addresses: str = "203.0.113.0/28") -> str:
    """The upstream half every BGP scenario shares: the pool, BFD 100 ms x 3, the router as peer
    with short timers, and the pool advertised."""
    return f"""\
apiVersion: gatelb.io/v1alpha1
kind: IPPool
metadata: {{name: {pool}}}
spec: {{addresses: ["{addresses}"]}}
---
apiVersion: gatelb.io/v1alpha1
kind: BFDProfile
metadata: {{name: fast}}
spec: {{receiveInterval: 100, transmitInterval: 100, detectMultiplier: 3}}
---
apiVersion: gatelb.io/v1alpha1
kind: BGPPeer
metadata: {{name: upstream}}
spec: {{myASN: 64512, peerASN: 64500, peerAddress: {ROUTER}, bfdProfile: fast, holdTime: 3s, keepaliveTime: 1s,
       connectTime: 1s}}
---
apiVersion: gatelb.io/v1alpha1
kind: BGPAdvertisement
metadata: {{name: {pool}}}
spec: {{ipAddressPools: [{pool}]}}
"""


UPSTREAM = upstream()

CONFIG = "---\n".join([
    UPSTREAM,
    l4lb_doc("web", WEB, [f"{backend_v4(1)}:8080", f"{backend_v4(2)}:8080"]),
    l4lb_doc("solo", SOLO, [f"{backend_v4(1)}:8080"]),
    f"""apiVersion: gatelb.io/v1alpha1
kind: L4LB
metadata: {{name: disabled}}
spec:
  state: disable
  frontend: {{ip: {OFF}, port: 80}}
  backend: ["{backend_v4(2)}:8080"]
""",
])

NEIGHBORS = "".join(f""" neighbor {a} remote-as 64512
 neighbor {a} timers 1 3
 neighbor {a} timers connect 1
 neighbor {a} advertisement-interval 0
 neighbor {a} bfd profile fast
""" for a in GATEWAYS.values())
ROUTER_BGPD = f"""router bgp 64500
 bgp router-id {ROUTER}
 no bgp ebgp-requires-policy
 bgp bestpath as-path multipath-relax
{NEIGHBORS} address-family ipv4 unicast
  maximum-paths 8
 exit-address-family
exit
"""
ROUTER_BFDD = """bfd
 profile fast
  detect-multiplier 3
  receive-interval 100
  transmit-interval 100
 exit
exit
"""
