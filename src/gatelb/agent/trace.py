"""`gatelb trace`: the model's answer (dataplane/trace.py) checked against the kernel.

Reads only the elements of the one service the packet matches (netlink gets, `nft get element`
for the source-range interval set), its affinity sets' entry for the source, and the generation:
the same cost at 10 load balancers as at 10,000.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from gatelb.agent.applied import AppliedRecord
from gatelb.agent.statefile import StoredState
from gatelb.dataplane.layout import SETS, Data, Key, affinity_set
from gatelb.dataplane.ruleset import Ruleset, affinity_set_names, backend_map, compile_service
from gatelb.dataplane.trace import (
    DNAT,
    DROPPED_SOURCE,
    BackendHealth,
    Packet,
    Trace,
    TraceInput,
    source_range_rule,
    trace,
)
from gatelb.kernel import inspect, nlget
from gatelb.model import IPAddress, Service


def trace_input(stored: StoredState) -> TraceInput:
    """The tracer's view of the state record."""
    applied = stored.applied
    if applied is None:
        return TraceInput({})
    return TraceInput(applied.services.by_name(), {lb.name: lb for lb in applied.load_balancers}, stored.addresses(),
                      health_of(applied))


def health_of(applied: AppliedRecord) -> dict[tuple[str, IPAddress, int], BackendHealth]:
    out = {}
    for key, rec in applied.health.items():
        try:
            lb, address, port = key.rsplit("|", 2)
            out[(lb, ipaddress.ip_address(address), int(port))] = BackendHealth(
                str(rec.get("state", "unknown")), str(rec.get("reason", "")), rec.get("since"))
        except (ValueError, TypeError):
            continue
    return out


@dataclass
class KernelView:
    """What the kernel holds for one service, compared with what the desired state compiles to."""

    generation: int | None
    applied_generation: int
    mismatches: list[str] = field(default_factory=list)
    checked: int = 0  # elements compared
    affinity: dict[tuple[IPAddress, int], float | None] = field(default_factory=dict)
    source_restricted: bool | None = None  # the frontend is in restricted4/6
    source_range_element: str | None = None  # the allow element holding the source

    @property
    def agrees(self) -> bool:
        return not self.mismatches and self.generation == self.applied_generation


