"""`gatelb status`: what is configured (state file) joined with what the kernel counts.

The JSON shape is documented in docs/status.md and is stable: fields may be added, never renamed.
"""

from __future__ import annotations

from typing import Any

from gatelb.kernel.counters import Counter, TableCounters
from gatelb.model import DesiredState, LoadBalancer, ResolvedState, Service

HealthRecord = dict[str, Any]


def health_key(lb: str, address: str, port: int) -> str:
    return f"{lb}|{address}|{port}"


def build_status(
    desired: DesiredState,
    allocations: dict[str, str],
    resolved: ResolvedState,
    counters: TableCounters,
    applied_generation: int | None,
    health: dict[str, HealthRecord],
) -> dict[str, Any]:
    services = resolved.by_name()
    lbs = [
        _lb_status(lb, allocations.get(lb.name), services.get(lb.name), counters, health)
        for lb in sorted(desired.load_balancers, key=lambda x: x.name)
    ]
    return {
        "apiVersion": "gatelb.io/v1alpha1",
        "kind": "Status",
        "generation": {
            "kernel": counters.generation,
            "applied": applied_generation,
            "inSync": counters.generation is not None and counters.generation == applied_generation,
        },
        "loadBalancers": lbs,
    }


def _counter_json(c: Counter, new: int) -> dict[str, int]:
    return {"newConnections": new, "packets": c.packets, "bytes": c.bytes}


def _lb_status(
    lb: LoadBalancer,
    ip: str | None,
    svc: Service | None,
    counters: TableCounters,
    health: dict[str, HealthRecord],
) -> dict[str, Any]:
    usable = {b.key for b in svc.backends} if svc else set()
    backends: list[dict[str, Any]] = []
    total = Counter()
    for b in lb.backends:
        flow = Counter()
        new = 0
        if svc is not None:
            key = (str(svc.vip), svc.protocol.value, str(b.address), b.port)
            flow = counters.flows.get(key, Counter())
            new = counters.new_connections.get(key, 0)
        total.add(flow)
        record = health.get(health_key(lb.name, str(b.address), b.port), {})
        if b.weight == 0 or b.drain:
            state, reason = "draining", "weight 0" if b.weight == 0 else "drain: true"
        else:
            state = record.get("state", "up" if b.key in usable else "down")
            reason = record.get("reason", "not health-checked (no running agent)" if not record else "")
        backends.append(
            {
                "address": str(b.address),
                "port": b.port,
                "weight": b.weight,
                "state": state,
                "since": record.get("since"),
                "reason": reason,
                "counters": _counter_json(flow, new),
            }
        )
    new_total = sum(b["counters"]["newConnections"] for b in backends)
    return {
        "name": lb.name,
        "state": lb.state.value,
        # In the kernel's service map, not only in the state record: a table deleted or flushed
        # behind our back shows here at once.
        "programmed": svc is not None and counters.frontends is not None
        and (str(svc.vip), svc.protocol.value, svc.port) in counters.frontends,
        "protocol": lb.protocol.value,
        "frontend": {"ip": ip, "port": lb.port},
        "pool": lb.pool,
        "algorithm": lb.algorithm.value,
        "sessionAffinity": (
            {"type": "ClientIP", "timeoutSeconds": lb.affinity.timeout_seconds} if lb.affinity else None
        ),
        "nat": lb.nat.value,
        "sourceRanges": [str(n) for n in lb.source_ranges],
        "counters": _counter_json(total, new_total),
        "backends": backends,
    }
