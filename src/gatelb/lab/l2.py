"""`L2Lab`: a client on the same segment as two gateways, for the L2 (ARP/NDP) announcement
scenarios.

::

    client eth0 192.0.2.10/24, 2001:db8:1::10/64 ----+
    gw1 up0 192.0.2.131/24, 2001:db8:1::131/64 ------sw: br-lan (a bridge in its own namespace)
    gw2 up0 192.0.2.132/24, 2001:db8:1::132/64 ------+
    gw1 lan0 198.51.100.1/24, 2001:db8:2::1/64 ------+
    gw2 lan0 198.51.100.2/24, 2001:db8:2::2/64 ------sw: br-be
    beI eth0 198.51.100.(10+I)/24, 2001:db8:2::(10+I)/64

The VIPs (192.0.2.200/29, 2001:db8:1::200/125) are in the client's own subnet: the client finds
them by ARP/NDP, so only the gateway that owns a VIP may answer. `power_off` (inherited from
BgpLab: links down, every process killed) is the owner's power loss.
"""

from __future__ import annotations

import json
import re
import time

from gatelb.lab.bgp import BgpLab, l4lb_doc
from gatelb.lab.topology import LabError, backend_v4, backend_v6

CLIENT, CLIENT6 = "192.0.2.10", "2001:db8:1::10"
UP = {"gw1": ("192.0.2.131", "2001:db8:1::131"), "gw2": ("192.0.2.132", "2001:db8:1::132")}
LAN = {"gw1": ("198.51.100.1", "2001:db8:2::1"), "gw2": ("198.51.100.2", "2001:db8:2::2")}
MAC = re.compile(r"([0-9a-f]{2}(?::[0-9a-f]{2}){5})", re.I)


