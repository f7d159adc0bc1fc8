"""Service-level incremental compilation, for the long-running agent.

Compiling 10,000 services takes a few hundred milliseconds; a change to one of them should cost
far less. `AppliedRuleset` remembers the applied services and how many services reference each
element, chain and set (pick chains are shared, and so are the flow counters of a VIP whose ports
share a backend). A change recompiles only the services that differ (their old fragment is
recompiled from the old Service: compiling is deterministic, so nothing else needs storing) and
yields the before/after of just the objects they touch, which render_diff turns into a transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from gatelb.model import ResolvedState, Service

from .ruleset import Ruleset, compile_service

ObjKey = tuple[str, str, str]  # (kind: "el" | "chain" | "set", set name or "", element key or name)


class _Ref:
    __slots__ = ("refs", "value")

    def __init__(self, value: object) -> None:
        self.value = value
        self.refs = 1


@dataclass
class AppliedRuleset:
    services: dict[str, Service] = field(default_factory=dict)
    objects: dict[ObjKey, _Ref] = field(default_factory=dict)

    @classmethod
    def build(cls, state: ResolvedState) -> AppliedRuleset:
        applied = cls()
        for svc in state.services:
            applied.services[svc.name] = svc
            for obj, value in _objects(compile_service(svc)):
                applied._ref(obj, value)
        return applied

    def ruleset(self) -> Ruleset:
        """Everything, in first-reference order (a full load)."""
        return self._snapshot(self.objects)

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
        touched: set[ObjKey] = set()
        for frag in old_frags:
            touched.update(obj for obj, _ in _objects(frag))
        for _, frag in new_frags:
            touched.update(obj for obj, _ in _objects(frag))
        before = self._snapshot(sorted(touched))
        for frag in old_frags:
            for obj, _ in _objects(frag):
                self._unref(obj)
        for name in removed:
            del self.services[name]
        for svc, frag in new_frags:
            for obj, value in _objects(frag):
                self._ref(obj, value)
            self.services[svc.name] = svc
        return before, self._snapshot(sorted(touched))

    def _ref(self, obj: ObjKey, value: object) -> None:
        ref = self.objects.get(obj)
        if ref is None:
            self.objects[obj] = _Ref(value)
        else:
            ref.refs += 1
            ref.value = value

    def _unref(self, obj: ObjKey) -> None:
        ref = self.objects[obj]
        ref.refs -= 1
        if ref.refs == 0:
            del self.objects[obj]

    def _snapshot(self, objs: Iterable[ObjKey]) -> Ruleset:
        rs = Ruleset()
        for obj in objs:
            ref = self.objects.get(obj)
            if ref is None:
                continue
            kind, container, name = obj
            if kind == "el":
                rs.add_element(container, name, str(ref.value))
            elif kind == "chain":
                rs.chains[name] = ref.value  # type: ignore[assignment]
            else:
                rs.sets[name] = str(ref.value)
        return rs


def _objects(frag: Ruleset) -> Iterator[tuple[ObjKey, object]]:
    for container, elements in frag.elements.items():
        for key, data in elements.items():
            yield ("el", container, key), data
    for name, rules in frag.chains.items():
        yield ("chain", "", name), rules
    for name, decl in frag.sets.items():
        yield ("set", "", name), decl
