"""Cached Kubernetes objects -> the model. Pure: raw JSON objects in, values out, no client.

`to_model` is the one function that turns the cluster into load balancers: one internal L4LB per
Service port and frontend address (TCP and UDP), plus the user's own L4LB objects, plus the pools.
`service_requests` is what the Service IPAM (gatelb.ipam.services) allocates for. Every problem names
the object and field and stays with that object: the others keep working.

Both are built on per-object functions, which an incremental caller (gatelb.sources.kubernetes.
changes) calls for the objects that changed only:

    translate_service(key, index, options, addresses) -> Translated   # its LBs, errors, origin
    service_request_for(key, index, options) -> (ServiceRequest | None, errors)
    translate_l4lb(key, raw) -> Translated

`index` is anything with the `Index` lookups (the Service, its EndpointSlices, namespace labels,
usable node addresses): `ClusterIndex` over a `Cluster`, or the change tracker's own indexes, so
translating one Service costs the same with 10 Services in the cluster as with 10,000.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic

from gatelb.addresses import ip_address
from gatelb.ipam.services import (
    FamilyPolicy,
    Selector,
    ServiceAllocation,
    ServicePool,
    ServiceRequest,
)
from gatelb.model import (
    API_VERSION,
    Affinity,
    Backend,
    CheckType,
    DesiredState,
    HealthCheck,
    IPAddress,
    IPNetwork,
    LoadBalancer,
    ObjectRef,
    Protocol,
    ValidationError,
)
from gatelb.sources import errors as pyd_errors
from gatelb.sources.schema import (
    IPPoolDocument,
    L4LBDocument,
    LabelSelectorSpec,
    hostname_problem,
    normal_hostname,
)
from gatelb.sources.standalone import _load_balancer, _pool
from gatelb.validate import check_pools, special_address

Obj = dict[str, Any]

GATELB_CLASS = "gatelb.io/gatelb"
ANN_IPS = ("gatelb.io/loadBalancerIPs", "metallb.io/loadBalancerIPs", "metallb.universe.tf/loadBalancerIPs")
ANN_POOL = ("gatelb.io/address-pool", "metallb.io/address-pool", "metallb.universe.tf/address-pool")
ANN_SHARE = ("gatelb.io/allow-shared-ip", "metallb.io/allow-shared-ip", "metallb.universe.tf/allow-shared-ip")
ANN_HOSTNAMES = ("gatelb.io/hostnames", "external-dns.alpha.kubernetes.io/hostname")  # comma separated, both taken
ANN_TTL = "external-dns.alpha.kubernetes.io/ttl"
ANN_POOL_RECORD = "gatelb.io/ip-pool"  # written back: which pool the addresses came from
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
DEFAULT_AFFINITY_S = 10800
SERVICE, L4LB, IPPOOL = "Service", "L4LB", "IPPool"
IPADDRESSPOOL = "IPAddressPool"  # MetalLB's pool kind (metallb.io/v1beta1): the same spec as IPPool


class BackendMode(enum.StrEnum):
    NODEPORT = "nodeport"  # each node's InternalIP : the Service's nodePort
    POD = "pod"  # pod IPs from EndpointSlices (pods routable from the gateway)


@dataclass(frozen=True)
class Options:
    backend_mode: BackendMode = BackendMode.NODEPORT
    default_class: bool = True  # class-less Services are ours (off: --no-default-class)


@dataclass(frozen=True)
class Cluster:
    """What the informers hold: key ("namespace/name", or "name" if cluster-scoped) -> object."""

    services: Mapping[str, Obj] = field(default_factory=dict)
    endpointslices: Mapping[str, Obj] = field(default_factory=dict)
    nodes: Mapping[str, Obj] = field(default_factory=dict)
    namespaces: Mapping[str, Obj] = field(default_factory=dict)
    ippools: Mapping[str, Obj] = field(default_factory=dict)
    l4lbs: Mapping[str, Obj] = field(default_factory=dict)
    ipaddresspools: Mapping[str, Obj] = field(default_factory=dict)  # MetalLB's, "namespace/name"


@dataclass(frozen=True)
class Translation:
    desired: DesiredState
    errors: tuple[ValidationError, ...] = ()
    origins: Mapping[str, ObjectRef] = field(default_factory=dict)  # LB name -> the object it came from


@dataclass(frozen=True)
class Translated:
    """What one object (a Service or an L4LB) translates to. Empty when the object is absent, not
    ours, or (a Service) has no address yet."""

    origin: ObjectRef
    load_balancers: tuple[LoadBalancer, ...] = ()
    errors: tuple[ValidationError, ...] = ()

    @property
    def origins(self) -> dict[str, ObjectRef]:
        return {lb.name: self.origin for lb in self.load_balancers}


class Index(typing.Protocol):
    """The lookups translating one Service needs besides the Service itself."""

    def service(self, key: str) -> Obj | None: ...

    def slices_of(self, service_key: str) -> Sequence[Obj]:
        """The EndpointSlices labelled for the Service, by slice key."""
        ...

    def namespace_labels(self, namespace: str) -> Mapping[str, str]: ...

    def node_ips(self, family: int) -> Sequence[tuple[str, IPAddress]]:
        """(node name, InternalIP) of the usable nodes (`node_addresses`) having one, by name."""
        ...


# --- small accessors --------------------------------------------------------------------------


def key_of(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


def _dig(obj: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _annotation(obj: Obj, names: Iterable[str]) -> tuple[str, str] | None:
    annotations = _dig(obj, "metadata", "annotations") or {}
    return next(((n, annotations[n]) for n in names if n in annotations), None)


def labels_of(obj: Obj | None) -> dict[str, str]:
    return dict(_dig(obj, "metadata", "labels") or {})


def slice_service(sl: Obj | None) -> str | None:
    """The key of the Service an EndpointSlice belongs to (its service-name label), if any."""
    name = _dig(sl, "metadata", "labels", SERVICE_NAME_LABEL)
    return f"{_dig(sl, 'metadata', 'namespace')}/{name}" if name else None


def is_ours(svc: Obj, options: Options) -> bool:
    if _dig(svc, "spec", "type") != "LoadBalancer":
        return False
    cls = _dig(svc, "spec", "loadBalancerClass")
    return cls == GATELB_CLASS if cls else options.default_class


def status_addresses(svc: Obj) -> tuple[IPAddress, ...]:
    out: list[IPAddress] = []
    for ingress in _dig(svc, "status", "loadBalancer", "ingress") or []:
        try:
            out.append(ipaddress.ip_address(ingress.get("ip", "")))
        except ValueError:
            continue  # a hostname, or someone else's garbage: not an address we handed out
    return tuple(out)


def service_lb_name(key: str, protocol: Protocol, port: int, family: int) -> str:
    return f"svc/{key}/{protocol.value}/{port}/v{family}"


def l4lb_lb_name(key: str) -> str:
    return f"l4lb/{key}"


# --- pools ------------------------------------------------------------------------------------


def _selector(spec: LabelSelectorSpec) -> Selector:
    return Selector(tuple(sorted(spec.match_labels.items())),
                    tuple((e.key, e.operator, tuple(e.values)) for e in spec.match_expressions))


def _document(raw: Obj, kind: str) -> Obj:
    """The object as the standalone schema sees it: Kubernetes' own metadata dropped."""
    return {"apiVersion": raw.get("apiVersion"), "kind": kind,
            "metadata": {"name": _dig(raw, "metadata", "name")}, "spec": raw.get("spec")}


