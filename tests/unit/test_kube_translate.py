"""Kubernetes objects -> model: the pure translation (no HTTP)."""

from __future__ import annotations

import ipaddress
from typing import Any

from gatelb.ipam.services import FamilyPolicy
from gatelb.model import Affinity, Backend, CheckType, IPAddress, LoadBalancer, Protocol
from gatelb.sources.kubernetes.translate import (
    BackendMode,
    Cluster,
    Options,
    is_ours,
    pools,
    service_requests,
    status_addresses,
    to_model,
)

POD = Options(backend_mode=BackendMode.POD)
NODEPORT = Options()


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def service(name: str = "web", ns: str = "default", *, ports: list[dict[str, Any]] | None = None,
            annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "LoadBalancer",
                            "ports": ports if ports is not None else [
                                {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]}
    body.update(spec)
    return {"metadata": {"name": name, "namespace": ns, "annotations": annotations or {}}, "spec": body}


def endpoint(addr: str, *, ready: bool | None = True, serving: bool | None = None, terminating: bool | None = None,
             node: str | None = None) -> dict[str, Any]:
    cond = {k: v for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating)) if v is not None}
    ep: dict[str, Any] = {"addresses": [addr], "conditions": cond}
    if node:
        ep["nodeName"] = node
    return ep


