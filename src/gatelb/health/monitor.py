"""Probes every target on its own schedule and reports health transitions in batches.

Usage (the agent)::

    monitor = HealthMonitor(on_change=agent.health_changed)   # no I/O, no task
    monitor.set({TargetKey("web", ip, 8080): lb.check, ...})   # the FULL set, every time
    supervisor.start("health", monitor.run())                  # probes run inside run()
    monitor.is_up(TargetKey("web", ip, 8080))                  # what the compiler should use

`set()` and everything else must be called from the event loop's thread (the agent is async).
After `set()` returns, `is_up()`/`snapshot()` already reflect the new set; `on_change` reports only
the transitions that probes find later, batched per event-loop iteration, so a burst of
transitions (a switch dying under fifty backends) costs the agent one resync.

New targets: those in the first `set()` call start up (assumed; the agent just started and the
kernel may still be serving them), those added later start down until their first successful check;
either way the first result decides at once (`state` module docstring). Targets of check type
`none` are always up and never probed. A target whose check changed keeps its status and restarts
probing with the new check. The same backend under two load balancers is two targets, probed
separately (their checks may differ).

Bounded: at most `per_target` probes of one target are in flight (a probe that would exceed it is
skipped, not queued) and at most `max_in_flight` in all (further probes wait for a slot), so
55 silent backends probed every 100 ms with a 2 s timeout hold about 165 sockets, not 1,100; the
global bound defaults to half the process's file descriptor limit, at most MAX_IN_FLIGHT.

Restarts: `seed()` gives the health the previous run recorded; a target recorded down starts down
(not assumed up) until its first result.

Detection: a backend that dies is reported down within interval x fall + timeout (probes start
every interval and overlap when timeout > interval); a refused connect fails at once, so a killed
process is usually seen in about interval x (fall - 1) to interval x fall. Capacity: one asyncio
loop sustains about 2,000 TCP probes/s at half a core on this machine kind (2,000 targets at 1 s);
at 10,000 probes/s it saturates a core and probes fall behind schedule (no false downs seen).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import resource
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from gatelb.health import state as sm
from gatelb.health.probes import ProbeResult, probe
from gatelb.model import CheckType, HealthCheck, IPAddress

log = logging.getLogger("gatelb.health")

Prober = Callable[[IPAddress, int, HealthCheck], Awaitable[ProbeResult]]

PER_TARGET = 3  # probes of one target in flight at most
MAX_IN_FLIGHT = 1024  # probes in flight at most, whatever the file descriptor limit


def default_max_in_flight() -> int:
    """Half the soft file descriptor limit (the rest: nft, netlink, files, the API), bounded."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_IN_FLIGHT
    return max(16, min(MAX_IN_FLIGHT, soft // 2))


@dataclass(frozen=True, slots=True, order=False)
class TargetKey:
    """One backend of one load balancer."""

    lb: str
    address: IPAddress
    port: int

    @property
    def backend(self) -> str:
        return f"[{self.address}]:{self.port}" if self.address.version == 6 else f"{self.address}:{self.port}"

    def sort_key(self) -> tuple[str, int, int, int]:
        """A total order (IPv4 and IPv6 addresses do not compare with each other)."""
        return (self.lb, self.address.version, int(self.address), self.port)

    def __str__(self) -> str:
        return f"{self.lb} {self.backend}"


@dataclass(frozen=True, slots=True)
class HealthChange:
    """One transition, as passed to `on_change`."""

    key: TargetKey
    status: sm.Status
    previous: sm.Status
    since: float  # monitor clock
    reason: str


@dataclass(frozen=True, slots=True)
class LastResult:
    ok: bool
    detail: str
    at: float  # monitor clock
    latency_ms: float


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """One row of `gatelb status`."""

    key: TargetKey
    check: CheckType
    status: sm.Status
    since: float  # monitor clock (monotonic)
    since_wall: float  # the same instant as a UNIX time, for display
    reason: str
    last: LastResult | None
    successes: int  # consecutive
    failures: int  # consecutive
    hold_until: float | None  # damped: passing, but not back before this (monitor clock)


@dataclass(slots=True)
class _Target:
    check: HealthCheck
    rules: sm.Rules
    state: sm.HealthState
    last: LastResult | None = None
    task: asyncio.Task[None] | None = None
    started: int = 0  # sequence number of the last probe started
    recorded: int = 0  # sequence number of the last probe whose result was used


class HealthMonitor:
    """See the module docstring. `prober` and `jitter` are there for tests and benchmarks."""

    def __init__(
        self,
        on_change: Callable[[list[HealthChange]], None],
        clock: Callable[[], float] = time.monotonic,
        *,
        damping: sm.Damping | None = None,
        jitter: float = 0.1,
        prober: Prober = probe,
        per_target: int = PER_TARGET,
        max_in_flight: int | None = None,
    ) -> None:
        self._on_change = on_change
        self._clock = clock
        self._damping = damping if damping is not None else sm.Damping()
        self._jitter = jitter  # fraction of the interval; spreads probes so they do not come in waves
        self._prober = prober
        self._targets: dict[TargetKey, _Target] = {}
        self._by_lb: dict[str, set[TargetKey]] = {}
        self._seeded = False  # has set() been called once
        self._running = False
        self._pending: list[HealthChange] = []
        self._flush_scheduled = False
        self._revision = 0
        self._per_target = per_target
        self._max_in_flight = max_in_flight
        self._slots: asyncio.Semaphore | None = None  # created in run(): the bound on probes in flight
        self._recorded_down: dict[TargetKey, str] = {}  # seed(): down before the restart, and why
        self.in_flight = 0  # probes holding a slot now
        self.skipped = 0  # probes not started because their target had `per_target` in flight

    # -- the desired set ----------------------------------------------------------------------

    def seed(self, recorded_down: Mapping[TargetKey, str]) -> None:
        """Targets the previous run had found down (key -> its reason): before the first set(),
        they start down instead of assumed up, until their first result."""
        self._recorded_down = dict(recorded_down)

    def set(self, targets: Mapping[TargetKey, HealthCheck]) -> None:
        """Make the monitored set exactly `targets`: start new ones, stop removed ones, restart
        changed ones. Cheap for an unchanged set, so the agent can call it on every sync."""
        now = self._clock()
        assume_up = not self._seeded
        self._seeded = True
        if targets.keys() != self._targets.keys():
            self._revision += 1
        for key in [k for k in self._targets if k not in targets]:
            self._remove(key)
        for key, check in targets.items():
            self._put(key, check, now, assume_up)
        self._recorded_down = {}  # only the first set uses it

    def update(self, lbs: Iterable[str], targets: Mapping[TargetKey, HealthCheck]) -> None:
        """Make the targets of the load balancers `lbs` exactly those in `targets` (whose keys must
        belong to `lbs`); every other load balancer's targets stay as they are. The reconciler's
        path: work proportional to the load balancers that changed, not to all of them."""
        now = self._clock()
        assume_up = not self._seeded
        self._seeded = True
        for lb in lbs:
            for key in [k for k in self._by_lb.get(lb, ()) if k not in targets]:
                self._revision += 1
                self._remove(key)
        for key, check in targets.items():
            if key not in self._targets:
                self._revision += 1
            self._put(key, check, now, assume_up)
        self._recorded_down = {}

    def _put(self, key: TargetKey, check: HealthCheck, now: float, assume_up: bool) -> None:
        current = self._targets.get(key)
        if current is None:
            self._targets[key] = self._new_target(key, check, now, assume_up)
            self._by_lb.setdefault(key.lb, set()).add(key)
        elif current.check != check:
            self._change_check(key, current, check, now)

    def _remove(self, key: TargetKey) -> None:
        self._stop(self._targets.pop(key))
        keys = self._by_lb.get(key.lb)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_lb[key.lb]

    def _new_target(self, key: TargetKey, check: HealthCheck, now: float, assume_up: bool) -> _Target:
        rules = sm.Rules(check.rise, check.fall, self._damping)
        if check.type is CheckType.NONE:
            target = _Target(check, rules, sm.always_up(now))
        elif assume_up and key in self._recorded_down:
            target = _Target(check, rules, sm.recorded_down(now, self._recorded_down[key]))
        else:
            target = _Target(check, rules, sm.initial(now, assume_up=assume_up))
        self._start(key, target)
        return target

    def _change_check(self, key: TargetKey, target: _Target, check: HealthCheck, now: float) -> None:
        self._revision += 1
        self._stop(target)
        before = target.state
        target.check = check
        target.rules = sm.Rules(check.rise, check.fall, self._damping)
        target.state = sm.always_up(now) if check.type is CheckType.NONE else sm.restart(before)
        target.last = None
        if before.status is not target.state.status:
            self._log(key, target.state)
        self._start(key, target)

    # -- queries ------------------------------------------------------------------------------

    def is_up(self, key: TargetKey) -> bool:
        """Whether the backend may take new connections. KeyError for a key not in the last set()."""
        return self._targets[key].state.up

    @property
    def revision(self) -> int:
        """Grows whenever what `snapshot()` shows for state or reason may have changed: targets
        added, removed or re-checked, transitions, and results that change only the reason (a first
        check that confirms an assumed state is no transition). The agent compares it to decide
        whether `gatelb status` needs rewriting, without diffing snapshots."""
        return self._revision

    def snapshot(self, lb: str | None = None) -> list[TargetStatus]:
        """Every target's state (or those of load balancer `lb`), sorted by load balancer then backend."""
        now, wall = self._clock(), time.time()
        targets = self._targets if lb is None else {k: self._targets[k] for k in self._by_lb.get(lb, ())}
        rows = [
            TargetStatus(
                key=key,
                check=t.check.type,
                status=t.state.status,
                since=t.state.since,
                since_wall=wall - (now - t.state.since),
                reason=t.state.reason,
                last=t.last,
                successes=t.state.successes,
                failures=t.state.failures,
                hold_until=t.state.hold_until,
            )
            for key, t in targets.items()
        ]
        return sorted(rows, key=lambda r: r.key.sort_key())

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Probe until cancelled. Run it once, as a named task of the agent's supervisor."""
        if self._running:
            raise RuntimeError("HealthMonitor.run() is already running")
        self._running = True
        limit = self._max_in_flight if self._max_in_flight is not None else default_max_in_flight()
        self._slots = asyncio.Semaphore(limit)
        try:
            for key, target in self._targets.items():
                self._start(key, target)
            await asyncio.Event().wait()  # the probe tasks do the work; this only owns them
        finally:
            self._running = False
            tasks = [t.task for t in self._targets.values() if t.task is not None]
            for target in self._targets.values():
                self._stop(target)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, key: TargetKey, target: _Target) -> None:
        if not self._running or target.check.type is CheckType.NONE or target.task is not None:
            return
        target.task = asyncio.get_running_loop().create_task(
            self._probe_loop(key, target), name=f"health-probe {key}"
        )

    @staticmethod
    def _stop(target: _Target) -> None:
        if target.task is not None:
            target.task.cancel()
            target.task = None

    async def _probe_loop(self, key: TargetKey, target: _Target) -> None:
        """Start a probe every interval (start to start, with jitter) until cancelled.

        A probe is not awaited before the next one starts: when `timeout` exceeds `interval`, up to
        ceil(timeout / interval) probes of a target are in flight, so a silently dead backend is
        still detected within interval x fall + timeout rather than fall x timeout. Results are used
        in the order the probes started (`_probe_once` drops one overtaken by a newer result).
        """
        check = target.check
        interval = check.interval_ms / 1000
        loop = asyncio.get_running_loop()
        in_flight: set[asyncio.Task[None]] = set()
        # The first probe goes out almost at once (a waiting backend should not wait long),
        # spread a little so that thousands of targets from one set() do not fire in one burst.
        await asyncio.sleep(random.uniform(0, self._jitter * min(interval, 1.0)))
        try:
            while True:
                started = loop.time()
                if len(in_flight) < self._per_target:
                    target.started += 1
                    probe_task = loop.create_task(self._probe_once(key, target, check, target.started))
                    in_flight.add(probe_task)
                    probe_task.add_done_callback(in_flight.discard)
                else:
                    self.skipped += 1
                spread = 1 + random.uniform(-self._jitter, self._jitter) / 2
                await asyncio.sleep(max(0.0, started + interval * spread - loop.time()))
        finally:
            for t in in_flight:
                t.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _probe_once(self, key: TargetKey, target: _Target, check: HealthCheck, seq: int) -> None:
        try:
            if self._slots is None:
                result = await self._prober(key.address, key.port, check)
            else:
                async with self._slots:
                    self.in_flight += 1
                    try:
                        result = await self._prober(key.address, key.port, check)
                    finally:
                        self.in_flight -= 1
        except Exception as e:  # a bug in a probe must not stop this target's checks
            log.exception("health probe of %s failed unexpectedly", key)
            result = ProbeResult(False, f"probe error: {type(e).__name__}", 0.0)
        if target.check is not check or seq < target.recorded:
            return  # superseded by a check change, or overtaken by a newer probe's result
        target.recorded = seq
        self._record(key, target, result)

    def _record(self, key: TargetKey, target: _Target, result: ProbeResult) -> None:
        now = self._clock()
        target.last = LastResult(result.ok, result.detail, now, result.latency_ms)
        before = target.state
        target.state = sm.observe(before, result.ok, result.detail, now, target.rules)
        if target.state.reason != before.reason or target.state.status is not before.status:
            self._revision += 1
        if target.state.status is not before.status:
            self._log(key, target.state)
            self._pending.append(
                HealthChange(key, target.state.status, before.status, target.state.since, target.state.reason)
            )
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._pending, self._flush_scheduled = self._pending, [], False
        # A target removed by set() after its transition was queued is no longer the agent's concern.
        batch = [c for c in batch if c.key in self._targets]
        if not batch:
            return
        try:
            self._on_change(batch)
        except Exception:
            log.exception("health on_change callback failed")

    @staticmethod
    def _log(key: TargetKey, st: sm.HealthState) -> None:
        fields = {
            "event": "health",
            "lb": key.lb,
            "backend": key.backend,
            "state": str(st.status),
            "reason": st.reason,
        }
        # A backend going down is a warning: someone may have to act. Coming up is information.
        level = logging.INFO if st.up else logging.WARNING
        log.log(level, "health %s %s: %s (%s)", key.lb, key.backend, st.status, st.reason, extra=fields)
