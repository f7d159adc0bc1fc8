"""The Kubernetes change tracker: scripted informer reports in, dirty keys out, and translating
the dirty keys one by one always ends where `to_model` over the same objects does."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from gatelb.ipam.services import ServiceRequest
from gatelb.model import IPAddress, ObjectRef, ValidationError
from gatelb.sources.kubernetes import slim
from gatelb.sources.kubernetes.api import WATCHED, Gone, Kind
from gatelb.sources.kubernetes.changes import (
    ENDPOINTSLICES,
    IPPOOLS,
    KINDS,
    L4LBS,
    NAMESPACES,
    NODES,
    SERVICES,
    ChangeTracker,
    Dirty,
)
from gatelb.sources.kubernetes.informer import Informer
from gatelb.sources.kubernetes.translate import (
    BackendMode,
    Cluster,
    Options,
    Translated,
    key_of,
    pools,
    service_requests,
    to_model,
)
from tests.unit.test_kube_translate import endpoint, eps, ippool, node, service

Obj = dict[str, Any]
POD = Options(backend_mode=BackendMode.POD)
NODEPORT = Options()


class Feed:
    """The informers, reduced: per-kind caches with resourceVersions, reporting to the tracker.
    `objects` are the objects as the API server holds them (with the fields a real one adds that
    gatelb never reads); the tracker gets them as the informers cache them (`slim`)."""

    def __init__(self, tracker: ChangeTracker) -> None:
        self.tracker = tracker
        self.objects: dict[str, dict[str, Obj]] = {k: {} for k in KINDS}
        self.cached: dict[str, dict[str, Obj]] = {k: {} for k in KINDS}
        self._rv = 0

    def put(self, kind: str, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        self._rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self._rv)
        meta["managedFields"] = [{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {}}}]
        meta.setdefault("annotations", {})["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
        key = key_of(obj)
        old = self.cached[kind].get(key)
        self.objects[kind][key] = obj
        self.cached[kind][key] = slim.for_kind(kind)(obj)
        self.tracker.on_change(kind, key, old, self.cached[kind][key])
        return obj

    def delete(self, kind: str, key: str) -> None:
        del self.objects[kind][key]
        old = self.cached[kind].pop(key)
        self.tracker.on_change(kind, key, old, None)

    def cluster(self) -> Cluster:
        return Cluster(**{k: dict(v) for k, v in self.objects.items()})


def addr(i: int) -> tuple[IPAddress, ...]:
    return (ipaddress.ip_address(f"203.0.113.{i % 250 + 1}"),)


def loaded(n: int, options: Options = POD, *, ns: str = "default") -> tuple[ChangeTracker, Feed]:
    tracker = ChangeTracker(options)
    feed = Feed(tracker)
    for i in range(n):
        feed.put(SERVICES, service(f"s{i}", ns))
        feed.put(ENDPOINTSLICES, eps(f"s{i}", endpoint(f"198.51.100.{i % 250 + 1}"), ns=ns))
    tracker.take()
    return tracker, feed


def translate_dirty(tracker: ChangeTracker, dirty: Dirty) -> dict[str, Translated]:
    return {k: tracker.translate_service(k, addr(int(k.rpartition("/s")[2]))) for k in tracker.service_keys(dirty)}


# --- what each event marks ----------------------------------------------------------------------


def test_kind_names_are_the_informers() -> None:
    assert tuple(k.name for k in WATCHED) == KINDS


def test_one_endpointslice_event_dirties_and_translates_one_service() -> None:
    tracker, feed = loaded(200)
    feed.put(ENDPOINTSLICES, eps("s7", endpoint("198.51.100.8"), endpoint("198.51.100.99")))
    dirty = tracker.take()
    assert dirty == Dirty(services=frozenset({"default/s7"}))
    before = tracker.translated
    got = translate_dirty(tracker, dirty)
    assert tracker.translated - before == 1
    full = to_model(feed.cluster(), POD, {"default/s7": addr(7)})
    assert got["default/s7"].load_balancers == full.desired.load_balancers
    assert [str(b.address) for b in full.desired.load_balancers[0].backends] == ["198.51.100.8", "198.51.100.99"]
    assert got["default/s7"].origins == {"svc/default/s7/tcp/80/v4": ObjectRef("Service", "default/s7")}
    assert tracker.take().empty  # taken means cleared


def test_endpointslice_label_move_dirties_both_services_and_moves_the_slice() -> None:
    tracker, feed = loaded(3)
    moved = eps("s1", endpoint("198.51.100.77"), name="s0-v4")  # s0's slice, now labelled for s1
    feed.put(ENDPOINTSLICES, moved)
    assert tracker.take().services == {"default/s0", "default/s1"}
    assert tracker.slices_of("default/s0") == []
    assert [key_of(s) for s in tracker.slices_of("default/s1")] == ["default/s0-v4", "default/s1-v4"]
    unlabelled = copy.deepcopy(feed.objects[ENDPOINTSLICES]["default/s0-v4"])
    unlabelled["metadata"]["labels"] = {}
    feed.put(ENDPOINTSLICES, unlabelled)
    assert tracker.take().services == {"default/s1"}
    assert [key_of(s) for s in tracker.slices_of("default/s1")] == ["default/s1-v4"]


def test_deletes() -> None:
    tracker, feed = loaded(3)
    feed.delete(ENDPOINTSLICES, "default/s2-v4")
    assert tracker.take().services == {"default/s2"} and tracker.slices_of("default/s2") == []
    assert translate_dirty(tracker, Dirty(frozenset({"default/s2"})))["default/s2"].load_balancers[0].backends == ()
    feed.delete(SERVICES, "default/s1")
    dirty = tracker.take()
    assert dirty.services == {"default/s1"}
    assert translate_dirty(tracker, dirty)["default/s1"] == Translated(ObjectRef("Service", "default/s1"))
    feed.put(L4LBS, {"metadata": {"name": "x", "namespace": "ops"}, "spec": {"frontend": {"port": 80}}})
    feed.delete(L4LBS, "ops/x")
    assert tracker.take() == Dirty(l4lbs=frozenset({"ops/x"}))
    assert tracker.translate_l4lb("ops/x") == Translated(ObjectRef("L4LB", "ops/x"))


def test_a_service_event_dirties_that_service_only() -> None:
    tracker, feed = loaded(5)
    feed.put(SERVICES, service("s3", sessionAffinity="ClientIP"))
    feed.put(SERVICES, service("new"))
    assert tracker.take() == Dirty(services=frozenset({"default/s3", "default/new"}))


def written_back(svc: Obj, ip: str = "203.0.113.5") -> Obj:
    """`svc` as the API server holds it after gatelb's write-back (and a field manager's entry)."""
    out = copy.deepcopy(svc)
    out["metadata"].setdefault("annotations", {})["gatelb.io/ip-pool"] = "public"
    out["metadata"]["managedFields"] = [{"manager": "gatelb", "operation": "Update", "subresource": "status"}]
    out["metadata"]["generation"] = 2
    out["status"] = {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}
    return out


def test_a_service_change_in_what_gatelb_writes_back_only_is_written_not_translated() -> None:
    tracker, feed = loaded(5)
    feed.put(SERVICES, written_back(feed.objects[SERVICES]["default/s2"]))
    assert tracker.take() == Dirty(written=frozenset({"default/s2"}))
    feed.put(SERVICES, written_back(feed.objects[SERVICES]["default/s2"], "203.0.113.6"))  # someone else's
    assert tracker.take() == Dirty(written=frozenset({"default/s2"}))
    assert tracker.service_keys(Dirty(written=frozenset({"default/s2"}))) == []
    relabelled = copy.deepcopy(feed.objects[SERVICES]["default/s2"])
    relabelled["metadata"]["labels"] = {"tier": "web"}  # pool selection reads labels
    feed.put(SERVICES, relabelled)
    assert tracker.take() == Dirty(services=frozenset({"default/s2"}))
    other = copy.deepcopy(feed.objects[SERVICES]["default/s2"])
    other["metadata"]["annotations"]["gatelb.io/address-pool"] = "p2"  # a user's annotation
    feed.put(SERVICES, written_back(other))
    assert tracker.take() == Dirty(services=frozenset({"default/s2"}))
    feed.put(SERVICES, written_back(feed.objects[SERVICES]["default/s3"]))
    feed.put(SERVICES, service("s3", sessionAffinity="ClientIP"))  # and then a real change
    assert tracker.take() == Dirty(services=frozenset({"default/s3"}))


@pytest.mark.parametrize("options", [POD, NODEPORT], ids=["pod", "nodeport"])
def test_node_changes_dirty_every_service_in_nodeport_mode_only_when_relevant(options: Options) -> None:
    tracker, feed = loaded(4, options)
    n1 = feed.put(NODES, node("n1", "198.51.100.21"))
    nodeport = options.backend_mode is BackendMode.NODEPORT
    assert tracker.take() == Dirty(all_services=nodeport)
    assert tracker.service_keys(Dirty(all_services=True)) == [f"default/s{i}" for i in range(4)]

    # Not what the translation reads: heartbeats, other labels, other address types.
    n1 = copy.deepcopy(n1)
    n1["status"]["conditions"].append({"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "t2"})
    n1["metadata"]["labels"]["zone"] = "z1"
    n1["status"]["addresses"].append({"type": "ExternalIP", "address": "192.0.2.9"})
    n1 = feed.put(NODES, n1)
    feed.put(NODES, node("n2", "198.51.100.22", ready=False))  # a new node that is not ready
    assert tracker.take().empty

    for changed in (node("n1", "198.51.100.21", ready=False),  # Ready condition
                    node("n1", "198.51.100.31"),  # its address
                    node("n1", "198.51.100.31", "2001:db8::31"),  # a second family
                    node("n1", "198.51.100.31", "2001:db8::31",  # excluded
                         labels={"node.kubernetes.io/exclude-from-external-load-balancers": ""})):
        feed.put(NODES, changed)
        assert tracker.take() == Dirty(all_services=nodeport)
    feed.delete(NODES, "n2")  # was never usable
    assert tracker.take().empty
    feed.put(NODES, node("n1", "198.51.100.31"))
    feed.delete(NODES, "n1")
    assert tracker.take() == Dirty(all_services=nodeport)


def test_namespace_label_change_dirties_that_namespaces_services_only() -> None:
    tracker, feed = loaded(3, ns="a")
    feed.put(SERVICES, service("other", "b"))
    feed.put(NAMESPACES, {"metadata": {"name": "b"}})  # created without labels: nothing to read
    tracker.take()
    feed.put(NAMESPACES, {"metadata": {"name": "a", "labels": {"env": "prod"}}})
    assert tracker.take() == Dirty(services=frozenset({"a/s0", "a/s1", "a/s2"}))
    req, _ = tracker.service_request("a/s1")
    assert req is not None and req.namespace_labels == {"env": "prod"}
    feed.put(NAMESPACES, {"metadata": {"name": "a", "labels": {"env": "prod"}, "annotations": {"x": "y"}}})
    assert tracker.take().empty  # no label changed
    feed.put(NAMESPACES, {"metadata": {"name": "b", "labels": {"env": "dev"}}})
    assert tracker.take() == Dirty(services=frozenset({"b/other"}))
    feed.delete(NAMESPACES, "a")
    assert tracker.take().services == {"a/s0", "a/s1", "a/s2"}
    feed.delete(SERVICES, "a/s0")
    tracker.take()
    feed.put(NAMESPACES, {"metadata": {"name": "a", "labels": {"env": "test"}}})
    assert tracker.take().services == {"a/s1", "a/s2"}


def test_ippool_and_l4lb_changes() -> None:
    tracker, feed = loaded(3)
    feed.put(IPPOOLS, ippool("public", {"addresses": ["203.0.113.0/24"]}))
    assert tracker.take() == Dirty(pools_changed=True)
    assert [p.name for p in tracker.pools()[0]] == ["public"]
    feed.delete(IPPOOLS, "public")
    assert tracker.take() == Dirty(pools_changed=True) and tracker.pools() == ([], [])
    feed.put(L4LBS, {"apiVersion": "gatelb.io/v1alpha1", "kind": "L4LB",
                     "metadata": {"name": "ext", "namespace": "ops"},
                     "spec": {"frontend": {"port": 80}, "backend": ["198.51.100.50:8080"]}})
    assert tracker.take() == Dirty(l4lbs=frozenset({"ops/ext"}))
    t = tracker.translate_l4lb("ops/ext")
    assert [lb.name for lb in t.load_balancers] == ["l4lb/ops/ext"]
    assert t.origins == {"l4lb/ops/ext": ObjectRef("L4LB", "ops/ext")}


def test_a_report_of_the_version_held_is_ignored() -> None:
    tracker, feed = loaded(2)
    held = feed.objects[SERVICES]["default/s0"]
    tracker.on_change(SERVICES, "default/s0", held, copy.deepcopy(held))
    assert tracker.take().empty and tracker.counts["ignored"] == 1


def test_mark_all() -> None:
    tracker, feed = loaded(2)
    feed.put(L4LBS, {"metadata": {"name": "ext", "namespace": "ops"}, "spec": {"frontend": {"port": 80}}})
    tracker.take()
    tracker.mark_all()
    assert tracker.take() == Dirty(frozenset({"default/s0", "default/s1"}), frozenset({"ops/ext"}), True, True)


# --- relists, through a real informer -------------------------------------------------------------


class ScriptedLister:
    """list() returns `items`; the first watch waits for `go`, then ends in 410 (so the informer
    relists); later ones wait forever."""

    def __init__(self, items: list[Obj], go: asyncio.Event) -> None:
        self.items = items
        self.go = go
        self.watches = 0

    async def list(self, kind: Kind) -> tuple[list[Obj], str]:
        return copy.deepcopy(self.items), "100"

    async def watch(self, kind: Kind, resource_version: str, timeout_s: int) -> AsyncIterator[tuple[str, Obj]]:
        self.watches += 1
        if self.watches == 1:
            await self.go.wait()
            self.items[3]["metadata"]["resourceVersion"] = "99"  # changed while we were away
            self.items[3]["spec"]["sessionAffinity"] = "ClientIP"
            del self.items[5]
            raise Gone()
        await asyncio.Event().wait()
        yield "ADDED", {}  # pragma: no cover


def test_a_relist_reports_only_what_differs() -> None:
    """After a 410, the informer relists 1,000 Services: the tracker hears of the changed and the
    deleted one only, so only those are dirty (the 998 unchanged ones cost a resourceVersion
    comparison each in the informer and nothing here)."""
    items = []
    for i in range(1000):
        s = service(f"s{i}")
        s["metadata"]["resourceVersion"] = str(i + 1)
        items.append(s)
    tracker = ChangeTracker(POD)
    kind = next(k for k in WATCHED if k.name == SERVICES)

    async def body() -> None:
        go = asyncio.Event()
        inf = Informer(ScriptedLister(items, go), kind, tracker.on_change)
        task = asyncio.create_task(inf.run())
        try:
            await asyncio.wait_for(inf.synced.wait(), 5)
            assert len(tracker.take().services) == 1000  # the first list: all new
            go.set()
            for _ in range(200):
                if inf.counts["lists"] == 2:
                    break
                await asyncio.sleep(0.01)
            assert inf.counts["lists"] == 2
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(body())
    assert tracker.take() == Dirty(services=frozenset({"default/s3", "default/s5"}))
    assert tracker.counts["events"] == 1002 and tracker.service("default/s5") is None


# --- the property: incremental == full ------------------------------------------------------------


NAMESPACE_NAMES = ("a", "b", "c")
SERVICE_NAMES = tuple(f"s{i}" for i in range(5))
UNIVERSE = sorted(f"{ns}/{n}" for ns in NAMESPACE_NAMES for n in SERVICE_NAMES)


def assigned_to(key: str) -> tuple[IPAddress, ...]:
    i = UNIVERSE.index(key)
    v4, v6 = ipaddress.ip_address(f"203.0.113.{i + 1}"), ipaddress.ip_address(f"2001:db8:100::{i + 1}")
    return ((), (v4,), (v6,), (v4, v6))[i % 4]


def random_service(rng: random.Random) -> Obj:
    ports = rng.sample([{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                        {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                        {"name": "", "port": 8443},
                        {"name": "sctp", "port": 9, "protocol": "SCTP"}], rng.randint(0, 3))
    spec: dict[str, Any] = {}
    if rng.random() < 0.3:
        spec.update(externalTrafficPolicy="Local", healthCheckNodePort=32000)
    if rng.random() < 0.2:
        spec["loadBalancerSourceRanges"] = rng.choice([["192.0.2.0/24"], ["2001:db8::/32", "192.0.2.0/24"], ["x"]])
    if rng.random() < 0.2:
        spec["sessionAffinity"] = "ClientIP"
    if rng.random() < 0.1:
        spec["type"] = "ClusterIP"
    if rng.random() < 0.1:
        spec["loadBalancerClass"] = rng.choice(["gatelb.io/gatelb", "other"])
    annotations = {"gatelb.io/loadBalancerIPs": rng.choice(["203.0.113.9", "bogus"])} if rng.random() < 0.1 else {}
    obj = service(rng.choice(SERVICE_NAMES), rng.choice(NAMESPACE_NAMES), ports=ports, annotations=annotations,
                  ipFamilies=rng.choice([["IPv4"], ["IPv6"], ["IPv4", "IPv6"]]), **spec)
    obj["metadata"]["labels"] = {"tier": rng.choice(["web", "db"])}
    return obj


def random_slice(rng: random.Random) -> Obj:
    family = rng.choice((4, 6))
    endpoints = [endpoint(f"198.51.100.{rng.randint(1, 6)}" if family == 4 else f"2001:db8:2::{rng.randint(1, 6)}",
                          ready=rng.choice([True, False, None]), serving=rng.choice([True, False, None]),
                          terminating=rng.choice([True, None]), node=rng.choice([None, "n0", "n1", "n2"]))
                 for _ in range(rng.randint(0, 4))]
    ports = rng.sample([{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353,
                        "protocol": "UDP"}, {"port": 8443}], rng.randint(0, 3))
    for ep in endpoints:  # what a real controller adds and gatelb never reads
        ep.update(targetRef={"kind": "Pod", "name": f"p{rng.randint(0, 9)}", "uid": str(rng.random())},
                  zone="z1", hints={"forZones": [{"name": "z1"}]})
    sl = eps(rng.choice(SERVICE_NAMES), *endpoints, name=f"sl{rng.randint(0, 9)}", family=family, ports=ports,
             ns=rng.choice(NAMESPACE_NAMES))
    sl["metadata"]["labels"] = {**sl["metadata"].get("labels", {}), "endpointslice.kubernetes.io/managed-by": "x"}
    if rng.random() < 0.1:
        del sl["metadata"]["labels"]
    return sl


def random_node(rng: random.Random) -> Obj:
    addresses = rng.sample([f"198.51.100.2{rng.randint(0, 3)}", f"2001:db8::2{rng.randint(0, 3)}"], rng.randint(0, 2))
    labels = {"node.kubernetes.io/exclude-from-external-load-balancers": ""} if rng.random() < 0.2 else {}
    n = node(f"n{rng.randint(0, 3)}", *addresses, ready=rng.random() < 0.8, labels=labels)
    n["status"]["conditions"].append({"type": "Heartbeat", "lastHeartbeatTime": str(rng.random())})
    n["status"]["images"] = [{"names": [f"registry.example/i{k}"], "sizeBytes": 1 << 20} for k in range(3)]
    n["spec"] = {"podCIDR": "10.0.0.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}]}
    return n


def random_object(rng: random.Random, kind: str) -> Obj:
    if kind == SERVICES:
        return random_service(rng)
    if kind == ENDPOINTSLICES:
        return random_slice(rng)
    if kind == NODES:
        return random_node(rng)
    if kind == NAMESPACES:
        return {"metadata": {"name": rng.choice(NAMESPACE_NAMES), "labels": {"env": rng.choice(["p", "d"])},
                             "annotations": {"x": str(rng.random())}}}
    if kind == IPPOOLS:
        return ippool(rng.choice(["p1", "p2", "p3"]), {"addresses": [rng.choice(
            ["203.0.113.0/28", "203.0.113.8/29", "198.18.0.0/24", "nonsense"])]})
    return {"apiVersion": "gatelb.io/v1alpha1", "kind": "L4LB",
            "metadata": {"name": rng.choice(["x", "y"]), "namespace": rng.choice(NAMESPACE_NAMES)},
            "spec": {"frontend": {"port": rng.choice([80, 70000])}, "backend": ["198.51.100.50:8080"]}}


def texts(errors: Iterable[ValidationError]) -> list[tuple[str, str, str]]:
    return [(e.kind, e.name, str(e)) for e in errors]  # ValidationError is an exception: no ==


class Incremental:
    """A consumer that translates only what `take()` says is dirty."""

    def __init__(self, tracker: ChangeTracker) -> None:
        self.tracker = tracker
        self.services: dict[str, Translated] = {}
        self.requests: dict[str, tuple[ServiceRequest | None, list[ValidationError]]] = {}
        self.l4lbs: dict[str, Translated] = {}
        self.pools = tracker.pools()

    def catch_up(self) -> None:
        dirty = self.tracker.take()
        keys = self.tracker.service_keys(dirty)
        before = self.tracker.translated
        for key in keys:
            self.services[key] = self.tracker.translate_service(key, assigned_to(key))
            self.requests[key] = self.tracker.service_request(key)
        assert self.tracker.translated - before == len(keys)
        for key in dirty.l4lbs:
            self.l4lbs[key] = self.tracker.translate_l4lb(key)
        if dirty.pools_changed:
            self.pools = self.tracker.pools()

    def check(self, cluster: Cluster, options: Options) -> None:
        full = to_model(cluster, options, {k: assigned_to(k) for k in cluster.services})
        parts = [self.services[k] for k in sorted(self.services)] + [self.l4lbs[k] for k in sorted(self.l4lbs)]
        lbs = tuple(sorted((lb for t in parts for lb in t.load_balancers), key=lambda lb: lb.name))
        assert lbs == full.desired.load_balancers
        assert {n: r for t in parts for n, r in t.origins.items()} == full.origins
        assert texts(self.pools[1] + [e for t in parts for e in t.errors]) == texts(full.errors)
        assert self.pools[0] == pools(cluster)[0] and texts(self.pools[1]) == texts(pools(cluster)[1])
        requests, errors = service_requests(cluster, options)
        ordered = [self.requests[k] for k in sorted(self.requests)]
        assert [r for r, _ in ordered if r is not None] == requests
        assert texts(e for _, errs in ordered for e in errs) == texts(errors)


@pytest.mark.parametrize("seed", range(18))
def test_incremental_translation_equals_to_model(seed: int) -> None:
    rng = random.Random(seed)
    options = (POD, NODEPORT, Options(default_class=False))[seed % 3]
    tracker = ChangeTracker(options)
    feed = Feed(tracker)
    consumer = Incremental(tracker)
    weights = {SERVICES: 5, ENDPOINTSLICES: 8, NODES: 3, NAMESPACES: 2, IPPOOLS: 1, L4LBS: 1}
    for step in range(400):
        kind = rng.choices(list(weights), list(weights.values()))[0]
        if feed.objects[kind] and rng.random() < 0.25:
            feed.delete(kind, rng.choice(sorted(feed.objects[kind])))
        elif kind == SERVICES and feed.objects[kind] and rng.random() < 0.3:
            # The write-back's own change (status, ip-pool annotation): must not need a translation.
            held = feed.objects[kind][rng.choice(sorted(feed.objects[kind]))]
            feed.put(kind, written_back(held, f"203.0.113.{rng.randint(1, 9)}"))
        else:
            feed.put(kind, random_object(rng, kind))
        if rng.random() < 0.3 or step == 399:
            consumer.catch_up()
            consumer.check(feed.cluster(), options)
    assert tracker.cluster == Cluster(**{k: dict(v) for k, v in feed.cached.items()})
    assert tracker.cluster != Cluster(**{k: dict(v) for k, v in feed.objects.items()})  # reduced
