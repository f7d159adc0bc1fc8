"""Hairpin (issue 13): a backend connecting to its own load balancer's VIP and balanced to itself.
Under dnat its SYN arrives from its own address, so it would answer itself and never complete the
connection; gatelb masquerades exactly that case (set hairpin4/6), as kube-proxy does. Removing
the element by hand breaks it again, which shows the masquerade is what makes it work. (The lab's
backend bridge ports are in hairpin mode, see lab/topology.py and docs/dataplane.md.)
"""

from __future__ import annotations

import sys

import pytest

from gatelb.lab.client import ClientResult
from gatelb.lab.topology import GW_BACKEND_V4, GW_BACKEND_V6, Lab, backend_v4, backend_v6

from .gatelb_helpers import Gatelb, backends, config, gatelb_cli, l4lb, module_lab  # noqa: F401 - fixtures `gl` and `lab`


def from_backend(lab: Lab, target: str, count: int = 5) -> ClientResult:
    argv = [sys.executable, "-m", "gatelb.lab.client", "tcp", f"--target={target}", "--port=80",
            f"--count={count}", "--timeout=2", "--concurrency=5"]
    done = lab.run("be1", argv, timeout=60)
    return ClientResult.from_json(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("vip", "v6"), [("203.0.113.30", False), ("2001:db8:100::30", True)], ids=["v4", "v6"])
def test_backend_reaches_its_own_vip(gl: Gatelb, lab: Lab, vip: str, v6: bool) -> None:
    gl.apply_ok(config(l4lb("self", frontend={"ip": vip, "port": 80}, backend=backends((1,), v6=v6))))
    result = from_backend(lab, vip)
    assert result.ok == 5 and result.per_backend == {"be1": 5}, result.failures
    # The backend saw the gateway's address (masqueraded), not its own: the reply goes to the gw.
    me, gw = (backend_v6(1), GW_BACKEND_V6) if v6 else (backend_v4(1), GW_BACKEND_V4)
    family = "hairpin6" if v6 else "hairpin4"
    assert f"{me} . {me}" in gl.nft("list", "set", "inet", "gatelb", family).stdout
    ct = lab.run("gw", ["conntrack", "-L", "-p", "tcp", "--orig-dst", vip], check=False).stdout
    assert f"dst={gw}" in ct, ct
    gl.nft("delete", "element", "inet", "gatelb", family, "{", me, ".", me, "}")
    lab.run("gw", ["conntrack", "-F"], check=False)
    assert from_backend(lab, vip, count=3).ok == 0


def test_other_clients_keep_their_address(gl: Gatelb, lab: Lab) -> None:
    """Only the hairpin case is masqueraded: a client outside keeps its source address (dnat)."""
    vip = "203.0.113.31"
    gl.apply_ok(config(l4lb("self", frontend={"ip": vip, "port": 80}, backend=backends((1,)))))
    assert lab.connect_many("tcp", vip, 80, 3, timeout=2).ok == 3
    ct = lab.run("gw", ["conntrack", "-L", "-p", "tcp", "--orig-dst", vip], check=False).stdout
    assert f"dst={GW_BACKEND_V4}" not in ct, ct
