"""Per-object change tracking for the Kubernetes source (kube-proxy's ServiceChangeTracker and
EndpointsChangeTracker). Pure: no I/O, no asyncio.

    informer on_change(kind, key, old, new) -> ChangeTracker.on_change: cache, indexes, dirty keys
    dirty = tracker.take()
    for key in tracker.service_keys(dirty): tracker.translate_service(key, addresses of key) ...
    for key in dirty.l4lbs: tracker.translate_l4lb(key)
    if dirty.pools_changed: tracker.pools(), and every address placed again

The tracker holds the cluster indexed so that translating one Service reads only what that
Service needs (its EndpointSlices by (namespace, service-name label), its namespace's labels, the
usable node addresses), and records which objects' translation may have changed:

    Service event        -> that Service, unless all that changed is what gatelb writes back
                            (status, the gatelb.io/ip-pool annotation, and the metadata the API
                            server bumps with every write): `written` then, which translates
                            nothing (the translation does not read those) and only tells the
                            source that a follower's served addresses or a leader's write-back
                            may be affected. Without this, each of the 2 writes per Service of a
                            first sync would come back as a watch event and translate the
                            Service again (29,731 translations for 10,000 Services).
    EndpointSlice event  -> the Services named by the slice's old and new service-name labels
                            (both, when the label moves; the old one when the slice is deleted)
    Node event           -> every Service (`all_services`), in nodeport mode only, and only when
                            what the node contributes changed: `translate.node_addresses`, its
                            usable IPv4/IPv6 InternalIP, which folds in the addresses, the Ready
                            condition and the exclude-from-external-load-balancers label. A
                            heartbeat, a status image list or a new taint marks nothing.
    Namespace event      -> the Services in that namespace, when its labels changed (pool
                            selection reads them; a namespace created or deleted counts as a
                            change from/to no labels)
    IPPool event         -> `pools_changed` (MetalLB's IPAddressPool too)
    L4LB event           -> that L4LB

Relists: the informer reports only the objects that differ from its cache (same resourceVersion
= unchanged), so a relist of 10,000 unchanged Services reaches the tracker as no call at all and
marks nothing. The tracker applies the same test itself: a report whose object is the version it
already holds is ignored (counted in `counts["ignored"]`).

The tracker trusts its own copy of an object over the `old` it is handed: the indexes were built
from that copy, so a slice is always removed from the bucket it was put in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gatelb.ipam.services import ServicePool, ServiceRequest
from gatelb.model import IPAddress, ValidationError
from gatelb.sources.kubernetes import translate as tr
from gatelb.sources.kubernetes.translate import BackendMode, Cluster, Options, Translated

Obj = dict[str, Any]

# The informers' kind names (gatelb.sources.kubernetes.api.WATCHED; not imported: that module
# pulls in the HTTP client).
SERVICES, ENDPOINTSLICES, NODES = "services", "endpointslices", "nodes"
NAMESPACES, IPPOOLS, L4LBS = "namespaces", "ippools", "l4lbs"
IPADDRESSPOOLS = "ipaddresspools"  # MetalLB's pools (metallb.io IPAddressPool)
KINDS = (SERVICES, ENDPOINTSLICES, NODES, NAMESPACES, IPPOOLS, L4LBS, IPADDRESSPOOLS)


# Fields the API server changes on every write, and what gatelb itself writes to a Service: a
# change confined to these cannot change the Service's translation.
_WRITE_META = ("resourceVersion", "managedFields", "generation")


def translation_part(svc: Obj) -> Obj:
    """A Service without what gatelb writes back (status, the ip-pool annotation) and without the
    metadata every write bumps: two versions with equal parts translate the same."""
    meta = dict(svc.get("metadata") or {})
    for name in _WRITE_META:
        meta.pop(name, None)
    annotations = meta.get("annotations")
    if annotations and tr.ANN_POOL_RECORD in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != tr.ANN_POOL_RECORD}
    if not meta.get("annotations"):  # none and empty are the same (ours may be the only one)
        meta.pop("annotations", None)
    return {**{k: v for k, v in svc.items() if k != "status"}, "metadata": meta}


def same_version(old: Obj | None, new: Obj | None) -> bool:
    """Whether two versions of one object are the same (resourceVersion, else the whole object)."""
    if old is None or new is None:
        return old is new
    rv_old = (old.get("metadata") or {}).get("resourceVersion")
    rv_new = (new.get("metadata") or {}).get("resourceVersion")
    if rv_old and rv_new:
        return bool(rv_old == rv_new)
    return old == new


@dataclass(frozen=True)
class Dirty:
    """What may translate differently since the last `take()`.

    `services` and `l4lbs` include deleted objects (translating a deleted key gives an empty
    result: its load balancers go). With `all_services`, every Service must be translated again
    (`ChangeTracker.service_keys` gives them, plus the deleted ones still in `services`)."""

    services: frozenset[str] = frozenset()
    l4lbs: frozenset[str] = frozenset()
    pools_changed: bool = False
    all_services: bool = False
    # Services whose only change is in what gatelb writes back (status, the ip-pool annotation):
    # not to translate again; a follower reads its addresses from them, a leader may rewrite them.
    written: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.services or self.l4lbs or self.pools_changed or self.all_services or self.written)


class ChangeTracker:
    """The informers' reports in, the cluster indexed, dirty keys out. Implements
    `translate.Index`, so the per-object translation reads straight from it."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._objects: dict[str, dict[str, Obj]] = {kind: {} for kind in KINDS}
        self._slices_by_service: dict[str, dict[str, Obj]] = {}  # "ns/service" -> slice key -> slice
        self._services_by_namespace: dict[str, set[str]] = {}
        self._node_ips: dict[int, tuple[tuple[str, IPAddress], ...]] = {}  # family -> cached
        self._services: set[str] = set()
        self._written: set[str] = set()
        self._l4lbs: set[str] = set()
        self._pools_changed = False
        self._all_services = False
        self.translated = 0  # Services translated through translate_service, ever
        self.counts = {"events": 0, "ignored": 0}

    # -- the informers' callback ---------------------------------------------------------------

    def on_change(self, kind: str, key: str, old: Obj | None, new: Obj | None) -> None:
        """One object of `kind` added (old None), changed, or deleted (new None)."""
        store = self._objects[kind]  # KeyError: not a kind we track
        prev = store.get(key)
        if same_version(prev, new):
            self.counts["ignored"] += 1
            return
        self.counts["events"] += 1
        if new is None:
            del store[key]
        else:
            store[key] = new
        if kind == SERVICES:
            self._service(key, prev, new)
        elif kind == ENDPOINTSLICES:
            self._slice(key, prev, new)
        elif kind == NODES:
            self._node(prev, new)
        elif kind == NAMESPACES:
            if tr.labels_of(prev) != tr.labels_of(new):
                self._services |= self._services_by_namespace.get(key, set())
        elif kind in (IPPOOLS, IPADDRESSPOOLS):
            self._pools_changed = True
        else:
            self._l4lbs.add(key)

    def _service(self, key: str, prev: Obj | None, new: Obj | None) -> None:
        if prev is not None and new is not None and translation_part(prev) == translation_part(new):
            self._written.add(key)
            return
        self._services.add(key)
        ns = key.partition("/")[0]
        if new is None:
            in_ns = self._services_by_namespace.get(ns)
            if in_ns is not None:
                in_ns.discard(key)
                if not in_ns:
                    del self._services_by_namespace[ns]
        elif prev is None:
            self._services_by_namespace.setdefault(ns, set()).add(key)

    def _slice(self, key: str, prev: Obj | None, new: Obj | None) -> None:
        before, after = tr.slice_service(prev), tr.slice_service(new)
        if before is not None:
            bucket = self._slices_by_service.get(before, {})
            bucket.pop(key, None)
            if not bucket:
                self._slices_by_service.pop(before, None)
            self._services.add(before)
        if after is not None and new is not None:
            self._slices_by_service.setdefault(after, {})[key] = new
            self._services.add(after)

    def _node(self, prev: Obj | None, new: Obj | None) -> None:
        if tr.node_addresses(prev) == tr.node_addresses(new):
            return
        self._node_ips.clear()
        if self.options.backend_mode is BackendMode.NODEPORT:
            self._all_services = True

    # -- what changed ------------------------------------------------------------------------

    def take(self) -> Dirty:
        """What is dirty since the last call; clears it."""
        out = Dirty(frozenset(self._services), frozenset(self._l4lbs), self._pools_changed, self._all_services,
                    frozenset(self._written - self._services))
        self._services, self._l4lbs, self._written = set(), set(), set()
        self._pools_changed = self._all_services = False
        return out

    def service_keys(self, dirty: Dirty) -> list[str]:
        """The Services to translate for `dirty`, sorted (with `all_services`: every one we hold,
        and the deleted ones)."""
        keys = set(dirty.services)
        if dirty.all_services:
            keys.update(self._objects[SERVICES])
        return sorted(keys)

    def mark_all(self) -> None:
        """Everything dirty (e.g. after the caller lost its results)."""
        self._services.update(self._objects[SERVICES])
        self._l4lbs.update(self._objects[L4LBS])
        self._pools_changed = self._all_services = True

    # -- translation of single objects -------------------------------------------------------

    def translate_service(self, key: str, addresses: tuple[IPAddress, ...]) -> Translated:
        self.translated += 1
        return tr.translate_service(key, self, self.options, addresses)

    def service_request(self, key: str) -> tuple[ServiceRequest | None, list[ValidationError]]:
        return tr.service_request_for(key, self, self.options)

    def translate_l4lb(self, key: str) -> Translated:
        return tr.translate_l4lb(key, self._objects[L4LBS].get(key))

    def pools(self) -> tuple[list[ServicePool], list[ValidationError]]:
        return tr.pools(self.cluster)

    # -- translate.Index ------------------------------------------------------------------------

    def service(self, key: str) -> Obj | None:
        return self._objects[SERVICES].get(key)

    def slices_of(self, service_key: str) -> Sequence[Obj]:
        bucket = self._slices_by_service.get(service_key)
        return [bucket[k] for k in sorted(bucket)] if bucket else []

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return tr.labels_of(self._objects[NAMESPACES].get(namespace))

    def node_ips(self, family: int) -> Sequence[tuple[str, IPAddress]]:
        if family not in self._node_ips:
            self._node_ips[family] = tr.usable_nodes(self._objects[NODES], family)
        return self._node_ips[family]

    # -- the cache -----------------------------------------------------------------------------

    def objects(self, kind: str) -> Mapping[str, Obj]:
        """Read-only, live view of one kind."""
        return MappingProxyType(self._objects[kind])

    @property
    def cluster(self) -> Cluster:
        """The whole cache as a `Cluster` of live read-only views (no copy: do not keep it across
        events)."""
        return Cluster(**{kind: self.objects(kind) for kind in KINDS})
