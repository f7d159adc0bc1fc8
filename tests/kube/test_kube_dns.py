"""Issue 12 in Kubernetes mode: the agent against the API stand-in (real HTTP) and a real BIND 9
on loopback. A Service with external-dns's hostname annotation gets its A record and ownership
TXT through a DNSProvider whose TSIG key is in a Secret; a name someone else holds is an Event."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi

from gatelb.agent.daemon import Daemon, Parts
from gatelb.agent.statefile import StateStore
from gatelb.kernel.fake import FakeNft
from gatelb.lab import bind
from gatelb.sources.kubernetes.api import KubeApi
from gatelb.sources.kubernetes.source import KubeSettings, KubeSource
from tests.k8s_standin.server import StandinServer
from tests.kube.test_kube_agent import POD, events, ingress_of, make_pool, make_service, make_slice, run, wait_for

ZONE = "lb.example."


@pytest.fixture
def named(tmp_path: Path) -> Iterator[bind.Named]:
    if reason := bind.available():
        pytest.skip(reason)
    server = bind.Named(tmp_path / "named", ZONE, bind.tsig_keygen("gatelb"), "127.0.0.1", bind.free_port())
    with server:
        server.start(records=["taken IN A 192.0.2.99"])
        yield server


def test_service_annotation_gets_a_record_and_conflicts_are_events(named: bind.Named) -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        secret = base64.b64encode(named.key[2].encode()).decode()
        await CoreV1Api(client).create_namespaced_secret("gatelb-system", {
            "metadata": {"name": "tsig"}, "data": {"secret": secret}})
        await CustomObjectsApi(client).create_cluster_custom_object("gatelb.io", "v1alpha1", "dnsproviders", {
            "apiVersion": "gatelb.io/v1alpha1", "kind": "DNSProvider", "metadata": {"name": "lab"},
            "spec": {"rfc2136": {"server": f"127.0.0.1:{named.port}", "zone": ZONE, "tsigKeyName": "gatelb",
                                 "tsigSecretRef": {"namespace": "gatelb-system", "name": "tsig"}},
                     "ownerID": "cluster-1", "repairInterval": 1}})
        await make_pool(client, "public", ["203.0.113.10-203.0.113.20"])
        await make_service(client, "web", annotations={
            "external-dns.alpha.kubernetes.io/hostname": "web.lb.example, www.lb.example",
            "external-dns.alpha.kubernetes.io/ttl": "45"})
        await make_slice(client, "web", "198.51.100.11")
        await make_service(client, "other", annotations={"gatelb.io/hostnames": "taken.lb.example"})
        await make_slice(client, "other", "198.51.100.12")
        kube = KubeSource(KubeApi(client), KubeSettings(POD, identity="gw1", health=False))
        parts = Parts(sources=[kube], consumers=[kube], info=kube.info, dns_report=kube.report,
                      dns_secrets=kube.read_secret)
        with tempfile.TemporaryDirectory() as state_dir:
            daemon = Daemon(parts, StateStore(state_dir), FakeNft(), health=False)
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            try:
                lookup = named.lookup
                (vip,) = await wait_for(lambda: ingress_of(server, "web"), timeout=10)
                await wait_for(lambda: lookup("web.lb.example.", "A") == [vip], timeout=15)
                assert lookup("www.lb.example.", "A") == [vip]
                assert named.dig("web.lb.example.", "A").count("\t45\tIN\tA\t") == 1
                assert named.txt("a-web.lb.example.") == [
                    "heritage=external-dns,external-dns/owner=cluster-1,external-dns/resource=service/default/web"]
                conflict = await wait_for(lambda: events(server, "DNSConflict"), timeout=10)
                assert conflict == ["DNSProvider lab: taken.lb.example. A: exists without our ownership record; "
                                    "not changed (wanted by Service default/other)"]
                assert lookup("taken.lb.example.", "A") == ["192.0.2.99"]
                # Deleting the Service deletes its records and TXT.
                await CoreV1Api(client).delete_namespaced_service("web", "default")
                await wait_for(lambda: lookup("web.lb.example.", "A") == [], timeout=15)
                assert named.txt("a-web.lb.example.") == [] and lookup("www.lb.example.", "A") == []
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    assert await asyncio.wait_for(task, 5)

    run(body)