def pools(cluster: Cluster) -> tuple[list[ServicePool], list[ValidationError]]:
    """gatelb.io IPPools, then MetalLB's IPAddressPools (same fields and meanings: addresses,
    autoAssign, avoidBuggyIPs, serviceAllocation), as one set of pools by name. A MetalLB pool whose
    name an IPPool already has is left out with an error on it."""
    errors: list[ValidationError] = []
    found: dict[str, ServicePool] = {}
    origin: dict[str, tuple[str, str]] = {}  # pool name -> (kind, key) of the object that gave it
    sources = [(IPPOOL, key, raw) for key, raw in sorted(cluster.ippools.items())]
    sources += [(IPADDRESSPOOL, key, raw) for key, raw in sorted(cluster.ipaddresspools.items())]
    for kind, key, raw in sources:
        try:
            doc = IPPoolDocument.model_validate({**_document(raw, IPPOOL), "apiVersion": API_VERSION})
        except pydantic.ValidationError as exc:
            errors += [ValidationError(kind, key, path, text) for path, text in pyd_errors.translate(exc)]
            continue
        name = doc.metadata.name
        if name in found:
            text = f"pool {name!r} is already {' '.join(origin[name])}"
            errors.append(ValidationError(kind, key, "metadata.name", text))
            continue
        sa = doc.spec.service_allocation
        allocation = None if sa is None else ServiceAllocation(
            sa.priority, frozenset(sa.namespaces), tuple(_selector(s) for s in sa.namespace_selectors),
            tuple(_selector(s) for s in sa.service_selectors))
        found[name] = ServicePool(_pool(doc), allocation)
        origin[name] = (kind, key)
    overlaps = []
    for err in check_pools(p.pool for p in found.values()):
        # An overlapping pool is left out whole: two pools must never share an address.
        found.pop(err.name, None)
        kind, key = origin[err.name]
        overlaps.append(err if kind == IPPOOL else ValidationError(kind, key, err.path, err.problem))
    return [found[k] for k in sorted(found)], errors + overlaps


