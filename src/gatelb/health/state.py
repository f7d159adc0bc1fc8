"""The rise/fall state machine of one backend, with damping of flapping backends.

Pure: no I/O, no asyncio, no clock. Every step takes the time of the observation explicitly (the
monitor passes its clock; tests pass a fake one), and returns a new immutable `HealthState`.

Rules
-----
* A backend is `up` or `down`. (`draining` is not a health state: the agent knows it from the model.)
* `fall` consecutive failures take an `up` backend down; `rise` consecutive successes bring a `down`
  one back. Going down is never delayed: failing over fast is the point.
* Initial state (see `initial`). The first result of a backend that has never been checked decides
  at once, in either direction (one success is enough to go up, one failure to go down): before the
  first result we know nothing, so waiting for `rise`/`fall` results would only prolong a guess.
  What the guess is depends on why the backend is new:

  - ``assume_up=True`` -- the backend existed when the agent started. The kernel may still be
    serving it from the previous run, and the probes have not had a chance yet; assuming `down`
    would make the load balancer itself cause an outage on every restart (HAProxy, nginx and Envoy
    start servers up for the same reason). A dead one is found by its first probe (within one
    `timeout`).
  - ``assume_up=False`` -- a backend added while running gets no new connection until its first
    successful check, like an AWS NLB's "initial" target or nginx's ``health_check mandatory``:
    users expect a load balancer not to send traffic to a server nobody has seen alive. The first
    probe goes out at once, so this costs one probe round trip.

  A backend whose check type is `none` is simply always `up` (`always_up`).
* Flapping (see `Rules.flap_window`): a backend that fails often but never `fall` times in a row
  (fail, pass, fail, pass...) would stay up for ever on counters alone. So the last `flap_window`
  results are kept too (a bit mask), and an `up` backend with `flap_failures` failures among them
  goes down at once ("flapping: 5 of the last 10 checks failed"); it comes back like any other
  (`rise` successes, damping). The window starts afresh at every down.
* Recorded down (`recorded_down`): a backend the previous run had found down starts down after a
  restart, until its first result (which decides at once, like any first result).
* Damping (see `Damping`): a backend that went down more than `threshold` times within `window_s`
  must, to come back, pass `rise` checks *and* keep passing for a hold-down period that doubles
  with every further down inside the window (`base_hold_s`, 2x, 4x, ... capped at `max_hold_s`).
  A failure during the hold restarts it. Old downs age out of the window, so a backend that has
  been stable for `window_s` is treated as new again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class Status(enum.StrEnum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Damping:
    """When a flapping backend must prove itself for longer before it is used again.

    With the defaults: the 4th down within 2 minutes makes the next recovery wait 5 s of
    uninterrupted successes, the 5th 10 s, the 6th 20 s, ... never more than 2 minutes.
    `threshold=None` disables damping.
    """

    window_s: float = 120.0
    threshold: int | None = 3
    base_hold_s: float = 5.0
    max_hold_s: float = 120.0

    def hold_s(self, recent_downs: int) -> float:
        """The hold-down after `recent_downs` downs inside the window (0.0: no damping)."""
        if self.threshold is None or recent_downs <= self.threshold:
            return 0.0
        # The exponent stays small: downs are pruned to the window and capped (MAX_DOWNS_KEPT).
        excess = recent_downs - self.threshold - 1
        return min(self.base_hold_s * float(1 << excess), self.max_hold_s)


# Enough to reach the cap with any sensible policy; bounds memory for a backend flapping forever.
MAX_DOWNS_KEPT = 32


@dataclass(frozen=True, slots=True)
class Rules:
    """Thresholds for one backend (from its `HealthCheck`) plus the damping policy."""

    rise: int = 2
    fall: int = 3
    damping: Damping = Damping()
    # 0 (the default): max(10, 2 x fall) results, of which half must fail (see `flapping`).
    flap_window: int = 0
    flap_failures: int = 0

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1:
            raise ValueError(f"rise and fall must be >= 1 (rise={self.rise}, fall={self.fall})")

    @property
    def window(self) -> int:
        return self.flap_window or max(10, 2 * self.fall)

    @property
    def flap_threshold(self) -> int:
        """Failures among the last `window` results that take an up backend down; never fewer
        than `fall` (consecutive failures would have done it already)."""
        return max(self.flap_failures or self.window // 2, self.fall)


@dataclass(frozen=True, slots=True)
class HealthState:
    """Where one backend stands. `since`/`reason` describe the last transition (or the start)."""

    status: Status
    since: float
    reason: str
    checked: bool = False  # has any probe result been seen
    successes: int = 0  # consecutive, since the last failure
    failures: int = 0  # consecutive, since the last success
    streak_start: float | None = None  # time of the first success of the current success streak
    downs: tuple[float, ...] = ()  # times of up->down transitions, pruned to the damping window
    hold_until: float | None = None  # while damped and passing: the earliest time to come back
    history: int = 0  # the last results since the last down, newest in bit 0 (1: failure)
    results: int = 0  # how many results `history` holds (at most the window)

    @property
    def up(self) -> bool:
        return self.status is Status.UP


def initial(now: float, *, assume_up: bool) -> HealthState:
    """A backend that has not been checked yet (the module docstring explains `assume_up`)."""
    if assume_up:
        return HealthState(Status.UP, now, "not checked yet (assumed up at startup)")
    return HealthState(Status.DOWN, now, "new backend: waiting for its first successful check")


def recorded_down(now: float, reason: str) -> HealthState:
    """A backend that the previous run recorded as down (`reason`): down until its first result."""
    return HealthState(Status.DOWN, now, f"down before the restart ({reason}): waiting for its first check")


def always_up(now: float) -> HealthState:
    """A backend with check type `none`."""
    return HealthState(Status.UP, now, "no health check (type none)", checked=True)


def restart(state: HealthState) -> HealthState:
    """The check changed: keep the status (changing an interval must not flap the backend) but
    forget the counters, which were measured with the old check."""
    return replace(state, successes=0, failures=0, streak_start=None, hold_until=None)


def observe(state: HealthState, ok: bool, detail: str, now: float, rules: Rules) -> HealthState:
    """The state after one probe result. `detail` is the probe's human reason ("connect refused")."""
    downs = _recent(state.downs, now, rules.damping.window_s)
    window = rules.window
    history = ((state.history << 1) | (0 if ok else 1)) & ((1 << window) - 1)
    results = min(state.results + 1, window)
    if not state.checked:
        nxt = _first(state, ok, detail, now, downs)
    elif ok:
        nxt = _success(state, detail, now, rules, downs)
    else:
        nxt = _failure(state, detail, now, rules, downs)
    if nxt.status is Status.DOWN and state.status is Status.UP:
        return replace(nxt, history=0, results=0)  # a fresh window after every down
    failed = history.bit_count()
    if nxt.up and not ok and state.checked and failed >= rules.flap_threshold:
        downs = (*downs, now)[-MAX_DOWNS_KEPT:]
        reason = f"flapping: {failed} of the last {results} checks failed ({detail})"
        return replace(nxt, status=Status.DOWN, since=now, reason=reason, downs=downs, history=0, results=0)
    return replace(nxt, history=history, results=results)


