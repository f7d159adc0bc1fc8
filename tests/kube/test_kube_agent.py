"""The Kubernetes agent end to end against the API stand-in (real HTTP) with the fake nft.

The kernel side is proven in tests/netns/test_kube_scenario.py; here: IPAM, status write-back,
Events, leader election, restarts, class rules, L4LB objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any

from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi, DiscoveryV1Api

from gatelb.agent import commands
from gatelb.agent.daemon import Daemon, Parts
from gatelb.agent.statefile import StateStore
from gatelb.kernel.fake import FakeNft
from gatelb.model import ResolvedState
from gatelb.sources.kubernetes.api import KubeApi
from gatelb.sources.kubernetes.source import KubeSettings, KubeSource
from gatelb.sources.kubernetes.translate import BackendMode, Options
from tests.k8s_standin.client import apply, create_namespace
from tests.k8s_standin.client import run as run_standin
from tests.k8s_standin.server import StandinServer

POD = Options(backend_mode=BackendMode.POD)


def run(body: Callable[[StandinServer, ApiClient], Any]) -> None:
    """On a stand-in set up as docs/kubernetes.md says (CRDs installed, deploy/rbac.yaml applied:
    the gatelb-system namespace of the Lease exists)."""
    async def deployed(server: StandinServer, client: ApiClient) -> None:
        await apply(client, "rbac.yaml")
        await body(server, client)

    run_standin(deployed)


async def wait_for(get: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll an async or plain getter until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = get()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert loop.time() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


class Agent:
    """`gatelb run --kubeconfig` as the CLI composes it (the one daemon with the Kubernetes
    source), with the fake nft and a temporary state directory."""

    def __init__(self, client: ApiClient, nft: FakeNft, identity: str, options: Options, state_dir: str) -> None:
        self.kube = KubeSource(KubeApi(client), KubeSettings(options, identity=identity, health=False))
        parts = Parts(sources=[self.kube], consumers=[self.kube], info=self.kube.info)
        self.daemon = Daemon(parts, StateStore(state_dir), nft, health=False)

    @property
    def resolved(self) -> ResolvedState:
        services = self.daemon.reconciler.services
        return ResolvedState(tuple(services[n] for n in sorted(services)))

    @property
    def rounds(self) -> int:
        return self.daemon.reconciler.rounds

    @property
    def is_leader(self) -> bool:
        return self.kube.is_leader


@contextlib.asynccontextmanager
async def agent(client: ApiClient, nft: FakeNft | None = None, identity: str = "gw1",
                options: Options = POD) -> AsyncIterator[tuple[Agent, FakeNft]]:
    nft = nft or FakeNft()
    with tempfile.TemporaryDirectory() as state_dir:
        a = Agent(client, nft, identity, options, state_dir)
        stop = asyncio.Event()
        task = asyncio.create_task(a.daemon.run(stop))
        try:
            yield a, nft
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 5), "a task of the daemon died"


async def make_pool(client: ApiClient, name: str, addresses: list[str], **spec: Any) -> None:
    body = {"apiVersion": "gatelb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": name},
            "spec": {"addresses": addresses, **spec}}
    await CustomObjectsApi(client).create_cluster_custom_object("gatelb.io", "v1alpha1", "ippools", body)


async def make_service(client: ApiClient, name: str, ns: str = "default", port: int = 80,
                       annotations: dict[str, str] | None = None, **spec: Any) -> None:
    body = {"metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": port, "protocol": "TCP"}], **spec}}
    await CoreV1Api(client).create_namespaced_service(ns, body)


async def make_slice(client: ApiClient, svc: str, *addresses: str, ns: str = "default") -> None:
    body = {"metadata": {"name": f"{svc}-1", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]}
    await DiscoveryV1Api(client).create_namespaced_endpoint_slice(ns, body)


def ingress_of(server: StandinServer, name: str, ns: str = "default") -> list[str]:
    obj = server.store.objects.get(("v1/services", ns, name)) or {}
    return [i["ip"] for i in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]


def events(server: StandinServer, reason: str) -> list[str]:
    return [o["message"] for (rid, _, _), o in server.store.objects.items()
            if rid == "v1/events" and o["reason"] == reason]


def test_service_gets_address_status_event_and_rules() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await make_pool(client, "public", ["203.0.113.10-203.0.113.11"])
        await make_service(client, "web")
        await make_slice(client, "web", "198.51.100.11", "198.51.100.12")
        async with agent(client) as (_, nft):
            assert await wait_for(lambda: ingress_of(server, "web")) == ["203.0.113.10"]
            svc = server.store.objects[("v1/services", "default", "web")]
            assert svc["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.10", "ipMode": "VIP"}]
            assert svc["metadata"]["annotations"]["gatelb.io/ip-pool"] == "public"
            assert await wait_for(lambda: events(server, "IPAllocated")) == [
                "Assigned IP [203.0.113.10] from IPPool public"]
            script = nft.last_transaction
            assert "203.0.113.10" in script and "198.51.100.12" in script

    run(body)


def test_status_in_kubernetes_mode_shows_what_this_instance_programs_and_its_leadership() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await make_pool(client, "public", ["203.0.113.10-203.0.113.11"])
        await make_service(client, "web")
        await make_slice(client, "web", "198.51.100.11", "198.51.100.12")
        async with agent(client) as (a, nft):
            await wait_for(lambda: ingress_of(server, "web"))
            ctx = commands.Context(a.daemon.store, nft)

            def shown() -> dict[str, Any] | None:
                data = commands.status(ctx)
                return data if data["loadBalancers"] and data.get("info", {}).get("leader") else None

            data = await wait_for(shown)
            [lb] = data["loadBalancers"]
            assert lb["name"] == "svc/default/web/tcp/80/v4" and lb["frontend"] == {"ip": "203.0.113.10", "port": 80}
            assert [b["address"] for b in lb["backends"]] == ["198.51.100.11", "198.51.100.12"]
            assert data["sources"] == ["kubernetes"]
            assert data["info"]["problems"] == [] and all(data["info"]["informers"].values())
            assert data["generation"]["inSync"]

    run(body)


def test_exhausted_pool_is_an_allocation_failed_event_and_others_keep_working() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await make_pool(client, "tiny", ["203.0.113.10"])
        await make_service(client, "a")
        async with agent(client):
            await wait_for(lambda: ingress_of(server, "a"))
            await make_service(client, "b")
            msgs = await wait_for(lambda: events(server, "AllocationFailed"))
            assert msgs == ["PoolExhausted: IPPool tiny: no free IPv4 address"]
            assert ingress_of(server, "a") == ["203.0.113.10"] and ingress_of(server, "b") == []
            # Deleting the holder frees the address for the waiting Service.
            await CoreV1Api(client).delete_namespaced_service("a", "default")
            assert await wait_for(lambda: ingress_of(server, "b")) == ["203.0.113.10"]

    run(body)


def test_restart_keeps_addresses_even_when_the_order_changes() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await make_pool(client, "public", ["203.0.113.10-203.0.113.20"])
        await make_service(client, "b")
        async with agent(client):
            await wait_for(lambda: ingress_of(server, "b"))
        await make_service(client, "a")  # sorts first: a fresh allocation would give it .10
        async with agent(client):
            assert await wait_for(lambda: ingress_of(server, "a")) == ["203.0.113.11"]
            assert ingress_of(server, "b") == ["203.0.113.10"]

    run(body)


def test_class_change_releases_the_address_and_clears_status() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await make_pool(client, "public", ["203.0.113.10-203.0.113.20"])
        await make_service(client, "web")
        await make_service(client, "theirs", loadBalancerClass="example.com/other")
        async with agent(client) as (a, _):
            await wait_for(lambda: ingress_of(server, "web"))
            assert ingress_of(server, "theirs") == []
            assert [s.name for s in a.resolved.services] == ["svc/default/web/tcp/80/v4"]
            await CoreV1Api(client).patch_namespaced_service(
                "web", "default", {"spec": {"loadBalancerClass": "example.com/other"}})
            await wait_for(lambda: not ingress_of(server, "web"))
            svc = server.store.objects[("v1/services", "default", "web")]
            assert "gatelb.io/ip-pool" not in svc["metadata"]["annotations"]
            await wait_for(lambda: not a.resolved.services)

    run(body)


def test_follower_programs_leader_addresses_and_never_allocates() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await make_pool(client, "public", ["203.0.113.10-203.0.113.20"])
        await make_service(client, "web")
        await make_slice(client, "web", "198.51.100.11")
        async with agent(client, identity="gw1") as (leader, _):
            await wait_for(lambda: ingress_of(server, "web"))
            async with agent(client, identity="gw2") as (follower, nft2):
                await wait_for(lambda: follower.rounds > 0 and "203.0.113.10" in nft2.last_transaction)
                await make_service(client, "api")
                await wait_for(lambda: ingress_of(server, "api"))
                await wait_for(lambda: "203.0.113.11" in nft2.last_transaction)
                assert leader.is_leader and not follower.is_leader
                lease = server.store.objects[("coordination.k8s.io/v1/leases", "gatelb-system", "gatelb-ipam")]
                assert lease["spec"]["holderIdentity"] == "gw1"
        # A leader that stops hands the Lease back at once.
        lease = server.store.objects[("coordination.k8s.io/v1/leases", "gatelb-system", "gatelb-ipam")]
        assert lease["spec"]["holderIdentity"] is None

    run(body)


def test_l4lb_objects_get_a_frontend_and_status() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        custom = CustomObjectsApi(client)
        await create_namespace(client, "ops")
        await make_pool(client, "public", ["203.0.113.10-203.0.113.20"])
        await make_service(client, "web", annotations={"gatelb.io/loadBalancerIPs": "203.0.113.10"})
        # "bad" passes the CRD schema (backend entries are free-form there), not gatelb's checks.
        for name, spec in (("ext", {"frontend": {"port": 80}, "backend": ["198.51.100.50:8080"]}),
                           ("bad", {"frontend": {"port": 80}, "backend": ["198.51.100.50:99999"]})):
            await custom.create_namespaced_custom_object("gatelb.io", "v1alpha1", "ops", "l4lbs", {
                "apiVersion": "gatelb.io/v1alpha1", "kind": "L4LB", "metadata": {"name": name}, "spec": spec})
        async with agent(client):
            def status(name: str) -> dict[str, Any]:
                return server.store.objects[("gatelb.io/v1alpha1/l4lbs", "ops", name)].get("status") or {}

            ext = await wait_for(lambda: status("ext"))
            assert ext == {"state": "Active", "message": "1/1 backends serving", "frontendIP": "203.0.113.11"}
            bad = await wait_for(lambda: status("bad"))
            assert bad["state"] == "Error"
            assert "spec.backend[0]: '198.51.100.50:99999': 99999 is not a port" in bad["message"]
            # Status writes are concurrent: the Service's may land after the L4LBs'.
            assert await wait_for(lambda: ingress_of(server, "web")) == ["203.0.113.10"]

    run(body)


def test_l4lb_keeps_the_address_its_status_names_across_a_restart_and_followers_serve_it() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        custom = CustomObjectsApi(client)
        await create_namespace(client, "ops")
        await make_pool(client, "public", ["203.0.113.10-203.0.113.20"])

        async def l4lb(name: str) -> None:
            await custom.create_namespaced_custom_object("gatelb.io", "v1alpha1", "ops", "l4lbs", {
                "apiVersion": "gatelb.io/v1alpha1", "kind": "L4LB", "metadata": {"name": name},
                "spec": {"frontend": {"port": 80}, "backend": ["198.51.100.50:8080"]}})

        def frontend(name: str) -> str | None:
            obj = server.store.objects.get(("gatelb.io/v1alpha1/l4lbs", "ops", name)) or {}
            return (obj.get("status") or {}).get("frontendIP")

        await l4lb("web")
        async with agent(client, identity="gw1"):
            assert await wait_for(lambda: frontend("web")) == "203.0.113.10"
        # A new leader with an empty state directory; "api" sorts first and would take .10 afresh.
        await l4lb("api")
        async with agent(client, identity="gw1") as (_leader, _):
            assert await wait_for(lambda: frontend("api")) == "203.0.113.11"
            assert frontend("web") == "203.0.113.10"
            async with agent(client, identity="gw2") as (follower, _nft2):
                await wait_for(lambda: {"l4lb/ops/web", "l4lb/ops/api"} <= set(follower.daemon.reconciler.services))
                assert not follower.is_leader
                served = follower.daemon.reconciler.services
                assert (str(served["l4lb/ops/web"].vip), str(served["l4lb/ops/api"].vip)) == (
                    "203.0.113.10", "203.0.113.11")

    run(body)


def test_one_endpointslice_event_translates_one_service_of_many_and_changes_only_it() -> None:
    """Work proportional to the change through the real KubeSource and daemon: with 50 Services
    synced (each translated once, not again for its own status write-back), replacing one
    Service's EndpointSlice translates that Service once, and the kernel gets one transaction that
    touches that Service's load balancer only."""
    count = 50

    async def body(server: StandinServer, client: ApiClient) -> None:
        await make_pool(client, "public", ["203.0.113.10-203.0.113.99"])
        for i in range(count):
            await make_service(client, f"s{i:02d}")
            await make_slice(client, f"s{i:02d}", f"198.51.100.{10 + i % 5}")
        async with agent(client) as (a, nft):
            tracker = a.kube.tracker
            await wait_for(lambda: all(ingress_of(server, f"s{i:02d}") for i in range(count)))
            assert len(a.resolved.services) == count

            # Quiet: the status write-backs (Service updates, seen by the informer) are all in.
            async def settled() -> bool:
                before = (tracker.translated, len(nft.transactions), a.rounds)
                await asyncio.sleep(0.3)
                return before == (tracker.translated, len(nft.transactions), a.rounds)

            await wait_for(settled, timeout=10)
            translated, transactions = tracker.translated, len(nft.transactions)
            # The write-back's own writes (annotation and status of each Service) come back as
            # watch events: they translate nothing, so each Service was translated once.
            assert translated == count, tracker.counts
            vip = ingress_of(server, "s17")[0]
            body = {"metadata": {"name": "s17-1", "labels": {"kubernetes.io/service-name": "s17"}},
                    "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    "endpoints": [{"addresses": ["198.51.100.77"], "conditions": {"ready": True}}]}
            await DiscoveryV1Api(client).replace_namespaced_endpoint_slice("s17-1", "default", body)
            await wait_for(lambda: len(nft.transactions) > transactions)
            await wait_for(settled, timeout=10)

            assert tracker.translated - translated == 1
            assert len(nft.transactions) == transactions + 1
            script = nft.last_transaction
            others = {ip for i in range(count) if i != 17 for ip in ingress_of(server, f"s{i:02d}")}
            assert "198.51.100.77" in script and vip in script
            assert not [ip for ip in others if f"{ip} " in script], script
            state = a.daemon.reconciler.last_state
            assert state is not None and state.changed == {"svc/default/s17/tcp/80/v4"}

    run(body)
