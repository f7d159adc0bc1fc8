"""List-then-watch caches of Kubernetes objects (client-go's reflector, reduced to what we need).

    list (resourceVersion R) -> watch from R -> stream ends -> watch again from the last version seen
                                             -> 410 Gone   -> list again

BOOKMARK events only move the version forward (so a resumed watch starts close to now and a
quiet resource does not fall out of the server's history). Errors back off and resume from the
last version; a failed list is retried. `synced` is set once the first list is in: the agent
programs nothing before every informer's is.

Changes are reported per object, after `objects` is updated: `on_change(kind_name, key, old, new)`
with old None for an added object and new None for a deleted one. A relist reports only the
difference against the cache: one call per object that appeared, disappeared or differs, none for
the unchanged ones (so a relist after a 410 over 10,000 unchanged Services reports nothing). Two
versions of an object are the same when their resourceVersions are equal (the API server bumps it
on every write); objects without one are compared whole. The same test drops a watch event that
repeats what the cache holds (ADDED after a resumed watch, for instance).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeAlias

from gatelb.sources.kubernetes.api import GRACE_S, ApiException, ApiProblem, Gone, Kind, Obj, Trouble, describe
from gatelb.sources.kubernetes.changes import same_version

log = logging.getLogger("gatelb.kube")

BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
WATCH_TIMEOUT_S = 300  # the server ends each watch after this; we resume at once
ABSENT_RETRY_S = 30.0  # an optional kind whose CRD is not installed: how often to look again

# (kind name, object key, old or None, new or None)
OnChange: TypeAlias = Callable[[str, str, Obj | None, Obj | None], None]


class Lister(Protocol):
    async def list(self, kind: Kind) -> tuple[list[Obj], str]: ...

    def watch(self, kind: Kind, resource_version: str, timeout_s: int) -> AsyncIterator[tuple[str, Obj]]: ...


def object_key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


class Informer:
    def __init__(self, api: Lister, kind: Kind, on_change: OnChange,
                 watch_timeout_s: int = WATCH_TIMEOUT_S, grace_s: float = GRACE_S,
                 slim: Callable[[Obj], Obj] | None = None) -> None:
        self.kind = kind
        # What of each object is kept (sources.kubernetes.slim), applied before it is cached or
        # reported; the resourceVersion must survive it (versions are compared by it).
        self._slim = slim
        # .problem: cannot list/watch this kind for longer than grace_s (readiness); .last_error
        self.trouble = Trouble(f"list/watch {kind.name}", grace_s)
        self.objects: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        self.resource_version: str | None = None
        self.counts = {"lists": 0, "watches": 0, "gone": 0, "errors": 0, "bookmarks": 0}
        self._api = api
        self._on_change = on_change
        self._timeout = watch_timeout_s
        self.absent = False  # an optional kind the API server does not know (its CRD is not installed)
        self.forbidden: ApiProblem | None = None  # a forbidden_ok kind we may not read (the last 403)
        self.absent_retry_s = ABSENT_RETRY_S

    @property
    def problem(self) -> str | None:
        """None unless list/watch of this kind has failed for longer than the grace period."""
        return self.trouble.problem

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if self.resource_version is None:
                    await self._relist()
                await self._watch_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except ApiException as err:
                if self.kind.forbidden_ok and err.status == 403:
                    if self.forbidden is None:
                        log.warning("not allowed to read, taken as empty", extra={"fields": {
                            "kind": self.kind.name, "error": str(describe(err)), "retry_every_s": self.absent_retry_s}})
                    self.forbidden = describe(err)
                    self._absent()
                    await asyncio.sleep(self.absent_retry_s)
                elif not (self.kind.optional and err.status == 404):
                    failures = await self._failed(err, failures)
                elif self.resource_version is not None:  # CRD deleted while we watched: list again
                    self.resource_version = None
                else:
                    self._absent()
                    await asyncio.sleep(self.absent_retry_s)
            except Gone:
                self.counts["gone"] += 1
                log.info("watch expired (410), relisting", extra={"fields": {"kind": self.kind.name}})
                self.resource_version = None
            except Exception as err:
                failures = await self._failed(err, failures)

    async def _failed(self, err: Exception, failures: int) -> int:
        self.counts["errors"] += 1
        delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
        self.trouble.failed(err, "list/watch failed, retrying", kind=self.kind.name, retry_in_s=delay)
        await asyncio.sleep(delay)
        return failures + 1

    def _absent(self) -> None:
        """An optional kind without its CRD: no objects (those we had are gone), and synced."""
        if not self.absent:
            log.info("kind not installed, not read", extra={"fields": {
                "kind": self.kind.name, "resource": f"{self.kind.plural}.{self.kind.group}/{self.kind.version}",
                "retry_every_s": self.absent_retry_s}})
        self.absent = True
        self.trouble.ok()
        previous, self.objects = self.objects, {}
        for key, gone in previous.items():
            self._on_change(self.kind.name, key, gone, None)
        self.synced.set()

    async def _relist(self) -> None:
        items, rv = await self._api.list(self.kind)
        if self._slim is not None:
            items = [self._slim(o) for o in items]
        previous, self.objects = self.objects, {object_key(o): o for o in items}
        self.resource_version = rv
        self.counts["lists"] += 1
        self.trouble.ok()
        self.forbidden = None
        if self.absent:
            log.info("kind installed, reading it", extra={"fields": {"kind": self.kind.name}})
            self.absent = False
        name = self.kind.name
        for key, gone in previous.items():
            if key not in self.objects:
                self._on_change(name, key, gone, None)
        for key, new in self.objects.items():
            old = previous.get(key)
            if not same_version(old, new):
                self._on_change(name, key, old, new)
        self.synced.set()  # after the reports: whoever sees it set has heard of every object

    async def _watch_once(self) -> None:
        assert self.resource_version is not None
        self.counts["watches"] += 1
        async for kind, obj in self._api.watch(self.kind, self.resource_version, self._timeout):
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            self.trouble.ok()
            if kind == "BOOKMARK":
                self.counts["bookmarks"] += 1
            elif kind in ("ADDED", "MODIFIED"):
                if self._slim is not None:
                    obj = self._slim(obj)
                key = object_key(obj)
                old = self.objects.get(key)
                self.objects[key] = obj
                if not same_version(old, obj):
                    self._on_change(self.kind.name, key, old, obj)
            elif kind == "DELETED":
                key = object_key(obj)
                old = self.objects.pop(key, None)
                if old is not None:  # the last version we had, which is what consumers indexed
                    self._on_change(self.kind.name, key, old, None)
            if rv:
                self.resource_version = str(rv)
