"""Feeds the health monitor from the reconciler: it probes the backends of the desired state.

The reconciler calls `desired()` in every round after merging the sources and BEFORE resolving
backends, so a backend that appears is already known to the monitor (and starts down until its
first check passes, unless it came with the first load) when the compiler asks whether it may
take connections. Targets are the backends of active load balancers whose check is not `none`.
`changed` keeps the update proportional to what changed; None (first round, a pool change) gives
the whole set.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from gatelb.health.monitor import HealthMonitor, TargetKey
from gatelb.model import CheckType, HealthCheck, LoadBalancer


def targets_of(lb: LoadBalancer) -> dict[TargetKey, HealthCheck]:
    if not lb.active or lb.check.type is CheckType.NONE:
        return {}
    return {TargetKey(lb.name, b.address, b.port): lb.check for b in lb.backends}


class HealthFeed:
    def __init__(self, monitor: HealthMonitor) -> None:
        self._monitor = monitor

    def desired(self, load_balancers: Mapping[str, LoadBalancer], changed: Collection[str] | None) -> None:
        if changed is None:
            self._monitor.set({k: c for lb in load_balancers.values() for k, c in targets_of(lb).items()})
            return
        targets: dict[TargetKey, HealthCheck] = {}
        for name in changed:
            lb = load_balancers.get(name)
            if lb is not None:
                targets.update(targets_of(lb))
        self._monitor.update(changed, targets)
