"""`HaLab`: the active-standby scenario: BgpLab's router, switch and two gateways, three backends
whose default route is the group's backend gateway (198.51.100.254, held by the active member).

::

    client 192.0.2.10/26 -- rtr (FRR) -- sw: br-up -- gw1 up0 192.0.2.130, gw2 up0 192.0.2.131
    gw1 lan0 198.51.100.1/24, gw2 lan0 198.51.100.2/24 -- sw: br-be -- beI 198.51.100.(10+I)/24
                                                          default via 198.51.100.254

`Flow` drives one held connection from a thread: a line every 100 ms, noting every failure and
every change of backend. `reboot` is the return after `power_off`: the kernel state a power loss
wipes (conntrack table, nftables, the addresses keepalived had added) is wiped, links come up.
`uplink_down` takes a gateway's upstream link down and nothing else (its LAN link stays up).

Besides the TCP service `web` (203.0.113.10:80) the file has a UDP one, `dns` (203.0.113.11:53 ->
the backends' UDP echo on 8080), for the UDP flows that must cross a failover too.
"""

from __future__ import annotations

import contextlib
import threading
import time

from gatelb.lab.bgp import GATEWAYS, ROUTER, UPSTREAM, BgpLab, l4lb_doc
from gatelb.lab.held import ConnectionLost, HeldConnection
from gatelb.lab.topology import backend_v4

BACKEND_GATEWAY = "198.51.100.254"
WEB = "203.0.113.10"
DNS = "203.0.113.11"  # UDP
UDP_PORT = 53
LIBERAL = "net.netfilter.nf_conntrack_tcp_be_liberal=1"  # committed entries carry no window state yet

CONFIG = "---\n".join([
    UPSTREAM,
    f"""apiVersion: gatelb.io/v1alpha1
kind: GatewayGroup
metadata: {{name: edge}}
spec:
  mode: active-standby
  interface: lan0
  members: [{{name: gw1, address: 198.51.100.1}}, {{name: gw2, address: 198.51.100.2}}]
  backendGateway: {BACKEND_GATEWAY}/24
  stateSync: true
""",
    l4lb_doc("web", WEB, [f"{backend_v4(i)}:8080" for i in (1, 2, 3)], nat="dnat"),
    f"""apiVersion: gatelb.io/v1alpha1
kind: L4LB
metadata: {{name: dns}}
spec:
  protocol: udp
  frontend: {{ip: {DNS}, port: {UDP_PORT}}}
  backend: [{", ".join(f'"{backend_v4(i)}:8080"' for i in (1, 2, 3))}]
  nat: dnat
  check: {{type: udp, payload: ping, expect: ping, interval: 100, timeout: 100, fall: 3, rise: 2}}
""",
])


class HaLab(BgpLab):
    def __init__(self) -> None:
        super().__init__(backends=3)

    def _build(self) -> None:
        super()._build()
        for g in GATEWAYS:
            self.run(g, ["sysctl", "-q", "-w", LIBERAL])
        for i in self.backend_ids:
            self.run(f"be{i}", ["ip", "route", "replace", "default", "via", BACKEND_GATEWAY])

    def reboot(self, gw: str) -> None:
        """After `power_off`: what a power loss wipes is wiped, the links come up again with the
        boot configuration (the default route, which the kernel dropped with the link)."""
        script = ("conntrack -F 2>/dev/null; nft flush ruleset; "
                  f"ip addr del {BACKEND_GATEWAY}/24 dev lan0 2>/dev/null; "
                  f"ip link set up0 up; ip link set lan0 up; ip route replace default via {ROUTER}; true")
        self.run(gw, ["sh", "-c", script])
        self.run(gw, ["sysctl", "-q", "-w", LIBERAL])

    def uplink_down(self, gw: str) -> None:
        """`gw` loses its upstream (up0 down); its LAN link and every process stay up."""
        self.run(gw, ["ip", "link", "set", "up0", "down"])

    def holder(self) -> set[str]:
        """The gateways that hold the backend gateway on a link that is up (a powered-off one may
        keep the address on its dead link: its keepalived was killed before it could react)."""
        out = set()
        for g in GATEWAYS:
            if BACKEND_GATEWAY in self.run(g, ["ip", "-4", "-o", "addr", "show", "dev", "lan0", "up"],
                                           check=False).stdout:
                out.add(g)
        return out


class Flow:
    """One held connection exchanging a line every `period` s in its own thread until `stop()`."""

    def __init__(self, conn: HeldConnection, period: float = 0.1) -> None:
        self.conn = conn
        self.backend = conn.backend
        self.seen_source = conn.seen_source
        self.period = period
        self.sent = 0
        self.echoed = 0
        self.error: str | None = None
        self.max_gap_s = 0.0  # the longest time one exchange took (a failover's pause)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Flow:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set() and self.error is None:
            t0 = time.monotonic()
            self.sent += 1
            try:
                echo = self.conn.exchange(f"line {self.sent}")
            except ConnectionLost as exc:
                self.error = exc.kind
                return
            if echo != f"line {self.sent}":
                self.error = f"bad echo {echo!r}"
                return
            self.echoed += 1
            took = time.monotonic() - t0
            self.max_gap_s = max(self.max_gap_s, took)
            self._stop.wait(max(0.0, self.period - took))

    @property
    def alive(self) -> bool:
        return self.error is None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        with contextlib.suppress(Exception):
            self.conn.close()
