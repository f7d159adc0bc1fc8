"""Compact JSON form of the resolved services, kept in the state file between runs.

A one-shot `gatelb apply` uses it (with the generation number in the kernel) to update the kernel
incrementally instead of reloading everything, and `gatelb status` uses it to know what is live.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from gatelb.model import (
    Affinity,
    Algorithm,
    Backend,
    NatMode,
    NoBackendAction,
    Protocol,
    ResolvedState,
    Service,
)


def _backends_out(backends: tuple[Backend, ...]) -> list[list[Any]]:
    return [[str(b.address), b.port, b.weight, b.drain] for b in backends]


def _backends_in(rows: list[list[Any]]) -> tuple[Backend, ...]:
    return tuple(Backend(ipaddress.ip_address(a), int(p), int(w), bool(d)) for a, p, w, d in rows)


def services_to_json(state: ResolvedState) -> list[dict[str, Any]]:
    return [
        {
            "name": s.name,
            "vip": str(s.vip),
            "protocol": s.protocol.value,
            "port": s.port,
            "algorithm": s.algorithm.value,
            "affinity": s.affinity.timeout_seconds if s.affinity else None,
            "sourceRanges": [str(n) for n in s.source_ranges],
            "nat": s.nat.value,
            "noBackend": s.no_backend.value,
            "backends": _backends_out(s.backends),
            "idle": _backends_out(s.idle_backends),
        }
        for s in state.services
    ]


def services_from_json(rows: list[dict[str, Any]]) -> ResolvedState:
    return ResolvedState(
        tuple(
            Service(
                name=r["name"],
                vip=ipaddress.ip_address(r["vip"]),
                protocol=Protocol(r["protocol"]),
                port=int(r["port"]),
                backends=_backends_in(r["backends"]),
                algorithm=Algorithm(r["algorithm"]),
                affinity=Affinity(int(r["affinity"])) if r.get("affinity") else None,
                source_ranges=tuple(ipaddress.ip_network(n) for n in r.get("sourceRanges", [])),
                nat=NatMode(r["nat"]),
                no_backend=NoBackendAction(r.get("noBackend", "reject")),
                idle_backends=_backends_in(r.get("idle", [])),
            )
            for r in rows
        )
    )
