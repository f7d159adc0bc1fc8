"""Health checks wired into the data path, proven with real traffic through the lab.

`gatelb run` runs in the lab's gw namespace (`LabDaemon`) with fast checks (interval 100 ms,
timeout 100 ms, fall 3, rise 2); a paced client in the client namespace records, for every new
connection, when it started and which backend answered. Then backends die, come back, answer
HTTP 500, lose their link, drain, and the timelines show what the data path did about it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from gatelb.agent.runtime import parse_time
from gatelb.lab import Lab
from gatelb.lab.daemon import Event, LabDaemon
from gatelb.lab.results import Attempt
from gatelb.lab.topology import backend_v4

VIP = "203.0.113.10"
INTERVAL_MS, TIMEOUT_MS, FALL, RISE = 100, 100, 3, 2
WINDOW_S = (INTERVAL_MS * FALL + TIMEOUT_MS) / 1000  # the promised detection time: 0.4 s
# Detection -> a sync in the kernel takes ~15 ms here; the rest absorbs a busy 2-core machine.
SYNC_MARGIN_S = 0.2
RATE = 50.0  # new connections per second (one every 20 ms)
FAST_CHECK = f"{{type: tcp, interval: {INTERVAL_MS}, timeout: {TIMEOUT_MS}, fall: {FALL}, rise: {RISE}}}"


def config(backends: list[str], *, check: str = FAST_CHECK, port: int = 80, protocol: str = "tcp",
           extra: str = "") -> str:
    """One IPPool and one L4LB `web` at VIP:port with the given backend entries (YAML flow items)."""
    items = "".join(f"\n    - {b}" for b in backends)
    return f"""\
