"""Ruleset -> nft script text: a full load, or the incremental transaction between two rulesets.

Every script is applied as ONE `nft -f -` transaction, so the kernel either takes all of it or
none of it. Ordering inside an incremental script matters because the kernel checks references
as it goes: new sets and chains first, then changed chains, element deletions before additions
(an element whose data changed is deleted then re-added), and chains/sets that lost their last
reference are deleted last.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from ipaddress import IPv4Address
from typing import Final

from .layout import COUNTER_SHARDS, FAMILY_SETS, GENERATION, SETS, Data, FieldValue, Key, shard_value
from .ruleset import FAMILY, NO_BACKEND_CHAIN, TABLE, Ruleset, static_pick_chains

T = f"{FAMILY} {TABLE}"

# Elements per `add element` statement: keeps error messages readable; the load time is the same.
ELEMENT_CHUNK = 5000

# Global sets and maps: name -> declaration, from the layout (dataplane/layout.py says why each
# looks the way it does). Their elements are the per-service state.
GLOBAL_SETS: dict[str, str] = {name: layout.declaration() for name, layout in SETS.items()}


def _services_rules() -> list[str]:
    rules = []
    for f, ip in ((4, "ip"), (6, "ip6")):
        fe = f"{ip} daddr . meta l4proto . th dport"
        rules.append(f"{fe} @restricted{f} {fe} . {ip} saddr != @allow{f} drop")
    for f, ip in ((4, "ip"), (6, "ip6")):
        rules.append(f"{ip} daddr . meta l4proto . th dport vmap @svc{f}")
    return rules


def _fullnat_rules() -> list[str]:
    rules = [
        f"ct status dnat ct direction original ct original {ip} daddr . meta l4proto . {ip} daddr . th dport"
        f" @fullnat{f} masquerade"
        for f, ip in ((4, "ip"), (6, "ip6"))
    ]
    # Hairpin: source and (translated) destination are the same backend. Without masquerade the
    # backend would answer itself directly and its connection to the VIP would never complete.
    rules += [f"ct status dnat ct direction original {ip} saddr . {ip} daddr @hairpin{f} masquerade"
              for f, ip in ((4, "ip"), (6, "ip6"))]
    return rules


def _counter_rules() -> list[str]:
    """The forward hook sends each packet of a flow we DNATed to the counting chain of its
    backend's shard (layout.counter_shard): the backend is the destination of the original
    direction and the source of the reply direction (the reverse NAT happens after forward)."""
    rules = []
    for f, ip in ((4, "ip"), (6, "ip6")):
        mask = shard_value(f, COUNTER_SHARDS - 1)
        for direction, backend, chain in (("original", "daddr", "count"), ("reply", "saddr", "reply")):
            vmap = ", ".join(f"{shard_value(f, s)} : goto {chain}{f}_{s}" for s in range(COUNTER_SHARDS))
            rules.append(f"ct status dnat ct direction {direction} {ip} {backend} & {mask} vmap {{ {vmap} }}")
    return rules


def _counter_chains() -> dict[str, list[str]]:
    """Per family and shard: count{f}_{s} (client -> backend: new connections, packets and
    bytes) and reply{f}_{s} (backend -> client). A flow that is not ours matches no element."""
    chains: dict[str, list[str]] = {}
    for f, ip in ((4, "ip"), (6, "ip6")):
        sets = FAMILY_SETS[f]
        original = f"ct original {ip} daddr . meta l4proto . {ip} daddr . th dport"
        reply = f"ct original {ip} daddr . meta l4proto . {ip} saddr . th sport"
        for s in range(COUNTER_SHARDS):
            chains[f"count{f}_{s}"] = [f"ct state new {original} @{sets.conns[s]}", f"{original} @{sets.flows[s]}"]
            chains[f"reply{f}_{s}"] = [f"{reply} @{sets.replies[s]}"]
    return chains


# Base chains: name -> (hook line, rules). Hooked chains use `policy accept` so that we never decide
# the fate of traffic that is not ours; other tables' policies still apply.
BASE_CHAINS: dict[str, tuple[str, list[str]]] = {
    "nat_prerouting": ("type nat hook prerouting priority dstnat; policy accept;", ["jump services"]),
    "nat_output": ("type nat hook output priority -100; policy accept;", ["jump services"]),
    "nat_postrouting": ("type nat hook postrouting priority srcnat; policy accept;", _fullnat_rules()),
    "forward_counters": ("type filter hook forward priority filter; policy accept;", _counter_rules()),
}
REGULAR_CHAINS: dict[str, list[str]] = {
    "services": _services_rules(),
    NO_BACKEND_CHAIN: ["meta l4proto tcp reject with tcp reset", "reject with icmpx port-unreachable"],
    **{name: [rule] for name, rule in static_pick_chains().items()},
    **_counter_chains(),
}


def skeleton() -> str:
    """The fixed part of our table (declared empty; elements are added separately)."""
    lines = [f"table {T} {{"]
    lines += [f"\t{decl}" for decl in GLOBAL_SETS.values()]
    for name, rules in REGULAR_CHAINS.items():
        lines.append(f"\tchain {name} {{")
        lines += [f"\t\t{r}" for r in rules]
        lines.append("\t}")
    for name, (hook, rules) in BASE_CHAINS.items():
        lines.append(f"\tchain {name} {{")
        lines.append(f"\t\t{hook}")
        lines += [f"\t\t{r}" for r in rules]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines)


class _Texts(dict[FieldValue, str]):
    """Field value -> nft text, memoised for one rendering: addresses and ports repeat. One memo
    serves every field type (layout.FieldType.text is str() for all of them).

    `by_id` memoises by object identity for the fields that are mostly addresses: hashing an
    ipaddress object runs Python code, id() does not. The memo keeps every object it saw, so no
    id is reused while it lives."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[int, str] = {}
        self._seen: list[FieldValue] = []

    def __missing__(self, value: FieldValue) -> str:
        text = self[value] = _text(value)
        return text

    def add(self, value: FieldValue) -> str:
        self._seen.append(value)
        text = self.by_id[id(value)] = _text(value)
        return text


