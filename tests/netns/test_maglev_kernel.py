"""`algorithm: maglev` on the real kernel: for every flow (fixed source ports, IPv4 and IPv6, TCP,
weights 1:1:2) the backend the kernel's `jhash` picks is the one the pure tracer names, which
checks the tracer's model of nft's registers (the IPv6 key is not the IPv4 one) and the Maglev
table against nftables itself. The lab is `gatelb apply` in one gateway namespace."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from gatelb.dataplane.trace import Packet, TraceInput, trace
from gatelb.lab.topology import CLIENT_V4, CLIENT_V6, Lab, backend_v4, backend_v6
from gatelb.model import Algorithm, Backend, Protocol, Service

from .gatelb_helpers import Gatelb, backends, config, gatelb_cli, l4lb, module_lab  # noqa: F401 - fixtures

FLOWS = 200
WEIGHTS = (1, 1, 2)


@pytest.mark.parametrize("family, vip, client, first_port", [
    (4, "203.0.113.10", CLIENT_V4, 43000), (6, "2001:db8:100::10", CLIENT_V6, 44000)])
def test_kernel_picks_the_tracers_backend_for_every_flow(gl: Gatelb, lab: Lab, family: int, vip: str, client: str,
                                                         first_port: int) -> None:
    gl.apply_ok(config(l4lb("web", frontend={"ip": vip, "port": 80}, backend=backends(WEIGHTS, v6=family == 6),
                            algorithm="maglev")))
    result = lab.connect_many("tcp", vip, 80, FLOWS, first_port=first_port, concurrency=16, timeout=5.0)
    assert result.ok == FLOWS, result.failures
    address = backend_v6 if family == 6 else backend_v4
    svc = Service("web", ipaddress.ip_address(vip), Protocol.TCP, 80,
                  tuple(Backend(ipaddress.ip_address(address(i)), 8080, w) for i, w in enumerate(WEIGHTS, start=1)),
                  algorithm=Algorithm.MAGLEV)
    names = {b.address: f"be{i}" for i, b in enumerate(svc.backends, start=1)}
    view = TraceInput({"web": svc})
    want = []
    for i in range(FLOWS):
        chosen = trace(view, Packet(ipaddress.ip_address(client), svc.vip, 80, Protocol.TCP, first_port + i)).chosen
        assert chosen is not None
        want.append(names[chosen.address])
    got = [a.backend for a in result.attempts]
    wrong = [(first_port + i, g, w) for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not wrong, f"IPv{family}: kernel and tracer disagree for {len(wrong)} of {FLOWS} flows: {wrong[:5]}"
    counts = Counter(got)
    assert 0.35 <= counts["be3"] / FLOWS <= 0.65, counts  # weight 2 of 4