apiVersion: gatelb.io/v1alpha1
kind: IPPool
metadata: {{name: lab}}
spec: {{addresses: ["203.0.113.0/28"]}}
---
apiVersion: gatelb.io/v1alpha1
kind: L4LB
metadata: {{name: web}}
spec:
  protocol: {protocol}
  frontend: {{ip: {VIP}, port: {port}}}
  backend:{items}
  check: {check}
{extra}"""


def three(port: int = 8080) -> list[str]:
    return [f"{backend_v4(i)}:{port}" for i in (1, 2, 3)]


def settle() -> None:
    """Let every backend's first check pass, so the next failures count towards `fall` (a first
    result decides at once and would be reported as "first check failed": gatelb.health.state)."""
    time.sleep(3 * INTERVAL_MS / 1000)


def health_of(daemon: LabDaemon, index: int, state: str, *, after: float, timeout: float = 10.0) -> Event:
    """The health line that reports backend `index` (1-based) in `state`."""
    backend = f"{backend_v4(index)}:"
    return daemon.wait_event("health", after=after, timeout=timeout,
                             where=lambda e: str(e["backend"]).startswith(backend) and e["state"] == state)


def synced(daemon: LabDaemon, *, after: float, trigger: str, timeout: float = 10.0) -> Event:
    return daemon.wait_event("sync", after=after, timeout=timeout, where=lambda e: trigger in str(e["trigger"]))


def started(a: Attempt) -> float:
    assert a.at is not None, "paced attempts record their start time"
    return a.at


def backend_row(status: dict[str, object], index: int) -> dict[str, object]:
    lbs = status["loadBalancers"]
    assert isinstance(lbs, list)
    rows = [b for b in lbs[0]["backends"] if b["address"] == backend_v4(index)]
    assert len(rows) == 1
    row: dict[str, object] = rows[0]
    return row


def wait_status(daemon: LabDaemon, ok: Callable[[dict[str, object]], bool], timeout: float = 4.0) -> dict[str, object]:
    """`gatelb status -o json` once it satisfies `ok` (the daemon writes health at most once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        status = daemon.status()
        if ok(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def test_killed_backend_gets_no_new_connection_after_the_detection_window(lab: Lab) -> None:
    lab.start_backends(udp=None, http=None)
    with LabDaemon(lab, config(three())) as daemon:
        client = lab.start_client("tcp", VIP, 80, count=int(4 * RATE), rate=RATE, timeout=1.0)
        time.sleep(1.5)
        killed = time.time()
        lab.kill_backend(2)
        down = health_of(daemon, 2, "down", after=killed)
        result = client.result()

        deadline = killed + WINDOW_S + SYNC_MARGIN_S
        before = [a for a in result.attempts if started(a) < killed]
        during = [a for a in result.attempts if killed <= started(a) <= deadline]
        after = [a for a in result.attempts if started(a) > deadline]
        failed = [a for a in result.attempts if not a.ok]
        assert {a.backend for a in before if a.ok} == {"be1", "be2", "be3"}
        # No new connection reaches the dead backend after the window: every later one is answered,
        # by the two live backends only.
        assert len(after) >= RATE, "the client kept sending after the window"
        assert all(a.ok for a in after), [a.error for a in after if not a.ok]
        assert {a.backend for a in after} == {"be1", "be3"}
        # The failures are bounded by what arrived inside the window, and failed fast (a reset from
        # the dead backend's host, not a timeout).
        assert all(killed - 0.05 <= started(a) <= deadline for a in failed), [started(a) - killed for a in failed]
        assert len(failed) <= len(during)
        # (refused: the SYN met the closed port; reset: a connection accepted just before the
        # process died. Both fail at once; a timeout would mean traffic into a black hole.)
        assert {a.error for a in failed} <= {"refused", "reset"}
        assert down["reason"] == f"{FALL}/{FALL} failures: connect refused"
        removed = synced(daemon, after=killed, trigger="health")
        assert float(removed["wall_time"]) - killed <= WINDOW_S + SYNC_MARGIN_S
        assert removed["full"] is False, "a backend going down is an incremental update"

        status = wait_status(daemon, lambda s: backend_row(s, 2)["state"] == "down")
        row = backend_row(status, 2)
        assert (row["state"], row["reason"]) == ("down", f"{FALL}/{FALL} failures: connect refused")
        assert isinstance(row["since"], float) and killed <= row["since"] <= time.time()
        assert [backend_row(status, i)["state"] for i in (1, 3)] == ["up", "up"]


def test_restarted_backend_returns_after_rise_successes(lab: Lab) -> None:
    lab.start_backends(udp=None, http=None)
    with LabDaemon(lab, config(three())) as daemon:
        killed = time.time()
        lab.kill_backend(2)
        synced(daemon, after=parse_time(health_of(daemon, 2, "down", after=killed)["time"]), trigger="health")

        client = lab.start_client("tcp", VIP, 80, count=int(3 * RATE), rate=RATE, timeout=1.0)
        time.sleep(0.5)
        restarted = time.time()
        lab.start_backend(2)
        up = health_of(daemon, 2, "up", after=restarted)
        result = client.result()

        assert up["reason"] == f"{RISE}/{RISE} successes"
        # `rise` successes are at least rise-1 probe intervals apart (the jitter is +-5 %).
        earliest = restarted + 0.9 * (RISE - 1) * INTERVAL_MS / 1000
        assert parse_time(up["time"]) >= earliest
        back = [started(a) for a in result.attempts if a.backend == "be2"]
        assert back, f"be2 got no connection after it came back: {result.per_backend}"
        assert min(back) >= earliest
        assert result.failed == 0, result.failures


def test_http_500_takes_a_backend_out_although_its_port_is_open(lab: Lab) -> None:
    lab.start_backends(tcp=None, udp=None)
    check = f"{{type: http, requestPath: /healthz, interval: {INTERVAL_MS}, timeout: {TIMEOUT_MS}, fall: {FALL}}}"
    with LabDaemon(lab, config(three(80), check=check)) as daemon:
        assert lab.connect_many("http", VIP, 80, count=30).backends == {"be1", "be2", "be3"}
        failing = time.time()
        lab.set_backend_status(2, 500)
        down = health_of(daemon, 2, "down", after=failing)
        assert down["reason"] == f"{FALL}/{FALL} failures: HTTP 500"
        synced(daemon, after=parse_time(down["time"]), trigger="health")

        direct = lab.connect_many("http", backend_v4(2), 80, count=2)
        assert (direct.per_backend, direct.statuses) == ({"be2": 2}, {500: 2}), "the port is open"
        through = lab.connect_many("http", VIP, 80, count=45)
        assert through.per_backend.keys() == {"be1", "be3"} and through.statuses == {200: 45}

        healed = time.time()
        lab.set_backend_status(2, None)
        synced(daemon, after=parse_time(health_of(daemon, 2, "up", after=healed)["time"]), trigger="health")
        assert lab.connect_many("http", VIP, 80, count=45).backends == {"be1", "be2", "be3"}


def test_no_usable_backend_refuses_at_once_or_drops_when_configured(lab: Lab) -> None:
    lab.start_backends(udp=None, http=None)
    with LabDaemon(lab, config(three())) as daemon:
        # Hosts that vanish (link down) rather than refuse: without the gateway's reject a client
        # would wait for its whole timeout.
        settle()
        gone = time.time()
        for i in lab.backend_ids:
            lab.run(f"be{i}", ["ip", "link", "set", "eth0", "down"])
        downs = [health_of(daemon, i, "down", after=gone) for i in lab.backend_ids]
        assert {d["reason"] for d in downs} == {f"{FALL}/{FALL} failures: connect timeout after {TIMEOUT_MS} ms"}
        synced(daemon, after=max(parse_time(d["time"]) for d in downs), trigger="health")

        refused = lab.connect_many("tcp", VIP, 80, count=5, timeout=2.0)
        assert refused.failures == {"refused": 5}
        assert max(a.latency_ms for a in refused.attempts) < 100

        edited = time.time()
        daemon.write_config(config(three(), extra="  noBackend: drop\n"))
        synced(daemon, after=edited, trigger="file")
        dropped = lab.connect_many("tcp", VIP, 80, count=2, timeout=0.5)
        assert dropped.failures == {"timeout": 2}


@pytest.mark.parametrize("how", ["drain: true", "weight: 0"])
def test_draining_backend_keeps_its_connection_and_gets_no_new_one(lab: Lab, how: str) -> None:
    lab.start_backends(udp=None, http=None)
    with LabDaemon(lab, config(three())) as daemon, lab.hold(VIP, 80) as held:
        index = int(held.backend.removeprefix("be"))
        assert held.exchange("before") == "before"
        entries = [f"{{address: {backend_v4(i)}, port: 8080{', ' + how if i == index else ''}}}"
                   for i in lab.backend_ids]
        edited = time.time()
        daemon.write_config(config(entries))
        synced(daemon, after=edited, trigger="file")

        for n in range(3):
            fresh = lab.connect_many("tcp", VIP, 80, count=30)
            assert fresh.failed == 0 and held.backend not in fresh.backends, fresh.per_backend
            assert held.exchange(f"still there {n}") == f"still there {n}"
        status = wait_status(daemon, lambda s: backend_row(s, index)["state"] == "draining")
        row = backend_row(status, index)
        assert (row["state"], row["reason"]) == ("draining", "drain: true" if how.startswith("drain") else "weight 0")


def conntrack_backend(lab: Lab, port: int) -> int:
    """Which backend (1-based) the gw's one UDP conntrack entry to VIP:port points at."""
    out = lab.run("gw", ["conntrack", "-L", "-p", "udp", "--orig-dst", VIP, "--orig-port-dst", str(port)]).stdout
    found = {int(m) - 10 for m in re.findall(r"src=198\.51\.100\.(\d+)", out)}
    assert len(found) == 1, out
    return found.pop()


def test_udp_flow_moves_off_a_dead_backend(lab: Lab) -> None:
    lab.start_backends(tcp=None, http=None)
    check = (f"{{type: udp, payload: ping, expect: ping, interval: {INTERVAL_MS}, timeout: {TIMEOUT_MS}, "
             f"fall: {FALL}, rise: {RISE}}}")
    with LabDaemon(lab, config(three(), protocol="udp", port=53, check=check)) as daemon:
        rate = 20.0
        flow = lab.start_client("udpflow", VIP, 53, count=int(3 * rate), rate=rate, timeout=0.2)
        time.sleep(0.8)
        victim = conntrack_backend(lab, 53)
        killed = time.time()
        lab.kill_backend(victim)
        flushed = daemon.wait_event("conntrack-flush", after=killed)
        result = flow.result()

        assert flushed["backends"] == [f"{backend_v4(victim)}:8080"] and flushed["deleted"] == 1
        deadline = killed + WINDOW_S + SYNC_MARGIN_S
        before = [a for a in result.attempts if started(a) < killed]
        after = [a for a in result.attempts if started(a) > deadline]
        assert before and all(a.backend == f"be{victim}" for a in before), "one flow, one backend"
        # The same socket's later datagrams reach one live backend: a new conntrack entry, not a
        # black hole behind the dead one.
        assert len(after) >= rate and all(a.ok for a in after), [a.error for a in after if not a.ok]
        assert len({a.backend for a in after}) == 1 and after[0].backend != f"be{victim}"
        lost = [a for a in result.attempts if not a.ok]
        assert all(killed - 0.25 <= started(a) <= deadline for a in lost)