# --- Services: what to allocate -----------------------------------------------------------------


def _families(svc: Obj, requested: tuple[IPAddress, ...]) -> tuple[int, ...]:
    given = _dig(svc, "spec", "ipFamilies") or []
    families = tuple(int(f[-1]) for f in given if f in ("IPv4", "IPv6"))
    if families:
        return families
    return tuple(dict.fromkeys(ip.version for ip in requested)) or (4,)


def _requested(svc: Obj, key: str) -> tuple[tuple[IPAddress, ...], list[ValidationError]]:
    found = _annotation(svc, ANN_IPS)
    if found is not None:
        name, text = found
        path = f"metadata.annotations[{name}]"
    else:
        text = _dig(svc, "spec", "loadBalancerIP") or ""
        path = "spec.loadBalancerIP"
    out: list[IPAddress] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            ip = ipaddress.ip_address(part)
        except ValueError:
            return (), [ValidationError(SERVICE, key, path, f"{part!r} is not an IP address")]
        why = special_address(ip)
        if why is not None:
            return (), [ValidationError(SERVICE, key, path, why)]
        out.append(ip)
    return tuple(out), []


def _ports(svc: Obj, key: str) -> tuple[list[tuple[int, Obj, Protocol]], list[ValidationError]]:
    out, errors = [], []
    for i, port in enumerate(_dig(svc, "spec", "ports") or []):
        proto = str(port.get("protocol") or "TCP")
        if proto not in ("TCP", "UDP"):
            errors.append(ValidationError(SERVICE, key, f"spec.ports[{i}].protocol",
                                          f"{proto} is not supported (TCP or UDP)"))
            continue
        out.append((i, port, Protocol(proto.lower())))
    return out, errors


def service_request(svc: Obj, cluster: Cluster) -> tuple[ServiceRequest | None, list[ValidationError]]:
    key = key_of(svc)
    return _service_request(svc, key, labels_of(cluster.namespaces.get(key.partition("/")[0])))


def service_request_for(key: str, index: Index, options: Options) -> tuple[
        ServiceRequest | None, list[ValidationError]]:
    """What to allocate for the Service `key`: None (and no errors) when it is gone or not ours."""
    svc = index.service(key)
    if svc is None or not is_ours(svc, options):
        return None, []
    return _service_request(svc, key, index.namespace_labels(key.partition("/")[0]))


def _service_request(svc: Obj, key: str, namespace_labels: Mapping[str, str]) -> tuple[
        ServiceRequest | None, list[ValidationError]]:
    requested, errors = _requested(svc, key)
    ports, port_errors = _ports(svc, key)
    if errors:
        return None, errors + port_errors
    policy_text = _dig(svc, "spec", "ipFamilyPolicy") or "SingleStack"
    try:
        policy = FamilyPolicy(policy_text)
    except ValueError:
        policy = FamilyPolicy.SINGLE
    pool = _annotation(svc, ANN_POOL)
    share = _annotation(svc, ANN_SHARE)
    req = ServiceRequest(
        key=key,
        ports=tuple((proto, int(p["port"])) for _, p, proto in ports),
        families=_families(svc, requested),
        policy=policy,
        requested=requested,
        pool=pool[1] if pool else None,
        sharing_key=share[1] if share else None,
        labels=labels_of(svc),
        namespace_labels=dict(namespace_labels),
    )
    return req, port_errors