def eps(svc: str, *endpoints: dict[str, Any], name: str | None = None, family: int = 4,
        ports: list[dict[str, Any]] | None = None, ns: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": name or f"{svc}-v{family}", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": f"IPv{family}", "endpoints": list(endpoints),
            "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def node(name: str, *addresses: str, ready: bool = True, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}},
            "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]
                       + [{"type": "Hostname", "address": name}],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def cluster(*objs: dict[str, Any], nodes: tuple[dict[str, Any], ...] = (), l4lbs: tuple[dict[str, Any], ...] = (),
            ippools: tuple[dict[str, Any], ...] = ()) -> Cluster:
    def key(o: dict[str, Any]) -> str:
        m = o["metadata"]
        return f"{m['namespace']}/{m['name']}" if m.get("namespace") else m["name"]

    return Cluster(
        services={key(o): o for o in objs if "spec" in o and "ports" in o["spec"]},
        endpointslices={key(o): o for o in objs if "addressType" in o},
        nodes={key(n): n for n in nodes}, l4lbs={key(o): o for o in l4lbs},
        ippools={key(p): p for p in ippools})


def lbs(c: Cluster, opts: Options, **assigned: str) -> dict[str, LoadBalancer]:
    """Translate with `assigned` as {"ns__name": "ip,ip"}; returns LBs by name."""
    got = {k.replace("__", "/"): tuple(ip(a) for a in v.split(",")) for k, v in assigned.items()}
    t = to_model(c, opts, got)
    return {lb.name: lb for lb in t.desired.load_balancers}


def errors(c: Cluster, opts: Options, **assigned: str) -> list[str]:
    got = {k.replace("__", "/"): tuple(ip(a) for a in v.split(",")) for k, v in assigned.items()}
    return [str(e) for e in to_model(c, opts, got).errors]


def backends(*texts: str) -> tuple[Backend, ...]:
    return tuple(Backend(ip(t.rpartition(":")[0]), int(t.rpartition(":")[2])) for t in texts)


# --- ownership ---------------------------------------------------------------------------------


def test_class_rules() -> None:
    assert is_ours(service(), NODEPORT)
    assert not is_ours(service(), Options(default_class=False))
    assert is_ours(service(loadBalancerClass="gatelb.io/gatelb"), Options(default_class=False))
    assert not is_ours(service(loadBalancerClass="metallb.io/metallb"), NODEPORT)
    assert not is_ours(service(type="ClusterIP"), NODEPORT)


def test_services_without_an_address_or_not_ours_make_no_load_balancer() -> None:
    c = cluster(service("a"), service("b", loadBalancerClass="other"), eps("a", endpoint("198.51.100.11")))
    assert lbs(c, POD) == {}
    assert list(lbs(c, POD, default__b="203.0.113.1")) == []


# --- pod mode ----------------------------------------------------------------------------------


def test_pod_mode_one_lb_per_port_with_ready_endpoints() -> None:
    ports = [{"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
             {"name": "dns-tcp", "port": 53, "protocol": "TCP", "nodePort": 30054}]
    slice_ports = [{"name": "dns", "port": 5353, "protocol": "UDP"}, {"name": "dns-tcp", "port": 5354}]
    c = cluster(service("dns", ports=ports),
                eps("dns", endpoint("198.51.100.11"), endpoint("198.51.100.12", ready=False),
                    endpoint("198.51.100.13", ready=None), ports=slice_ports, name="a"),
                eps("dns", endpoint("198.51.100.14"), ports=slice_ports, name="b"))
    got = lbs(c, POD, default__dns="203.0.113.5")
    assert sorted(got) == ["svc/default/dns/tcp/53/v4", "svc/default/dns/udp/53/v4"]
    udp = got["svc/default/dns/udp/53/v4"]
    assert udp.protocol is Protocol.UDP and udp.frontend_ip == ip("203.0.113.5") and udp.port == 53
    assert udp.backends == backends("198.51.100.11:5353", "198.51.100.13:5353", "198.51.100.14:5353")
    assert got["svc/default/dns/tcp/53/v4"].backends == backends(
        "198.51.100.11:5354", "198.51.100.13:5354", "198.51.100.14:5354")
    assert udp.check.type is CheckType.NONE  # readiness comes from the EndpointSlices


def test_terminating_serving_endpoints_only_when_none_is_ready() -> None:
    some_ready = cluster(service(), eps("web", endpoint("198.51.100.11"),
                                        endpoint("198.51.100.12", ready=False, serving=True, terminating=True)))
    assert lbs(some_ready, POD, default__web="203.0.113.1")["svc/default/web/tcp/80/v4"].backends == backends(
        "198.51.100.11:8080")
    none_ready = cluster(service(), eps(
        "web", endpoint("198.51.100.11", ready=False),
        endpoint("198.51.100.12", ready=False, serving=True, terminating=True),
        endpoint("198.51.100.13", ready=False, serving=False, terminating=True)))
    assert lbs(none_ready, POD, default__web="203.0.113.1")["svc/default/web/tcp/80/v4"].backends == backends(
        "198.51.100.12:8080")


def test_dual_stack_one_lb_per_family_with_that_family_backends() -> None:
    c = cluster(service(ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack"),
                eps("web", endpoint("198.51.100.11")),
                eps("web", endpoint("2001:db8:2::11"), family=6))
    got = lbs(c, POD, default__web="203.0.113.1,2001:db8:100::1")
    assert got["svc/default/web/tcp/80/v4"].backends == backends("198.51.100.11:8080")
    v6 = got["svc/default/web/tcp/80/v6"]
    assert v6.family == 6 and v6.backends == (Backend(ip("2001:db8:2::11"), 8080),)


def test_session_affinity_and_source_ranges() -> None:
    c = cluster(service("a", sessionAffinity="ClientIP", loadBalancerSourceRanges=["192.0.2.0/25", "2001:db8:1::/64"]),
                service("b", sessionAffinity="ClientIP",
                        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}),
                service("c", loadBalancerSourceRanges=["192.0.2.0/24"]),
                service("d", loadBalancerSourceRanges=["nonsense"]))
    got = lbs(c, POD, default__a="203.0.113.1", default__b="203.0.113.2", default__c="2001:db8:100::3",
              default__d="203.0.113.4")
    a = got["svc/default/a/tcp/80/v4"]
    assert a.affinity == Affinity(10800)
    assert a.source_ranges == (ipaddress.ip_network("192.0.2.0/25"),)
    assert got["svc/default/b/tcp/80/v4"].affinity == Affinity(60)
    assert "svc/default/c/tcp/80/v6" not in got  # IPv4 ranges only: the IPv6 frontend stays closed
    assert errors(c, POD, default__c="2001:db8:100::3", default__d="203.0.113.4") == [
        "Service default/c: spec.loadBalancerSourceRanges: no IPv6 range: 2001:db8:100::3 is not served",
        "Service default/d: spec.loadBalancerSourceRanges[0]: 'nonsense' is not a CIDR",
    ]


def test_unsupported_protocol_is_reported_and_other_ports_served() -> None:
    c = cluster(service(ports=[{"port": 80}, {"port": 9, "protocol": "SCTP"}]),
                eps("web", endpoint("198.51.100.11"), ports=[{"port": 8080}]))
    assert list(lbs(c, POD, default__web="203.0.113.1")) == ["svc/default/web/tcp/80/v4"]
    assert errors(c, POD, default__web="203.0.113.1") == [
        "Service default/web: spec.ports[1].protocol: SCTP is not supported (TCP or UDP)"]


# --- nodeport mode -----------------------------------------------------------------------------


def test_nodeport_mode_uses_ready_nodes_internal_ips() -> None:
    nodes = (node("n1", "198.51.100.21", "2001:db8:2::21"), node("n2", "198.51.100.22"),
             node("n3", "198.51.100.23", ready=False),
             node("n4", "198.51.100.24", labels={"node.kubernetes.io/exclude-from-external-load-balancers": ""}))
    c = cluster(service(), eps("web", endpoint("10.0.0.1")), nodes=nodes)
    lb = lbs(c, NODEPORT, default__web="203.0.113.1")["svc/default/web/tcp/80/v4"]
    assert lb.backends == backends("198.51.100.21:30080", "198.51.100.22:30080")
    assert lb.check.type is CheckType.NONE


def test_external_traffic_policy_local_only_nodes_with_ready_local_endpoints() -> None:
    nodes = (node("n1", "198.51.100.21"), node("n2", "198.51.100.22"), node("n3", "198.51.100.23"))
    c = cluster(service(externalTrafficPolicy="Local", healthCheckNodePort=32000),
                eps("web", endpoint("198.51.100.31", node="n1"), endpoint("198.51.100.33", node="n3", ready=False)),
                nodes=nodes)
    lb = lbs(c, NODEPORT, default__web="203.0.113.1")["svc/default/web/tcp/80/v4"]
    assert lb.backends == backends("198.51.100.21:30080")
    assert lb.check.type is CheckType.HTTP and lb.check.port == 32000


def test_nodeport_mode_without_node_port_is_an_error() -> None:
    c = cluster(service(ports=[{"port": 80}]), nodes=(node("n1", "198.51.100.21"),))
    assert lbs(c, NODEPORT, default__web="203.0.113.1") == {}
    assert errors(c, NODEPORT, default__web="203.0.113.1") == [
        "Service default/web: spec.ports[0]: has no nodePort (allocateLoadBalancerNodePorts: false needs "
        "--backend-mode pod)"]


# --- IPAM requests -----------------------------------------------------------------------------


def test_service_requests_read_annotations_and_families() -> None:
    c = cluster(
        service("a", annotations={"gatelb.io/loadBalancerIPs": "203.0.113.7, 2001:db8:100::7",
                                  "gatelb.io/address-pool": "public", "gatelb.io/allow-shared-ip": "k"},
                ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="PreferDualStack"),
        service("b", loadBalancerIP="203.0.113.8"),
        service("c", annotations={"metallb.universe.tf/loadBalancerIPs": "203.0.113.9",
                                  "metallb.io/address-pool": "legacy", "metallb.io/allow-shared-ip": "m"}),
        service("d", annotations={"gatelb.io/loadBalancerIPs": "bogus"}),
        service("e", loadBalancerClass="else"))
    reqs, errs = service_requests(c, NODEPORT)
    by = {r.key: r for r in reqs}
    a = by["default/a"]
    assert a.requested == (ip("203.0.113.7"), ip("2001:db8:100::7"))
    assert (a.pool, a.sharing_key, a.families, a.policy) == ("public", "k", (4, 6), FamilyPolicy.PREFER_DUAL)
    assert a.ports == ((Protocol.TCP, 80),)
    assert by["default/b"].requested == (ip("203.0.113.8"),)
    assert (by["default/c"].requested, by["default/c"].pool, by["default/c"].sharing_key) == (
        (ip("203.0.113.9"),), "legacy", "m")
    assert set(by) == {"default/a", "default/b", "default/c"}
    assert [str(e) for e in errs] == [
        "Service default/d: metadata.annotations[gatelb.io/loadBalancerIPs]: 'bogus' is not an IP address"]


def test_status_addresses() -> None:
    svc = service()
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}, {"hostname": "x"}, {"ip": "2001:db8::1"}]}}
    assert status_addresses(svc) == (ip("203.0.113.1"), ip("2001:db8::1"))


