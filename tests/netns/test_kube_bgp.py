"""Kubernetes mode with real FRR: a Service's LoadBalancer IP announced to an upstream router.

The BGP lab (client -- router (FRR, configured by the test) -- switch -- gateways -- backends);
the API stand-in runs in gw1's namespace (tests/k8s_standin/in_netns.py), set up as
docs/kubernetes.md says, and `gatelb run --kubeconfig --node gw1 --backend-mode pod` runs there.
The announcement objects are the CRDs (IPPool, BFDProfile, BGPPeer, BGPAdvertisement); the peer's
TCP MD5 password comes from a basic-auth Secret (passwordSecret), which the router requires.

In order: the Service gets an address and the router learns a /32 for it via gw1 (the session up
with the Secret's password); the client behind the router reaches the backends through it; a
BGPAnnounced Event on the Service names the peer; the Service deleted, the route is withdrawn.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi, DiscoveryV1Api

from gatelb.lab.bgp import GATEWAYS, ROUTER, ROUTER_BGPD, BgpLab
from gatelb.lab.procs import stop_process
from gatelb.lab.topology import backend_v4
from tests.k8s_standin.client import apply
from tests.k8s_standin.in_netns import StandinInNetns
from tests.k8s_standin.server import StandinServer

from ..conftest import running_bgp_lab

PASSWORD = "k8s-s3cret"
GW1 = GATEWAYS["gw1"]
# The router insists on the password for gw1's session: it only comes up with the Secret's.
ROUTER_WITH_PASSWORD = ROUTER_BGPD.replace(f" neighbor {GW1} remote-as 64512\n",
                                           f" neighbor {GW1} remote-as 64512\n neighbor {GW1} password {PASSWORD}\n")
CONVERGE_S = 30.0


@pytest.fixture(name="lab")
def bgp_lab() -> Iterator[BgpLab]:
    with running_bgp_lab(router_bgpd=ROUTER_WITH_PASSWORD) as lab:
        yield lab


def cr(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "gatelb.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


async def setup(server: StandinServer, client: ApiClient) -> None:
    await apply(client, "crds.yaml", "rbac.yaml")
    custom, core = CustomObjectsApi(client), CoreV1Api(client)
    await core.create_namespaced_secret("gatelb-system", {
        "metadata": {"name": "upstream-auth"}, "type": "kubernetes.io/basic-auth",
        "data": {"password": base64.b64encode(PASSWORD.encode()).decode()}})
    for plural, body in [
        ("ippools", cr("IPPool", "public", {"addresses": ["203.0.113.0/28"]})),
        ("bfdprofiles", cr("BFDProfile", "fast", {"receiveInterval": 100, "transmitInterval": 100})),
        ("bgppeers", cr("BGPPeer", "upstream", {
            "myASN": 64512, "peerASN": 64500, "peerAddress": ROUTER, "bfdProfile": "fast", "holdTime": "3s",
            "keepaliveTime": "1s", "connectTime": "1s", "passwordSecret": {"name": "upstream-auth"}})),
        ("bgpadvertisements", cr("BGPAdvertisement", "public", {"ipAddressPools": ["public"]})),
    ]:
        await custom.create_cluster_custom_object("gatelb.io", "v1alpha1", plural, body)
    await core.create_namespaced_service("default", {
        "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "tcp", "port": 80, "protocol": "TCP"}]}})
    await DiscoveryV1Api(client).create_namespaced_endpoint_slice("default", {
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [backend_v4(i)], "conditions": {"ready": True}} for i in (1, 2)]})


def poll(what: str, get: Callable[[], Any], timeout: float, detail: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := get()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s\n{detail()}")
        time.sleep(0.05)
    return value


def test_service_address_is_announced_to_frr_and_withdrawn_on_delete(lab: BgpLab) -> None:
    standin = StandinInNetns(lab.ns("gw1"), crds=False, crd_init_s=0.0)
    standin.start()
    proc: subprocess.Popen[bytes] | None = None
    log_path = lab.tmpdir / "gw1.log"
    try:
        standin.call(setup, timeout=20)
        kubeconfig = lab.tmpdir / "kubeconfig.yaml"
        kubeconfig.write_text(standin.kubeconfig_yaml())
        with open(log_path, "ab") as log:
            proc = lab.python("gw1", "gatelb.cli.main", "--state-dir", str(lab.tmpdir / "gw1"), "run",
                              "--kubeconfig", str(kubeconfig), "--node", "gw1", "--backend-mode", "pod",
                              "--log-format", "json", stderr=log, stdout=subprocess.DEVNULL)

        def detail() -> str:
            return (f"{lab.router_vtysh('show ip bgp summary')}\n{lab.router_vtysh('show ip bgp')}\n"
                    f"gatelb log:\n{log_path.read_text(errors='replace')[-4000:]}")

        def ingress() -> list[str]:
            async def get(server: StandinServer, client: ApiClient) -> list[str]:
                obj = server.store.objects.get(("v1/services", "default", "web")) or {}
                return [i["ip"] for i in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]
            return standin.call(get)

        t0 = time.monotonic()
        [vip] = poll("the Service's address", ingress, 15, detail)
        poll("the router's route to the VIP via gw1", lambda: lab.router_next_hops(f"{vip}/32") == {GW1},
             CONVERGE_S, detail)
        print(f"Service address {vip} routed by the router {time.monotonic() - t0:.2f} s after start")
        result = lab.connect_many("tcp", vip, 80, count=20)
        assert result.ok == 20, (result, detail())
        assert result.backends == {"be1", "be2"}

        def events(reason: str) -> list[str]:
            async def get(server: StandinServer, client: ApiClient) -> list[str]:
                return [o["message"] for (rid, _, _), o in list(server.store.objects.items())
                        if rid == "v1/events" and o["reason"] == reason and o["involvedObject"]["name"] == "web"]
            return standin.call(get)

        announced = poll("a BGPAnnounced Event on the Service", lambda: events("BGPAnnounced"), 5, detail)
        assert announced == [f"{vip} announced by node gw1 over BGP to peers upstream"], announced

        async def delete(server: StandinServer, client: ApiClient) -> None:
            await CoreV1Api(client).delete_namespaced_service("web", "default")

        t0 = time.monotonic()
        standin.call(delete)
        poll("the route withdrawn", lambda: not lab.router_next_hops(f"{vip}/32"), 10, detail)
        print(f"Service deleted -> route withdrawn at the router: {time.monotonic() - t0:.2f} s")
    finally:
        if proc is not None:
            stop_process(proc, timeout=5)
        standin.close()
    assert "Traceback" not in log_path.read_text(errors="replace")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v", "-s"]))
