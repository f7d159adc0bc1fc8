"""Source text -> validated desired state -> allocated addresses -> resolved services.

Shared by the one-shot commands (apply, plan, delete) and the daemon, so they can never disagree
about what a file means.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gatelb.ipam.lb import Allocation, allocate
from gatelb.model import Backend, DesiredState, IPAddress, ResolvedState
from gatelb.resolve import resolve
from gatelb.sources.standalone import load_text

Usable = Callable[[str, Backend], bool]


@dataclass(frozen=True)
class Prepared:
    desired: DesiredState
    allocation: Allocation
    resolved: ResolvedState
    timings: dict[str, float] = field(default_factory=dict)


def prepare(
    text: str,
    source_name: str,
    recorded: Mapping[str, str],
    usable: Usable | None = None,
) -> Prepared:
    """Raises gatelb.model.ValidationErrors with every problem found; changes nothing."""
    t0 = time.perf_counter()
    desired = load_text(text, source_name)
    t1 = time.perf_counter()
    previous: dict[str, IPAddress] = {}
    for name, ip in recorded.items():
        try:
            previous[name] = ipaddress.ip_address(ip)
        except ValueError:
            continue  # a damaged record only loses its pinning; IPAM allocates afresh
    allocation = allocate(desired, previous)
    resolved = resolve(desired, allocation, usable)
    t2 = time.perf_counter()
    return Prepared(desired, allocation, resolved, {"parse_s": t1 - t0, "ipam_s": t2 - t1})
