"""Per-backend counters survive changes to the backend set: they are keyed by backend, not by
selection slot, so a backend leaving (down, removed, drained) renumbers slots without resetting
anybody's counts."""

from __future__ import annotations

import pytest

from gatelb.lab.topology import Lab

from .gatelb_helpers import Gatelb, backends, config, gatelb_cli, l4lb, module_lab  # noqa: F401 - fixtures `gl` and `lab`

VIP = "203.0.113.10"


def new_connections(gl: Gatelb) -> dict[str, int]:
    return {b["address"]: b["counters"]["newConnections"] for b in gl.lb_status("web")["backends"]}


@pytest.mark.parametrize("affinity", [None, {"type": "ClientIP", "timeoutSeconds": 1}], ids=["plain", "affinity"])
def test_counts_survive_a_backend_leaving_and_returning(gl: Gatelb, lab: Lab,
                                                         affinity: dict[str, object] | None) -> None:
    frontend = {"ip": VIP, "port": 80}
    gl.apply_ok(config(l4lb("web", frontend=frontend, backend=backends(), algorithm="roundrobin",
                            sessionAffinity=affinity)))
    first = lab.connect_many("tcp", VIP, 80, 30, concurrency=1)
    assert first.failed == 0
    # be2 drained: the slots are renumbered (3 -> 2), its element stays (it is still configured)
    drained = backends((1, 0, 1))
    gl.apply_ok(config(l4lb("web", frontend=frontend, backend=drained, algorithm="roundrobin",
                            sessionAffinity=affinity)))
    second = lab.connect_many("tcp", VIP, 80, 20, concurrency=1)
    assert second.failed == 0 and "be2" not in second.per_backend
    gl.apply_ok(config(l4lb("web", frontend=frontend, backend=backends(), algorithm="roundrobin",
                            sessionAffinity=affinity)))
    third = lab.connect_many("tcp", VIP, 80, 15, concurrency=1)
    seen: dict[str, int] = {}
    for result in (first, second, third):
        for name, n in result.per_backend.items():
            seen[name] = seen.get(name, 0) + n
    counted = new_connections(gl)
    assert counted == {f"198.51.100.1{i}": seen.get(f"be{i}", 0) for i in (1, 2, 3)}, (counted, seen)
    assert gl.lb_status("web")["counters"]["newConnections"] == 65
