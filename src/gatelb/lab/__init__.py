"""The network lab: namespaces, test backends and a traffic client for the demo, the netns tests
and the benchmarks. Start with `Lab` (gatelb.lab.topology)."""

from gatelb.lab.daemon import LabDaemon
from gatelb.lab.held import ConnectionLost, HeldConnection
from gatelb.lab.lifecycle import install_signal_handlers
from gatelb.lab.naming import cleanup_leftovers
from gatelb.lab.results import Attempt, ClientResult
from gatelb.lab.running import ClientRunFailed, RunningClient
from gatelb.lab.topology import Lab, LabError

__all__ = [
    "Attempt", "ClientResult", "ClientRunFailed", "ConnectionLost", "HeldConnection", "Lab", "LabDaemon",
    "LabError", "RunningClient", "cleanup_leftovers", "install_signal_handlers",
]
