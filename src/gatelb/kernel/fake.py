"""An in-memory stand-in for nft, for fast tests of everything above the kernel.

It understands the statements our renderer emits (not nft's whole language) and enforces the
rules that make ordering matter in a real transaction: an element added twice with different
data, a missing element deleted, a chain deleted while something still jumps to it, a rule added
to a missing chain. Like the kernel, it applies a script all-or-nothing. The netns tier proves
that the real kernel agrees.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gatelb.dataplane.layout import Data, Key
from gatelb.dataplane.render import ElementAdds, ElementDeletes, element_texts, key_texts
from gatelb.dataplane.ruleset import FAMILY, TABLE

from .counters import TableCounters
from .nft import NO_GENERATION, NftError
from .nlelements import CODECS

_T = f"{FAMILY} {TABLE}"
_REF = re.compile(r"(?:goto|jump) ([A-Za-z0-9_-]+)")
_SET_REF = re.compile(r"@([A-Za-z0-9_-]+)")


@dataclass
class FakeTable:
    sets: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {key: data}
    set_decls: dict[str, str] = field(default_factory=dict)
    chains: dict[str, list[str]] = field(default_factory=dict)


class FakeNft:
    def __init__(self) -> None:
        self.table: FakeTable | None = None
        self.transactions: list[str] = []
        self.fail_next: str | None = None  # inject a failure: the next apply raises this

    @property
    def last_transaction(self) -> str:
        return self.transactions[-1] if self.transactions else ""

    def apply(self, script: str) -> None:
        if not script:
            return
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            raise NftError(message, script)
        work = copy.deepcopy(self.table)
        lines = iter(script.splitlines())
        for number, line in enumerate(lines, 1):
            try:
                work = self._statement(work, line, lines)
            except NftError as err:
                raise NftError(f"line {number}: {err}", script) from None
        self.table = work
        self.transactions.append(script)

    def generation(self) -> int | None:
        if self.table is None:
            return None
        elems = self.table.sets.get("generation", {})
        if len(elems) > 1:
            return NO_GENERATION
        return int(next(iter(elems))) if elems else 0

    def rule_counts(self) -> dict[str, int] | None:
        return None if self.table is None else {name: len(rules) for name, rules in self.table.chains.items()}

    def list_table_json(self) -> list[dict[str, Any]]:
        raise NftError("FakeNft keeps no counters")

    def read_counters(self) -> TableCounters:
        if self.table is None:
            return TableCounters()
        frontends = set()
        for name in ("svc4", "svc6"):
            for key in self.table.sets.get(name, {}):
                vip, proto, port = key.split(" . ")
                frontends.add((vip, proto, int(port)))
        return TableCounters(generation=self.generation(), frontends=frontends)

    def query_json(self, *args: str) -> list[dict[str, Any]]:
        return []  # no other tables here

    bulk_elements = True  # exercised like the real two-step load: structure, then elements

    def apply_elements(self, deletes: ElementDeletes, adds: ElementAdds) -> None:
        for name, _ in [*deletes, *adds]:
            CODECS[name]()  # only sets the netlink encoder takes (KeyError otherwise, like the real one)
        lines = [f"delete element {_T} {name} {{ {', '.join(key_texts(keys))} }}" for name, keys in deletes if keys]
        lines += [f"add element {_T} {name} {{ {', '.join(element_texts(items))} }}" for name, items in adds if items]
        self.apply("\n".join(lines) + "\n" if lines else "")

    def load_elements(self, elements: Mapping[str, Mapping[Key, Data]]) -> None:
        lines = [f"add element {_T} {name} {{ {', '.join(element_texts(items.items()))} }}"
                 for name, items in elements.items() if items]
        self.apply("\n".join(lines) + "\n" if lines else "")

    # -- interpreter -------------------------------------------------------------------------

    def _statement(self, t: FakeTable | None, line: str, rest: Any) -> FakeTable | None:
        line = line.strip()
        if not line:
            return t
        if line == f"add table {_T}":
            return t or FakeTable()
        if line == f"delete table {_T}":
            if t is None:
                raise NftError("delete table: No such file or directory")
            return None
        if line == f"table {_T} {{":
            t = t or FakeTable()
            self._block(t, rest)
            return t
        if t is None:
            raise NftError(f"no table for: {line}")
        verb, _, body = line.partition(f" {_T} ")
        if verb in ("add element", "delete element"):
            name, _, items = body.partition(" { ")
            self._elements(t, verb == "add element", name, items.removesuffix(" }"))
        elif verb == "add set":
            name, _, decl = body.partition(" { ")
            t.sets.setdefault(name, {})
            t.set_decls[name] = decl.removesuffix(" }")
        elif verb == "delete set":
            if body not in t.sets:
                raise NftError(f"delete set {body}: No such file or directory")
            if any(f"@{body}" in r for rules in t.chains.values() for r in rules):
                raise NftError(f"delete set {body}: Device or resource busy")
            del t.sets[body]
            t.set_decls.pop(body, None)
        elif verb == "add chain":
            t.chains.setdefault(body, [])
        elif verb == "flush chain":
            self._chain(t, body).clear()
        elif verb == "delete chain":
            self._chain(t, body)
            if self._referenced(t, body):
                raise NftError(f"delete chain {body}: Device or resource busy")
            del t.chains[body]
        elif verb == "add rule":
            chain, _, rule = body.partition(" ")
            self._chain(t, chain)
            for target in _REF.findall(rule):
                self._chain(t, target)
            for s in _SET_REF.findall(rule):
                if s not in t.sets:
                    raise NftError(f"rule refers to missing set {s}")
            t.chains[chain].append(rule)
        else:
            raise NftError(f"FakeNft does not understand: {line[:120]}")
        return t

    def _block(self, t: FakeTable, rest: Any) -> None:
        chain: str | None = None
        for raw in rest:
            line = raw.strip()
            if line == "}":
                if chain is None:
                    return
                chain = None
            elif line.startswith(("map ", "set ")):
                name = line.split()[1]
                t.sets.setdefault(name, {})
                t.set_decls[name] = line
            elif line.startswith("chain "):
                chain = line.split()[1]
                t.chains.setdefault(chain, [])
            elif chain is not None and not line.startswith("type "):
                t.chains[chain].append(line)
        raise NftError("unterminated table block")

    def _chain(self, t: FakeTable, name: str) -> list[str]:
        if name not in t.chains:
            raise NftError(f"chain {name}: No such file or directory")
        return t.chains[name]

    def _referenced(self, t: FakeTable, chain: str) -> bool:
        for elements in t.sets.values():
            if any(d in (f"goto {chain}", f"jump {chain}") for d in elements.values()):
                return True
        return any(chain in _REF.findall(r) for rules in t.chains.values() for r in rules)

    def _elements(self, t: FakeTable, add: bool, name: str, items: str) -> None:
        if name not in t.sets:
            raise NftError(f"set {name}: No such file or directory")
        target = t.sets[name]
        for item in items.split(", "):
            key, _, data = item.partition(" : ")
            if add:
                for ref in _REF.findall(data):
                    self._chain(t, ref)
                if key in target and target[key] != data:
                    raise NftError(f"add element {name} {{ {key} }}: File exists")
                target[key] = data
            else:
                if key not in target:
                    raise NftError(f"delete element {name} {{ {key} }}: No such file or directory")
                del target[key]
