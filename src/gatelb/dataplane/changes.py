"""Human-readable, service-level difference between two resolved states (for apply/plan output)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gatelb.model import Backend, IPAddress, Protocol, ResolvedState, Service


def _frontend(s: Service) -> str:
    vip = f"[{s.vip}]" if s.vip.version == 6 else str(s.vip)
    return f"{vip}:{s.port}/{s.protocol.value}"


def _backend(b: Backend) -> str:
    return f"{b}" + (f" (weight {b.weight})" if b.weight != 1 else "")


def describe(s: Service) -> str:
    extras = [s.algorithm.value]
    if s.affinity:
        extras.append(f"affinity ClientIP {s.affinity.timeout_seconds}s")
    if s.nat.value != "dnat":
        extras.append(s.nat.value)
    if s.source_ranges:
        extras.append("from " + ",".join(str(n) for n in s.source_ranges))
    targets = ", ".join(_backend(b) for b in s.backends) or f"no usable backend ({s.no_backend.value})"
    return f"{s.name} {_frontend(s)} [{'; '.join(extras)}] -> {targets}"


def _field_changes(a: Service, b: Service) -> list[str]:
    out: list[str] = []
    if a.frontend_key != b.frontend_key:
        out.append(f"frontend {_frontend(a)} -> {_frontend(b)}")
    before = {x.key: x for x in a.backends}
    after = {x.key: x for x in b.backends}
    added = [_backend(x) for k, x in after.items() if k not in before]
    removed = [_backend(x) for k, x in before.items() if k not in after]
    reweighted = [f"{x} weight {before[k].weight}->{x.weight}" for k, x in after.items()
                  if k in before and before[k].weight != x.weight]
    if added:
        out.append("backends +" + ", +".join(added))
    if removed:
        out.append("backends -" + ", -".join(removed))
    out += reweighted
    for label in ("algorithm", "affinity", "source_ranges", "nat", "no_backend"):
        va, vb = getattr(a, label), getattr(b, label)
        if va != vb:
            out.append(f"{label.replace('_', ' ')} {_plain(va)} -> {_plain(vb)}")
    return out


def _plain(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "any"
    return str(getattr(value, "value", getattr(value, "timeout_seconds", value)))


def describe_changes(old: ResolvedState | None, new: ResolvedState) -> list[str]:
    """'+ name ...', '- name ...', '~ name: what changed' lines, sorted by name."""
    before = old.by_name() if old else {}
    after = new.by_name()
    lines: list[str] = []
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name), after.get(name)
        if a is None and b is not None:
            lines.append(f"+ {describe(b)}")
        elif b is None and a is not None:
            lines.append(f"- {a.name} {_frontend(a)}")
        elif a is not None and b is not None and a != b:
            changes = _field_changes(a, b)
            if changes:
                lines.append(f"~ {name}: " + "; ".join(changes))
    return lines


@dataclass(frozen=True)
class Flow:
    protocol: Protocol
    vip: IPAddress
    port: int
    backend: Backend


def udp_flows_to_flush(old: Mapping[str, Service], new: ResolvedState) -> list[Flow]:
    """UDP (frontend, backend) pairs whose existing flows must move: the backend was removed, went
    down, or its service changed or disappeared. Draining backends (weight 0 / drain) keep their
    flows: that is what draining means."""
    current = new.by_name()
    out: list[Flow] = []
    for name, before in old.items():
        if before.protocol is not Protocol.UDP:
            continue
        after = current.get(name)
        same_frontend = after is not None and after.frontend_key == before.frontend_key
        keep: set[tuple[IPAddress, int]] = set()
        if after is not None and same_frontend:
            keep = {b.key for b in after.backends}
            keep |= {b.key for b in after.idle_backends if b.weight == 0 or b.drain}
        out += [Flow(before.protocol, before.vip, before.port, b) for b in before.backends if b.key not in keep]
    return out
