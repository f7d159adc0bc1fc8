"""The network lab: namespaces, test backends and a traffic client for the demo, the netns tests
and the benchmarks. Start with `Lab` (gatelb.lab.topology)."""

from gatelb.lab.held import ConnectionLost, HeldConnection
from gatelb.lab.lifecycle import install_signal_handlers
from gatelb.lab.naming import cleanup_leftovers
from gatelb.lab.results import Attempt, ClientResult
from gatelb.lab.topology import Lab, LabError

__all__ = [
    "Attempt", "ClientResult", "ConnectionLost", "HeldConnection", "Lab", "LabError",
    "cleanup_leftovers", "install_signal_handlers",
]
