"""Keeps the kernel in step with the resolved state: a full load first, increments afterwards.

What was applied is kept in memory (never re-read from the kernel on the hot path: listing a
10,000-service table takes seconds). After any failed transaction the next sync is a full one,
because we no longer know exactly what the kernel holds (kube-proxy's needFullSync).

Two bookkeeping strategies share this class: the one-shot commands keep the whole compiled
Ruleset and diff it (simple; they run once), the daemon keeps an AppliedRuleset index so that a
change to one of 10,000 services recompiles one service.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gatelb.dataplane import Ruleset, compile_ruleset, render_delete, render_diff, render_full
from gatelb.dataplane.incremental import AppliedRuleset
from gatelb.dataplane.layout import GENERATION, NETLINK_BULK_SETS, NETLINK_INCREMENT_SETS
from gatelb.dataplane.render import count_changes, element_changes, elements_only, rule_counts
from gatelb.kernel.nft import Nft
from gatelb.model import ResolvedState, Service


@dataclass(frozen=True)
class SyncResult:
    full: bool
    changes: int
    compile_s: float
    apply_s: float
    script: str
    generation: int


class DataplaneSync:
    def __init__(self, nft: Nft, indexed: bool = False) -> None:
        self._nft = nft
        self._indexed = indexed
        self._applied: Ruleset | None = None
        self._index: AppliedRuleset | None = None
        self._generation = 0
        self._full_load = Ruleset()
        self._diff: tuple[Ruleset, Ruleset] = (Ruleset(), Ruleset())

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def has_applied(self) -> bool:
        return self._index is not None or self._applied is not None

    def adopt(self, previous: ResolvedState, generation: int) -> bool:
        """Take over what an earlier run applied, if the kernel still holds exactly that.

        The generation number stored in the table tells whether anyone changed it since, and
        the number of rules in each chain whether someone flushed it; any doubt means a full
        sync, which is always safe.
        """
        if self._nft.generation() != generation:
            return False
        # Emptied chains keep the sets, generation included (`nft flush table`): count the rules.
        built: AppliedRuleset | Ruleset = (AppliedRuleset.build(previous) if self._indexed
                                           else compile_ruleset(previous))
        if self._nft.rule_counts() != rule_counts(built.chains):
            return False
        if isinstance(built, AppliedRuleset):
            self._index = built
        else:
            self._applied = built
        self._generation = generation
        return True

    def force_full(self) -> None:
        self._applied = None
        self._index = None

    def _plan(self, state: ResolvedState) -> tuple[str, int, bool, object]:
        """(script, changes, full, new bookkeeping) without touching self. For a full load the
        script is empty and the Ruleset to load is in self._full_load."""
        nxt = self._generation + 1
        if self._indexed:
            if self._index is None:
                index = AppliedRuleset.build(state)
                self._full_load = index.ruleset()
                return "", self._full_load.element_count() + len(self._full_load.chains), True, index
            changed, removed = self._index.diff_against(state)
            if not changed and not removed:
                return "", 0, False, self._index
            before, after = self._index.update(changed, removed)
            self._diff = (before, after)
            return render_diff(before, after, self._generation, nxt), count_changes(before, after), False, self._index
        new = compile_ruleset(state)
        if self._applied is None:
            self._full_load = new
            return "", new.element_count() + len(new.chains), True, new
        script = render_diff(self._applied, new, self._generation, nxt)
        self._diff = (self._applied, new)
        return script, count_changes(self._applied, new) if script else 0, False, new

    def sync(self, state: ResolvedState) -> SyncResult:
        t0 = time.perf_counter()
        script, changes, full, bookkeeping = self._plan(state)
        t1 = time.perf_counter()
        if full or script:
            try:
                if full:
                    script = self._load_full(self._full_load, self._generation + 1)
                else:
                    self._apply_increment(script, *self._diff)
            except Exception:
                self.force_full()  # the in-memory index may already hold the new state
                raise
            finally:
                self._full_load = Ruleset()
                self._diff = (Ruleset(), Ruleset())
            self._generation += 1
        if isinstance(bookkeeping, AppliedRuleset):
            self._index = bookkeeping
        else:
            self._applied = bookkeeping  # type: ignore[assignment]
        t2 = time.perf_counter()
        return SyncResult(full, changes, t1 - t0, t2 - t1, script, self._generation)

    def sync_changes(self, services: Mapping[str, Service], upserts: Sequence[Service],
                     removed: Sequence[str]) -> SyncResult:
        """The reconciler's path: `services` is everything that should be served, `upserts` and
        `removed` what changed since the last call. Without applied bookkeeping (first start,
        after a failure) this is a full load of `services`; otherwise only the changed services
        are recompiled and diffed, so the work is proportional to the change."""
        assert self._indexed, "sync_changes needs the indexed engine"
        if self._index is None:
            return self.sync(ResolvedState(tuple(services[n] for n in sorted(services))))
        t0 = time.perf_counter()
        index = self._index
        changed = [s for s in upserts if index.services.get(s.name) != s]
        gone = [n for n in removed if n in index.services]
        if not changed and not gone:
            return SyncResult(False, 0, time.perf_counter() - t0, 0.0, "", self._generation)
        before, after = index.update(changed, gone)
        script = render_diff(before, after, self._generation, self._generation + 1)
        changes = count_changes(before, after)
        t1 = time.perf_counter()
        if script:
            try:
                self._apply_increment(script, before, after)
            except Exception:
                self.force_full()  # the index already holds the new state
                raise
            self._generation += 1
        return SyncResult(False, changes, t1 - t0, time.perf_counter() - t1, script, self._generation)

    def plan_changes(self, services: Mapping[str, Service], upserts: Sequence[Service],
                     removed: Sequence[str]) -> str:
        """The transaction sync_changes() would apply, without applying it. Spends the engine
        (its bookkeeping then holds the planned state): for the one-shot `plan` only."""
        nxt = self._generation + 1
        if self._index is None:
            return render_full(AppliedRuleset.build(ResolvedState(tuple(services[n] for n in sorted(services))))
                               .ruleset(), nxt)
        changed = [s for s in upserts if self._index.services.get(s.name) != s]
        gone = [n for n in removed if n in self._index.services]
        if not changed and not gone:
            return ""
        before, after = self._index.update(changed, gone)
        return render_diff(before, after, self._generation, nxt)

    def _apply_increment(self, script: str, before: Ruleset, after: Ruleset) -> None:
        """Most increments (a backend added, removed, down, up) change map elements only: those
        go to the kernel as one netlink batch, which saves starting nft (and nft reading our
        table) on the failover path. Anything structural goes through nft as text."""
        if not (self._nft.bulk_elements and elements_only(before, after)):
            self._nft.apply(script)
            return
        deletes, adds = element_changes(before, after)
        if not all(name in NETLINK_INCREMENT_SETS for name, _ in [*deletes, *adds]):
            self._nft.apply(script)
            return
        deletes.append((GENERATION.name, [(self._generation,)]))
        adds.append((GENERATION.name, [((self._generation + 1,), None)]))
        self._nft.apply_elements(deletes, adds)

    def _load_full(self, rs: Ruleset, generation: int) -> str:
        """Load `rs` as the whole table; returns the nft script that was applied.

        Into a kernel without our table, the bulk elements (service, backend and flow maps) go in
        as one netlink batch after nft created the structure: nft's own parsing of 200,000
        elements costs more than everything else together. Traffic sees nothing until that batch
        commits, and then everything at once; if it fails the empty table is removed again. Over
        an existing table (a resync) the replacement must be a single transaction, so nft loads
        all of it.
        """
        if not (self._nft.bulk_elements and self._nft.generation() is None):
            script = render_full(rs, generation)
            self._nft.apply(script)
            return script
        bulk = {name: rs.elements[name] for name in NETLINK_BULK_SETS if rs.elements.get(name)}
        rest = Ruleset({k: v for k, v in rs.elements.items() if k not in NETLINK_BULK_SETS}, rs.chains, rs.sets)
        structure = render_full(rest, generation)
        self._nft.apply(structure)
        try:
            self._nft.load_elements(bulk)
        except Exception:
            with contextlib.suppress(Exception):
                self._nft.apply(render_delete())
            raise
        return structure

    def preview(self, state: ResolvedState) -> str:
        """The transaction `sync(state)` would apply now, without applying it (one-shot mode only)."""
        assert not self._indexed, "preview would mutate the incremental index"
        script, _, full, _ = self._plan(state)
        if full:
            script = render_full(self._full_load, self._generation + 1)
            self._full_load = Ruleset()
        return script
