"""Observability of `gatelb run` (issue 11), with real traffic through the lab: /metrics counts
what the kernel counted, a killed backend shows `gatelb_backend_up 0` within the detection
window, /healthz turns 503 while the kernel refuses our transactions and 200 once it accepts
them again, the endpoint listens on exactly the address asked, and `gatelb status` is answered
by the daemon.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatelb.lab import Lab
from gatelb.lab.daemon import LabDaemon
from gatelb.lab.topology import CLIENT_V4, GW_CLIENT_V4, backend_v4

from .gatelb_helpers import module_lab, reset_gw  # noqa: F401 - fixture `lab`

VIP = "203.0.113.10"
INTERVAL_MS, TIMEOUT_MS, FALL = 100, 100, 3
WINDOW_S = (INTERVAL_MS * FALL + TIMEOUT_MS) / 1000
MARGIN_S = 0.3  # a busy 2-core machine; the scrape itself takes a few ms here
CHECK = f"{{type: tcp, interval: {INTERVAL_MS}, timeout: {TIMEOUT_MS}, fall: {FALL}, rise: 2}}"
LOCAL = "127.0.0.1:9469"


def config(backends: tuple[int, ...] = (1, 2, 3)) -> str:
    items = "".join(f"\n    - {backend_v4(i)}:8080" for i in backends)
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
  protocol: tcp
  frontend: {{ip: {VIP}, port: 80}}
  backend:{items}
  check: {CHECK}
"""


@pytest.fixture
def fresh(lab: Lab) -> Iterator[Lab]:
    reset_gw(lab)
    for i in lab.backend_ids:
        if not lab.backend_running(i):
            lab.start_backend(i)
    yield lab
    reset_gw(lab)


GET = """
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=5)
    code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
sys.stdout.write(f"{code}\\n"); sys.stdout.write(body.decode())
"""


def get(lab: Lab, url: str, ns: str = "gw") -> tuple[int, str]:
    done = lab.run(ns, [sys.executable, "-c", GET, url])
    code, _, body = done.stdout.partition("\n")
    return int(code), body


def scrape(lab: Lab, address: str = LOCAL) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """/metrics parsed by prometheus-client's own parser: sample name -> labels -> value."""
    code, text = get(lab, f"http://{address}/metrics")
    assert code == 200, text[:500]
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def backend_value(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, i: int) -> float:
    want = f"{backend_v4(i)}:8080"
    hits = [v for labels, v in metrics[name].items() if dict(labels).get("backend") == want]
    assert len(hits) == 1, (name, i, metrics[name])
    return hits[0]


def test_counters_on_metrics_equal_the_connections_made(fresh: Lab) -> None:
    lab = fresh
    with LabDaemon(lab, config()) as daemon:
        before = scrape(lab)
        assert all(backend_value(before, "gatelb_backend_new_connections_total", i) == 0 for i in (1, 2, 3))
        result = lab.connect_many("tcp", VIP, 80, 90, timeout=3.0)
        assert result.ok == 90, result.failures
        after = scrape(lab)
        for i in (1, 2, 3):
            made = result.per_backend.get(f"be{i}", 0)
            assert backend_value(after, "gatelb_backend_new_connections_total", i) == made, (i, result.per_backend)
            # Every connection is at least a handshake and a close each way.
            assert backend_value(after, "gatelb_backend_packets_total", i) >= 4 * made
            assert backend_value(after, "gatelb_backend_bytes_total", i) > 0
            assert backend_value(after, "gatelb_backend_up", i) == 1
        assert sum(result.per_backend.values()) == 90 and len(result.per_backend) == 3
        labels = dict(next(iter(after["gatelb_backend_up"])))
        assert labels == {"lb": "web", "backend": f"{backend_v4(1)}:8080"}
        info = dict(next(iter(after["gatelb_lb_info"])))
        assert info == {"lb": "web", "frontend": f"{VIP}:80", "protocol": "tcp", "algorithm": "random", "pool": "lab"}
        assert after["gatelb_sync_duration_seconds_count"][(("kind", "full"),)] >= 1
        assert after["gatelb_pool_addresses_total"][(("pool", "lab"),)] == 16
        assert after["gatelb_pool_addresses_in_use"][(("pool", "lab"),)] == 1
        assert after["gatelb_changes_pending"][()] == 0
        probes = after["gatelb_health_probe_duration_seconds_count"]
        assert probes[(("check", "tcp"), ("result", "success"))] > 0

        # `gatelb status` asks the daemon (its socket in the state directory) and shows the same.
        status = daemon.status()
        assert status["from"] == "daemon"
        rows = {b["address"]: b["counters"]["newConnections"] for b in status["loadBalancers"][0]["backends"]}
        assert rows == {backend_v4(i): result.per_backend.get(f"be{i}", 0) for i in (1, 2, 3)}


