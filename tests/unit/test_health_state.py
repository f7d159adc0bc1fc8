"""The rise/fall/damping state machine, driven by a fake clock (plain numbers)."""

from __future__ import annotations

import pytest

from gatelb.health import state as sm
from gatelb.health.state import Damping, HealthState, Rules, Status

RULES = Rules(rise=2, fall=3, damping=Damping(window_s=60, threshold=2, base_hold_s=5, max_hold_s=20))
NO_DAMPING = Rules(rise=2, fall=3, damping=Damping(threshold=None))


def feed(st: HealthState, results: str, t0: float, step: float = 1.0, rules: Rules = RULES) -> HealthState:
    """Apply results written as a string ('+' success, '-' failure), one every `step` seconds."""
    for i, r in enumerate(results):
        st = sm.observe(st, r == "+", "HTTP 200" if r == "+" else "connect refused", t0 + i * step, rules)
    return st


def checked_up(t: float = 0.0) -> HealthState:
    return sm.observe(sm.initial(t, assume_up=True), True, "connected", t, RULES)


def test_assumed_up_until_first_result() -> None:
    st = sm.initial(10.0, assume_up=True)
    assert (st.status, st.since, st.checked) == (Status.UP, 10.0, False)
    assert "assumed up" in st.reason


def test_first_failure_of_assumed_up_backend_goes_down_at_once() -> None:
    st = sm.observe(sm.initial(0.0, assume_up=True), False, "connect refused", 0.5, RULES)
    assert (st.status, st.since, st.reason) == (Status.DOWN, 0.5, "first check failed: connect refused")
    assert st.downs == ()  # never seen up: not a flap


def test_first_success_of_assumed_up_backend_keeps_since() -> None:
    st = sm.observe(sm.initial(0.0, assume_up=True), True, "connected", 0.5, RULES)
    assert (st.status, st.since, st.reason) == (Status.UP, 0.0, "first check passed: connected")


def test_new_backend_waits_for_first_success() -> None:
    st = sm.initial(0.0, assume_up=False)
    assert st.status is Status.DOWN and "waiting" in st.reason
    failed = sm.observe(st, False, "connect timeout after 2000 ms", 2.0, RULES)
    assert (failed.status, failed.since) == (Status.DOWN, 0.0)
    assert failed.reason == "first check failed: connect timeout after 2000 ms"
    passed = sm.observe(st, True, "connected", 0.01, RULES)
    assert (passed.status, passed.since, passed.reason) == (Status.UP, 0.01, "first check passed: connected")


def test_always_up_for_type_none() -> None:
    st = sm.always_up(3.0)
    assert st.up and st.checked and st.since == 3.0 and "none" in st.reason


def test_fall_needs_consecutive_failures() -> None:
    st = feed(checked_up(), "--+--", 1.0)
    assert st.status is Status.UP and st.failures == 2
    st = feed(st, "-", 6.0)
    assert (st.status, st.since) == (Status.DOWN, 6.0)
    assert st.reason == "3/3 failures: connect refused"


def test_timeout_reason_is_carried_verbatim() -> None:
    st = checked_up()
    for t in (1.0, 2.0, 3.0):
        st = sm.observe(st, False, "connect timeout after 2000 ms", t, RULES)
    assert st.reason == "3/3 failures: connect timeout after 2000 ms"


def test_rise_needs_consecutive_successes() -> None:
    st = feed(checked_up(), "---", 1.0)
    st = feed(st, "+-+", 4.0)
    assert st.status is Status.DOWN and st.successes == 1
    st = feed(st, "+", 7.0)
    assert (st.status, st.since, st.reason) == (Status.UP, 7.0, "2/2 successes")


def test_rise_and_fall_of_one() -> None:
    rules = Rules(rise=1, fall=1)
    st = sm.observe(checked_up(), False, "HTTP 500", 1.0, rules)
    assert (st.status, st.reason) == (Status.DOWN, "1/1 failures: HTTP 500")
    st = sm.observe(st, True, "HTTP 200", 2.0, rules)
    assert (st.status, st.reason) == (Status.UP, "1/1 successes")


def test_failures_while_down_do_not_move_since() -> None:
    st = feed(checked_up(), "------", 1.0)
    assert (st.status, st.since, st.failures) == (Status.DOWN, 3.0, 6)
    assert st.downs == (3.0,)


def flap(st: HealthState, t: float, times: int) -> tuple[HealthState, float]:
    """Take the backend down `times` times, bringing it back up in between, once a second; returns
    the state (down after the last fall) and the time of the next free slot."""
    for i in range(times):
        st = feed(st, "---", t)
        t += 3
        assert st.status is Status.DOWN
        if i < times - 1:
            st = feed(st, "++", t)
            t += 2
            assert st.status is Status.UP
    return st, t


def test_no_damping_up_to_threshold() -> None:
    st, t = flap(checked_up(), 1.0, times=2)  # threshold 2: two downs are tolerated
    st = feed(st, "++", t)
    assert st.status is Status.UP and "damping" not in st.reason


