"""What every source of desired state hands the reconciler (gatelb.agent.reconciler).

A source (a file, a directory of files, the Kubernetes API) keeps its own cache of what it read
and tells the reconciler only what changed since the contribution the reconciler last
*committed*. That makes a change to one of 10,000 objects cost work proportional to the change
everywhere above the source (kube-proxy's change trackers follow the same idea).

Protocol of one round, all on the event loop:

    source.notify(reason) ... (the source calls the reconciler's wake callback when it has news)
    contribution = source.collect(view)     # None: nothing new since the last commit
    ... the reconciler allocates, resolves and programs the kernel ...
    source.commit(contribution)             # the reconciler accepted it (or, for a non-strict
                                            # source, everything except the objects in error)

A *strict* source (the standalone file or directory) is all-or-nothing per contribution: if any
of it fails (validation, IPAM), the reconciler applies none of it, keeps the last committed
content of that source in force, reports the errors, and does not call commit(); the next
collect() again returns the difference against the last committed content. A non-strict source
(Kubernetes) has errors attached to single objects; the other objects proceed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gatelb.model import ConfigObject, IPAddress, IPPool, LoadBalancer, ObjectRef, ValidationError

Notify = Callable[[str], None]


@dataclass(frozen=True)
class Contribution:
    """What changed in one source since its last committed contribution.

    - `load_balancers`: name -> the new LoadBalancer (added or changed), or None (removed).
      When `full` is set it holds the source's whole content, and every name the source gave
      before and does not list here is removed.
    - `pools`: the source's complete pool list when it changed; None when unchanged.
    - `errors`: object -> its current problems. An empty tuple clears that object's errors;
      objects not named keep theirs. With `full`, objects not named have none.
    - `origins`: which object each load balancer in `load_balancers` came from (for status,
      events and error attribution); a name missing here is its own origin in the source.
    - `config`: other configuration objects (model.ConfigObject: BGP peers, DNS providers...)
      added or changed, or None for removed, by ObjectRef(kind, name); with `full`, all of them.
    """

    load_balancers: Mapping[str, LoadBalancer | None] = field(default_factory=dict)
    pools: tuple[IPPool, ...] | None = None
    errors: Mapping[ObjectRef, tuple[ValidationError, ...]] = field(default_factory=dict)
    origins: Mapping[str, ObjectRef] = field(default_factory=dict)
    full: bool = False
    config: Mapping[ObjectRef, ConfigObject | None] = field(default_factory=dict)
    # Addresses load balancers had according to the source (an object's status): they get them
    # back when still free, as after a restart with the state record.
    recorded: Mapping[str, IPAddress] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.load_balancers or self.errors or self.full or self.config) and self.pools is None


class AddressView(Protocol):
    """What a source may ask the reconciler while it collects (e.g. the Service IPAM must not
    hand out an address an L4LB already holds)."""

    @property
    def pools(self) -> tuple[IPPool, ...]:
        """Every pool of every source, as of the last committed round."""
        ...

    def holders(self, ip: IPAddress) -> frozenset[str]:
        """Load balancers (by name) that hold `ip` after the last committed round."""
        ...


class Source(Protocol):
    """A producer of desired state. The constructor does no I/O and starts nothing."""

    @property
    def name(self) -> str:
        """For logs: "file /etc/gatelb/lbs.yaml", "kubernetes"."""
        ...

    @property
    def strict(self) -> bool: ...

    @property
    def synced(self) -> bool:
        """True once the first complete load is in (the reconciler programs nothing before every
        source is synced)."""
        ...

    async def run(self, notify: Notify) -> None:
        """Load, then follow changes until cancelled; call notify(reason) when collect() has
        something new. A one-shot source loads and returns."""
        ...

    def collect(self, view: AddressView) -> Contribution | None: ...

    def commit(self, contribution: Contribution) -> None: ...
