"""Active health checks: asyncio probes (`probes`), the pure rise/fall/damping state machine
(`state`) and the monitor that ties them together for the agent (`monitor`)."""

from gatelb.health.monitor import HealthChange, HealthMonitor, LastResult, TargetKey, TargetStatus
from gatelb.health.probes import ProbeResult, probe
from gatelb.health.state import Damping, HealthState, Rules, Status

__all__ = [
    "Damping",
    "HealthChange",
    "HealthMonitor",
    "HealthState",
    "LastResult",
    "ProbeResult",
    "Rules",
    "Status",
    "TargetKey",
    "TargetStatus",
    "probe",
]
