"""The typed record of what was applied, and its compact JSON form in the state file.

Every mode adopts the table from it after a restart (with the generation number in the kernel),
so that nothing is reloaded when nothing changed; `gatelb status` shows it.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gatelb.addresses import ip_address
from gatelb.model import (
    AddressRange,
    Affinity,
    Algorithm,
    Backend,
    CheckType,
    HealthCheck,
    IPPool,
    LBState,
    LoadBalancer,
    NatMode,
    NoBackendAction,
    ObjectRef,
    Protocol,
    ResolvedState,
    Service,
)


def _backends_out(backends: tuple[Backend, ...]) -> list[list[Any]]:
    return [[str(b.address), b.port, b.weight, b.drain] for b in backends]


def _backends_in(rows: list[list[Any]]) -> tuple[Backend, ...]:
    return tuple(Backend(ip_address(a), int(p), int(w), bool(d)) for a, p, w, d in rows)


def services_to_json(state: ResolvedState) -> list[dict[str, Any]]:
    return [_service_out(s) for s in state.services]


def _service_out(s: Service) -> dict[str, Any]:
    return {
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


def services_from_json(rows: list[dict[str, Any]]) -> ResolvedState:
    return ResolvedState(
        tuple(
            Service(
                name=r["name"],
                vip=ip_address(r["vip"]),
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


# --- desired load balancers (so that `gatelb status` and `delete` need no source text) -----------


def _check_out(c: HealthCheck) -> dict[str, Any]:
    return {"type": c.type.value, "port": c.port, "interval": c.interval_ms, "timeout": c.timeout_ms,
            "rise": c.rise, "fall": c.fall, "requestPath": c.request_path, "host": c.host,
            "statuses": [list(r) for r in c.expected_statuses], "payload": c.payload, "expect": c.expect}


def _check_in(d: dict[str, Any]) -> HealthCheck:
    return HealthCheck(type=CheckType(d["type"]), port=d.get("port"), interval_ms=int(d["interval"]),
                       timeout_ms=int(d["timeout"]), rise=int(d["rise"]), fall=int(d["fall"]),
                       request_path=str(d["requestPath"]), host=d.get("host"),
                       expected_statuses=tuple((int(a), int(b)) for a, b in d["statuses"]),
                       payload=d.get("payload"), expect=d.get("expect"))


def lbs_to_json(lbs: Iterable[LoadBalancer]) -> list[dict[str, Any]]:
    return [_lb_out(lb) for lb in lbs]


def _lb_out(lb: LoadBalancer) -> dict[str, Any]:
    return {
            "name": lb.name, "port": lb.port, "protocol": lb.protocol.value,
            "frontendIP": str(lb.frontend_ip) if lb.frontend_ip else None, "pool": lb.pool,
            "backends": _backends_out(lb.backends), "algorithm": lb.algorithm.value,
            "affinity": lb.affinity.timeout_seconds if lb.affinity else None,
            "sourceRanges": [str(n) for n in lb.source_ranges], "nat": lb.nat.value, "state": lb.state.value,
            "check": _check_out(lb.check), "noBackend": lb.no_backend.value, "family": lb.family,
            **({"hostnames": list(lb.hostnames)} if lb.hostnames else {}),
            **({"dnsTTL": lb.dns_ttl} if lb.dns_ttl else {}),
        }


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


class JsonMemo:
    """The encoded JSON of each service and load balancer, kept from one write of the record to
    the next. The daemon writes the record after every sync; encoding 10,000 unchanged services
    and load balancers again each time takes about half a second, most of it holding the GIL
    (the C encoder never lets go), which stalls the event loop: every event arriving meanwhile
    waits. With the memo a write encodes only what changed. Used by one thread at a time."""

    def __init__(self) -> None:
        self._services: dict[str, tuple[Service, str]] = {}
        self._lbs: dict[str, tuple[LoadBalancer, str]] = {}

    def services(self, services: Iterable[Service]) -> str:
        self._services = _encoded(services, self._services, _service_out)
        return "[" + ",".join(text for _, text in self._services.values()) + "]"

    def load_balancers(self, lbs: Iterable[LoadBalancer]) -> str:
        self._lbs = _encoded(lbs, self._lbs, _lb_out)
        return "[" + ",".join(text for _, text in self._lbs.values()) + "]"


def _encoded(objs: Iterable[Any], memo: dict[str, tuple[Any, str]],
             out: Callable[[Any], dict[str, Any]]) -> dict[str, tuple[Any, str]]:
    """name -> (object, its JSON text), in the order of `objs`; reuses the memo's text for an
    object that is the same (or an equal one)."""
    fresh: dict[str, tuple[Any, str]] = {}
    for obj in objs:
        held = memo.get(obj.name)
        fresh[obj.name] = held if held is not None and (held[0] is obj or held[0] == obj) else (obj, _dumps(out(obj)))
    return fresh


def lbs_from_json(rows: list[dict[str, Any]]) -> tuple[LoadBalancer, ...]:
    return tuple(
        LoadBalancer(
            name=r["name"], port=int(r["port"]), protocol=Protocol(r["protocol"]),
            frontend_ip=ip_address(r["frontendIP"]) if r.get("frontendIP") else None,
            pool=r.get("pool"), backends=_backends_in(r["backends"]), algorithm=Algorithm(r["algorithm"]),
            affinity=Affinity(int(r["affinity"])) if r.get("affinity") else None,
            source_ranges=tuple(ipaddress.ip_network(n) for n in r.get("sourceRanges", [])),
            nat=NatMode(r["nat"]), state=LBState(r["state"]), check=_check_in(r["check"]),
            no_backend=NoBackendAction(r["noBackend"]), family=int(r["family"]),
            hostnames=tuple(r.get("hostnames", ())), dns_ttl=r.get("dnsTTL"),
        )
        for r in rows
    )


def pools_to_json(pools: Iterable[IPPool]) -> list[dict[str, Any]]:
    return [{"name": p.name, "ranges": [[str(r.first), str(r.last)] for r in p.ranges],
             "autoAssign": p.auto_assign, "avoidBuggyIPs": p.avoid_buggy_ips} for p in pools]


def pools_from_json(rows: list[dict[str, Any]]) -> tuple[IPPool, ...]:
    return tuple(
        IPPool(str(r["name"]), tuple(AddressRange(ipaddress.ip_address(a), ipaddress.ip_address(b))
                                     for a, b in r["ranges"]),
               bool(r["autoAssign"]), bool(r["avoidBuggyIPs"]))
        for r in rows
    )


HealthRecord = dict[str, Any]  # {"state", "since", "reason"} of one target


@dataclass(frozen=True)
class AppliedRecord:
    """What the last successful sync programmed, kept between runs: the daemon and the one-shot
    commands adopt the table from it (when the kernel's generation still matches), `gatelb
    status` shows it, `gatelb delete` removes from it."""

    generation: int
    services: ResolvedState
    load_balancers: tuple[LoadBalancer, ...] = ()
    pools: tuple[IPPool, ...] = ()
    origins: dict[str, ObjectRef] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    health: dict[str, HealthRecord] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    applied_at: float = 0.0
    daemon: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # mode-specific (Kubernetes: leader, informers)

    def to_json(self) -> dict[str, Any]:
        return {**self.to_json_without_objects(), "services": services_to_json(self.services),
                "loadBalancers": lbs_to_json(self.load_balancers)}

    def to_json_text(self, memo: JsonMemo) -> str:
        """The same as `json.dumps(to_json())` (compact), the services and load balancers
        encoded through `memo`."""
        rest = self.to_json_without_objects()
        return (_dumps(rest)[:-1] + ',"services":' + memo.services(self.services.services)
                + ',"loadBalancers":' + memo.load_balancers(self.load_balancers) + "}")

    def to_json_without_objects(self) -> dict[str, Any]:
        return {
            "generation": self.generation, "pools": pools_to_json(self.pools),
            "origins": {n: [o.kind, o.key] for n, o in self.origins.items()},
            "sources": list(self.sources), "health": self.health, "errors": list(self.errors),
            "appliedAt": self.applied_at, "daemon": self.daemon, "info": self.info,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AppliedRecord:
        """Raises KeyError, TypeError or ValueError on a damaged record."""
        return cls(
            generation=int(d["generation"]), services=services_from_json(d["services"]),
            load_balancers=lbs_from_json(d.get("loadBalancers", [])), pools=pools_from_json(d.get("pools", [])),
            origins={n: ObjectRef(str(k), str(v)) for n, (k, v) in d.get("origins", {}).items()},
            sources=tuple(d.get("sources", ())), health=dict(d.get("health", {})),
            errors=tuple(d.get("errors", ())), applied_at=float(d.get("appliedAt", 0.0)),
            daemon=bool(d.get("daemon", False)), info=dict(d.get("info", {})),
        )