def service_requests(cluster: Cluster, options: Options) -> tuple[list[ServiceRequest], list[ValidationError]]:
    requests, errors = [], []
    index = ClusterIndex(cluster)
    for key in sorted(cluster.services):
        req, errs = service_request_for(key, index, options)
        errors += errs
        if req is not None:
            requests.append(req)
    return requests, errors


# --- Services: backends -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Endpoint:
    address: IPAddress
    port: int
    node: str | None


def _slices_by_service(cluster: Cluster) -> dict[str, list[Obj]]:
    out: dict[str, list[Obj]] = {}
    for _, sl in sorted(cluster.endpointslices.items()):
        svc = slice_service(sl)
        if svc:
            out.setdefault(svc, []).append(sl)
    return out


def _endpoints(slices: Sequence[Obj], port_name: str, protocol: Protocol, family: int) -> list[_Endpoint]:
    """Ready endpoints; when there is none, serving-and-terminating ones (KEP-1669), as kube-proxy."""
    ready: dict[tuple[IPAddress, int], _Endpoint] = {}
    fallback: dict[tuple[IPAddress, int], _Endpoint] = {}
    for sl in slices:
        if sl.get("addressType") != f"IPv{family}":
            continue
        sport = next((p for p in sl.get("ports") or [] if (p.get("name") or "") == port_name
                      and str(p.get("protocol") or "TCP").lower() == protocol.value), None)
        if sport is None or sport.get("port") is None:
            continue
        for ep in sl.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            is_ready = cond.get("ready") is not False  # unset means ready (API contract)
            serving = cond.get("serving") if cond.get("serving") is not None else is_ready
            addresses = ep.get("addresses") or []
            if not addresses:
                continue
            try:
                addr = ip_address(str(addresses[0]))  # consumers use the first (kube-proxy does)
            except ValueError:
                continue
            e = _Endpoint(addr, int(sport["port"]), ep.get("nodeName"))
            if is_ready:
                ready[(addr, e.port)] = e
            elif serving and cond.get("terminating"):
                fallback[(addr, e.port)] = e
    chosen = ready or fallback
    return [chosen[k] for k in sorted(chosen, key=lambda k: (int(k[0]), k[1]))]


def node_addresses(node: Obj | None) -> tuple[IPAddress | None, IPAddress | None]:
    """All a Node contributes to any translation: its IPv4 and IPv6 InternalIP, each None unless
    the node is Ready, not excluded from load balancers and has one. Nothing else of a Node matters."""
    if node is None:
        return None, None
    return _node_ip(node, 4), _node_ip(node, 6)


def usable_nodes(nodes: Mapping[str, Obj], family: int) -> tuple[tuple[str, IPAddress], ...]:
    found = ((name, node_addresses(node)[family == 6]) for name, node in sorted(nodes.items()))
    return tuple((name, ip) for name, ip in found if ip is not None)


def _node_ip(node: Obj, family: int) -> IPAddress | None:
    if EXCLUDE_LABEL in (_dig(node, "metadata", "labels") or {}):
        return None
    conditions = _dig(node, "status", "conditions") or []
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
        return None
    for a in _dig(node, "status", "addresses") or []:
        if a.get("type") == "InternalIP":
            try:
                ip = ipaddress.ip_address(a.get("address", ""))
            except ValueError:
                continue
            if ip.version == family:
                return ip
    return None


