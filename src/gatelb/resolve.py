"""Allocated L4LBs -> the services the data-plane compiler takes. Pure.

Health and drain applied to the model: a backend with weight 0 or drain, or not `usable` (its
health check is down), takes no new connections. That is not IPAM's job: the addresses come in
as an `Allocation` (`gatelb.ipam.lb`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gatelb.ipam.lb import Allocation
from gatelb.model import (
    HA_ACTIVE_ACTIVE,
    Algorithm,
    Backend,
    ConfigObject,
    DesiredState,
    GatewayGroup,
    IPAddress,
    LoadBalancer,
    ResolvedState,
    Service,
)

Usable = Callable[[str, Backend], bool]

# What an active-active configuration replaces: these pick differently on every member.
_PER_MEMBER = (Algorithm.RANDOM, Algorithm.ROUNDROBIN)


def consistent_selection(config: Iterable[ConfigObject]) -> bool:
    """The configuration has an active-active GatewayGroup: every gateway that serves it must
    pick the same backend for a flow (a flow that ECMP moves to another member keeps its
    backend), so random and round robin become maglev. Source hash is kept: it is the same on
    every member already (pinned seed, same table)."""
    return any(isinstance(o, GatewayGroup) and o.mode == HA_ACTIVE_ACTIVE for o in config)


def service_for(lb: LoadBalancer, vip: IPAddress, usable: Usable | None = None, consistent: bool = False) -> Service:
    """Backends with weight 0 or drain, or not `usable` (e.g. health down), take no new
    connections: they go to `idle_backends`, where their established flows keep working.
    `consistent`: see consistent_selection()."""
    taking: list[Backend] = []
    idle: list[Backend] = []
    for b in lb.backends:
        ok = b.weight > 0 and not b.drain and (usable is None or usable(lb.name, b))
        (taking if ok else idle).append(b)
    return Service(
        name=lb.name,
        vip=vip,
        protocol=lb.protocol,
        port=lb.port,
        backends=tuple(taking),
        algorithm=Algorithm.MAGLEV if consistent and lb.algorithm in _PER_MEMBER else lb.algorithm,
        affinity=lb.affinity,
        source_ranges=lb.source_ranges,
        nat=lb.nat,
        no_backend=lb.no_backend,
        idle_backends=tuple(idle),
    )


def resolve(desired: DesiredState, allocation: Allocation, usable: Usable | None = None) -> ResolvedState:
    """The active L4LBs as services, sorted by name. An L4LB without an address (its allocation
    failed) is left out."""
    services = [
        service_for(lb, allocation.addresses[lb.name], usable)
        for lb in desired.load_balancers
        if lb.active and lb.name in allocation.addresses
    ]
    return ResolvedState(tuple(sorted(services, key=lambda s: s.name)))


class Resolver:
    """resolve() that reuses the Service of every L4LB whose object, address and backend health
    are unchanged, so that an unchanged service is the *same* object and the data-plane diff can
    skip it by identity. `dirty` names the L4LBs whose backend health changed since last time."""

    def __init__(self) -> None:
        self._memo: dict[str, tuple[LoadBalancer, IPAddress, Service]] = {}

    def resolve(self, desired: DesiredState, allocation: Allocation, usable: Usable | None,
                dirty: Iterable[str] = ()) -> ResolvedState:
        dirty = set(dirty)
        memo: dict[str, tuple[LoadBalancer, IPAddress, Service]] = {}
        for lb in desired.load_balancers:
            vip = allocation.addresses.get(lb.name)
            if not lb.active or vip is None:
                continue
            hit = self._memo.get(lb.name)
            if hit is not None and hit[0] is lb and hit[1] == vip and lb.name not in dirty:
                memo[lb.name] = hit
            else:
                memo[lb.name] = (lb, vip, service_for(lb, vip, usable))
        self._memo = memo
        return ResolvedState(tuple(memo[name][2] for name in sorted(memo)))