def flapping(state: HealthState, rules: Rules) -> bool:
    """Whether the recent results (since the last down) hold `flap_threshold` failures."""
    return state.history.bit_count() >= rules.flap_threshold


def _first(state: HealthState, ok: bool, detail: str, now: float, downs: tuple[float, ...]) -> HealthState:
    status = Status.UP if ok else Status.DOWN
    # An assumed-up backend whose first check passes (or a waiting one whose first check fails) did
    # not transition: it keeps its `since`, only the reason becomes more precise.
    return HealthState(
        status,
        now if status is not state.status else state.since,
        f"first check {'passed' if ok else 'failed'}: {detail}",
        checked=True,
        successes=1 if ok else 0,
        failures=0 if ok else 1,
        streak_start=now if ok else None,
        downs=downs,
    )


def _success(
    state: HealthState, detail: str, now: float, rules: Rules, downs: tuple[float, ...]
) -> HealthState:
    successes = state.successes + 1
    streak_start = state.streak_start if state.streak_start is not None else now
    base = replace(state, successes=successes, failures=0, streak_start=streak_start, downs=downs)
    if state.up:
        return base
    hold = rules.damping.hold_s(len(downs))
    ready_at = streak_start + hold
    if successes < rules.rise or now < ready_at:
        return replace(base, hold_until=ready_at if hold else None)
    reason = f"{rules.rise}/{rules.rise} successes"
    if hold:
        reason += (
            f", held {_secs(now - streak_start)} after {len(downs)} downs in "
            f"{_secs(rules.damping.window_s)} (damping)"
        )
    return replace(base, status=Status.UP, since=now, reason=reason, hold_until=None)


def _failure(
    state: HealthState, detail: str, now: float, rules: Rules, downs: tuple[float, ...]
) -> HealthState:
    failures = state.failures + 1
    base = replace(state, successes=0, failures=failures, streak_start=None, hold_until=None, downs=downs)
    if not state.up or failures < rules.fall:
        return base
    downs = (*downs, now)[-MAX_DOWNS_KEPT:]
    reason = f"{rules.fall}/{rules.fall} failures: {detail}"
    return replace(base, status=Status.DOWN, since=now, reason=reason, downs=downs)


def _recent(downs: tuple[float, ...], now: float, window_s: float) -> tuple[float, ...]:
    return tuple(t for t in downs if now - t < window_s)


def _secs(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
