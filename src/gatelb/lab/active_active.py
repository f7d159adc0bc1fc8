"""The active-active scenario: BgpLab's router (ECMP over both gateways, L4 hash), switch and two
gateways, three backends, one fullnat L4LB in an active-active GatewayGroup (so its selection is
maglev: the same backend for a flow on both members).

::

    client 192.0.2.10/26 -- rtr (FRR, ECMP) -- sw: br-up -- gw1 up0 192.0.2.130, gw2 up0 192.0.2.131
    gw1 lan0 198.51.100.1/24, gw2 lan0 198.51.100.2/24 -- sw: br-be -- beI 198.51.100.(10+I)/24

`expected_backends` names, for many source ports, the backend the pure tracer says a flow from
the client reaches: what both gateways' kernels must agree with.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from gatelb.dataplane.trace import Packet, TraceInput, trace
from gatelb.lab.bgp import CLIENT, GATEWAY_LAN, UPSTREAM, l4lb_doc
from gatelb.lab.topology import backend_v4
from gatelb.model import Algorithm, Backend, NatMode, Protocol, Service

WEB = "203.0.113.10"
BACKENDS = (1, 2, 3)

GROUP = f"""apiVersion: gatelb.io/v1alpha1
kind: GatewayGroup
metadata: {{name: edge}}
spec:
  mode: active-active
  interface: lan0
  members: [{{name: gw1, address: {GATEWAY_LAN['gw1']}}}, {{name: gw2, address: {GATEWAY_LAN['gw2']}}}]
"""

CONFIG = "---\n".join([UPSTREAM, GROUP, l4lb_doc("web", WEB, [f"{backend_v4(i)}:8080" for i in BACKENDS])])


def web_service(up: Iterable[int] = BACKENDS) -> Service:
    """The service both gateways compile for `web` while the backends `up` are healthy (the
    others are idle: the Maglev table keeps its size for all three)."""
    live = set(up)
    every = [Backend(ipaddress.ip_address(backend_v4(i)), 8080) for i in BACKENDS]
    return Service("web", ipaddress.ip_address(WEB), Protocol.TCP, 80,
                   tuple(b for i, b in zip(BACKENDS, every, strict=True) if i in live), algorithm=Algorithm.MAGLEV,
                   nat=NatMode.FULLNAT,
                   idle_backends=tuple(b for i, b in zip(BACKENDS, every, strict=True) if i not in live))


def expected_backends(first_port: int, count: int, up: Iterable[int] = BACKENDS) -> list[str]:
    """The tracer's backend (be1, be2, ...) for flows from CLIENT:first_port+i to WEB:80."""
    svc = web_service(up)
    view = TraceInput({"web": svc})
    names = {ipaddress.ip_address(backend_v4(i)): f"be{i}" for i in BACKENDS}
    out = []
    for i in range(count):
        t = trace(view, Packet(ipaddress.ip_address(CLIENT), svc.vip, 80, Protocol.TCP, first_port + i))
        assert t.chosen is not None, t.explanation
        out.append(names[t.chosen.address])
    return out
