"""What of each Kubernetes object gatelb keeps in its informer caches. Pure: one function per kind.

The caches hold every Service, EndpointSlice, Node and Namespace of the cluster for as long as the
process runs: 20,000 objects as the API server's JSON took 121 MiB at 10,000 Services x 10
endpoints, before a real server's managedFields (often half of an object), last-applied
annotations, Node image lists and EndpointSlice targetRefs. Each object is reduced when it enters
the cache to what the translation, the change tracker and the status write-back read:

    Service        apiVersion, kind, metadata (name, namespace, uid, resourceVersion, labels,
                   annotations without kubectl's last-applied copy), spec, status.loadBalancer
    EndpointSlice  metadata (name, namespace, uid, resourceVersion, the service-name label),
                   addressType, ports, endpoints (addresses, conditions, nodeName)
    Node           metadata (name, uid, resourceVersion, labels), status.addresses and the Ready
                   condition (type and status)
    Namespace      metadata (name, uid, resourceVersion, labels)
    the others     everything but managedFields and the last-applied annotation (pools, L4LBs and
                   configuration objects are few, and parsed whole)

Repeated small values are shared: the conditions of an endpoint (a handful of distinct ones per
cluster), and the keys. Cached objects are read-only by convention (the informer replaces, never
edits), which is what makes the sharing safe. tests/unit/test_kube_changes.py checks that the
translation of reduced objects equals that of the full ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gatelb.sources.kubernetes.translate import SERVICE_NAME_LABEL

Obj = dict[str, Any]
Slim = Callable[[Obj], Obj]

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_META = ("name", "namespace", "uid", "resourceVersion")
_shared: dict[tuple[tuple[str, Any], ...], Obj] = {}  # distinct endpoint conditions
_SHARED_MAX = 1024  # conditions hold only booleans: a cluster has a handful of distinct ones


def _metadata(meta: Obj, labels: bool = True, annotations: bool = False) -> Obj:
    out = {k: meta[k] for k in _META if k in meta}
    if labels and meta.get("labels"):
        out["labels"] = meta["labels"]
    if annotations and meta.get("annotations"):
        ann = meta["annotations"]
        out["annotations"] = {k: v for k, v in ann.items() if k != LAST_APPLIED} if LAST_APPLIED in ann else ann
    return out


def _top(obj: Obj) -> Obj:
    return {k: obj[k] for k in ("apiVersion", "kind") if k in obj}


def service(obj: Obj) -> Obj:
    out = _top(obj)
    out["metadata"] = _metadata(obj.get("metadata") or {}, annotations=True)
    if "spec" in obj:
        out["spec"] = obj["spec"]
    lb = (obj.get("status") or {}).get("loadBalancer")
    if lb is not None:
        out["status"] = {"loadBalancer": lb}
    return out


def _conditions(cond: Any) -> Any:
    if not isinstance(cond, dict):
        return cond
    key = tuple(sorted(cond.items()))
    try:
        shared = _shared.get(key)
    except TypeError:  # an unhashable value: not ours to share
        return cond
    if shared is None:
        if len(_shared) >= _SHARED_MAX:
            return cond
        shared = _shared[key] = dict(key)
    return shared


def _endpoint(ep: Any) -> Any:
    if not isinstance(ep, dict):
        return ep
    out: Obj = {}
    if "addresses" in ep:
        addresses = ep["addresses"]
        out["addresses"] = tuple(addresses) if isinstance(addresses, list) else addresses
    if "conditions" in ep:
        out["conditions"] = _conditions(ep["conditions"])
    if ep.get("nodeName") is not None:
        out["nodeName"] = ep["nodeName"]
    return out


def endpointslice(obj: Obj) -> Obj:
    out = _top(obj)
    meta = obj.get("metadata") or {}
    out["metadata"] = _metadata(meta, labels=False)
    name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if name is not None:
        out["metadata"]["labels"] = {SERVICE_NAME_LABEL: name}
    for k in ("addressType", "ports"):
        if k in obj:
            out[k] = obj[k]
    if "endpoints" in obj:
        endpoints = obj["endpoints"]
        out["endpoints"] = [_endpoint(ep) for ep in endpoints] if isinstance(endpoints, list) else endpoints
    return out


def node(obj: Obj) -> Obj:
    out = _top(obj)
    out["metadata"] = _metadata(obj.get("metadata") or {})
    status = obj.get("status") or {}
    slim: Obj = {}
    if "addresses" in status:
        slim["addresses"] = status["addresses"]
    conditions = status.get("conditions")
    if isinstance(conditions, list):
        slim["conditions"] = [{"type": c.get("type"), "status": c.get("status")} for c in conditions
                              if isinstance(c, dict) and c.get("type") == "Ready"]
    out["status"] = slim
    return out


def namespace(obj: Obj) -> Obj:
    out = _top(obj)
    out["metadata"] = _metadata(obj.get("metadata") or {})
    return out


def other(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not ("managedFields" in meta or LAST_APPLIED in (meta.get("annotations") or {})):
        return obj
    kept = {k: v for k, v in meta.items() if k != "managedFields"}
    if LAST_APPLIED in (kept.get("annotations") or {}):
        kept["annotations"] = {k: v for k, v in kept["annotations"].items() if k != LAST_APPLIED}
    return {**obj, "metadata": kept}


_BY_KIND: dict[str, Slim] = {"services": service, "endpointslices": endpointslice, "nodes": node,
                             "namespaces": namespace}


def secret(obj: Obj) -> Obj:
    """A Secret keeps only what a BGPPeer's passwordSecret reads: its type and `password`."""
    meta = obj.get("metadata") or {}
    data = obj.get("data") or {}
    return {"metadata": {k: meta[k] for k in _META if k in meta}, "type": obj.get("type"),
            "data": {k: v for k, v in data.items() if k == "password"}}


def for_kind(name: str) -> Slim:
    """The reduction for the informer kind `name` (gatelb.sources.kubernetes.api.WATCHED names)."""
    if name.startswith("secrets."):
        return secret
    return _BY_KIND.get(name, other)

