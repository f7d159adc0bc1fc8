"""Other tables in the namespace that can drop or rewrite traffic to our VIPs.

We never change anyone else's table (docs/dataplane.md), but a base chain of another program can
silently win over ours, and the user must hear about it:

- a drop or reject (a rule, or `policy drop`) in a base chain on prerouting, input, forward or
  output can drop traffic to a VIP at any priority: an accept in our chain never overrides a drop
  in another table's chain on the same hook;
- a dnat or redirect in a nat chain on prerouting or output that runs before ours (a lower
  priority number than our -100, or the same one, whose order is undefined) rewrites the
  destination first: the kernel then skips our dnat for that connection.

Only base chains and the regular chains they jump or go to (same table, at most MAX_CHAINS per
check) are read, one `nft -j list chain` each, never whole tables; named verdict maps are not
followed. Whether a rule actually matches a VIP is not evaluated: the finding says "can".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from gatelb.dataplane.ruleset import FAMILY, TABLE

QueryJson = Callable[..., list[dict[str, Any]]]

HOOKS = ("prerouting", "input", "forward", "output")
OUR_NAT_PRIORITY = -100  # nat_prerouting (dstnat) and nat_output, see dataplane/render.py
IP_FAMILIES = ("ip", "ip6", "inet")
MAX_CHAINS = 64
DROPS = ("drop", "reject")
REWRITES = ("dnat", "redirect")


@dataclass(frozen=True)
class Hazard:
    table: str  # "inet filter"
    chain: str  # the base chain
    hook: str
    priority: int
    can: str  # "drop" | "rewrite"
    why: str  # "policy drop", "rule with reject (handle 7)", "rule with dnat in chain x (handle 3)"

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "chain": self.chain, "hook": self.hook, "priority": self.priority,
                "can": self.can, "why": self.why}

    def __str__(self) -> str:
        return f"table {self.table} chain {self.chain} (hook {self.hook}, priority {self.priority}) can " \
               f"{self.can} traffic to our VIPs: {self.why}"


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a rule's JSON expression tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _verbs(rule: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(statements of interest in the rule, chains it jumps or goes to)."""
    found, targets = set(), set()
    for key, value in _walk(rule.get("expr", [])):
        if key in DROPS or key in REWRITES:
            found.add(key)
        elif key in ("jump", "goto") and isinstance(value, dict) and isinstance(value.get("target"), str):
            targets.add(value["target"])
    return found, targets


def hazards(query: QueryJson) -> list[Hazard]:
    """Findings for every other table of this namespace (`query` runs `nft -j ARGS`)."""
    out: list[Hazard] = []
    budget = MAX_CHAINS
    base = [c["chain"] for c in query("list", "chains") if "chain" in c]
    for chain in base:
        family, table, hook = chain.get("family"), chain.get("table"), chain.get("hook")
        if family not in IP_FAMILIES or hook not in HOOKS or (family, table) == (FAMILY, TABLE):
            continue
        prio = chain.get("prio", 0)
        priority = prio if isinstance(prio, int) else 0
        where = f"{family} {table}"
        rewrites_first = chain.get("type") == "nat" and hook in ("prerouting", "output") \
            and priority <= OUR_NAT_PRIORITY
        if chain.get("policy") == "drop":
            out.append(Hazard(where, chain["name"], hook, priority, "drop", "policy drop"))
        seen: set[str] = set()
        todo = [chain["name"]]
        while todo and budget > 0:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            budget -= 1
            inside = "" if name == chain["name"] else f" in chain {name}"
            for obj in query("list", "chain", family, table, name):
                rule = obj.get("rule")
                if not rule:
                    continue
                verbs, targets = _verbs(rule)
                todo.extend(sorted(targets - seen))
                handle = rule.get("handle")
                for verb in sorted(verbs):
                    can = "drop" if verb in DROPS else "rewrite"
                    if can == "rewrite" and not rewrites_first:
                        continue
                    out.append(Hazard(where, chain["name"], hook, priority, can,
                                      f"rule with {verb}{inside} (handle {handle})"))
    return out