class L2Lab(BgpLab):
    @property
    def namespaces(self) -> list[str]:
        return [self.ns("client"), self.ns("sw"), *(self.ns(g) for g in UP),
                *(self.backend(i) for i in self.backend_ids)]

    def _build(self) -> None:
        self._ip([], "".join(f"netns add {ns}\n" for ns in self.namespaces))
        # keep_addr_on_down: a backend link taken down and up again keeps its IPv6 addresses, as
        # IPv4 ones do (by default the kernel flushes them and only an ifup script would re-add them)
        forward = ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.icmp_ratelimit=0",
                   "net.ipv6.conf.all.keep_addr_on_down=1", "net.ipv6.conf.default.keep_addr_on_down=1"]
        self._wait_all([self._spawn(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                                     "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
                                     *(forward if ns.rsplit("-", 1)[1] in UP else [])], None)
                        for ns in self.namespaces])
        sw = ["link add br-lan type bridge forward_delay 0", "link add br-be type bridge forward_delay 0",
              f"link add p-client type veth peer name eth0 netns {self.client}", "link set lo up"]
        for g in UP:
            sw += [f"link add u-{g} type veth peer name up0 netns {self.ns(g)}",
                   f"link add l-{g} type veth peer name lan0 netns {self.ns(g)}"]
        for i in self.backend_ids:
            sw.append(f"link add b-be{i} type veth peer name eth0 netns {self.backend(i)}")
        sw += [f"link set {p} master br-lan up" for p in ["p-client", *(f"u-{g}" for g in UP)]]
        sw += [f"link set {p} master br-be up" for p in [*(f"l-{g}" for g in UP),
                                                       *(f"b-be{i}" for i in self.backend_ids)]]
        sw += ["link set br-lan up", "link set br-be up"]
        self._ip(["-n", self.ns("sw")], "\n".join(sw) + "\n")
        pending = [self._spawn_ip(["-n", self.client], "\n".join([
            "link set lo up", "link set eth0 up", f"addr add {CLIENT}/24 dev eth0",
            f"addr add {CLIENT6}/64 dev eth0 nodad"]) + "\n")]
        for g, (v4, v6) in UP.items():
            pending.append(self._spawn_ip(["-n", self.ns(g)], "\n".join([
                "link set lo up", "link set up0 up", "link set lan0 up", f"addr add {v4}/24 dev up0",
                f"addr add {v6}/64 dev up0 nodad", f"addr add {LAN[g][0]}/24 dev lan0",
                f"addr add {LAN[g][1]}/64 dev lan0 nodad"]) + "\n"))
        for i in self.backend_ids:
            pending.append(self._spawn_ip(["-n", self.backend(i)], "\n".join([
                "link set lo up", "link set eth0 up", f"addr add {backend_v4(i)}/24 dev eth0",
                f"addr add {backend_v6(i)}/64 dev eth0 nodad", f"route add default via {LAN['gw1'][0]}",
                f"route add ::/0 via {LAN['gw1'][1]}"]) + "\n"))
        self._wait_all(pending)

    # -- who answers ------------------------------------------------------------------------------

    def mac(self, gw: str, link: str = "up0") -> str:
        doc = json.loads(self.run(gw, ["ip", "-json", "link", "show", link]).stdout)
        return str(doc[0]["address"]).lower()

    def holder(self, vip: str) -> set[str]:
        """The gateways that have `vip` as an address (the VRRP masters of its instance)."""
        found = set()
        for g in UP:
            out = self.run(g, ["ip", "-json", "addr", "show", "dev", "up0"], check=False).stdout or "[]"
            if any(a.get("local") == vip for item in json.loads(out) for a in item.get("addr_info", [])):
                found.add(g)
        return found

    def arp_answers(self, vip: str, count: int = 3) -> list[str]:
        """The MAC of every ARP reply the client gets for `vip` (Habets' arping, `count` requests)."""
        done = self.run("client", ["arping", "-c", str(count), "-w", "2", "-i", "eth0", vip], check=False)
        return [m.group(1).lower() for line in done.stdout.splitlines() if "bytes from" in line
                if (m := MAC.search(line))]

    def ndp_answers(self, vip: str) -> list[str]:
        """The target link-layer address of every neighbour advertisement the client gets for `vip`
        (ndisc6 -m: all answers, not only the first)."""
        done = self.run("client", ["ndisc6", "-m", "-n", "-r", "2", "-w", "500", vip, "eth0"], check=False)
        return [m.group(1).lower() for line in done.stdout.splitlines() if "link-layer address" in line
                if (m := MAC.search(line))]

    def client_neighbour(self, vip: str) -> str | None:
        out = self.run("client", ["ip", "-json", "neigh", "show", vip, "dev", "eth0"]).stdout or "[]"
        entries = json.loads(out)
        return str(entries[0]["lladdr"]).lower() if entries and "lladdr" in entries[0] else None

    def wait_holder(self, vip: str, gw: str, timeout: float) -> float:
        """Seconds until exactly `gw` holds `vip` (polled every 10 ms)."""
        t0 = time.monotonic()
        while self.holder(vip) != {gw}:
            if time.monotonic() - t0 > timeout:
                raise LabError(f"{vip}: held by {sorted(self.holder(vip))}, not {gw}, after {timeout} s")
            time.sleep(0.01)
        return time.monotonic() - t0


WEB, API, WEB6 = "192.0.2.200", "192.0.2.201", "2001:db8:1::200"
_V4 = [f"{backend_v4(i)}:8080" for i in (1, 2)]
CONFIG = "---\n".join([
    f"""apiVersion: gatelb.io/v1alpha1
kind: IPPool
metadata: {{name: lan}}
spec: {{addresses: ["192.0.2.200/29", "2001:db8:1::200/125"]}}
---
apiVersion: gatelb.io/v1alpha1
kind: L2Advertisement
metadata: {{name: lan}}
spec: {{ipAddressPools: [lan]}}
---
apiVersion: gatelb.io/v1alpha1
kind: GatewayGroup
metadata: {{name: edge}}
spec:
  interface: lan0
  members: [{{name: gw1, address: {LAN['gw1'][0]}}}, {{name: gw2, address: {LAN['gw2'][0]}}}]
""",
    l4lb_doc("web", WEB, _V4),
    l4lb_doc("api", API, _V4),
    l4lb_doc("web6", WEB6, [f"[{backend_v6(i)}]:8080" for i in (1, 2)]),
])
