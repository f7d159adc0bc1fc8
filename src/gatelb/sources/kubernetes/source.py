"""Kubernetes as a source of desired state (for the one reconciler) and as a consumer of what was
synced (status write-back).

    informers -> ChangeTracker (dirty keys) -> collect(): Service IPAM for the dirty Services
    (leader only), per-object translation -> Contribution of what changed
    set(SyncedState) -> [leader] Service status, pool annotation, Events, L4LB status

Every gateway instance programs its own data path; only the Lease holder allocates Service
addresses and writes back. A follower serves the addresses the leader wrote into Service status
(those marked with our pool annotation), so two gateways agree without talking to each other.

Incremental from end to end: an informer event marks the objects it touches; a round translates
and re-allocates only those. Everything is translated again only at start, after a pool change
and when leadership changes hands.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable
from dataclasses import dataclass

from gatelb.ipam.services import AllocationError, Assignment, ServiceAllocator, ServicePool
from gatelb.model import (
    ConfigObject,
    IPAddress,
    IPPool,
    LoadBalancer,
    ObjectRef,
    SecretRef,
    SyncedState,
    ValidationError,
)
from gatelb.sources.base import AddressView, Contribution, Notify
from gatelb.sources.file.loader import CONFIG_KINDS, ConfigParser
from gatelb.sources.kubernetes import config as kconfig
from gatelb.sources.kubernetes import slim
from gatelb.sources.kubernetes.api import METALLB, WATCHED, ApiException, Kind, KubeApi, Obj, describe
from gatelb.sources.kubernetes.changes import IPADDRESSPOOLS, IPPOOLS, L4LBS, NODES, SERVICES, ChangeTracker
from gatelb.sources.kubernetes.events import EventLimiter
from gatelb.sources.kubernetes.informer import Informer
from gatelb.sources.kubernetes.lease import LeaseElector
from gatelb.sources.kubernetes.status import StatusWriter, event_body
from gatelb.sources.kubernetes.translate import (
    ANN_POOL_RECORD,
    IPADDRESSPOOL,
    IPPOOL,
    L4LB,
    SERVICE,
    Options,
    _dig,
    is_ours,
    labels_of,
    status_addresses,
)

log = logging.getLogger("gatelb")

WRITE_CONCURRENCY = 32  # status writes in flight at once (10,000 Services after a first sync)
INVALID = "InvalidConfiguration"  # the Event reason of an object with errors

# Custom resources that become configuration objects (model.ConfigObject: BGP peers, DNS
# providers, ...): informer kind name -> (what to watch, how to parse one object). The parser is
# the file loader's (sources.file.loader.CONFIG_KINDS) applied to the object as a document, after
# the Kubernetes-only fields (nodeSelectors, ...) are worked out (sources.kubernetes.config).
ConfigResource = tuple[Kind, ConfigParser]
CONFIG_RESOURCES: dict[str, ConfigResource] = {
    name: (kind, CONFIG_KINDS[doc_kind]) for name, (kind, doc_kind) in kconfig.KINDS.items()}


@dataclass(frozen=True)
class KubeSettings:
    options: Options
    lease_namespace: str = "gatelb-system"
    lease_name: str = "gatelb-ipam"
    identity: str = ""
    health: bool = True
    # MetalLB's objects are read from its own namespace only, as MetalLB does (names are unique there).
    metallb_namespace: str = "metallb-system"
    node: str = ""  # --node: the L2 election's identity (default: the host name)
    l2_lease_duration_s: int = 2


class KubeSource:
    def __init__(self, api: KubeApi, settings: KubeSettings) -> None:
        self._api = api
        self._options = settings.options
        self._tracker = ChangeTracker(settings.options)
        # Secrets a BGPPeer's passwordSecret may name: gatelb's namespace (gatelb.io peers are
        # cluster-scoped) and MetalLB's (its peers' own), watched so a new password re-renders FRR.
        self._secret_kinds = {f"secrets.{ns}": Kind(f"secrets.{ns}", "secrets", namespace=ns, forbidden_ok=True)
                              for ns in sorted({settings.lease_namespace, settings.metallb_namespace})}
        self._secret_namespace = settings.lease_namespace
        kinds = [*WATCHED, *(kind for kind, _ in CONFIG_RESOURCES.values()), *self._secret_kinds.values()]
        self._informers = {k.name: Informer(api, k, self._on_event, slim=slim.for_kind(k.name)) for k in kinds}
        self._metallb = {k.name for k in kinds if k.group == METALLB}
        self._metallb_ns = settings.metallb_namespace
        self._config_objects: dict[str, dict[str, Obj]] = {name: {} for name in CONFIG_RESOURCES}
        self._config_dirty = False  # a configuration object, or what one depends on (node labels), changed
        self._config_given: dict[ObjectRef, ConfigObject] = {}
        self._config_last: dict[tuple[str, str], ConfigObject] = {}  # (informer, key) -> its last good object
        self._config_bad: dict[ObjectRef, tuple[ValidationError, ...]] = {}  # (kind, informer key) -> errors
        self._config_raw: dict[ObjectRef, Obj] = {}
        identity = settings.identity or f"{socket.gethostname()}-{os.getpid()}"
        self._elector = LeaseElector(api, settings.lease_namespace, settings.lease_name, identity,
                                     self._on_leadership)
        self._writer = StatusWriter(api)
        self._notify: Notify | None = None
        self._first = True
        self._leader_was: bool | None = None
        self._pools: list[ServicePool] = []
        self._pool_errors: tuple[ValidationError, ...] = ()
        self._alloc: ServiceAllocator | None = None  # leader only
        self._assigned: dict[str, Assignment] = {}  # Service key -> its addresses (leader or status)
        self._failures: dict[str, AllocationError] = {}
        self._lbs_of: dict[ObjectRef, tuple[str, ...]] = {}  # object -> the load balancers it gave
        self._svc_names: set[str] = set()  # names of every Service load balancer we gave
        self._errors_of: dict[ObjectRef, tuple[ValidationError, ...]] = {}
        self._to_write: set[ObjectRef] = set()  # objects whose status may need writing
        self._state: SyncedState | None = None
        self._wake_writer = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._limiter = EventLimiter()

    # -- Source ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return "kubernetes"

    @property
    def strict(self) -> bool:
        return False

    @property
    def synced(self) -> bool:
        return self._elector.decided.is_set() and all(inf.synced.is_set() for inf in self._informers.values())

    @property
    def is_leader(self) -> bool:
        return self._elector.is_leader

    @property
    def tracker(self) -> ChangeTracker:
        return self._tracker

    def _on_event(self, kind: str, key: str, old: Obj | None, new: Obj | None) -> None:
        if kind in self._metallb and key.partition("/")[0] != self._metallb_ns:
            return
        if kind in self._secret_kinds:
            self._config_dirty = True  # a peer's password may have changed (few, re-parsed whole)
        elif kind in self._config_objects:
            objects = self._config_objects[kind]
            if new is None:
                objects.pop(key, None)
            else:
                objects[key] = new
            self._config_dirty = True
        else:
            if kind == NODES and labels_of(old) != labels_of(new):
                self._config_dirty = True  # nodeSelectors read Node labels
            self._tracker.on_change(kind, key, old, new)
        if self._notify is not None:
            self._notify(kind)

    def _on_leadership(self, leader: bool) -> None:
        if self._notify is not None:
            self._notify("leader")

    async def run(self, notify: Notify) -> None:
        self._notify = notify
        async with asyncio.TaskGroup() as group:
            for name, inf in self._informers.items():
                group.create_task(inf.run(), name=f"informer-{name}")
            group.create_task(self._elector.run(), name="lease")
            group.create_task(self._write_loop(), name="status-write-back")
            group.create_task(self._announce_synced(), name="informer-sync")

    async def _announce_synced(self) -> None:
        await asyncio.gather(self._elector.decided.wait(), *(inf.synced.wait() for inf in self._informers.values()))
        if self._notify is not None:
            self._notify("synced")

    def collect(self, view: AddressView) -> Contribution | None:
        dirty = self._tracker.take()
        leader = self._elector.is_leader
        written = dirty.written
        if leader and written:
            # Only what the write-back owns changed (mostly our own writes coming back): nothing to
            # translate. The writer compares each with what it should say and rewrites what differs.
            self._to_write.update(ObjectRef(SERVICE, k) for k in written)
            self._wake_writer.set()
            written = frozenset()
            dirty = dataclasses.replace(dirty, written=written)
        everything = self._first or dirty.pools_changed or leader != self._leader_was
        config, config_errors = self._collect_config(everything)
        if dirty.empty and not everything and not config and not config_errors:
            return None
        pools: tuple[IPPool, ...] | None = None
        if self._first or dirty.pools_changed:
            self._pools, pool_errors = self._tracker.pools()
            self._pool_errors = tuple(pool_errors)
            pools = tuple(p.pool for p in self._pools)
        if everything:
            services = sorted(set(self._tracker.objects(SERVICES)) | {
                ref.key for ref in self._lbs_of if ref.kind == SERVICE})
            l4lbs = sorted(set(self._tracker.objects(L4LBS)) | {ref.key for ref in self._lbs_of if ref.kind == L4LB})
        else:
            # Services that got no address are tried again in every round (they are few): one
            # of this round's changes may have freed what they wait for.
            # A follower serves what the leader wrote into status: `written` is news for it.
            services = sorted(set(self._tracker.service_keys(dirty)) | set(self._failures) | written)
            l4lbs = sorted(dirty.l4lbs)
        changes: dict[str, LoadBalancer | None] = {}
        origins: dict[str, ObjectRef] = {}
        errors: dict[ObjectRef, tuple[ValidationError, ...]] = {}
        request_errors = self._allocate(services, view, leader, rebuild=everything)
        for key in services:
            addresses = self._assigned[key].addresses if key in self._assigned else ()
            t = self._tracker.translate_service(key, addresses)
            self._take_result(t.origin, t.load_balancers, (*request_errors.get(key, ()), *t.errors),
                              changes, origins, errors)
        recorded: dict[str, IPAddress] = {}
        for key in l4lbs:
            t = self._tracker.translate_l4lb(key)
            lbs = self._l4lb_as(leader, key, t.load_balancers, recorded)
            self._take_result(t.origin, lbs, t.errors, changes, origins, errors)
        if pools is not None:
            for ref in [r for r in self._errors_of if r.kind in (IPPOOL, IPADDRESSPOOL)]:
                errors[ref] = ()
            for err in self._pool_errors:
                ref = ObjectRef(err.kind, err.name)
                errors[ref] = (*errors.get(ref, ()), err)
        errors.update(config_errors)
        self._first = False
        self._leader_was = leader
        self._to_write.update(ObjectRef(SERVICE, k) for k in services)
        self._to_write.update(ObjectRef(L4LB, k) for k in l4lbs)
        for ref, errs in errors.items():
            if errs:
                self._errors_of[ref] = errs
            else:
                self._errors_of.pop(ref, None)
        return Contribution(changes, pools, errors, origins, config=config, recorded=recorded)

    def _l4lb_as(self, leader: bool, key: str, lbs: tuple[LoadBalancer, ...],
                 recorded: dict[str, IPAddress]) -> tuple[LoadBalancer, ...]:
        """An L4LB object as this instance serves it. Only the leader allocates (as for Services):
        it gets the address the object's status names back when that is still free (a restart
        with a new state directory, another leader). A follower serves the address the leader
        wrote into status, and nothing before that, so all gateways agree."""
        obj = self._tracker.objects(L4LBS).get(key)
        written = _status_frontend(obj) if obj is not None else None
        if leader:
            if written is not None:
                recorded.update((lb.name, written) for lb in lbs)
            return lbs
        if written is None:
            return tuple(lb for lb in lbs if lb.frontend_ip is not None)
        return tuple(lb if lb.frontend_ip is not None else dataclasses.replace(lb, frontend_ip=written)
                     for lb in lbs)

    def _collect_config(self, everything: bool) -> tuple[dict[ObjectRef, ConfigObject | None],
                                                         dict[ObjectRef, tuple[ValidationError, ...]]]:
        """Every configuration object again when one of them (or a Node's labels, or a pool) changed:
        they are few, and one may depend on another (a name given by both a gatelb.io and a
        metallb.io object: the gatelb.io one wins). Returns what to give (None: gone) and the errors
        (empty: fixed). An invalid new version of an object keeps its last good one in force, as a
        bad file keeps the last good file: the error is reported and nothing else changes."""
        if not (everything or self._config_dirty):
            return {}, {}
        self._config_dirty = False
        nodes = self._tracker.objects(NODES)
        pool_objects = [*self._tracker.objects(IPPOOLS).values(), *self._tracker.objects(IPADDRESSPOOLS).values()]
        secrets = {key: obj for name in self._secret_kinds for key, obj in self._informers[name].objects.items()}
        unreadable = {str(self._secret_kinds[name].namespace): str(inf.forbidden)
                      for name in self._secret_kinds if (inf := self._informers[name]).forbidden is not None}
        ctx = kconfig.Context({name: labels_of(n) for name, n in nodes.items()},
                              {str(_dig(p, "metadata", "name")): labels_of(p) for p in pool_objects},
                              secrets, self._secret_namespace, unreadable)
        given: dict[ObjectRef, ConfigObject] = {}
        by: dict[ObjectRef, str] = {}
        bad: dict[ObjectRef, tuple[ValidationError, ...]] = {}
        raw_of: dict[ObjectRef, Obj] = {}
        seen: set[tuple[str, str]] = set()
        for name in sorted(self._config_objects):  # gatelb.io's kinds sort before metallb.*
            kind, parse = CONFIG_RESOURCES[name]
            for key, raw in sorted(self._config_objects[name].items()):
                seen.add((name, key))
                doc_kind = str(raw.get("kind"))
                here = ObjectRef(doc_kind, key)
                raw_of[here] = raw
                parsed = kconfig.parse(raw, ctx, parse)
                obj, problems = parsed.obj, list(parsed.problems)
                if obj is not None and obj.ref in by:
                    problems, obj = [("metadata.name", f"{obj.ref} is already given by {by[obj.ref]}")], None
                if problems:
                    bad[here] = tuple(ValidationError(doc_kind, key, path, text) for path, text in problems)
                    kept = self._config_last.get((name, key))
                    obj = kept if kept is not None and kept.ref not in by else None
                elif obj is not None:
                    self._config_last[(name, key)] = obj
                else:
                    self._config_last.pop((name, key), None)  # valid, applies nowhere (nodeSelectors)
                if obj is not None:
                    given[obj.ref], by[obj.ref] = obj, f"{kind.group} {doc_kind} {key}"
        for gone in self._config_last.keys() - seen:
            del self._config_last[gone]
        changes: dict[ObjectRef, ConfigObject | None] = {
            **{ref: None for ref in self._config_given if ref not in given}, **given}
        errors = {**{ref: () for ref in self._config_bad if ref not in bad}, **bad}
        for ref in self._config_bad.keys() - bad.keys():  # fixed: the same problem later is news again
            self._writer.forget(ref.kind, ref.key, INVALID)
        self._config_given, self._config_bad, self._config_raw = given, bad, raw_of
        return changes, errors

    def commit(self, contribution: Contribution) -> None:
        """Nothing to do: a non-strict source's contribution is always taken (errors stay with
        their objects), so collect() already moved our bookkeeping forward."""

    # -- Service IPAM (leader) ---------------------------------------------------------------

    def _all_pools(self, view: AddressView) -> list[ServicePool]:
        """Our IPPool objects, and the pools of other sources (a standalone file) after them."""
        mine = {p.name for p in self._pools}
        return self._pools + [ServicePool(p) for p in view.pools if p.name not in mine]

    def _allocate(self, keys: list[str], view: AddressView, leader: bool, rebuild: bool) -> dict[
            str, tuple[ValidationError, ...]]:
        """Addresses of the Services `keys`; returns request errors by Service key."""
        request_errors: dict[str, tuple[ValidationError, ...]] = {}
        if not leader:
            self._alloc = None
            self._failures.clear()
            for key in keys:
                svc = self._tracker.service(key)
                annotated = svc is not None and _dig(svc, "metadata", "annotations", ANN_POOL_RECORD) is not None
                if svc is not None and annotated and is_ours(svc, self._options) and status_addresses(svc):
                    self._assigned[key] = Assignment(status_addresses(svc), ())
                else:
                    self._assigned.pop(key, None)
            return request_errors

        def reserved(ip: IPAddress) -> str | None:  # held by a load balancer that is not one of our Services'
            return next((name for name in sorted(view.holders(ip)) if name not in self._svc_names), None)

        if rebuild or self._alloc is None:
            self._alloc = ServiceAllocator(self._all_pools(view), reserved=reserved)
            self._failures.clear()
        alloc = self._alloc
        pending = []
        for key in keys:
            req, errs = self._tracker.service_request(key)
            if errs:
                request_errors[key] = tuple(errs)
            held = self._assigned.get(key)
            current = held.addresses if held is not None else ()
            svc = self._tracker.service(key)
            if not current and svc is not None:
                current = status_addresses(svc)  # start-up or a new leader: what status says
            if req is None:
                alloc.release(key)
                self._assigned.pop(key, None)
                self._failures.pop(key, None)
            elif current and alloc.keep(req, current):
                self._done(key, alloc)
            else:
                pending.append(req)
        # Explicit requests before automatic ones, so an automatic pick never takes a requested
        # address (allocate_services' order).
        for req in sorted(pending, key=lambda r: (not r.requested, r.key)):
            try:
                alloc.assign(req)
                self._done(req.key, alloc)
            except AllocationError as err:
                alloc.release(req.key)
                self._assigned.pop(req.key, None)
                self._failures[req.key] = err
        return request_errors

    def _done(self, key: str, alloc: ServiceAllocator) -> None:
        assignment = alloc.assignment(key)
        if assignment is not None:
            self._assigned[key] = assignment
        self._failures.pop(key, None)

    def _take_result(self, origin: ObjectRef, lbs: tuple[LoadBalancer, ...], errs: tuple[ValidationError, ...],
                     changes: dict[str, LoadBalancer | None], origins: dict[str, ObjectRef],
                     errors: dict[ObjectRef, tuple[ValidationError, ...]]) -> None:
        before = self._lbs_of.get(origin, ())
        names = tuple(lb.name for lb in lbs)
        for name in before:
            if name not in names:
                changes[name] = None
                self._svc_names.discard(name)
        for lb in lbs:
            changes[lb.name] = lb
            origins[lb.name] = origin
            if origin.kind == SERVICE:
                self._svc_names.add(lb.name)
        if names:
            self._lbs_of[origin] = names
        else:
            self._lbs_of.pop(origin, None)
        if errs or origin in self._errors_of:
            errors[origin] = errs

    # -- consumer: status write-back ----------------------------------------------------------

    def set(self, state: SyncedState) -> None:
        self._state = state
        if not self._elector.is_leader:
            self._to_write.clear()
            return
        if state.changed is None:
            self._to_write.update(ObjectRef(SERVICE, k) for k in self._tracker.objects(SERVICES))
            self._to_write.update(ObjectRef(L4LB, k) for k in self._tracker.objects(L4LBS))
        else:
            self._to_write.update(state.origins[n] for n in state.changed if n in state.origins)
        self._to_write.update(r for r in self._errors_of if r.kind in (SERVICE, IPPOOL, IPADDRESSPOOL))
        self._to_write.update(self._config_bad)
        self._wake_writer.set()

    async def _write_loop(self) -> None:
        gate = asyncio.Semaphore(WRITE_CONCURRENCY)
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            state, batch = self._state, self._to_write
            self._to_write = set()
            if state is None or not self._elector.is_leader:
                continue

            async def guarded(write: Awaitable[object]) -> None:
                async with gate:
                    await self._guard(write)

            await asyncio.gather(*(guarded(w) for ref in sorted(batch, key=str) if (w := self._write(ref, state))))

    def _write(self, ref: ObjectRef, state: SyncedState) -> Awaitable[object] | None:
        if ref.kind == SERVICE:
            svc = self._tracker.service(ref.key)
            return None if svc is None else self._write_service(ref, svc, state)
        if ref.kind == L4LB:
            obj = self._tracker.objects(L4LBS).get(ref.key)
            return None if obj is None else self._write_l4lb(ref, obj, state)
        if ref.kind in (IPPOOL, IPADDRESSPOOL):
            obj = self._tracker.objects(IPPOOLS if ref.kind == IPPOOL else IPADDRESSPOOLS).get(ref.key)
            errs = self._errors_of.get(ref, ())
            if obj is None or not errs:
                return None
            return self._writer.event(obj, ref.kind, "Warning", INVALID, "; ".join(map(str, errs)))
        if ref in self._config_bad:
            return self._writer.event(self._config_raw[ref], ref.kind, "Warning", INVALID,
                                      "; ".join(map(str, self._config_bad[ref])))
        return None

    async def _write_service(self, ref: ObjectRef, svc: Obj, state: SyncedState) -> None:
        ours = is_ours(svc, self._options)
        served = any(n in state.services for n in self._lbs_of.get(ref, ()))
        if ours and served and ref.key in self._assigned:
            a = self._assigned[ref.key]
            await self._writer.service_served(svc, a.addresses, a.pools)
        elif ours and ref.key in self._failures:
            err = self._failures[ref.key]
            await self._writer.event(svc, SERVICE, "Warning", "AllocationFailed",
                                     f"{err.reason}: {err.message}")
            await self._writer.service_released(svc)
        elif not ours and _dig(svc, "metadata", "annotations", ANN_POOL_RECORD) is not None:
            await self._writer.service_released(svc)
        errs = state.errors.get(ref, ())
        if errs:
            await self._writer.event(svc, SERVICE, "Warning", "InvalidConfiguration",
                                     "; ".join(str(e) for e in errs))

    async def _write_l4lb(self, ref: ObjectRef, obj: Obj, state: SyncedState) -> None:
        names = self._lbs_of.get(ref, ())
        problems = [str(e) for e in state.errors.get(ref, ())]
        name = names[0] if names else None
        lb = state.load_balancers.get(name) if name else None
        ip = state.addresses.get(name) if name else None
        if problems:
            await self._writer.l4lb_status(obj, "Error", "; ".join(problems), None)
        elif lb is not None and not lb.active:
            await self._writer.l4lb_status(obj, "Disabled", "spec.state is disable", ip)
        elif lb is not None and ip is not None:
            svc = state.services.get(lb.name)
            up = len(svc.backends) if svc else 0
            await self._writer.l4lb_status(obj, "Active",
                                           f"{up}/{len(lb.backends)} backends serving", ip)

    @staticmethod
    async def _guard(write: Awaitable[object]) -> None:
        """One failed write must not stop the others. The StatusWriter already logs refused
        writes (by cause, once); this catches what it lets through (a lost connection)."""
        try:
            await write
        except Exception as err:
            log.warning("write-back failed", extra={"fields": {"event": "write-back-failed",
                                                                "error": str(describe(err))}})

    # -- for the DNS updater: Events on the objects whose records conflict, TSIG keys in Secrets --

    def report(self, ref: ObjectRef, reason: str, message: str) -> None:
        """A Warning Event on the Service or L4LB `ref` (leader only, like every write-back)."""
        if not self._elector.is_leader:
            return
        if ref.kind == SERVICE:
            obj = self._tracker.service(ref.key)
        elif ref.kind == L4LB:
            obj = self._tracker.objects(L4LBS).get(ref.key)
        else:
            return
        if obj is not None:
            task = asyncio.get_running_loop().create_task(
                self._guard(self._writer.event(obj, ref.kind, "Warning", reason, message)))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def announce_event(self, lbs: tuple[str, ...], event_type: str, reason: str, message: str) -> None:
        """An Event about announcements (announce/notes.py) on the Services / L4LBs that gave the
        load balancers `lbs`. Every instance posts its own (each says what it announces), within
        the limiter's rates; leader or not."""
        state = self._state
        if state is None:
            return
        refs = sorted({state.origins[n] for n in lbs if n in state.origins}, key=str)
        for ref in refs:
            if ref.kind == SERVICE:
                obj = self._tracker.service(ref.key)
            elif ref.kind == L4LB:
                obj = self._tracker.objects(L4LBS).get(ref.key)
            else:
                continue
            if obj is None or not self._limiter.allow(str(ref), reason, message):
                continue
            meta = obj.get("metadata") or {}
            body = event_body(obj, ref.kind, event_type, reason, message)
            task = asyncio.get_running_loop().create_task(
                self._guard(self._api.create_event(str(meta.get("namespace") or "default"), body)))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def read_secret(self, ref: SecretRef) -> str:
        """The value of one key of a Secret, decoded (Secrets hold base64 of the bytes)."""
        try:
            secret = await self._api.read_secret(ref.namespace, ref.name)
        except ApiException as err:
            raise ValueError(f"spec.rfc2136.tsigSecretRef: Secret {ref.namespace}/{ref.name}: "
                             f"{describe(err)}") from None
        data = secret.get("data") or {}
        if ref.key not in data:
            raise ValueError(f"spec.rfc2136.tsigSecretRef: Secret {ref.namespace}/{ref.name} has no key "
                             f"{ref.key!r} (has: {', '.join(sorted(data)) or 'none'})")
        try:
            return base64.b64decode(data[ref.key]).decode()
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"spec.rfc2136.tsigSecretRef: Secret {ref.namespace}/{ref.name} key {ref.key}: "
                             "not text") from None

    # -- facts for `gatelb status` and readiness ----------------------------------------------

    def info(self) -> Obj:
        return {
            "leader": self._elector.is_leader,
            "informers": {name: inf.synced.is_set() for name, inf in self._informers.items()},
            "notInstalled": sorted(name for name, inf in self._informers.items() if inf.absent),
            "problems": [p for p in (getattr(self._elector, "problem", None),) if p],
        }


def _status_frontend(obj: Obj) -> IPAddress | None:
    text = _dig(obj, "status", "frontendIP")
    try:
        return ipaddress.ip_address(text) if isinstance(text, str) and text else None
    except ValueError:
        return None  # someone else's garbage: not an address we wrote