class ClusterIndex:
    """`Index` over a whole `Cluster`, built lazily (for one full translation)."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._slices: dict[str, list[Obj]] | None = None
        self._nodes: dict[int, tuple[tuple[str, IPAddress], ...]] = {}

    def service(self, key: str) -> Obj | None:
        return self._cluster.services.get(key)

    def slices_of(self, service_key: str) -> Sequence[Obj]:
        if self._slices is None:
            self._slices = _slices_by_service(self._cluster)
        return self._slices.get(service_key, [])

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return labels_of(self._cluster.namespaces.get(namespace))

    def node_ips(self, family: int) -> Sequence[tuple[str, IPAddress]]:
        if family not in self._nodes:
            self._nodes[family] = usable_nodes(self._cluster.nodes, family)
        return self._nodes[family]


# --- Services: load balancers -------------------------------------------------------------------


@dataclass(frozen=True)
class _SvcContext:
    key: str
    svc: Obj
    slices: Sequence[Obj]
    options: Options
    index: Index


def _affinity(svc: Obj) -> Affinity | None:
    if _dig(svc, "spec", "sessionAffinity") != "ClientIP":
        return None
    timeout = _dig(svc, "spec", "sessionAffinityConfig", "clientIP", "timeoutSeconds")
    return Affinity(int(timeout) if timeout else DEFAULT_AFFINITY_S)


def _source_ranges(ctx: _SvcContext, errors: list[ValidationError]) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for i, text in enumerate(_dig(ctx.svc, "spec", "loadBalancerSourceRanges") or []):
        try:
            out.append(ipaddress.ip_network(str(text).strip(), strict=False))
        except ValueError:
            errors.append(ValidationError(SERVICE, ctx.key, f"spec.loadBalancerSourceRanges[{i}]",
                                          f"{text!r} is not a CIDR"))
    return tuple(out)


def _backends_for(ctx: _SvcContext, port: Obj, protocol: Protocol, family: int) -> tuple[Backend, ...] | str:
    """The backends of one Service port in one family, or why there can be none."""
    endpoints = [e for f in (4, 6) for e in _endpoints(ctx.slices, port.get("name") or "", protocol, f)]
    if ctx.options.backend_mode is BackendMode.POD:
        return tuple(Backend(e.address, e.port) for e in endpoints if e.address.version == family)
    node_port = port.get("nodePort")
    if not node_port:
        return "has no nodePort (allocateLoadBalancerNodePorts: false needs --backend-mode pod)"
    local_only = _dig(ctx.svc, "spec", "externalTrafficPolicy") == "Local"
    local_nodes = {e.node for e in endpoints if e.node}
    return tuple(Backend(ip, int(node_port)) for name, ip in ctx.index.node_ips(family)
                 if not local_only or name in local_nodes)


def _check(ctx: _SvcContext) -> HealthCheck:
    """Readiness comes from EndpointSlices; only Local traffic in nodeport mode needs a probe: a
    node answers on healthCheckNodePort with 200 while it has a local endpoint (kube-proxy)."""
    hc_port = _dig(ctx.svc, "spec", "healthCheckNodePort")
    local = _dig(ctx.svc, "spec", "externalTrafficPolicy") == "Local"
    if ctx.options.backend_mode is BackendMode.NODEPORT and local and hc_port:
        return HealthCheck(type=CheckType.HTTP, port=int(hc_port), request_path="/healthz",
                           expected_statuses=((200, 299),))
    return HealthCheck(type=CheckType.NONE)


def _hostnames(ctx: _SvcContext, errors: list[ValidationError]) -> tuple[tuple[str, ...], int | None]:
    """DNS names from the annotations (ours and external-dns's), and external-dns's TTL."""
    names: list[str] = []
    for ann in ANN_HOSTNAMES:
        for text in str(_dig(ctx.svc, "metadata", "annotations", ann) or "").split(","):
            if not text.strip():
                continue
            name = normal_hostname(text)
            if why := hostname_problem(name):
                errors.append(ValidationError(SERVICE, ctx.key, f"metadata.annotations[{ann}]", why))
            elif name not in names:
                names.append(name)
    ttl_text = _dig(ctx.svc, "metadata", "annotations", ANN_TTL)
    ttl: int | None = None
    if ttl_text is not None:
        text = str(ttl_text).strip()
        if text.isdecimal() and 1 <= int(text) <= 604800:
            ttl = int(text)
        else:
            errors.append(ValidationError(SERVICE, ctx.key, f"metadata.annotations[{ANN_TTL}]",
                                          f"{text!r} is not a TTL in seconds (1-604800)"))
    return tuple(names), ttl


def service_load_balancers(ctx: _SvcContext, addresses: tuple[IPAddress, ...]) -> tuple[
        list[LoadBalancer], list[ValidationError]]:
    errors: list[ValidationError] = []
    hostnames, dns_ttl = _hostnames(ctx, errors)
    ports, port_errors = _ports(ctx.svc, ctx.key)
    errors += port_errors
    ranges = _source_ranges(ctx, errors)
    lbs = []
    for vip in addresses:
        family_ranges = tuple(r for r in ranges if r.version == vip.version)
        if ranges and not family_ranges:
            # Serving this family unfiltered would open what the user restricted.
            errors.append(ValidationError(SERVICE, ctx.key, "spec.loadBalancerSourceRanges",
                                          f"no IPv{vip.version} range: {vip} is not served"))
            continue
        for i, port, protocol in ports:
            backends = _backends_for(ctx, port, protocol, vip.version)
            if isinstance(backends, str):
                errors.append(ValidationError(SERVICE, ctx.key, f"spec.ports[{i}]", backends))
                continue
            lbs.append(LoadBalancer(
                name=service_lb_name(ctx.key, protocol, int(port["port"]), vip.version),
                port=int(port["port"]), protocol=protocol, frontend_ip=vip, backends=backends,
                affinity=_affinity(ctx.svc), source_ranges=family_ranges, check=_check(ctx),
                family=vip.version, hostnames=hostnames, dns_ttl=dns_ttl,
            ))
    return lbs, errors


def translate_service(key: str, index: Index, options: Options, addresses: tuple[IPAddress, ...]) -> Translated:
    """The load balancers of the Service `key` on `addresses` (those assigned to it), its errors."""
    origin = ObjectRef(SERVICE, key)
    svc = index.service(key)
    if svc is None or not is_ours(svc, options) or not addresses:
        return Translated(origin)
    ctx = _SvcContext(key, svc, index.slices_of(key), options, index)
    lbs, errors = service_load_balancers(ctx, addresses)
    return Translated(origin, tuple(lbs), tuple(errors))


# --- L4LB objects -------------------------------------------------------------------------------


def translate_l4lb(key: str, raw: Obj | None) -> Translated:
    """The load balancer of the L4LB object `key` (none if it is gone or invalid), its errors."""
    origin = ObjectRef(L4LB, key)
    if raw is None:
        return Translated(origin)
    try:
        doc = L4LBDocument.model_validate(_document(raw, L4LB))
    except pydantic.ValidationError as exc:
        return Translated(origin, (), tuple(ValidationError(L4LB, key, path, text)
                                            for path, text in pyd_errors.translate(exc)))
    lb, problems = _load_balancer(doc)
    if problems:
        return Translated(origin, (), tuple(ValidationError(L4LB, key, path, text) for path, text in problems))
    return Translated(origin, (dataclasses.replace(lb, name=l4lb_lb_name(key)),))


def l4lbs(cluster: Cluster) -> tuple[list[LoadBalancer], list[ValidationError]]:
    out: list[LoadBalancer] = []
    errors: list[ValidationError] = []
    for key, raw in sorted(cluster.l4lbs.items()):
        t = translate_l4lb(key, raw)
        out += t.load_balancers
        errors += t.errors
    return out, errors


# --- the one function ---------------------------------------------------------------------------


def to_model(cluster: Cluster, options: Options, assigned: Mapping[str, tuple[IPAddress, ...]]) -> Translation:
    """The pools, every Service port on every address `assigned` to its Service, and the L4LB
    objects (still to be allocated by gatelb.ipam.lb), with every problem found."""
    pool_list, errors = pools(cluster)
    index = ClusterIndex(cluster)
    parts = [translate_service(key, index, options, assigned.get(key, ())) for key in sorted(cluster.services)]
    parts += [translate_l4lb(key, raw) for key, raw in sorted(cluster.l4lbs.items())]
    lbs = [lb for t in parts for lb in t.load_balancers]
    errors += [e for t in parts for e in t.errors]
    desired = DesiredState(pools=tuple(p.pool for p in pool_list),
                           load_balancers=tuple(sorted(lbs, key=lambda lb: lb.name)))
    return Translation(desired, tuple(errors), {name: ref for t in parts for name, ref in t.origins.items()})
