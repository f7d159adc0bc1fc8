"""The stand-in's memory: objects, one global resourceVersion counter, a bounded event history.

Behaves like etcd behind the kube-apiserver where gatelb depends on it:

- every write bumps ONE cluster-wide counter; objects carry it as ``metadata.resourceVersion``;
- a watch from version R replays the history after R, then follows live events; the history is a
  window (``history`` events), and a watch from a version older than the window gets 410 Gone, as
  after an etcd compaction (``compact()`` forces that in tests);
- a write naming a ``metadata.resourceVersion`` that is not the current one fails with 409 Conflict
  (optimistic concurrency); writes to the main resource never change ``status`` and writes to the
  ``status`` subresource change nothing else, for kinds that have one;
- namespaces must exist: a namespaced create in a missing one is the real 404
  ``namespaces "x" not found`` (details kind ``namespaces``); a new store has the namespaces a new
  cluster has (default, kube-system, kube-public, kube-node-lease), not ``gatelb-system``;
- custom resources exist only through CustomResourceDefinitions: created through the API (as
  ``kubectl apply -f deploy/crds.yaml`` does), after which their storage answers 429 "storage is
  (re)initializing" for ``crd_init_s``; ``Store(crds=True)`` starts with deploy/crds.yaml installed
  (ready at once). Their bodies go through the CRD's schema as on the real server (crd.py): unknown
  fields are a 400 (``fieldValidation=Strict``, the default here and kubectl's) or pruned (Warn,
  Ignore), defaults are filled, schema violations are a 422 with the field path;
- RBAC objects (ServiceAccount, Role, ...) are stored so deploy/rbac.yaml applies, but not enforced
  (``StandinServer.forbid`` makes chosen requests 403 instead).

Pure Python, no I/O: ``server.py`` puts HTTP in front of it.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tests.k8s_standin import crd

Obj = dict[str, Any]
CRDS_YAML = Path(__file__).resolve().parents[2] / "deploy" / "crds.yaml"
NEW_CLUSTER_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
CRD_RID = "apiextensions.k8s.io/v1/customresourcedefinitions"


@dataclass(frozen=True)
class Resource:
    group_version: str  # "v1", "discovery.k8s.io/v1"
    plural: str
    kind: str
    namespaced: bool
    status: bool  # has a status subresource
    schema: Obj | None = field(default=None, compare=False)  # a custom resource's openAPIV3Schema

    @property
    def rid(self) -> str:
        return f"{self.group_version}/{self.plural}"

    @property
    def group(self) -> str:
        return self.group_version.rpartition("/")[0]


RESOURCES = [
    Resource("v1", "services", "Service", True, True),
    Resource("v1", "nodes", "Node", False, True),
    Resource("v1", "namespaces", "Namespace", False, True),
    Resource("v1", "events", "Event", True, False),
    Resource("v1", "secrets", "Secret", True, False),
    Resource("v1", "serviceaccounts", "ServiceAccount", True, False),
    Resource("discovery.k8s.io/v1", "endpointslices", "EndpointSlice", True, False),
    Resource("coordination.k8s.io/v1", "leases", "Lease", True, False),
    Resource("apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", False, True),
    Resource("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", False, False),
    Resource("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", False, False),
    Resource("rbac.authorization.k8s.io/v1", "roles", "Role", True, False),
    Resource("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding", True, False),
]


class ApiError(Exception):
    """Becomes a `Status` object with this HTTP code and reason."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = details
        self.headers = headers or {}

    def status(self) -> Obj:
        out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            out["details"] = self.details
        return out


def crd_resources(body: Obj) -> list[Resource]:
    """The resources a CustomResourceDefinition serves (one per served version)."""
    spec = body.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not (group and plural and kind) or spec.get("scope") not in ("Namespaced", "Cluster"):
        raise ApiError(422, "Invalid", "CustomResourceDefinition: spec.group, spec.names.plural, "
                                       "spec.names.kind and spec.scope (Namespaced or Cluster) are required")
    name = (body.get("metadata") or {}).get("name")
    if name != f"{plural}.{group}":
        raise ApiError(422, "Invalid", f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: '
                                       f'metadata.name: Invalid value: "{name}": must be spec.names.plural+"."+'
                                       "spec.group")
    out = []
    for v in spec.get("versions") or []:
        if v.get("served"):
            schema = (v.get("schema") or {}).get("openAPIV3Schema")
            out.append(Resource(f"{group}/{v['name']}", plural, kind, spec["scope"] == "Namespaced",
                                "status" in (v.get("subresources") or {}), schema))
    return out


@dataclass
class Event:
    rv: int
    rid: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj


@dataclass
class Watcher:
    rid: str
    namespace: str | None
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (the stand-in also uses it for strategic merge patches: the
    fields gatelb patches are maps and whole lists, where the two agree)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    def __init__(self, history: int = 1000, crds: bool = True, crd_init_s: float = 0.5,
                 namespaces: tuple[str, ...] = NEW_CLUSTER_NAMESPACES) -> None:
        self.resources = {r.rid: r for r in RESOURCES}
        self.rv = 1
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.history: deque[Event] = deque(maxlen=history)
        self.compacted_rv = 0  # events at or below this version are gone: older watches get 410
        self.watchers: list[Watcher] = []
        self.crd_init_s = crd_init_s
        self.initializing: dict[str, float] = {}  # rid -> time.monotonic() when its storage is ready
        self.warnings: list[str] = []  # of the last write (fieldValidation=Warn), for the Warning header
        self._names = itertools.count(1)
        for ns in namespaces:
            self.create(self.resources["v1/namespaces"], "", {"metadata": {"name": ns}})
        if crds:
            for doc in yaml.safe_load_all(CRDS_YAML.read_text()):
                self.create(self.resources[CRD_RID], "", doc)
            self.initializing.clear()

    def ready(self, res: Resource) -> None:
        """429 while a just-created CRD's storage initialises, as the real server answers then."""
        until = self.initializing.get(res.rid)
        if until is not None and time.monotonic() < until:
            raise ApiError(429, "TooManyRequests", "storage is (re)initializing", {"retryAfterSeconds": 1},
                           {"Retry-After": "1"})

    # -- reads ---------------------------------------------------------------------------------

    def list(self, res: Resource, namespace: str | None) -> tuple[list[Obj], int]:
        items = [copy.deepcopy(o) for (rid, ns, _), o in sorted(self.objects.items())
                 if rid == res.rid and (namespace is None or ns == namespace)]
        return items, self.rv

    def get(self, res: Resource, namespace: str, name: str) -> Obj:
        obj = self.objects.get((res.rid, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
        return copy.deepcopy(obj)

    def watch(self, res: Resource, namespace: str | None, since: int | None) -> tuple[Watcher, list[Event]]:
        """Register a watcher and return the events it must see first. `since` None: the current
        objects as ADDED (a watch without resourceVersion); a version below the history window
        raises 410 Gone. Synchronous, so no write can slip between the replay and the live feed."""
        if since is not None and since < self.compacted_rv:
            raise ApiError(410, "Expired", f"too old resource version: {since} ({self.compacted_rv})")
        if since is None:
            items, _ = self.list(res, namespace)
            first = [Event(int(o["metadata"]["resourceVersion"]), res.rid, "ADDED", o) for o in items]
        else:
            first = [e for e in self.history if e.rv > since and e.rid == res.rid
                     and (namespace is None or e.obj["metadata"].get("namespace") == namespace)]
        w = Watcher(res.rid, namespace)
        self.watchers.append(w)
        return w, first

    def unwatch(self, w: Watcher) -> None:
        if w in self.watchers:
            self.watchers.remove(w)

    # -- writes --------------------------------------------------------------------------------

    def create(self, res: Resource, namespace: str, body: Obj, field_validation: str = "Strict") -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{next(self._names):05d}"
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if res.namespaced and ("v1/namespaces", "", namespace) not in self.objects:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                           {"name": namespace, "kind": "namespaces"})
        key = (res.rid, namespace if res.namespaced else "", name)
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{res.plural} "{name}" already exists',
                           {"name": name, "group": res.group, "kind": res.plural})
        obj["apiVersion"], obj["kind"] = res.group_version, res.kind
        if res.namespaced:
            meta["namespace"] = namespace
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        meta.pop("resourceVersion", None)
        obj = self._admit(res, obj, field_validation)
        served: list[Resource] = []
        if res.rid == CRD_RID:
            served = crd_resources(obj)
            names = obj["spec"]["names"]
            obj["status"] = {"acceptedNames": names, "storedVersions": [
                v["name"] for v in obj["spec"]["versions"] if v.get("storage")], "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found"},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted"}]}
        elif res.rid == "v1/namespaces":
            obj["status"] = {"phase": "Active"}
        out = self._commit(res, key, obj, "ADDED")
        for r in served:
            self.resources[r.rid] = r
            self.initializing[r.rid] = time.monotonic() + self.crd_init_s
        return out

    def update(self, res: Resource, namespace: str, name: str, body: Obj, subresource: str | None,
               field_validation: str = "Strict") -> Obj:
        """PUT: replace the object (or only its status). A stale resourceVersion is 409."""
        key = self._key(res, namespace, name)
        old = self.get(res, key[1], name)
        self._check_version(res, name, old, body)
        return self._write(res, key, old, copy.deepcopy(body), subresource, field_validation)

    def patch(self, res: Resource, namespace: str, name: str, patch: Obj, subresource: str | None,
              field_validation: str = "Strict") -> Obj:
        key = self._key(res, namespace, name)
        old = self.get(res, key[1], name)
        self._check_version(res, name, old, patch)
        return self._write(res, key, old, merge_patch(old, patch), subresource, field_validation)

    def delete(self, res: Resource, namespace: str, name: str) -> Obj:
        key = self._key(res, namespace, name)
        obj = self.get(res, key[1], name)
        del self.objects[key]
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._publish(Event(self.rv, res.rid, "DELETED", obj))
        if res.rid == CRD_RID:  # its resources go, and every object of them
            for r in crd_resources(obj):
                self.resources.pop(r.rid, None)
                self.initializing.pop(r.rid, None)
                for k in [k for k in self.objects if k[0] == r.rid]:
                    del self.objects[k]
        return copy.deepcopy(obj)

    def compact(self) -> None:
        """Forget the whole history, like an etcd compaction: every watch resuming from a version
        older than now gets 410 Gone."""
        self.history.clear()
        self.compacted_rv = self.rv

    # -- internals -----------------------------------------------------------------------------

    def _key(self, res: Resource, namespace: str, name: str) -> tuple[str, str, str]:
        return (res.rid, namespace if res.namespaced else "", name)

    @staticmethod
    def _check_version(res: Resource, name: str, old: Obj, body: Obj) -> None:
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res.plural} "{name}": '
                                            "the object has been modified; please apply your changes "
                                            "to the latest version and try again")

    def _admit(self, res: Resource, obj: Obj, field_validation: str) -> Obj:
        """A custom resource's body through its CRD schema: strict decoding (or pruning), defaults,
        validation. Other kinds pass unchanged."""
        self.warnings = []
        if res.schema is None:
            return obj
        version = res.group_version.rpartition("/")[2]
        unknown = crd.unknown_fields(res.schema, obj)
        if unknown and field_validation == "Strict":
            fields = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise ApiError(400, "BadRequest", f'{res.kind} in version "{version}" cannot be handled as a '
                                              f"{res.kind}: strict decoding error: {fields}")
        if unknown:
            obj = crd.prune(res.schema, obj)
            if field_validation == "Warn":
                self.warnings = [f'unknown field "{u}"' for u in unknown]
        obj = crd.apply_defaults(res.schema, obj)
        errors = crd.validate(res.schema, obj)
        if errors:
            name = obj["metadata"]["name"]
            text = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
            raise ApiError(422, "Invalid", f'{res.kind}.{res.group} "{name}" is invalid: {text}', {
                "name": name, "group": res.group, "kind": res.kind,
                "causes": [{"reason": e.reason, "message": e.message, "field": e.field} for e in errors]})
        return obj

    def _write(self, res: Resource, key: tuple[str, str, str], old: Obj, new: Obj, sub: str | None,
               field_validation: str = "Strict") -> Obj:
        if sub not in (None, "status") or (sub == "status" and not res.status):
            raise ApiError(404, "NotFound", f"{res.plural} has no subresource {sub!r}")
        if sub == "status":
            new = {**old, "status": new.get("status", {})}  # only status changes
        elif res.status:
            new["status"] = old.get("status", {})  # the main resource never changes status
            if not old.get("status"):
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        for fixed in ("uid", "creationTimestamp", "namespace", "name", "generation"):
            if fixed in old["metadata"]:
                meta[fixed] = old["metadata"][fixed]
        new["apiVersion"], new["kind"] = res.group_version, res.kind
        new = self._admit(res, new, field_validation)
        if new.get("spec") != old.get("spec"):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        return self._commit(res, key, new, "MODIFIED")

    def _commit(self, res: Resource, key: tuple[str, str, str], obj: Obj, kind: str) -> Obj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[key] = obj
        self._publish(Event(self.rv, res.rid, kind, copy.deepcopy(obj)))
        return copy.deepcopy(obj)

    def _publish(self, event: Event) -> None:
        if len(self.history) == self.history.maxlen:
            self.compacted_rv = self.history[0].rv  # the oldest event falls out of the window
        self.history.append(event)
        ns = event.obj["metadata"].get("namespace")
        for w in self.watchers:
            if w.rid == event.rid and (w.namespace is None or w.namespace == ns):
                w.queue.put_nowait(event)