def _text(value: FieldValue) -> str:
    # inet_ntoa writes exactly what str() of an IPv4Address does, in a third of the time.
    return socket.inet_ntoa(value.packed) if type(value) is IPv4Address else str(value)


def element_texts(items: Iterable[tuple[Key, Data]], texts: _Texts | None = None) -> Iterator[str]:
    """Typed elements as nft text: `203.0.113.10 . tcp . 80 . 0 : 198.51.100.11 . 8080`.

    Hot at 300,000 elements: four-field keys (nearly all elements) reuse the text of their first
    two fields while those are the same objects (a service's elements are consecutive), and no
    per-element list is built."""
    m = texts if texts is not None else _Texts()
    by_id, add = m.by_id.get, m.add
    last_a: object = None
    last_b: object = None
    head = ""
    for key, data in items:
        if len(key) == 4:
            a, b, c, d = key
            if a is not last_a or b is not last_b:
                head = f"{m[a]} . {m[b]} . "
                last_a, last_b = a, b
            text = f"{head}{by_id(id(c)) or add(c)} . {m[d]}"
        else:
            text = " . ".join([m[v] for v in key])
        if data is None:
            yield text
        elif isinstance(data, str):  # a verdict
            yield f"{text} : {data}"
        elif len(data) == 2:
            x, y = data
            yield f"{text} : {by_id(id(x)) or add(x)} . {m[y]}"
        else:
            yield f"{text} : {' . '.join([m[v] for v in data])}"


def key_texts(keys: Iterable[Key], texts: _Texts | None = None) -> Iterator[str]:
    return element_texts(((k, None) for k in keys), texts)


def _element_statements(verb: str, set_name: str, items: Iterable[str]) -> list[str]:
    items = list(items)
    return [
        f"{verb} element {T} {set_name} {{ {', '.join(items[i : i + ELEMENT_CHUNK])} }}"
        for i in range(0, len(items), ELEMENT_CHUNK)
    ]


def _chain_block(name: str, rules: Iterable[str]) -> list[str]:
    return [f"add chain {T} {name}"] + [f"add rule {T} {name} {r}" for r in rules]


def render_full(rs: Ruleset, generation: int) -> str:
    """Replace whatever our table holds with `rs`, atomically (add+delete makes a missing table fine)."""
    out = [f"add table {T}", f"delete table {T}", skeleton()]
    out += [f"add set {T} {name} {{ {decl} }}" for name, decl in rs.sets.items()]
    # Chains are declared before rules so that chains may jump to each other in any order.
    out += [f"add chain {T} {name}" for name in rs.chains]
    for name, rules in rs.chains.items():
        out += [f"add rule {T} {name} {r}" for r in rules]
    texts = _Texts()
    for set_name, elements in rs.elements.items():
        if elements:
            out += _element_statements("add", set_name, element_texts(elements.items(), texts))
    out += _element_statements("add", GENERATION.name, element_texts([((generation,), None)]))
    return "\n".join(out) + "\n"


