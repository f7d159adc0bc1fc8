"""Announcement objects in a cluster, against the API stand-in: gatelb.io CRDs and MetalLB's own
metallb.io objects reach SyncedState.config as the file loader's model objects (and through
gatelb.announce.decide, a plan); bad objects are errors naming object and field, with an Event,
and change nothing else; MetalLB's IPAddressPools give Services their addresses.

FRR itself is exercised in tests/netns/test_announce_bgp.py; here the Kubernetes side only.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi

from gatelb.announce.decide import decide
from gatelb.model import BFDProfile, BGPAdvertisement, BGPPeer, L2Advertisement, ObjectRef, SyncedState
from gatelb.sources.kubernetes.config import NO_NODE
from tests.k8s_standin.client import create_namespace
from tests.k8s_standin.server import StandinServer
from tests.k8s_standin.store import CRD_RID
from tests.kube.test_kube_agent import agent, events, ingress_of, make_pool, make_service, make_slice, run, wait_for

METALLB_CRDS = Path(__file__).resolve().parents[1] / "k8s_standin" / "metallb-crds.yaml"
V4 = ipaddress.IPv4Address
MERGE = "application/merge-patch+json"


def install_metallb(server: StandinServer) -> None:
    """MetalLB's CRDs, ready at once (as if MetalLB had been installed long ago)."""
    for doc in yaml.safe_load_all(METALLB_CRDS.read_text()):
        server.store.create(server.store.resources[CRD_RID], "", doc)
    server.store.initializing.clear()


