"""Kubernetes scenario in the lab: the API stand-in plus namespaces acting as pods, gatelb in the gw.

The stand-in and the test's client run in the gw namespace (see tests/k8s_standin/in_netns.py for
why); `gatelb run --kubeconfig --backend-mode pod` runs as a real process there too, programs the
gw's nftables, and the lab's client namespace connects through the VIPs to the backend namespaces.

The cluster starts as a new one (no CRDs, no gatelb-system namespace) and is set up exactly as
docs/kubernetes.md tells a user: deploy/crds.yaml and deploy/rbac.yaml applied, then gatelb run
with its defaults (the Lease in gatelb-system).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi, DiscoveryV1Api

from gatelb.lab.procs import stop_process
from gatelb.lab.topology import Lab, backend_v4
from tests.k8s_standin.client import apply
from tests.k8s_standin.in_netns import StandinInNetns
from tests.k8s_standin.server import StandinServer

POOL = ["203.0.113.10-203.0.113.19"]


@pytest.fixture
def cluster(lab: Lab) -> Iterator[StandinInNetns]:
    lab.start_backends()
    # crd_init_s: the new CRDs' storage answers 429 until gatelb's first lists (it must retry them).
    standin = StandinInNetns(lab.gw, crds=False, crd_init_s=2.0)
    standin.start()
    try:
        # As docs/kubernetes.md says: kubectl apply -f deploy/crds.yaml -f deploy/rbac.yaml
        standin.call(lambda server, client: apply(client, "crds.yaml", "rbac.yaml"))
        yield standin
    finally:
        standin.close()


class Gatelb:
    """`gatelb run --kubeconfig` in the gw namespace; its log goes to the lab's tmpdir."""

    def __init__(self, lab: Lab, standin: StandinInNetns) -> None:
        self.lab = lab
        self.kubeconfig = lab.tmpdir / "kubeconfig.yaml"
        self.kubeconfig.write_text(standin.kubeconfig_yaml())
        self.log = lab.tmpdir / "gatelb.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            # Its own state directory: never the host's /var/lib/gatelb.
            self.proc = self.lab.python("gw", "gatelb.cli.main", "--state-dir", str(self.lab.tmpdir / "state"),
                                        "run", "--kubeconfig", str(self.kubeconfig),
                                        "--backend-mode", "pod", stderr=log, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig=signal.SIGTERM, timeout=5)
            self.proc = None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if Path(self.log).exists() else ""


def poll(get: Callable[[], Any], timeout: float, what: str, gw: Gatelb | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s" + (f"\ngatelb log:\n{gw.text()}" if gw else ""))
        time.sleep(0.05)


def slice_body(svc: str, ready: dict[int, bool]) -> dict[str, Any]:
    return {"metadata": {"name": f"{svc}-1", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [backend_v4(i)], "conditions": {"ready": ok}} for i, ok in ready.items()]}


def service_body(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"type": "LoadBalancer", "ports": [{"name": "tcp", "port": 80, "protocol": "TCP"}]}}


def ingress(standin: StandinInNetns, name: str) -> list[str]:
    async def get(server: StandinServer, client: ApiClient) -> list[str]:
        obj = server.store.objects.get(("v1/services", "default", name)) or {}
        return [i["ip"] for i in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]

    return standin.call(get)


def lease_of(standin: StandinInNetns) -> dict[str, Any]:
    async def get(server: StandinServer, client: ApiClient) -> dict[str, Any]:
        return server.store.objects[("coordination.k8s.io/v1/leases", "gatelb-system", "gatelb-ipam")]

    return standin.call(get)


def events(standin: StandinInNetns, reason: str) -> list[str]:
    async def get(server: StandinServer, client: ApiClient) -> list[str]:
        return [o["message"] for (rid, _, _), o in server.store.objects.items()
                if rid == "v1/events" and o["reason"] == reason]

    return standin.call(get)


def create(standin: StandinInNetns, *objs: tuple[str, dict[str, Any]]) -> None:
    async def make(server: StandinServer, client: ApiClient) -> None:
        for kind, body in objs:
            if kind == "ippool":
                await CustomObjectsApi(client).create_cluster_custom_object(
                    "gatelb.io", "v1alpha1", "ippools",
                    {"apiVersion": "gatelb.io/v1alpha1", "kind": "IPPool", **body})
            elif kind == "service":
                await CoreV1Api(client).create_namespaced_service("default", body)
            else:
                await DiscoveryV1Api(client).create_namespaced_endpoint_slice("default", body)

    standin.call(make)


