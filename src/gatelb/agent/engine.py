"""Keeps the kernel in step with the resolved state: a full load first, increments afterwards.

What was applied is kept in memory (never re-read from the kernel on the hot path: listing a
10,000-service table takes seconds). After any failed transaction the next sync is a full one,
because we no longer know exactly what the kernel holds (kube-proxy's needFullSync).

Two bookkeeping strategies share this class: the one-shot commands keep the whole compiled
Ruleset and diff it (simple; they run once), the daemon keeps an AppliedRuleset index so that a
change to one of 10,000 services recompiles one service.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gatelb.dataplane import Ruleset, compile_ruleset, render_diff, render_full
from gatelb.dataplane.incremental import AppliedRuleset
from gatelb.dataplane.render import count_changes
from gatelb.kernel.nft import Nft
from gatelb.model import ResolvedState


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

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def has_applied(self) -> bool:
        return self._index is not None or self._applied is not None

    def adopt(self, previous: ResolvedState, generation: int) -> bool:
        """Take over what an earlier run applied, if the kernel still holds exactly that.

        The generation number stored in the table tells whether anyone changed it since; any
        doubt means a full sync, which is always safe.
        """
        if self._nft.generation() != generation:
            return False
        if self._indexed:
            self._index = AppliedRuleset.build(previous)
        else:
            self._applied = compile_ruleset(previous)
        self._generation = generation
        return True

    def force_full(self) -> None:
        self._applied = None
        self._index = None

    def _plan(self, state: ResolvedState) -> tuple[str, int, bool, object]:
        """(script, changes, full, new bookkeeping) without touching self."""
        nxt = self._generation + 1
        if self._indexed:
            if self._index is None:
                index = AppliedRuleset.build(state)
                rs = index.ruleset()
                return render_full(rs, nxt), rs.element_count() + len(rs.chains), True, index
            changed, removed = self._index.diff_against(state)
            if not changed and not removed:
                return "", 0, False, self._index
            before, after = self._index.update(changed, removed)
            return render_diff(before, after, self._generation, nxt), count_changes(before, after), False, self._index
        new = compile_ruleset(state)
        if self._applied is None:
            return render_full(new, nxt), new.element_count() + len(new.chains), True, new
        script = render_diff(self._applied, new, self._generation, nxt)
        return script, count_changes(self._applied, new) if script else 0, False, new

    def sync(self, state: ResolvedState) -> SyncResult:
        t0 = time.perf_counter()
        script, changes, full, bookkeeping = self._plan(state)
        t1 = time.perf_counter()
        if script:
            try:
                self._nft.apply(script)
            except Exception:
                self.force_full()  # the in-memory index may already hold the new state
                raise
            self._generation += 1
        if isinstance(bookkeeping, AppliedRuleset):
            self._index = bookkeeping
        else:
            self._applied = bookkeeping  # type: ignore[assignment]
        t2 = time.perf_counter()
        return SyncResult(full, changes, t1 - t0, t2 - t1, script, self._generation)

    def preview(self, state: ResolvedState) -> str:
        """The transaction `sync(state)` would apply now, without applying it (one-shot mode only)."""
        assert not self._indexed, "preview would mutate the incremental index"
        return self._plan(state)[0]
