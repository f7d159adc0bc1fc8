"""A source whose content is given as values: what `gatelb delete` leaves applied, and tests.

`set()` replaces the content; the next collect() hands over the difference against what was
last committed, exactly like the file and Kubernetes sources do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gatelb.model import ConfigObject, DesiredState, IPPool, LoadBalancer, ObjectRef, OriginKind, ValidationError
from gatelb.sources.base import AddressView, Contribution, Notify


class StaticSource:
    def __init__(self, name: str, desired: DesiredState | None = None, *, strict: bool = True,
                 errors: Mapping[ObjectRef, tuple[ValidationError, ...]] | None = None,
                 config: Iterable[ConfigObject] = ()) -> None:
        self._name = name
        self._strict = strict
        self._lbs: dict[str, LoadBalancer] = {}
        self._pools: tuple[IPPool, ...] = ()
        self._errors: dict[ObjectRef, tuple[ValidationError, ...]] = {}
        self._committed_lbs: dict[str, LoadBalancer] = {}
        self._committed_pools: tuple[IPPool, ...] | None = None
        self._committed_errors: dict[ObjectRef, tuple[ValidationError, ...]] = {}
        self._config: dict[ObjectRef, ConfigObject] = {}
        self._committed_config: dict[ObjectRef, ConfigObject] = {}
        self._notify: Notify | None = None
        self._synced = False
        self.collects = 0
        self.set(desired or DesiredState(), errors, config)

    @property
    def name(self) -> str:
        return self._name

    @property
    def strict(self) -> bool:
        return self._strict

    @property
    def synced(self) -> bool:
        return self._synced

    def set(self, desired: DesiredState,
            errors: Mapping[ObjectRef, tuple[ValidationError, ...]] | None = None,
            config: Iterable[ConfigObject] = ()) -> None:
        self._lbs = {lb.name: lb for lb in desired.load_balancers}
        self._pools = desired.pools
        self._errors = dict(errors or {})
        self._config = {obj.ref: obj for obj in config}
        if self._notify is not None:
            self._notify("set")

    async def run(self, notify: Notify) -> None:
        self._notify = notify
        self._synced = True
        notify("start")

    def collect(self, view: AddressView) -> Contribution | None:
        self.collects += 1
        lbs: dict[str, LoadBalancer | None] = {
            n: lb for n, lb in self._lbs.items() if self._committed_lbs.get(n) != lb}
        lbs.update({n: None for n in self._committed_lbs if n not in self._lbs})
        errors = {ref: errs for ref, errs in self._errors.items() if self._committed_errors.get(ref) != errs}
        errors.update({ref: () for ref in self._committed_errors if ref not in self._errors})
        pools = self._pools if self._pools != self._committed_pools else None
        config: dict[ObjectRef, ConfigObject | None] = {
            ref: obj for ref, obj in self._config.items() if self._committed_config.get(ref) != obj}
        config.update({ref: None for ref in self._committed_config if ref not in self._config})
        c = Contribution(lbs, pools, errors, {n: ObjectRef(OriginKind.FILE, n) for n in lbs}, config=config)
        return None if c.empty else c

    def commit(self, contribution: Contribution) -> None:
        for name, lb in contribution.load_balancers.items():
            if lb is None:
                self._committed_lbs.pop(name, None)
            else:
                self._committed_lbs[name] = lb
        if contribution.pools is not None:
            self._committed_pools = contribution.pools
        for ref, errs in contribution.errors.items():
            if errs:
                self._committed_errors[ref] = errs
            else:
                self._committed_errors.pop(ref, None)
        for ref, obj in contribution.config.items():
            if obj is None:
                self._committed_config.pop(ref, None)
            else:
                self._committed_config[ref] = obj