def rule_counts(chains: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Rules per chain of the table render_full() loads for a Ruleset with these (dynamic) chains."""
    counts = {name: len(rules) for name, rules in REGULAR_CHAINS.items()}
    counts.update({name: len(rules) for name, (_, rules) in BASE_CHAINS.items()})
    for name, rules in chains.items():
        counts[name] = counts.get(name, 0) + len(rules)
    return counts


def render_delete() -> str:
    """Remove our table and everything in it; fine when it does not exist."""
    return f"add table {T}\ndelete table {T}\n"


def render_diff(old: Ruleset, new: Ruleset, old_generation: int, generation: int) -> str:
    """The incremental transaction turning `old` into `new`; empty string when nothing changed."""
    out: list[str] = []
    added_sets = [n for n in new.sets if n not in old.sets]
    removed_sets = [n for n in old.sets if n not in new.sets]
    # Dynamic set names encode their whole declaration (see ruleset._compile_affinity).
    assert all(old.sets[n] == new.sets[n] for n in new.sets if n in old.sets), "set redeclared"
    out += [f"add set {T} {n} {{ {new.sets[n]} }}" for n in added_sets]

    added_chains = [n for n in new.chains if n not in old.chains]
    changed_chains = [n for n in new.chains if n in old.chains and old.chains[n] != new.chains[n]]
    removed_chains = [n for n in old.chains if n not in new.chains]
    out += [f"add chain {T} {n}" for n in added_chains]
    out += [f"flush chain {T} {n}" for n in changed_chains]
    for n in added_chains + changed_chains:
        out += [f"add rule {T} {n} {r}" for r in new.chains[n]]

    deletes, adds = element_changes(old, new)
    texts = _Texts()
    for set_name, keys in deletes:
        out += _element_statements("delete", set_name, key_texts(keys, texts))
    for set_name, items in adds:
        out += _element_statements("add", set_name, element_texts(items, texts))

    # Flush first: a removed chain may jump to another removed chain (affinity service -> endpoint).
    out += [f"flush chain {T} {n}" for n in removed_chains]
    out += [f"delete chain {T} {n}" for n in removed_chains]
    out += [f"delete set {T} {n}" for n in removed_sets]
    if not out:
        return ""
    out += _element_statements("delete", GENERATION.name, key_texts([(old_generation,)]))
    out += _element_statements("add", GENERATION.name, key_texts([(generation,)]))
    return "\n".join(out) + "\n"


# Plain sets' data is None, so "no such element" needs a value of its own.
_MISSING: Final = object()

ElementDeletes = list[tuple[str, list[Key]]]
ElementAdds = list[tuple[str, list[tuple[Key, Data]]]]


def element_changes(old: Ruleset, new: Ruleset) -> tuple[ElementDeletes, ElementAdds]:
    """Per set: keys to delete, then (key, data) to add. An element whose data changed is in
    both (nft cannot replace an element's data in place)."""
    deletes: ElementDeletes = []
    adds: ElementAdds = []
    for set_name in sorted(set(old.elements) | set(new.elements)):
        before = old.elements.get(set_name, {})
        after = new.elements.get(set_name, {})
        gone = [k for k, d in before.items() if after.get(k, _MISSING) != d]
        fresh = [(k, d) for k, d in after.items() if before.get(k, _MISSING) != d]
        if gone:
            deletes.append((set_name, gone))
        if fresh:
            adds.append((set_name, fresh))
    return deletes, adds


def elements_only(old: Ruleset, new: Ruleset) -> bool:
    """Whether turning `old` into `new` touches set elements only (no chain, rule or set)."""
    return old.chains == new.chains and old.sets == new.sets


def count_changes(old: Ruleset, new: Ruleset) -> int:
    """Number of objects an incremental transaction touches (for logs and metrics)."""
    n = 0
    for set_name in set(old.elements) | set(new.elements):
        before: Mapping[Key, Data] = old.elements.get(set_name, {})
        after: Mapping[Key, Data] = new.elements.get(set_name, {})
        n += sum(1 for k, d in after.items() if before.get(k, _MISSING) != d)
        n += sum(1 for k in before if k not in after)
    n += sum(1 for k, v in new.chains.items() if old.chains.get(k) != v)
    n += sum(1 for k in old.chains if k not in new.chains)
    n += sum(1 for k, v in new.sets.items() if old.sets.get(k) != v)
    n += sum(1 for k in old.sets if k not in new.sets)
    return n