def _endpoint(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _fmt(key: Key, data: Data = None) -> str:
    text = " . ".join(str(v) for v in key)
    if data is None:
        return text
    return f"{text} : {data if isinstance(data, str) else ' . '.join(str(v) for v in data)}"


def compare_service(svc: Service, generation: int | None, applied_generation: int,
                    source: IPAddress | None = None) -> KernelView:
    """Read this service's elements from the kernel and compare them with compile_service(svc)."""
    view = KernelView(generation, applied_generation)
    if generation is None:
        view.mismatches.append("the kernel has no gatelb table (nothing is programmed)")
        return view
    if generation != applied_generation:
        view.mismatches.append(f"the kernel's table is generation {generation}, the state record says "
                               f"{applied_generation}: another apply or daemon changed it since")
    fragment: Ruleset = compile_service(svc)
    for set_name, elements in fragment.elements.items():
        layout = SETS[set_name]
        if layout.interval:
            for key in elements:
                view.checked += 1
                if inspect.get_interval_element(set_name, key) is None:
                    view.mismatches.append(f"{set_name}: missing {_fmt(key)}")
            continue
        got = nlget.get_elements(layout, list(elements))
        for key, want in elements.items():
            view.checked += 1
            have = got.get(key)
            if have is None:
                view.mismatches.append(f"{set_name}: missing {_fmt(key, want)}")
            elif have.data != want:
                view.mismatches.append(f"{set_name}: {_fmt(key)} is {_fmt(key, have.data)} in the kernel, "
                                       f"desired {_fmt(key, want)}")
    frontend: Key = (svc.vip, svc.protocol, svc.port)
    restricted = SETS[f"restricted{svc.family}"]
    view.source_restricted = nlget.get_elements(restricted, [frontend])[frontend] is not None
    if not svc.source_ranges and view.source_restricted:
        view.mismatches.append(f"{restricted.name}: stale {_fmt(frontend)} (the load balancer has no "
                               "sourceRanges; the kernel still filters sources)")
    # One slot beyond the table: a shrunk slot table must not leave elements behind.
    if svc.backends and svc.affinity is None:
        be = SETS[backend_map(svc)]
        slots = sum(1 for k in fragment.elements.get(be.name, {}))
        extra: Key = (*frontend, slots)
        if nlget.get_elements(be, [extra])[extra] is not None:
            view.mismatches.append(f"{be.name}: stale slot {_fmt(extra)} beyond the {slots} desired")
    if source is not None:
        if view.source_restricted:
            allow = f"allow{svc.family}"
            view.source_range_element = inspect.get_interval_element(allow, (*frontend, source))
        for backend, set_name in affinity_set_names(svc):
            assert svc.affinity is not None
            layout = affinity_set(svc.family, svc.affinity.timeout_seconds, set_name)
            entry = nlget.get_elements(layout, [(source,)])[(source,)]
            if entry is not None:
                view.affinity[backend.key] = entry.expires_ms / 1000 if entry.expires_ms is not None else None
    return view


def run_trace(stored: StoredState, packet: Packet, generation: int | None) -> dict[str, Any]:
    view = trace_input(stored)
    model = trace(view, packet)
    kernel: KernelView | None = None
    svc = view.services.get(model.lb) if model.lb else None
    if svc is not None and stored.applied is not None and svc.family == packet.source.version:
        kernel = compare_service(svc, generation, stored.applied.generation, packet.source)
        if kernel.affinity:
            model = trace(view, packet, kernel.affinity)
    return trace_report(model, kernel)


def trace_report(t: Trace, kernel: KernelView | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "packet": {"from": str(t.packet.source), "to": str(t.packet.destination), "port": t.packet.port,
                   "protocol": t.packet.protocol.value, "sourcePort": t.packet.source_port},
        "loadBalancer": t.lb,
        "verdict": t.verdict,
        "explanation": t.explanation,
        "rule": t.rule,
        "sourceRanges": None if t.source_allowed is None else {
            "allowed": t.source_allowed, "range": str(t.source_range) if t.source_range else None},
        "algorithm": t.algorithm.value if t.algorithm else None,
        "chosen": str(t.chosen) if t.chosen else None,
        "slot": t.slot,
        "tolerance": t.tolerance,
        "candidates": [
            {"backend": str(c.backend), "weight": c.backend.weight, "state": c.state, "reason": c.reason,
             "slots": c.slots, "probability": round(c.probability, 6), "share": round(c.share, 6),
             "weightShare": round(c.weight_share, 6),
             "affinity": {"expiresSeconds": c.affinity_expires_s}
             if kernel is not None and c.backend.key in kernel.affinity else None}
            for c in t.candidates
        ],
        "notes": list(t.notes),
    }
    if kernel is not None:
        k: dict[str, Any] = {"agrees": kernel.agrees, "generation": kernel.generation,
                             "appliedGeneration": kernel.applied_generation, "elementsChecked": kernel.checked,
                             "mismatches": kernel.mismatches}
        if kernel.source_restricted is not None and t.source_allowed is not None:
            kernel_allows = kernel.source_range_element is not None
            k["sourceRange"] = {"allowed": kernel_allows, "element": kernel.source_range_element,
                                "verdict": "accept" if kernel_allows else "drop",
                                "rule": None if kernel_allows else source_range_rule(t.packet.source.version)}
            if kernel_allows != t.source_allowed:
                kernel.mismatches.append(f"the kernel {'allows' if kernel_allows else 'drops'} {t.packet.source}, "
                                         f"the desired sourceRanges {'allow' if t.source_allowed else 'drop'} it")
                k["agrees"] = False
        k["affinity"] = {_endpoint(a, p): v for (a, p), v in kernel.affinity.items()}
        out["kernel"] = k
    out["ok"] = t.verdict in (DNAT, DROPPED_SOURCE) and (kernel is None or bool(out["kernel"]["agrees"]))
    return out