async def ours(client: ApiClient, plural: str, name: str, spec: dict[str, Any]) -> None:
    kind = {"bfdprofiles": "BFDProfile", "bgppeers": "BGPPeer", "bgpadvertisements": "BGPAdvertisement",
            "l2advertisements": "L2Advertisement"}[plural]
    await CustomObjectsApi(client).create_cluster_custom_object("gatelb.io", "v1alpha1", plural, {
        "apiVersion": "gatelb.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec})


METALLB_KINDS = {"ipaddresspools": ("IPAddressPool", "v1beta1"), "bfdprofiles": ("BFDProfile", "v1beta1"),
                 "bgppeers": ("BGPPeer", "v1beta2"), "bgpadvertisements": ("BGPAdvertisement", "v1beta1"),
                 "l2advertisements": ("L2Advertisement", "v1beta1")}


async def metallb(client: ApiClient, plural: str, name: str, spec: dict[str, Any], ns: str = "metallb-system",
                  labels: dict[str, str] | None = None) -> None:
    kind, version = METALLB_KINDS[plural]
    await CustomObjectsApi(client).create_namespaced_custom_object("metallb.io", version, ns, plural, {
        "apiVersion": f"metallb.io/{version}", "kind": kind,
        "metadata": {"name": name, "labels": labels or {}}, "spec": spec})


async def make_node(client: ApiClient, name: str, labels: dict[str, str]) -> None:
    await CoreV1Api(client).create_node({"metadata": {"name": name, "labels": labels}})


def without_l2(state: SyncedState) -> SyncedState:
    return dataclasses.replace(state, config={r: o for r, o in state.config.items() if r.kind != "L2Advertisement"})


def state_of(a: Any) -> SyncedState:
    state = a.daemon.reconciler.last_state
    assert state is not None
    return state  # type: ignore[no-any-return]


def config_where(a: Any, test: Any) -> Any:
    """A getter for wait_for: the synced config once `test(config)` holds."""
    def get() -> Any:
        state = a.daemon.reconciler.last_state
        return state.config if state is not None and test(state.config) else None
    return get


def test_gatelb_crds_reach_the_synced_config_and_the_announce_plan() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await make_pool(client, "public", ["203.0.113.10-203.0.113.11"])
        await make_service(client, "web")
        await make_slice(client, "web", "198.51.100.11")
        await ours(client, "bfdprofiles", "fast", {"receiveInterval": 100, "transmitInterval": 100})
        await ours(client, "bgppeers", "upstream", {"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.129",
                                                    "bfdProfile": "fast", "holdTime": "9s"})
        await ours(client, "bgpadvertisements", "public", {"ipAddressPools": ["public"], "communities": ["no-export"]})
        await ours(client, "l2advertisements", "lan", {"ipAddressPools": ["public"], "interfaces": ["up0"]})
        async with agent(client) as (a, _):
            config = await wait_for(config_where(a, lambda c: len(c) == 4))
            assert config[ObjectRef("BFDProfile", "fast")] == BFDProfile("fast", 100, 100)
            assert config[ObjectRef("BGPPeer", "upstream")] == BGPPeer(
                "upstream", 64512, 64500, V4("192.0.2.129"), hold_time_s=9, bfd_profile="fast")
            # The CRD's defaults (aggregationLength 32/128) arrive filled in, as from the API server.
            assert config[ObjectRef("BGPAdvertisement", "public")] == BGPAdvertisement(
                "public", ("public",), communities=("no-export",))
            assert config[ObjectRef("L2Advertisement", "lan")] == L2Advertisement("lan", ("public",), ("up0",))
            await wait_for(lambda: ingress_of(server, "web"))
            await wait_for(lambda: state_of(a).services)
            # In Kubernetes the L2 owner is elected with Leases, so no GatewayGroup is needed (the
            # standalone rule, which needs one, still applies to a file).
            _, errors = decide(state_of(a), "gw1")
            assert [str(e) for e in errors] == [
                "L2Advertisement lan: gateway gw1 is in no GatewayGroup: L2 needs the group to elect one "
                "owner per VIP (add a GatewayGroup listing gw1 among spec.members, or name the node with --node)"]
            plan, errors = decide(state_of(a), "gw1", l2_groups=False)
            assert errors == [] and plan.bgp is not None
            assert [(str(c.vip), c.interfaces, c.advertisement) for c in plan.l2] == [
                ("203.0.113.10", ("up0",), "lan")]
            [peer] = plan.bgp.peers
            assert [str(p) for p, _ in peer.prefixes] == ["203.0.113.10/32"]
            assert peer.bfd == BFDProfile("fast", 100, 100)
            assert a.kube.info()["notInstalled"] == sorted(
                ["ipaddresspools", "metallb.bfdprofiles", "metallb.bgppeers", "metallb.bgpadvertisements",
                 "metallb.l2advertisements"])

    run(body)


def test_bad_object_is_an_error_and_an_event_naming_object_and_field_and_changes_nothing_else() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        custom = CustomObjectsApi(client)
        await ours(client, "bgppeers", "upstream", {"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.129"})
        await ours(client, "bgpadvertisements", "all", {})
        async with agent(client) as (a, _):
            await wait_for(config_where(a, lambda c: len(c) == 2))
            good = state_of(a).config
            # Passes the CRD (a string), not gatelb's checks: a hold time of 2 s is not allowed.
            await custom.patch_cluster_custom_object("gatelb.io", "v1alpha1", "bgppeers", "upstream",
                                                     {"spec": {"holdTime": "2s", "peerASN": 64501}},
                                                     _content_type=MERGE)
            ref = ObjectRef("BGPPeer", "upstream")
            errs = await wait_for(lambda: state_of(a).errors.get(ref))
            assert [str(e) for e in errs] == [
                "BGPPeer upstream: spec.holdTime: 2 s is not a hold time (0, or 3-65535 s)"]
            assert state_of(a).config == good  # the last good version stays in force, the rest as it was
            assert await wait_for(lambda: events(server, "InvalidConfiguration")) == [
                "BGPPeer upstream: spec.holdTime: 2 s is not a hold time (0, or 3-65535 s)"]
            # A new object that is bad from the start gives nothing, and names itself.
            await ours(client, "bgpadvertisements", "bad", {"communities": ["65536:1"]})
            bad = await wait_for(lambda: state_of(a).errors.get(ObjectRef("BGPAdvertisement", "bad")))
            assert "BGPAdvertisement bad: spec.communities[0]: '65536:1' is not a community" in str(bad[0])
            assert state_of(a).config == good
            # Fixed: the new version is taken, the error goes.
            await custom.patch_cluster_custom_object("gatelb.io", "v1alpha1", "bgppeers", "upstream",
                                                     {"spec": {"holdTime": "3s"}}, _content_type=MERGE)
            config = await wait_for(config_where(a, lambda c: c[ref].hold_time_s == 3))  # type: ignore[attr-defined]
            assert config[ref].peer_asn == 64501 and ref not in state_of(a).errors

    run(body)


def test_metallb_objects_are_read_as_they_are() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        install_metallb(server)
        await create_namespace(client, "metallb-system", "elsewhere")
        await make_node(client, "gw1", {"gatelb.io/gateway": "true"})
        await make_node(client, "worker1", {})
        await metallb(client, "ipaddresspools", "public", {"addresses": ["203.0.113.10/31"]},
                      labels={"announce": "bgp"})
        await metallb(client, "ipaddresspools", "reserved", {"addresses": ["203.0.113.20/32"], "autoAssign": False})
        await metallb(client, "bfdprofiles", "fast", {"receiveInterval": 100, "transmitInterval": 100,
                                                      "detectMultiplier": 3})
        await metallb(client, "bgppeers", "upstream", {
            "myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.129", "bfdProfile": "fast",
            "holdTime": "9s", "nodeSelectors": [{"matchLabels": {"gatelb.io/gateway": "true"}}]})
        await metallb(client, "bgpadvertisements", "public", {
            "ipAddressPoolSelectors": [{"matchLabels": {"announce": "bgp"}}], "localPref": 100})
        await metallb(client, "l2advertisements", "lan", {"ipAddressPools": ["reserved"]})
        # Outside MetalLB's namespace: not read (MetalLB would not read it either).
        await metallb(client, "bgppeers", "stray", {"myASN": 1, "peerASN": 2, "peerAddress": "192.0.2.1"},
                      ns="elsewhere")
        await make_service(client, "web")
        await make_service(client, "pinned", annotations={"metallb.io/address-pool": "reserved"})
        await make_slice(client, "web", "198.51.100.11")
        async with agent(client) as (a, _):
            config = await wait_for(config_where(a, lambda c: len(c) == 4))
            assert config[ObjectRef("BGPPeer", "upstream")] == BGPPeer(
                "upstream", 64512, 64500, V4("192.0.2.129"), hold_time_s=9, bfd_profile="fast", nodes=("gw1",))
            assert config[ObjectRef("BFDProfile", "fast")] == BFDProfile("fast", 100, 100, 3)
            assert config[ObjectRef("BGPAdvertisement", "public")] == BGPAdvertisement(
                "public", ("public",), local_pref=100)
            assert config[ObjectRef("L2Advertisement", "lan")] == L2Advertisement("lan", ("reserved",))
            # IPAddressPools are pools: autoAssign, and MetalLB's pool annotation.
            assert await wait_for(lambda: ingress_of(server, "web")) == ["203.0.113.10"]
            assert await wait_for(lambda: ingress_of(server, "pinned")) == ["203.0.113.20"]
            assert {p.name: p.auto_assign for p in state_of(a).pools} == {"public": True, "reserved": False}
            await wait_for(lambda: state_of(a).services.get("svc/default/web/tcp/80/v4"))
            plan, _ = decide(without_l2(state_of(a)), "gw1")  # L2 with Leases is not built (above)
            assert plan.bgp is not None and [str(p) for p, _ in plan.bgp.peers[0].prefixes] == ["203.0.113.10/32"]
            assert decide(without_l2(state_of(a)), "worker1")[0].bgp is None  # the node selector leaves worker1 out
            # The Node loses its label: the peer is on no node any more.
            await CoreV1Api(client).patch_node("gw1", {"metadata": {"labels": {"gatelb.io/gateway": None}}})
            config = await wait_for(config_where(
                a, lambda c: c[ObjectRef("BGPPeer", "upstream")].nodes == (NO_NODE,)))  # type: ignore[attr-defined]
            assert decide(without_l2(state_of(a)), "gw1")[0].bgp is None
            assert a.kube.info()["notInstalled"] == []

    run(body)


def test_metallb_fields_gatelb_does_not_honour_are_errors_and_events() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        install_metallb(server)
        await create_namespace(client, "metallb-system")
        await metallb(client, "bgppeers", "secret", {
            "myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.129",
            "passwordSecret": {"name": "bgp-auth", "namespace": "metallb-system"}})
        await metallb(client, "bgppeers", "vrf", {"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.130",
                                                  "vrf": "red"})
        await metallb(client, "bgppeers", "fine", {"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.131"})
        # The same name as a gatelb.io object: ours wins, MetalLB's is an error.
        await ours(client, "bgpadvertisements", "all", {})
        await metallb(client, "bgpadvertisements", "all", {"localPref": 50})
        async with agent(client) as (a, _):
            await wait_for(config_where(a, lambda c: len(c) == 2))
            errors = await wait_for(lambda: len(state_of(a).errors) == 3 and state_of(a).errors)
            shown = sorted(str(e) for errs in errors.values() for e in errs)
            assert shown == [
                "BGPAdvertisement metallb-system/all: metadata.name: BGPAdvertisement all is already given by "
                "gatelb.io BGPAdvertisement all",
                "BGPPeer metallb-system/secret: spec.passwordSecret: Secret metallb-system/bgp-auth not found",
                "BGPPeer metallb-system/vrf: spec.vrf: 'red': not supported: gatelb's FRR peers from the default VRF",
            ]
            assert set(state_of(a).config) == {ObjectRef("BGPPeer", "fine"), ObjectRef("BGPAdvertisement", "all")}
            assert state_of(a).config[ObjectRef("BGPAdvertisement", "all")] == BGPAdvertisement("all")
            await wait_for(lambda: len(events(server, "InvalidConfiguration")) == 3)
            involved = {(o["involvedObject"]["kind"], o["metadata"]["namespace"], o["involvedObject"]["name"])
                        for (rid, _, _), o in server.store.objects.items()
                        if rid == "v1/events" and o["reason"] == "InvalidConfiguration"}
            assert involved == {("BGPPeer", "metallb-system", "secret"), ("BGPPeer", "metallb-system", "vrf"),
                                ("BGPAdvertisement", "metallb-system", "all")}

    run(body)


def test_metallb_pool_clashing_with_an_ippool_is_an_error_and_the_ippool_serves() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        install_metallb(server)
        await create_namespace(client, "metallb-system")
        await make_pool(client, "public", ["203.0.113.10/32"])
        await metallb(client, "ipaddresspools", "public", {"addresses": ["203.0.113.40/32"]})
        await metallb(client, "ipaddresspools", "overlap", {"addresses": ["203.0.113.10/31"]})
        await make_service(client, "web")
        async with agent(client) as (a, _):
            assert await wait_for(lambda: ingress_of(server, "web")) == ["203.0.113.10"]
            errors = await wait_for(lambda: len(state_of(a).errors) == 2 and state_of(a).errors)
            shown = sorted(str(e) for errs in errors.values() for e in errs)
            assert shown[1] == ("IPAddressPool metallb-system/public: metadata.name: pool 'public' is already "
                                "IPPool public")
            assert shown[0].startswith("IPAddressPool metallb-system/overlap: spec.addresses[0]:"), shown[0]
            assert [p.name for p in state_of(a).pools] == ["public"]

    run(body)


def test_password_secret_is_read_and_watched_and_a_bad_one_names_the_field() -> None:
    """MetalLB's passwordSecret: a kubernetes.io/basic-auth Secret in the peer's namespace, key
    `password`; a change of the Secret changes the peer's password (FRR is re-rendered from it)."""
    import base64

    def secret(name: str, password: str | None, kind: str = "kubernetes.io/basic-auth") -> dict[str, Any]:
        data = {"password": base64.b64encode(password.encode()).decode()} if password is not None else {}
        return {"metadata": {"name": name}, "type": kind, "data": {"username": "eA==", **data}}

    def password_of(a: Any, name: str) -> Any:
        state = a.daemon.reconciler.last_state
        peer = state.config.get(ObjectRef("BGPPeer", name)) if state is not None else None
        return peer.password if peer is not None else None

    async def body(server: StandinServer, client: ApiClient) -> None:
        install_metallb(server)
        await create_namespace(client, "metallb-system")
        core = CoreV1Api(client)
        await core.create_namespaced_secret("metallb-system", secret("bgp-auth", "s3cret"))
        await core.create_namespaced_secret("metallb-system", secret("opaque", "x", "Opaque"))
        await core.create_namespaced_secret("metallb-system", secret("nokey", None))
        await core.create_namespaced_secret("gatelb-system", secret("ours", "ours-pw"))
        peer = {"myASN": 64512, "peerASN": 64500}
        await metallb(client, "bgppeers", "up", {**peer, "peerAddress": "192.0.2.129",
                                                 "passwordSecret": {"name": "bgp-auth", "namespace": "metallb-system"}})
        await metallb(client, "bgppeers", "opaque", {**peer, "peerAddress": "192.0.2.130",
                                                     "passwordSecret": {"name": "opaque"}})
        await metallb(client, "bgppeers", "nokey", {**peer, "peerAddress": "192.0.2.131",
                                                    "passwordSecret": {"name": "nokey"}})
        await metallb(client, "bgppeers", "elsewhere", {**peer, "peerAddress": "192.0.2.132",
                                                        "passwordSecret": {"name": "bgp-auth", "namespace": "default"}})
        # a gatelb.io peer is cluster-scoped: its Secret is in gatelb's namespace (gatelb-system)
        await ours(client, "bgppeers", "mine", {**peer, "peerAddress": "192.0.2.133",
                                                "passwordSecret": {"name": "ours"}})
        async with agent(client) as (a, _):
            assert await wait_for(lambda: password_of(a, "up")) == "s3cret"
            assert password_of(a, "mine") == "ours-pw"
            errors = await wait_for(lambda: len(state_of(a).errors) == 3 and state_of(a).errors)
            assert sorted(str(e) for errs in errors.values() for e in errs) == [
                "BGPPeer metallb-system/elsewhere: spec.passwordSecret.namespace: 'default': the Secret must be in "
                "the peer's namespace metallb-system",
                "BGPPeer metallb-system/nokey: spec.passwordSecret: Secret metallb-system/nokey has no key password "
                "(or it is empty)",
                "BGPPeer metallb-system/opaque: spec.passwordSecret: Secret metallb-system/opaque is of type "
                "'Opaque'; it must be kubernetes.io/basic-auth",
            ]
            # watched: a new password reaches the peer (and so FRR's configuration)
            await core.replace_namespaced_secret("bgp-auth", "metallb-system", secret("bgp-auth", "rotated"))
            assert await wait_for(lambda: password_of(a, "up") == "rotated")
            # fixed by adding the key: the error goes
            await core.replace_namespaced_secret("nokey", "metallb-system", secret("nokey", "now"))
            assert await wait_for(lambda: password_of(a, "nokey")) == "now"
            # deleted: an error naming the Secret; the last good password stays in force
            await core.delete_namespaced_secret("bgp-auth", "metallb-system")
            errs = await wait_for(lambda: state_of(a).errors.get(ObjectRef("BGPPeer", "metallb-system/up")))
            assert [str(e) for e in errs] == [
                "BGPPeer metallb-system/up: spec.passwordSecret: Secret metallb-system/bgp-auth not found"]
            assert password_of(a, "up") == "rotated"

    run(body)


def test_announcement_events_land_on_the_service_once_per_message() -> None:
    """What the announcer reports (announce/notes.py) becomes Events on the Service that gave the
    load balancer, posted by every instance (not only the leader), deduplicated."""
    async def body(server: StandinServer, client: ApiClient) -> None:
        await make_pool(client, "public", ["203.0.113.10/32"])
        await make_service(client, "web")
        await make_slice(client, "web", "198.51.100.11")
        async with agent(client) as (a, _):
            await wait_for(lambda: ingress_of(server, "web"))
            names = tuple(await wait_for(lambda: sorted(state_of(a).services)))
            message = "203.0.113.10 announced by node gw1 on interface up0 (ARP)"
            for _ in range(3):
                a.kube.announce_event(names, "Normal", "L2Announced", message)
            a.kube.announce_event(names, "Warning", "BGPSessionChanged", "node gw1: BGP session with peer up is Idle")
            await wait_for(lambda: events(server, "BGPSessionChanged"))
            assert events(server, "L2Announced") == [message]
            [ev] = [o for (rid, _, _), o in server.store.objects.items()
                    if rid == "v1/events" and o["reason"] == "L2Announced"]
            assert (ev["involvedObject"]["kind"], ev["involvedObject"]["name"], ev["type"]) == (
                "Service", "web", "Normal")
            assert ev["metadata"]["namespace"] == "default"

    run(body)
