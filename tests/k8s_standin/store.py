"""The stand-in's memory: objects, one global resourceVersion counter, a bounded event history.

Behaves like etcd behind the kube-apiserver where gatelb depends on it:

- every write bumps ONE cluster-wide counter; objects carry it as ``metadata.resourceVersion``;
- a watch from version R replays the history after R, then follows live events; the history is a
  window (``history`` events), and a watch from a version older than the window gets 410 Gone, as
  after an etcd compaction (``compact()`` forces that in tests);
- a write naming a ``metadata.resourceVersion`` that is not the current one fails with 409 Conflict
  (optimistic concurrency); writes to the main resource never change ``status`` and writes to the
  ``status`` subresource change nothing else, for kinds that have one.

Pure Python, no I/O: ``server.py`` puts HTTP in front of it.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    group_version: str  # "v1", "discovery.k8s.io/v1"
    plural: str
    kind: str
    namespaced: bool
    status: bool  # has a status subresource

    @property
    def rid(self) -> str:
        return f"{self.group_version}/{self.plural}"


RESOURCES = [
    Resource("v1", "services", "Service", True, True),
    Resource("v1", "nodes", "Node", False, True),
    Resource("v1", "namespaces", "Namespace", False, True),
    Resource("v1", "events", "Event", True, False),
    Resource("discovery.k8s.io/v1", "endpointslices", "EndpointSlice", True, False),
    Resource("coordination.k8s.io/v1", "leases", "Lease", True, False),
    Resource("gatelb.io/v1alpha1", "ippools", "IPPool", False, True),
    Resource("gatelb.io/v1alpha1", "l4lbs", "L4LB", True, True),
]


class ApiError(Exception):
    """Becomes a `Status` object with this HTTP code and reason."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


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
    def __init__(self, history: int = 1000) -> None:
        self.resources = {r.rid: r for r in RESOURCES}
        self.rv = 1
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.history: deque[Event] = deque(maxlen=history)
        self.compacted_rv = 0  # events at or below this version are gone: older watches get 410
        self.watchers: list[Watcher] = []
        self._names = itertools.count(1)

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

    def create(self, res: Resource, namespace: str, body: Obj) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{next(self._names):05d}"
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        key = (res.rid, namespace if res.namespaced else "", name)
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{res.plural} "{name}" already exists')
        obj["apiVersion"], obj["kind"] = res.group_version, res.kind
        if res.namespaced:
            meta["namespace"] = namespace
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        meta.pop("resourceVersion", None)
        return self._commit(res, key, obj, "ADDED")

    def update(self, res: Resource, namespace: str, name: str, body: Obj, subresource: str | None) -> Obj:
        """PUT: replace the object (or only its status). A stale resourceVersion is 409."""
        key = self._key(res, namespace, name)
        old = self.get(res, key[1], name)
        self._check_version(res, name, old, body)
        return self._write(res, key, old, copy.deepcopy(body), subresource)

    def patch(self, res: Resource, namespace: str, name: str, patch: Obj, subresource: str | None) -> Obj:
        key = self._key(res, namespace, name)
        old = self.get(res, key[1], name)
        self._check_version(res, name, old, patch)
        return self._write(res, key, old, merge_patch(old, patch), subresource)

    def delete(self, res: Resource, namespace: str, name: str) -> Obj:
        key = self._key(res, namespace, name)
        obj = self.get(res, key[1], name)
        del self.objects[key]
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._publish(Event(self.rv, res.rid, "DELETED", obj))
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

    def _write(self, res: Resource, key: tuple[str, str, str], old: Obj, new: Obj, sub: str | None) -> Obj:
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
        if new.get("spec") != old.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        new["apiVersion"], new["kind"] = res.group_version, res.kind
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