def test_a_killed_backend_shows_up_0_within_the_detection_window(fresh: Lab) -> None:
    lab = fresh
    with LabDaemon(lab, config()) as daemon:
        time.sleep(3 * INTERVAL_MS / 1000)  # every first check has passed
        assert backend_value(scrape(lab), "gatelb_backend_up", 2) == 1
        killed = time.time()
        lab.kill_backend(2)
        seen = None
        while time.time() - killed < WINDOW_S + MARGIN_S + 2:
            if backend_value(scrape(lab), "gatelb_backend_up", 2) == 0:
                seen = time.time()
                break
            time.sleep(0.02)
        assert seen is not None, daemon.log_text()[-2000:]
        assert seen - killed <= WINDOW_S + MARGIN_S, seen - killed
        metrics = scrape(lab)
        assert [backend_value(metrics, "gatelb_backend_up", i) for i in (1, 3)] == [1, 1]
        assert metrics["gatelb_health_transitions_total"][(("to", "down"),)] >= 1
        daemon.wait_event("sync", after=killed, where=lambda e: e["trigger"] == "health")
        assert backend_value(scrape(lab), "gatelb_backend_serving", 2) == 0


def wait_health(lab: Lab, code: int, timeout: float = 15.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        got, body = get(lab, f"http://{LOCAL}/healthz")
        if got == code:
            doc: dict[str, object] = json.loads(body)
            return doc
        assert time.monotonic() < deadline, f"/healthz stayed {got}: {body}"
        time.sleep(0.05)


def test_healthz_turns_503_while_the_kernel_refuses_our_transactions(fresh: Lab) -> None:
    lab = fresh
    with LabDaemon(lab, config(backends=(1, 2))) as daemon:
        ok = wait_health(lab, 200)
        assert ok["lastUpdated"] and ok["currentTime"] and ok["problems"] == []
        # The fault: our table replaced by one with the `owner` flag, held by another process's
        # netlink socket. The kernel refuses every change to it from anyone else (EPERM) until
        # that process exits, when the table goes away with it.
        # One transaction: the daemon repairs a deleted table at once (agent/guard.py), so the
        # replacement must take its place in the same commit; the repair then fails with EPERM.
        owner = lab.popen("gw", ["nft", "-i"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        try:
            assert owner.stdin is not None
            owner.stdin.write(b"delete table inet gatelb; add table inet gatelb { flags owner; }\n")
            owner.stdin.flush()
            deadline = time.monotonic() + 5
            while "flags owner" not in lab.run("gw", ["nft", "list table inet gatelb"], check=False).stdout:
                assert time.monotonic() < deadline, "the owner table did not appear"
                time.sleep(0.05)
            mark = time.time()
            daemon.write_config(config(backends=(1, 2, 3)))
            daemon.wait_event("sync-failed", after=mark)
            bad = wait_health(lab, 503)
            assert any("the last sync failed" in str(p) for p in bad["problems"]), bad  # type: ignore[union-attr]
            assert scrape(lab)["gatelb_sync_errors_total"][()] >= 1
        finally:
            assert owner.stdin is not None
            owner.stdin.close()
            owner.wait(timeout=5)
        # The owner is gone, so is its table: the next retry (a full resync) succeeds.
        good = wait_health(lab, 200, timeout=20)
        assert good["lastUpdated"] != ok["lastUpdated"]
        synced = daemon.wait_event("sync", after=mark, where=lambda e: e["full"] is True, timeout=20)
        assert synced["services"] == 1
        result = lab.connect_many("tcp", VIP, 80, 30, timeout=3.0)
        assert result.ok == 30 and "be3" in result.per_backend


def listeners(lab: Lab) -> set[str]:
    """Listening TCP sockets in the gw namespace (ss reads the namespace's own tables)."""
    out = lab.run("gw", ["ss", "-Htln"]).stdout
    return {line.split()[3] for line in out.splitlines() if line.strip()}


def test_the_endpoint_is_bound_to_the_address_asked_and_no_other(fresh: Lab) -> None:
    lab = fresh
    with LabDaemon(lab, config(backends=(1,))):
        assert listeners(lab) == {LOCAL}
        # Loopback only by default: the client cannot reach it through the gw's address.
        unreachable = lab.run("client", [sys.executable, "-c", GET, f"http://{GW_CLIENT_V4}:9469/metrics"],
                              check=False)
        assert unreachable.returncode != 0
    address = f"{GW_CLIENT_V4}:9470"
    with LabDaemon(lab, config(backends=(1,)), name="asked", extra_args=("--metrics-address", address)):
        assert listeners(lab) == {address}
        code, body = get(lab, f"http://{address}/healthz", ns="client")
        assert code == 200 and json.loads(body)["problems"] == []
        assert lab.run("client", ["ip", "-4", "addr", "show"]).stdout.count(CLIENT_V4) == 1
    with LabDaemon(lab, config(backends=(1,)), name="off", extra_args=("--metrics-address", "off")) as daemon:
        assert listeners(lab) == set()
        assert daemon.status()["from"] == "daemon"  # the status socket needs no port
