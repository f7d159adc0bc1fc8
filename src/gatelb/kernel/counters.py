"""Counters read back from our table (nft JSON), keyed the way the compiler wrote them.

Which sets count what, and their key fields, come from dataplane/layout.py (Role, COUNTER_SETS).

Both counter sets are keyed by (frontend address, protocol, backend address, backend port) and
counted in the forward hook: `flows*` counts packets and bytes of both directions, `conns*` the
first packet of each new connection. Their elements live as long as the backend is configured, so
a backend going down and up, or its slots being renumbered, never resets them.

Reading lists the whole table, which takes seconds at 10,000 services: this is for `status`,
never for the sync path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from gatelb.dataplane.layout import COUNTER_SETS, GENERATION, SERVICE_MAPS, Key, Role

FlowKey = tuple[str, str, str, int]  # (vip, protocol, backend address, backend port), canonical text
Frontend = tuple[str, str, int]  # (vip, protocol, port): a key of the service maps, canonical text


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
    flows: dict[FlowKey, Counter] = field(default_factory=dict)
    new_connections: dict[FlowKey, int] = field(default_factory=dict)
    # The frontends the kernel's service maps (svc4/svc6) hold: what is programmed, whatever the
    # state record says. None when it could not be read.
    frontends: set[Frontend] | None = None


def flow_key(key: Key) -> FlowKey:
    """A counter set's typed key (layout Role.FLOWS / Role.CONNS) as the text tuple status uses."""
    vip, proto, backend, port = key
    return (str(vip), str(proto), str(backend), cast(int, port))


_COUNTED = {s.name: s for s in COUNTER_SETS}
_SERVICE_MAPS = {s.name: s for s in SERVICE_MAPS}


def _element(raw: Any) -> tuple[list[Any], Counter]:
    """An element is either a bare value/concat or {"elem": {"val": ..., "counter": ...}}."""
    inner: dict[str, Any] = raw["elem"] if isinstance(raw, dict) and "elem" in raw else {}
    val = inner["val"] if inner else raw
    parts = val["concat"] if isinstance(val, dict) and "concat" in val else [val]
    c = inner.get("counter") or {}
    return parts, Counter(int(c.get("packets", 0)), int(c.get("bytes", 0)))


def parse_table(objects: list[dict[str, Any]]) -> TableCounters:
    frontends: set[tuple[str, str, int]] = set()
    out = TableCounters(frontends=frontends)
    for obj in objects:
        s = obj.get("set") or obj.get("map")
        if not s:
            continue
        name, elems = s.get("name", ""), s.get("elem") or []
        layout = _COUNTED.get(name)
        if name in _SERVICE_MAPS:
            fields = _SERVICE_MAPS[name].key
            for raw in elems:
                parts = raw[0]["concat"] if isinstance(raw, list) else _element(raw)[0]
                vip, proto, port = (f.type.parse(p) for f, p in zip(fields, parts, strict=True))
                frontends.add((str(vip), str(proto), cast(int, port)))
        elif name == GENERATION.name:
            out.generation = int(elems[0]) if elems else 0
        elif layout is not None:
            for raw in elems:
                parts, counter = _element(raw)
                key = flow_key(tuple(f.type.parse(p) for f, p in zip(layout.key, parts, strict=True)))
                if layout.role is Role.FLOWS:
                    out.flows[key] = counter
                else:
                    out.new_connections[key] = counter.packets
    if out.generation is None and any("table" in o for o in objects):
        out.generation = 0
    return out