# --- pools and L4LB objects --------------------------------------------------------------------


def ippool(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "gatelb.io/v1alpha1", "kind": "IPPool",
            "metadata": {"name": name, "uid": "x", "resourceVersion": "3"}, "spec": spec}


def test_pools_with_service_allocation_bad_and_overlapping() -> None:
    c = cluster(ippools=(
        ippool("a", {"addresses": ["203.0.113.0/28"], "serviceAllocation": {
            "priority": 5, "namespaces": ["prod"],
            "serviceSelectors": [{"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]}]}}),
        ippool("b", {"addresses": ["203.0.113.8/29"]}),
        ippool("c", {"addresses": ["nonsense"]}),
    ))
    found, errs = pools(c)
    assert [p.name for p in found] == ["a"]
    a = found[0].allocation
    assert a is not None and a.priority == 5 and a.namespaces == frozenset({"prod"})
    assert a.service_selectors[0].matches({"tier": "web"}) and not a.service_selectors[0].matches({})
    assert [str(e) for e in errs] == [
        "IPPool c: spec.addresses[0]: 'nonsense' is not a CIDR, a range (first-last) or an address",
        "IPPool b: spec.addresses[0]: 203.0.113.8/29 overlaps IPPool a (203.0.113.0/28)",
    ]


def test_l4lb_objects_validated_by_the_standalone_schema() -> None:
    good = {"apiVersion": "gatelb.io/v1alpha1", "kind": "L4LB",
            "metadata": {"name": "ext", "namespace": "ops", "uid": "u", "generation": 2},
            "spec": {"frontend": {"port": 80}, "pool": "public", "backend": ["198.51.100.50:8080"]},
            "status": {"state": "Active"}}
    bad = {"apiVersion": "gatelb.io/v1alpha1", "kind": "L4LB", "metadata": {"name": "bad", "namespace": "ops"},
           "spec": {"frontend": {"port": 70000}}}
    c = cluster(l4lbs=(good, bad))
    got = lbs(c, POD)
    assert got["l4lb/ops/ext"].backends == backends("198.51.100.50:8080")
    assert got["l4lb/ops/ext"].frontend_ip is None and got["l4lb/ops/ext"].pool == "public"
    assert errors(c, POD) == ["L4LB ops/bad: spec.frontend.port: 70000 is not a port (1-65535)"]
