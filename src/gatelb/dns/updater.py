"""The DNS consumer: `DNSUpdater.set(SyncedState)` after every sync, and its own task that keeps
every DNSProvider's zone in line with the load balancers.

set() only stores the state and wakes the task, so a DNS server that is down, slow or refusing
never delays the reconciler or the data path. The task plans against what it knows it owns
(gatelb.dns.planner), sends one UPDATE per zone and change set, and on failure retries with
backoff (BACKOFF_MIN_S doubling to BACKOFF_MAX_S) until the server takes it.

What we own is learnt by reading back (a query per record set and its registry TXT) the first
time a name comes up, for every name we have written before (the names are kept in
`<state-dir>/dns.json`, so deletes need no zone transfer after a restart either), and every
`repairInterval` for all of them: that read repairs records changed behind our back.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from gatelb.dns.planner import Change, ChangeSet, Conflict, Op, Owned, plan
from gatelb.dns.records import Key, Problem, RRSet, Wanted, desired_records, owner_of, txt_name
from gatelb.dns.rfc2136 import Client, DNSError, PrerequisiteFailed, txt_of
from gatelb.model import DNSProvider, ObjectRef, SecretRef, SyncedState

log = logging.getLogger("gatelb")

BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 10.0
READ_CONCURRENCY = 64
# A DNS message carries at most 64 KiB: a change (record set, TXT, prerequisites) of a typical
# name takes about 250 bytes, so larger change sets go as several messages of this many changes.
CHANGES_PER_MESSAGE = 150

Report = Callable[[ObjectRef, str, str], None]  # (object, reason, message): a Kubernetes Event
SecretLookup = Callable[[SecretRef], Awaitable[str]]
KeySet = set[Key]


def _event(level: int, msg: str, **fields: Any) -> None:
    log.log(level, msg, extra={"fields": {"event": msg, **fields}})


class ZoneSync:
    """One DNSProvider's zone: the record sets we own there and the ones that are someone else's."""

    def __init__(self, provider: DNSProvider, client: Client, remembered: Iterable[Key] = ()) -> None:
        self.provider = provider
        self.client = client
        self.owned: dict[Key, Owned] = {}
        self.foreign: dict[Key, str] = {}
        self.seen: set[Key] = set()  # read since the last full read
        self.remembered = set(remembered)  # written by an earlier run: read at the first full read
        self.next_repair = 0.0
        self.retry_at = 0.0
        self.backoff = BACKOFF_MIN_S
        self.error: str | None = None
        self.last_ok: float | None = None
        self.pending = 0
        self.conflicts: tuple[Conflict, ...] = ()
        self.updates = 0

    @property
    def zone(self) -> str:
        return self.provider.zone

    async def read(self, keys: Iterable[Key]) -> None:
        gate = asyncio.Semaphore(READ_CONCURRENCY)

        async def one(key: Key) -> None:
            async with gate:
                await self._read_one(key)

        await asyncio.gather(*(one(k) for k in sorted(keys)))

    async def _read_one(self, key: Key) -> None:
        name, rtype = key
        owner = self.provider.owner_id
        q = self.client.query
        (ttl, values), (_, registry) = await asyncio.gather(q(name, rtype), q(txt_name(key), "TXT"))
        rrset = RRSet(name, rtype, tuple(sorted(str(v) for v in values)), ttl) if values else None
        self.owned.pop(key, None)
        self.foreign.pop(key, None)
        self.seen.add(key)
        texts = [txt_of(r) for r in registry]
        if texts:
            mine = [t for t in texts if owner_of(t) == owner]
            if mine and len(texts) == 1:
                self.owned[key] = Owned(rrset, (txt_name(key), mine[0]))
            else:
                others = sorted({o for t in texts if (o := owner_of(t)) and o != owner})
                self.foreign[key] = (f"owned by {', '.join(others)} (registry {txt_name(key)} TXT)" if others
                                     else f"{txt_name(key)} TXT exists and is not our ownership record")
            return
        _, legacy = await q(name, "TXT")  # external-dns before v0.12: the TXT at the record's own name
        mine = [t for t in (txt_of(r) for r in legacy) if owner_of(t) == owner]
        if mine and len(legacy) == 1:
            self.owned[key] = Owned(rrset, (name, mine[0]))
        elif rrset is not None:
            self.foreign[key] = "exists without our ownership record"
        else:
            _, cname = await q(name, "CNAME")
            if cname:
                self.foreign[key] = "a CNAME exists at this name"

    async def sync(self, desired: Mapping[Key, Wanted], full: bool) -> ChangeSet:
        if full:
            await self.read(desired.keys() | self.owned.keys() | self.remembered)
            self.remembered = set()
        else:
            await self.read(k for k in desired if k not in self.seen)
        cs = plan(self.zone, self.provider.owner_id, desired, self.owned, self.foreign)
        self.pending = len(cs.changes)
        if cs.changes:
            failed = await self._apply(cs)
            if failed:  # what the server holds is not what we read: read again, plan again
                await self.read(failed)
                cs = plan(self.zone, self.provider.owner_id, desired, self.owned, self.foreign)
                self.pending = len(cs.changes)
                if cs.changes:
                    await self._apply(cs, split=False)
        self.pending = 0
        self.conflicts = cs.conflicts
        return cs

    async def _apply(self, cs: ChangeSet, split: bool = True) -> list[Key]:
        """Send the change set (one message, or one per CHANGES_PER_MESSAGE). Returns the keys
        whose prerequisites failed."""
        failed: list[Key] = []
        for i in range(0, len(cs.changes), CHANGES_PER_MESSAGE):
            failed += await self._apply_message(cs.changes[i:i + CHANGES_PER_MESSAGE], split)
        return failed

    async def _apply_message(self, changes: tuple[Change, ...], split: bool) -> list[Key]:
        """On a failed prerequisite, each change alone (the message is all or nothing), so one
        foreign record costs only its own change."""
        try:
            server = await self.client.update(changes)
            self._applied(changes, server)
            return []
        except PrerequisiteFailed:
            if not split or len(changes) == 1:
                return [c.key for c in changes]
        failed = []
        for change in changes:
            try:
                server = await self.client.update([change])
                self._applied([change], server)
            except PrerequisiteFailed:
                failed.append(change.key)
        return failed

    def _applied(self, changes: Iterable[Change], server: str) -> None:
        done = list(changes)
        for c in done:
            if c.op is Op.DELETE:
                self.owned.pop(c.key, None)
            else:
                assert c.txt is not None  # create and update always carry the registry text
                self.owned[c.key] = Owned(c.new, (txt_name(c.key), c.txt))
                self.foreign.pop(c.key, None)
        self.updates += 1
        _event(logging.INFO, "dns-update", provider=self.provider.name, zone=self.zone, server=server,
               changes=len(done), sample=[str(c) for c in done[:5]])


class DNSUpdater:
    """Consumer of SyncedState; `run()` is its task. Idle while no DNSProvider is configured.
    The constructor does no I/O."""

    def __init__(self, state_file: Path | None = None, report: Report | None = None,
                 secrets: SecretLookup | None = None) -> None:
        self._state_file = state_file
        self._report = report
        self._secrets = secrets
        self._state: SyncedState | None = None
        self._wake = asyncio.Event()
        self._zones: dict[str, ZoneSync] = {}
        self._remembered: dict[str, KeySet] = {}
        self._saved: dict[str, list[list[str]]] = {}
        self._problems: tuple[Problem, ...] = ()
        self._setup_errors: dict[str, str] = {}
        self._reported: set[str] = set()
        self.rounds = 0

    def set(self, state: SyncedState) -> None:
        self._state = state
        self._wake.set()

    # -- the task -------------------------------------------------------------------------------

    async def run(self) -> None:
        self._remembered = await asyncio.to_thread(self._load)
        while True:
            timeout = self._next_deadline() - time.monotonic()
            if timeout > 0:
                # not wait_for: in Python 3.11 it can lose a cancellation (a stop never ends)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            self._wake.clear()
            if self._state is not None:
                await self.round(self._state)

    def _next_deadline(self) -> float:
        deadlines = [z.retry_at if z.error else z.next_repair for z in self._zones.values()]
        if self._setup_errors:
            deadlines.append(time.monotonic() + BACKOFF_MAX_S)
        return min(deadlines, default=time.monotonic() + 3600)

    async def round(self, state: SyncedState) -> None:
        self.rounds += 1
        providers = state.config_of(DNSProvider)
        if not providers and not self._zones and not self._setup_errors:
            return  # no DNS configured: nothing to compute on any sync
        desired, problems = desired_records(state, providers)
        self._set_problems(problems)
        for gone in self._zones.keys() - providers.keys():
            # Records stay as they are: removing a provider is not asking for its names to vanish.
            _event(logging.INFO, "dns-provider-removed", provider=gone, zone=self._zones.pop(gone).zone)
        now = time.monotonic()
        for name in sorted(providers):
            zs = self._zones.get(name)
            if zs is None or zs.provider != providers[name]:
                zs = await self._open(providers[name])
                if zs is None:
                    continue
            if zs.error and now < zs.retry_at:
                continue  # backing off; the deadline wakes us
            try:
                cs = await zs.sync(desired.get(name, {}), full=now >= zs.next_repair)
            except DNSError as err:
                self._failed(zs, str(err))
                continue
            if zs.error:
                _event(logging.INFO, "dns-recovered", provider=name, zone=zs.zone)
            zs.error, zs.backoff, zs.last_ok = None, BACKOFF_MIN_S, time.time()
            if now >= zs.next_repair:
                zs.next_repair = now + zs.provider.repair_interval_s
            self._report_conflicts(zs, cs.conflicts)
        await self._save()

    def _failed(self, zs: ZoneSync, error: str) -> None:
        zs.retry_at = time.monotonic() + zs.backoff
        _event(logging.ERROR, "dns-update-failed", provider=zs.provider.name, zone=zs.zone, error=error,
               retry_in_s=zs.backoff, pending=zs.pending)
        zs.backoff = min(zs.backoff * 2, BACKOFF_MAX_S)
        zs.error = error

    async def _open(self, p: DNSProvider) -> ZoneSync | None:
        try:
            secret = await self._secret(p)
        except (OSError, ValueError, DNSError) as err:
            text = f"DNSProvider {p.name}: {err}"
            if self._setup_errors.get(p.name) != text:
                _event(logging.ERROR, "dns-provider-invalid", provider=p.name, error=text)
            self._setup_errors[p.name] = text
            self._zones.pop(p.name, None)
            return None
        self._setup_errors.pop(p.name, None)
        client = Client(p.zone, p.servers, p.tsig_key_name, p.tsig_algorithm, secret, p.timeout_s)
        old = self._zones.get(p.name)
        remembered = self._remembered.pop(p.zone, set()) | (set(old.owned) if old else set())
        zs = self._zones[p.name] = ZoneSync(p, client, remembered)
        return zs

    async def _secret(self, p: DNSProvider) -> str:
        if p.tsig_secret is not None:
            return p.tsig_secret
        if p.tsig_secret_file is not None:
            field, text = "spec.rfc2136.tsigSecretFile", (await asyncio.to_thread(Path(p.tsig_secret_file).read_text))
        elif p.tsig_secret_ref is not None:
            ref = p.tsig_secret_ref
            if self._secrets is None:
                raise ValueError("spec.rfc2136.tsigSecretRef: only in Kubernetes mode (use tsigSecretFile)")
            field, text = "spec.rfc2136.tsigSecretRef", await self._secrets(ref)
        else:
            raise ValueError("spec.rfc2136.tsigSecret: no secret")
        secret = text.strip()
        try:
            if len(base64.b64decode(secret, validate=True)) < 8:
                raise ValueError
        except (binascii.Error, ValueError):
            raise ValueError(f"{field}: malformed key (expected the base64 secret tsig-keygen prints)") from None
        return secret

    # -- reporting ------------------------------------------------------------------------------

    def _set_problems(self, problems: list[Problem]) -> None:
        fresh = tuple(problems)
        if fresh != self._problems:
            for p in fresh:
                if p not in self._problems:
                    _event(logging.WARNING, "dns-problem", error=p.text)
                    if self._report is not None and p.origin is not None:
                        self._report(p.origin, "DNSNoZone", p.text)
        self._problems = fresh

    def _report_conflicts(self, zs: ZoneSync, conflicts: tuple[Conflict, ...]) -> None:
        for c in conflicts:
            text = f"DNSProvider {zs.provider.name}: {c}"
            if text in self._reported:
                continue
            self._reported.add(text)
            _event(logging.WARNING, "dns-conflict", provider=zs.provider.name, zone=zs.zone,
                   name=c.key[0], type=c.key[1], reason=c.reason, objects=[str(o) for o in c.origins])
            if self._report is not None:
                for origin in c.origins:
                    self._report(origin, "DNSConflict", text)
        current = {f"DNSProvider {zs.provider.name}: {c}" for c in conflicts}
        prefix = f"DNSProvider {zs.provider.name}: "
        self._reported = {t for t in self._reported if not t.startswith(prefix) or t in current}

    def info(self) -> dict[str, Any]:
        """For the state record (`gatelb status`): empty when no DNSProvider is configured."""
        if not self._zones and not self._setup_errors:
            return {}
        providers = {name: {"zone": zs.zone, "servers": [f"{h}:{p}" for h, p in zs.provider.servers],
                            "ownerID": zs.provider.owner_id, "records": len(zs.owned),
                            "inSync": zs.error is None and zs.last_ok is not None, "pending": zs.pending,
                            "lastError": zs.error, "lastSuccess": zs.last_ok, "updates": zs.updates}
                     for name, zs in sorted(self._zones.items())}
        for name, text in sorted(self._setup_errors.items()):
            providers[name] = {"inSync": False, "lastError": text}
        conflicts = [f"DNSProvider {n}: {c}" for n, zs in sorted(self._zones.items()) for c in zs.conflicts]
        return {"providers": providers, "conflicts": conflicts, "problems": [p.text for p in self._problems]}

    # -- names we wrote, across restarts --------------------------------------------------------

    def _load(self) -> dict[str, KeySet]:
        if self._state_file is None or not self._state_file.exists():
            return {}
        try:
            data = json.loads(self._state_file.read_text())
            return {zone: {(str(n), str(t)) for n, t in keys} for zone, keys in data.get("zones", {}).items()}
        except (OSError, ValueError, TypeError) as err:
            _event(logging.WARNING, "dns-state-unreadable", file=str(self._state_file), error=str(err))
            return {}

    async def _save(self) -> None:
        if self._state_file is None:
            return
        zones = {zs.zone: sorted([list(k) for k in zs.owned.keys() | zs.remembered]) for zs in self._zones.values()}
        for zone, keys in self._remembered.items():  # providers not opened (yet): keep what we knew
            zones.setdefault(zone, sorted([list(k) for k in keys]))
        if zones == self._saved:
            return
        path = self._state_file

        def write() -> None:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps({"version": 1, "zones": zones}))
            tmp.replace(path)

        try:
            await asyncio.to_thread(write)
            self._saved = zones
        except OSError as err:
            _event(logging.ERROR, "dns-state-save-failed", file=str(path), error=str(err))