def test_damping_holds_a_flapping_backend_down() -> None:
    st, t = flap(checked_up(), 1.0, times=3)  # third down within 60 s: hold 5 s
    assert len(st.downs) == 3
    st = feed(st, "++", t)  # rise reached, but the hold is not over
    assert st.status is Status.DOWN
    assert st.hold_until == t + 5
    st = feed(st, "+++", t + 2)  # t+2..t+4: still inside the hold
    assert st.status is Status.DOWN
    st = feed(st, "+", t + 5)
    assert (st.status, st.since) == (Status.UP, t + 5)
    assert st.reason == "2/2 successes, held 5.0 s after 3 downs in 60 s (damping)"
    assert st.hold_until is None


def test_failure_during_hold_restarts_it() -> None:
    st, t = flap(checked_up(), 1.0, times=3)
    st = feed(st, "+++-", t)
    assert st.status is Status.DOWN and st.hold_until is None
    st = feed(st, "++", t + 4)
    assert st.hold_until == t + 4 + 5  # counted from the new streak
    st = feed(st, "+", t + 9)
    assert st.status is Status.UP


def test_hold_doubles_and_is_capped() -> None:
    d = Damping(window_s=60, threshold=2, base_hold_s=5, max_hold_s=20)
    assert [d.hold_s(n) for n in range(1, 8)] == [0.0, 0.0, 5.0, 10.0, 20.0, 20.0, 20.0]
    assert Damping(threshold=None).hold_s(100) == 0.0


def test_fourth_down_in_window_doubles_the_hold() -> None:
    st, t = flap(checked_up(), 1.0, times=3)
    st = feed(st, "++++++", t)  # 5 s hold passes
    assert st.status is Status.UP
    st = feed(st, "---", t + 6)
    st = feed(st, "++", t + 9)
    assert st.hold_until == t + 9 + 10


def test_old_downs_age_out_of_the_window() -> None:
    st, t = flap(checked_up(), 1.0, times=3)
    st = feed(st, "+", t + 100)  # 100 s later: every down is older than the 60 s window
    assert st.downs == ()
    st = feed(st, "+", t + 101)
    assert st.status is Status.UP and "damping" not in st.reason


def test_damping_disabled() -> None:
    st, t = flap(checked_up(), 1.0, times=3)
    st = feed(st, "++", t, rules=NO_DAMPING)
    assert st.status is Status.UP


def test_downs_kept_are_bounded() -> None:
    rules = Rules(rise=1, fall=1, damping=Damping(window_s=1e9, threshold=None))
    st = checked_up()
    for i in range(200):
        st = sm.observe(st, i % 2 == 1, "x", float(i + 1), rules)
    assert len(st.downs) == sm.MAX_DOWNS_KEPT


def test_restart_keeps_status_and_forgets_counters() -> None:
    st = feed(checked_up(), "---+", 1.0)
    again = sm.restart(st)
    assert (again.status, again.since, again.reason) == (st.status, st.since, st.reason)
    assert (again.successes, again.failures, again.streak_start) == (0, 0, None)


def test_invalid_thresholds() -> None:
    with pytest.raises(ValueError, match="rise and fall"):
        Rules(rise=0, fall=3)


# --- flapping, from the success ratio ---------------------------------------------------------


def run_pattern(pattern: str, rules: sm.Rules = RULES) -> list[sm.HealthState]:
    """Results of a checked-up backend, one per second: '.' passes, 'x' fails."""
    st = checked_up(0.0)
    out = []
    for i, c in enumerate(pattern, start=1):
        st = sm.observe(st, c == ".", "connected" if c == "." else "connect refused", float(i), rules)
        out.append(st)
    return out


def test_a_backend_failing_every_other_check_is_taken_down() -> None:
    states = run_pattern("x.x.x.x.x.")  # never `fall` (3) failures in a row
    assert all(s.up for s in states[:8]), [s.status for s in states]
    down = states[8]
    assert not down.up and down.reason == "flapping: 5 of the last 10 checks failed (connect refused)"
    assert down.downs == (9.0,)
    # It comes back like any down backend: `rise` successes, with a fresh window.
    back = sm.observe(sm.observe(down, True, "connected", 10.0, RULES), True, "connected", 11.0, RULES)
    assert back.up and back.results == 2 and back.history == 0


def test_occasional_failures_are_no_flapping() -> None:
    states = run_pattern("....x....." * 5 + "...x..x...")
    assert all(s.up for s in states)


def test_the_flap_threshold_is_never_below_fall() -> None:
    rules = sm.Rules(rise=2, fall=8)
    assert rules.window == 16 and rules.flap_threshold == 8
    assert sm.Rules(rise=1, fall=1).flap_threshold == 5
    assert sm.Rules(fall=3, flap_window=4, flap_failures=2).flap_threshold == 3


def test_a_recorded_down_backend_waits_for_its_first_result() -> None:
    st = sm.recorded_down(0.0, "3/3 failures: connect refused")
    assert not st.up and not st.checked and "down before the restart" in st.reason
    assert sm.observe(st, True, "connected", 1.0, RULES).up  # the first result decides at once
    assert not sm.observe(st, False, "connect refused", 1.0, RULES).up
