"""`gatelb status`: what is configured (state file) joined with what the kernel counts.

The JSON shape is documented in docs/status.md and is stable: fields may be added, never renamed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gatelb.kernel.counters import Counter, TableCounters
from gatelb.kernel.nft import Nft
from gatelb.model import DesiredState, IPAddress, LoadBalancer, ResolvedState, Service, SyncedState

HealthRecord = dict[str, Any]

# Above this many load balancers the table view asks for one line per load balancer (its
# backends counted by state) instead of every backend: 10,000 x 10 backends are 110,000 lines
# nobody reads, and building them is most of what made `gatelb status` slow. `status NAME`,
# `--backends` and `-o json|yaml` always have every backend.
DETAIL_MAX = 200


def health_key(lb: str, address: str, port: int) -> str:
    return f"{lb}|{address}|{port}"


def build_status(
    desired: DesiredState,
    allocations: dict[str, str],
    resolved: ResolvedState,
    counters: TableCounters,
    applied_generation: int | None,
    health: dict[str, HealthRecord],
    backends: bool | None = True,
    unchecked: str = "not health-checked (no running agent)",
) -> dict[str, Any]:
    """`backends`: list every backend (True), only count them (False, `backendsOmitted` is then
    set on each load balancer), or decide by size (None: up to DETAIL_MAX load balancers)."""
    services = resolved.by_name()
    detail = backends if backends is not None else len(desired.load_balancers) <= DETAIL_MAX
    lbs = [
        _lb_status(lb, allocations.get(lb.name), services.get(lb.name), counters, health, detail, unchecked)
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
    detail: bool = True,
    unchecked: str = "",
) -> dict[str, Any]:
    # Whether a backend takes connections: one of the service's own Backend objects (the usual
    # case: resolve hands them over), else the same address and port. Hashing an ipaddress runs
    # Python code; 100,000 backends at 10,000 load balancers.
    serving = {id(b) for b in svc.backends} if svc else set()
    by_key: set[tuple[IPAddress, int]] | None = None
    backends: list[dict[str, Any]] = []
    packets_total = bytes_total = new_total = 0
    states = {"up": 0, "down": 0, "draining": 0}
    counts = (counters.backends(svc.vip, svc.protocol, tuple(b.key for b in lb.backends)) if svc is not None
              else [(0, 0, 0)] * len(lb.backends))
    for b, (packets, nbytes, new) in zip(lb.backends, counts, strict=True):
        packets_total += packets
        bytes_total += nbytes
        new_total += new
        record = health.get(health_key(lb.name, str(b.address), b.port), {}) if health else {}
        if b.weight == 0 or b.drain:
            state, reason = "draining", "weight 0" if b.weight == 0 else "drain: true"
        else:
            if id(b) in serving:
                usable = True
            else:
                if by_key is None:
                    by_key = {x.key for x in svc.backends} if svc else set()
                usable = b.key in by_key
            state = record.get("state", "up" if usable else "down")
            reason = record.get("reason", unchecked if not record else "")
        states[state] = states.get(state, 0) + 1
        if not detail:
            continue
        backends.append(
            {
                "address": str(b.address),
                "port": b.port,
                "weight": b.weight,
                "state": state,
                "since": record.get("since"),
                "reason": reason,
                "counters": {"newConnections": new, "packets": packets, "bytes": nbytes},
            }
        )
    total = Counter(packets_total, bytes_total)
    out = {
        "name": lb.name,
        "state": lb.state.value,
        # In the kernel's service map, not only in the state record: a table deleted or flushed
        # behind our back shows here at once.
        "programmed": svc is not None and counters.programmed(svc.vip, svc.protocol, svc.port),
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
        "backendStates": states,
        "backends": backends,
    }
    if not detail:
        out["backendsOmitted"] = True
    return out


def live_status(state: SyncedState, counters: TableCounters, health: dict[str, HealthRecord],
                sources: tuple[str, ...], info: dict[str, Any], name: str | None = None,
                backends: bool | None = True,
                announced: Callable[[str | None], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The daemon's answer to `gatelb status [NAME]`: the same document, from its memory.
    `announced`: where a VIP is announced and how (each load balancer's `announced`)."""
    lbs = state.load_balancers
    chosen = tuple(lbs.values()) if name is None else (lbs[name],)
    services = state.services if name is None else {n: s for n, s in state.services.items() if n == name}
    data = build_status(DesiredState(state.pools, chosen), {n: str(ip) for n, ip in state.addresses.items()},
                        ResolvedState(tuple(services.values())), counters, state.generation, health,
                        True if name is not None else backends, unchecked="not health-checked")
    if announced is not None:
        for lb in data["loadBalancers"]:
            lb["announced"] = announced(lb["frontend"]["ip"] if lb["programmed"] else None)
    data["sources"] = list(sources)
    data["errors"] = [str(e) for errs in state.errors.values() for e in errs]
    if info:
        data["info"] = info
    data["from"] = "daemon"
    return data


def counters_for(nft: Nft, services: list[Service] | None) -> TableCounters:
    """The kernel's counters: of these services' backends only (None: all of them), asked by
    key over netlink when we can, else the whole table."""
    if services is None or not nft.bulk_elements:
        return nft.read_counters()
    from gatelb.kernel.nlcounters import read_counters_for

    return read_counters_for([(s.vip, s.protocol, b.address, b.port)
                              for s in services for b in (*s.backends, *s.idle_backends)])
