"""Service-level incremental compilation, for the long-running agent.

Compiling 10,000 services takes a few hundred milliseconds; a change to one of them should cost
far less. `AppliedRuleset` remembers the applied services and how many services reference each
element, chain and set (pick chains are shared, and so are the flow counters of a VIP whose ports
share a backend). A change recompiles only the services that differ (their old fragment is
recompiled from the old Service: compiling is deterministic, so nothing else needs storing) and
yields the before/after of just the objects they touch, which render_diff turns into a transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gatelb.model import ResolvedState, Service

from .layout import Data, Key
from .ruleset import Ruleset, compile_service, gc_paused

# An object some service references: ("el", set name, element key), ("chain", "", name) or
# ("set", "", name).
ObjKey = tuple[str, str, Key | str]


@dataclass
class AppliedRuleset:
    """What is applied, with each object once: elements per set (typed keys, as compiled), chains
    and dynamic sets. Most objects belong to one service; `extra_refs` counts the references
    beyond the first of those that several services share, so the common case costs one dict
    entry per element and no per-element object."""

    services: dict[str, Service] = field(default_factory=dict)
    elements: dict[str, dict[Key, Data]] = field(default_factory=dict)
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sets: dict[str, str] = field(default_factory=dict)
    extra_refs: dict[ObjKey, int] = field(default_factory=dict)

    @classmethod
    def build(cls, state: ResolvedState) -> AppliedRuleset:
        applied = cls()
        with gc_paused():
            for svc in state.services:
                applied.services[svc.name] = svc
                applied._ref_all(compile_service(svc))
        return applied

    def ruleset(self) -> Ruleset:
        """Everything, in first-reference order (a full load)."""
        return Ruleset({name: dict(els) for name, els in self.elements.items() if els},
                       dict(self.chains), dict(self.sets))

    def diff_against(self, state: ResolvedState) -> tuple[list[Service], list[str]]:
        """(services added or changed, names removed) relative to what is applied."""
        names: set[str] = set()
        changed: list[Service] = []
        for svc in state.services:
            names.add(svc.name)
            old = self.services.get(svc.name)
            if old is None or (old is not svc and old != svc):
                changed.append(svc)
        removed = [name for name in self.services if name not in names]
        return changed, removed

    def update(self, changed: Iterable[Service], removed: Iterable[str]) -> tuple[Ruleset, Ruleset]:
        """Apply a change in memory; return (before, after) restricted to the touched objects."""
        old_frags = [compile_service(self.services[n]) for n in removed]
        new_frags: list[tuple[Service, Ruleset]] = []
        for svc in changed:
            if svc.name in self.services:
                old_frags.append(compile_service(self.services[svc.name]))
            new_frags.append((svc, compile_service(svc)))
        # Touched objects, in a deterministic order (the fragments'), values ignored.
        touched = Ruleset()
        for frag in [*old_frags, *(f for _, f in new_frags)]:
            for name, els in frag.elements.items():
                touched.elements.setdefault(name, {}).update(els)
            touched.chains.update(frag.chains)
            touched.sets.update(frag.sets)
        before = self._snapshot(touched)
        for frag in old_frags:
            self._unref_all(frag)
        for name in removed:
            del self.services[name]
        for svc, frag in new_frags:
            self._ref_all(frag)
            self.services[svc.name] = svc
        return before, self._snapshot(touched)

    def _ref_all(self, frag: Ruleset) -> None:
        for name, els in frag.elements.items():
            held = self.elements.setdefault(name, {})
            for key, data in els.items():
                size = len(held)
                held[key] = data  # the latest reference's data wins
                if len(held) == size:
                    self._share(("el", name, key))
        for chain, rules in frag.chains.items():
            if chain in self.chains:
                self._share(("chain", "", chain))
            self.chains[chain] = rules
        for set_name, decl in frag.sets.items():
            if set_name in self.sets:
                self._share(("set", "", set_name))
            self.sets[set_name] = decl

    def _share(self, obj: ObjKey) -> None:
        self.extra_refs[obj] = self.extra_refs.get(obj, 0) + 1

    def _unref_all(self, frag: Ruleset) -> None:
        for name, els in frag.elements.items():
            held = self.elements[name]
            for key in els:
                self._unref(("el", name, key), held, key)
        for obj_name in frag.chains:
            self._unref(("chain", "", obj_name), self.chains, obj_name)
        for obj_name in frag.sets:
            self._unref(("set", "", obj_name), self.sets, obj_name)

    def _unref(self, obj: ObjKey, held: dict[Key, Data] | dict[str, tuple[str, ...]] | dict[str, str],
               key: Key | str) -> None:
        more = self.extra_refs.get(obj)
        if more is None:
            del held[key]  # type: ignore[arg-type]
        elif more == 1:
            del self.extra_refs[obj]
        else:
            self.extra_refs[obj] = more - 1

    def _snapshot(self, touched: Ruleset) -> Ruleset:
        rs = Ruleset()
        for name, keys in touched.elements.items():
            held = self.elements.get(name, {})
            present = {k: held[k] for k in keys if k in held}
            if present:
                rs.elements[name] = present
        rs.chains = {n: self.chains[n] for n in sorted(touched.chains) if n in self.chains}
        rs.sets = {n: self.sets[n] for n in sorted(touched.sets) if n in self.sets}
        return rs