def replace_slice(standin: StandinInNetns, svc: str, ready: dict[int, bool]) -> None:
    async def put(server: StandinServer, client: ApiClient) -> None:
        await DiscoveryV1Api(client).replace_namespaced_endpoint_slice(f"{svc}-1", "default", slice_body(svc, ready))

    standin.call(put)


def delete_service(standin: StandinInNetns, name: str) -> None:
    async def delete(server: StandinServer, client: ApiClient) -> None:
        await CoreV1Api(client).delete_namespaced_service(name, "default")

    standin.call(delete)


def reaches(lab: Lab, vip: str, want: set[str]) -> Callable[[], bool]:
    def check() -> bool:
        result = lab.connect_many("tcp", vip, 80, count=24, timeout=1.0)
        return result.ok == 24 and set(result.backends) == want

    return check


def table(lab: Lab) -> str:
    return lab.run("gw", ["nft", "list", "table", "inet", "gatelb"], check=False).stdout


def test_service_lifecycle_through_the_gateway(lab: Lab, cluster: StandinInNetns) -> None:
    gw = Gatelb(lab, cluster)
    gw.start()
    try:
        poll(lambda: "synced" in gw.text(), 15, "gatelb synced", gw)
        assert "429 TooManyRequests: storage is (re)initializing" in gw.text(), gw.text()
        t0 = time.monotonic()
        create(cluster, ("ippool", {"metadata": {"name": "public"}, "spec": {"addresses": POOL}}),
               ("ippool", {"metadata": {"name": "tiny"}, "spec": {"addresses": ["203.0.113.30"], "autoAssign": False}}),
               ("service", service_body("web")), ("endpointslice", slice_body("web", {1: True, 2: True})))
        vip = poll(lambda: ingress(cluster, "web"), 2.0, "Service status shows an address", gw)[0]
        assert time.monotonic() - t0 <= 2.0 and vip == "203.0.113.10"
        poll(reaches(lab, vip, {"be1", "be2"}), 10, "client reaches be1 and be2 through the VIP", gw)

        # Scaling the EndpointSlice changes the backends.
        replace_slice(cluster, "web", {1: True, 2: True, 3: True})
        poll(reaches(lab, vip, {"be1", "be2", "be3"}), 10, "be3 joins", gw)
        # An endpoint marked not ready takes no new connections.
        replace_slice(cluster, "web", {1: False, 2: True, 3: True})
        poll(reaches(lab, vip, {"be2", "be3"}), 10, "be1 leaves", gw)

        # Exhausted pool: the second Service asking for "tiny" gets an AllocationFailed event.
        create(cluster, ("service", service_body("t1", {"gatelb.io/address-pool": "tiny"})),
               ("service", service_body("t2", {"gatelb.io/address-pool": "tiny"})))
        assert poll(lambda: ingress(cluster, "t1"), 5, "t1 address", gw) == ["203.0.113.30"]
        failed = poll(lambda: events(cluster, "AllocationFailed"), 5, "AllocationFailed event", gw)
        assert failed == ["PoolExhausted: IPPool tiny: no free IPv4 address"]

        # A restart keeps every address, and traffic flows again.
        before = {n: ingress(cluster, n) for n in ("web", "t1")}
        gw.stop()
        create(cluster, ("service", service_body("a-new")))  # sorts first: must not take .10
        gw.start()
        assert poll(lambda: ingress(cluster, "a-new"), 10, "a-new address", gw) == ["203.0.113.11"]
        assert {n: ingress(cluster, n) for n in ("web", "t1")} == before
        poll(reaches(lab, vip, {"be2", "be3"}), 10, "traffic after restart", gw)

        # Deleting the Service removes its rules and frees its address.
        delete_service(cluster, "web")
        poll(lambda: vip not in table(lab), 5, "rules of web removed", gw)
        assert lab.connect_many("tcp", vip, 80, count=3, timeout=1.0).ok == 0
        create(cluster, ("service", service_body("reuse", {"gatelb.io/loadBalancerIPs": vip})))
        assert poll(lambda: ingress(cluster, "reuse"), 5, "freed address reused", gw) == [vip]
    finally:
        gw.stop()
    assert "Traceback" not in gw.text(), gw.text()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
