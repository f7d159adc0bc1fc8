"""Counters read back from our table (nft JSON), keyed the way the compiler wrote them.

Reading lists the whole table, which takes seconds at 10,000 services: this is for `status`,
never for the sync path.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

FrontendKey = tuple[str, str, int]  # (vip, protocol, port), addresses in canonical text form
FlowKey = tuple[str, str, str, int]  # (vip, protocol, backend address, backend port)
BackendKey = tuple[str, int]


@dataclass
class Counter:
    packets: int = 0
    bytes: int = 0

    def add(self, other: Counter) -> None:
        self.packets += other.packets
        self.bytes += other.bytes


@dataclass
class TableCounters:
    generation: int | None = None
    # New connections per frontend (the NAT hook sees only the first packet of a connection).
    frontend_new: dict[FrontendKey, int] = field(default_factory=dict)
    # New connections per (frontend, backend): weighted slots summed, or affinity endpoint chains.
    backend_new: dict[tuple[FrontendKey, BackendKey], int] = field(default_factory=dict)
    # Packets/bytes both directions per (vip, protocol, backend).
    flows: dict[FlowKey, Counter] = field(default_factory=dict)
    # Affinity endpoint chain name -> (backend, new connections).
    endpoint_chains: dict[str, tuple[BackendKey, int]] = field(default_factory=dict)


def _canon(addr: str) -> str:
    return str(ipaddress.ip_address(addr))


def _counter(elem: dict[str, Any]) -> Counter:
    c = elem.get("counter") or {}
    return Counter(int(c.get("packets", 0)), int(c.get("bytes", 0)))


def _key(elem: Any) -> tuple[list[Any], dict[str, Any]]:
    """An element is either a bare value/concat or {"elem": {"val": ..., "counter": ...}}."""
    if isinstance(elem, dict) and "elem" in elem:
        inner = elem["elem"]
        val = inner["val"]
    else:
        inner, val = {}, elem
    parts = val["concat"] if isinstance(val, dict) and "concat" in val else [val]
    return parts, inner


def parse_table(objects: list[dict[str, Any]]) -> TableCounters:
    out = TableCounters()
    for obj in objects:
        if "set" in obj or "map" in obj:
            s = obj.get("set") or obj.get("map") or {}
            _parse_set(out, s.get("name", ""), s.get("elem") or [])
        elif "rule" in obj:
            _parse_rule(out, obj["rule"])
    return out


def _parse_set(out: TableCounters, name: str, elems: list[Any]) -> None:
    if name == "generation":
        out.generation = int(elems[0]) if elems else 0
        return
    for raw in elems:
        data: Any = None
        if name.startswith(("svc", "be")) and isinstance(raw, list):
            raw, data = raw
        parts, inner = _key(raw)
        if name.startswith("svc"):
            out.frontend_new[(_canon(parts[0]), parts[1], int(parts[2]))] = _counter(inner).packets
        elif name.startswith("be") and isinstance(data, dict):
            target = data["concat"]
            fe = (_canon(parts[0]), parts[1], int(parts[2]))
            key = (fe, (_canon(target[0]), int(target[1])))
            out.backend_new[key] = out.backend_new.get(key, 0) + _counter(inner).packets
        elif name.startswith("flows"):
            fk = (_canon(parts[0]), parts[1], _canon(parts[2]), int(parts[3]))
            out.flows[fk] = _counter(inner)


def _parse_rule(out: TableCounters, rule: dict[str, Any]) -> None:
    chain = rule.get("chain", "")
    if not chain.startswith("ep_"):
        return
    packets = 0
    target: BackendKey | None = None
    for expr in rule.get("expr", []):
        if "counter" in expr:
            packets = int(expr["counter"].get("packets", 0))
        if "dnat" in expr:
            target = (_canon(expr["dnat"]["addr"]), int(expr["dnat"]["port"]))
    if target is not None:
        out.endpoint_chains[chain] = (target, packets)
