"""L2 announcements in Kubernetes mode: ownership of each VIP elected with Leases.

The L2 lab (a client on the same segment as two gateways, the VIPs in the client's subnet), with
the API stand-in on that segment (192.0.2.5, on the switch's bridge) so that both gateways reach
it; each gateway runs `gatelb run --kubeconfig --node gwN --l2-lease-duration 1`. The cluster is
set up as docs/kubernetes.md says (deploy/crds.yaml, deploy/rbac.yaml), then an IPPool, an
L2Advertisement and two L4LB objects (fullnat, so replies return through whoever owns the VIP).

In order: the VIPs spread (each on the gateway the rendezvous hash prefers); only the owner's MAC
answers ARP; the client reaches the backends through both; the owner loses power: its VIP moves
to the other gateway within the lease duration plus a tick, the client's neighbour entry follows
the gratuitous ARP and its new connections succeed; the Events say who announces where.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, CustomObjectsApi

from gatelb.lab.l2 import UP, L2Lab
from gatelb.lab.procs import stop_process
from gatelb.lab.topology import backend_v4, backend_v6
from gatelb.sources.kubernetes.l2lease import preferred
from tests.k8s_standin.client import apply
from tests.k8s_standin.in_netns import StandinInNetns
from tests.k8s_standin.server import StandinServer

from ..conftest import netns_unavailable

API_HOST = "192.0.2.5"
# 1 s in CI (the shortest a Lease allows); GATELB_TEST_L2_LEASE_S=2 measures the default
DURATION_S = int(os.environ.get("GATELB_TEST_L2_LEASE_S", "1"))


def _vips() -> tuple[str, str]:
    """Two VIPs of the pool, the first preferred by gw1, the second by gw2."""
    pool = [str(ipaddress.ip_address("192.0.2.200") + i) for i in range(8)]
    one = next(v for v in pool if preferred(ipaddress.ip_address(v), {"gw1", "gw2"}) == "gw1")
    two = next(v for v in pool if preferred(ipaddress.ip_address(v), {"gw1", "gw2"}) == "gw2")
    return one, two


WEB, API = _vips()
WEB6 = next(v for v in (f"2001:db8:1::{200 + i}" for i in range(8))
            if preferred(ipaddress.ip_address(v), {"gw1", "gw2"}) == "gw1")


@pytest.fixture(name="lab")
def l2_lab() -> Iterator[L2Lab]:
    if reason := netns_unavailable():
        pytest.skip(reason)
    with L2Lab(backends=2) as lab:
        lab.start_backends(udp=None, http=None)
        lab.run("sw", ["ip", "addr", "add", f"{API_HOST}/24", "dev", "br-lan"])
        yield lab


def l4lb(name: str, ip: str) -> dict[str, Any]:
    backends = [f"{backend_v4(i)}:8080" if ":" not in ip else f"[{backend_v6(i)}]:8080" for i in (1, 2)]
    return {"apiVersion": "gatelb.io/v1alpha1", "kind": "L4LB", "metadata": {"name": name},
            "spec": {"frontend": {"ip": ip, "port": 80}, "backend": backends,
                     "nat": "fullnat", "check": {"type": "tcp", "interval": 100, "timeout": 100, "fall": 3, "rise": 2}}}


async def setup(server: StandinServer, client: ApiClient) -> None:
    await apply(client, "crds.yaml", "rbac.yaml")
    custom = CustomObjectsApi(client)
    await custom.create_cluster_custom_object("gatelb.io", "v1alpha1", "ippools", {
        "apiVersion": "gatelb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "lan"},
        "spec": {"addresses": ["192.0.2.200/29", "2001:db8:1::200/125"]}})
    await custom.create_cluster_custom_object("gatelb.io", "v1alpha1", "l2advertisements", {
        "apiVersion": "gatelb.io/v1alpha1", "kind": "L2Advertisement", "metadata": {"name": "lan"},
        "spec": {"ipAddressPools": ["lan"]}})
    for name, ip in (("web", WEB), ("api", API), ("web6", WEB6)):
        await custom.create_namespaced_custom_object("gatelb.io", "v1alpha1", "default", "l4lbs", l4lb(name, ip))


def events(standin: StandinInNetns, reason: str) -> list[str]:
    async def get(server: StandinServer, client: ApiClient) -> list[str]:
        found = list(server.store.objects.items())
        return [f"{o['involvedObject']['name']}: {o['message']}" for (rid, _, _), o in found
                if rid == "v1/events" and o["reason"] == reason]

    return standin.call(get)


def test_lease_elected_owner_answers_arp_and_power_loss_moves_the_vip(lab: L2Lab) -> None:
    standin = StandinInNetns(lab.ns("sw"), host=API_HOST, crds=False, crd_init_s=0.0)
    standin.start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        standin.call(setup, timeout=20)
        kubeconfig = lab.tmpdir / "kubeconfig.yaml"
        kubeconfig.write_text(standin.kubeconfig_yaml())
        for g in UP:
            with open(lab.tmpdir / f"{g}.log", "ab") as log:
                procs[g] = lab.python(g, "gatelb.cli.main", "--state-dir", str(lab.tmpdir / g), "run",
                                      "--kubeconfig", str(kubeconfig), "--node", g, "--log-format", "json",
                                      "--l2-lease-duration", str(DURATION_S), stderr=log, stdout=subprocess.DEVNULL)

        def logs() -> str:
            return "\n".join(f"--- {g}\n" + (lab.tmpdir / f"{g}.log").read_text(errors="replace")[-3000:] for g in UP)

        macs = {g: lab.mac(g) for g in UP}
        try:
            # spread: each VIP on the gateway the rendezvous hash prefers (a handover if the other came first)
            took = lab.wait_holder(WEB, "gw1", 30.0)
            lab.wait_holder(API, "gw2", 10.0)
            lab.wait_holder(WEB6, "gw1", 5.0)
        except Exception:
            print(logs())
            raise
        print(f"VIPs owned {took:.2f} s after start")
        assert set(lab.arp_answers(WEB)) == {macs["gw1"]}
        assert set(lab.arp_answers(API)) == {macs["gw2"]}
        ndp = lab.ndp_answers(WEB6)
        assert ndp and set(ndp) == {macs["gw1"]}, ndp
        for vip in (WEB, API, WEB6):
            # both backends serve through the owner; a few tries: the health checks of a gateway
            # that just started (rise 2) may still hold one back, and 20 random picks of two
            # backends land on one alone once in 500,000 rounds
            seen: set[str] = set()
            deadline = time.monotonic() + 5.0
            while seen != {"be1", "be2"} and time.monotonic() < deadline:
                result = lab.connect_many("tcp", vip, 80, count=20)
                assert result.ok == 20, (result, logs())
                seen |= result.backends
            assert seen == {"be1", "be2"}, (vip, seen, logs())

        # gw1 loses power: gw2 takes WEB over once gw1's Lease has lapsed
        t0 = time.monotonic()
        lab.power_off("gw1")
        moved = None  # gw1's addresses stay on its dead links: only gw2's count
        while time.monotonic() - t0 < 3 * DURATION_S + 2:
            if "gw2" in lab.holder(WEB):
                moved = time.monotonic() - t0
                break
            time.sleep(0.01)
        assert moved is not None, logs()
        served = None
        while time.monotonic() - t0 < 6.0:
            if lab.connect_many("tcp", WEB, 80, count=1, timeout=0.3).ok == 1:
                served = time.monotonic() - t0
                break
        print(f"power loss -> VIP held by gw2: {moved:.3f} s; new connection served: {served} s "
              f"(lease {DURATION_S} s)")
        assert served is not None, logs()
        assert moved <= DURATION_S + 1.0, moved  # the lease duration, a tick, the write
        assert lab.client_neighbour(WEB) == macs["gw2"]  # followed the gratuitous ARP
        assert set(lab.arp_answers(WEB)) == {macs["gw2"]}
        assert lab.connect_many("tcp", WEB, 80, count=10).ok == 10
        deadline = time.monotonic() + 2
        while "gw2" not in lab.holder(WEB6) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert set(lab.ndp_answers(WEB6)) == {macs["gw2"]}  # the unsolicited NA's target moved too
        assert lab.connect_many("tcp", WEB6, 80, count=10).ok == 10
        status = lab.run("gw2", [sys.executable, "-m", "gatelb.cli.main", "--state-dir", str(lab.tmpdir / "gw2"),
                                 "status"]).stdout
        assert f"l2 {WEB}: owned by gw2 on up0 (Lease, {DURATION_S} s)" in status, status
        announced = events(standin, "L2Announced")
        assert any(m.startswith("web: ") and "gw2" in m for m in announced), announced
    finally:
        for p in procs.values():
            stop_process(p, timeout=5)
        standin.close()
    for g in UP:
        assert "Traceback" not in (lab.tmpdir / f"{g}.log").read_text(errors="replace")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v", "-s"]))
