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
from gatelb.lab.topology import CLIENT_V4, GW_BACKEND_V4, GW_CLIENT_V4, backend_v4

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


def backend_value(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, i: int,
                  direction: str | None = None) -> float:
    want = f"{backend_v4(i)}:8080"
    hits = [v for labels, v in metrics[name].items()
            if dict(labels).get("backend") == want and dict(labels).get("direction") == direction]
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
            assert backend_value(after, "gatelb_backend_packets_total", i, "in") >= 3 * made
            assert backend_value(after, "gatelb_backend_packets_total", i, "out") >= 2 * made
            assert backend_value(after, "gatelb_backend_bytes_total", i, "in") > 0
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


# One client process in the client namespace: `count` new TCP connections (greeting line, `size`
# bytes echoed back, half-close, read to the end) or UDP sockets (one datagram of `size` bytes, one
# answer) to VIP:80, and per backend (from its greeting) the connections made and the payload
# bytes sent and received.
TRAFFIC = """
import json, socket, sys
proto, vip, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
port = int(sys.argv[5]) if len(sys.argv) > 5 else 80
out = {}
for i in range(count):
    payload = bytes([65 + i % 26]) * size
    if proto == "tcp":
        s = socket.create_connection((vip, port), timeout=5)
        f = s.makefile("rb")
        greeting = f.readline()
        s.sendall(payload)
        echoed = f.read(size)
        s.shutdown(socket.SHUT_WR)
        rest = f.read()
        assert echoed == payload and rest == b"", (len(echoed), rest)
        received = len(greeting) + len(echoed)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(payload, (vip, port))
        answer = s.recv(65536)
        assert answer.endswith(payload), answer[:80]
        greeting, received = answer, len(answer)
    s.close()
    row = out.setdefault(greeting.split()[0].decode(), [0, 0, 0])
    row[0] += 1; row[1] += size; row[2] += received
print(json.dumps(out))
"""

# Named counters the test reads on both ends (its own tables, deleted at the end): in the client,
# the IP packets to and from each VIP per protocol; in each backend, the packets it receives on
# and sends from 8080, apart for DNAT (the client's address) and FULLNAT (the gw's) flows.
CLIENT_COUNTERS = """
table inet obs_test {{
{counters}
  chain out {{ type filter hook output priority 0; policy accept;
{out_rules}
  }}
  chain in {{ type filter hook input priority 0; policy accept;
{in_rules}
  }}
}}
"""
FULLNAT_VIP = "203.0.113.11"
FOREIGN_VIP = "203.0.113.12"  # DNATed to be1 by another table: not one of our flows
FOREIGN = f"""
table ip obs_foreign {{
  chain pre {{ type nat hook prerouting priority dstnat - 10; policy accept;
    ip daddr {FOREIGN_VIP} tcp dport 80 dnat to {backend_v4(1)}:8080
  }}
}}
"""
FLOWS = [(nat, proto) for nat in ("dnat", "fullnat") for proto in ("tcp", "udp")]


def direction_config() -> str:
    docs = [config(backends=()).split("---")[0].rstrip()]
    for nat, proto in FLOWS:
        vip, members = (VIP, (1, 2)) if nat == "dnat" else (FULLNAT_VIP, (2, 3))
        items = "".join(f"\n    - {backend_v4(i)}:8080" for i in members)
        docs.append(f"""---
apiVersion: gatelb.io/v1alpha1
kind: L4LB
metadata: {{name: {nat}-{proto}}}
spec:
  protocol: {proto}
  nat: {nat}
  algorithm: roundrobin
  frontend: {{ip: {vip}, port: 80}}
  backend:{items}""")
    return "\n".join(docs) + "\n"


def counter_table(pairs: list[tuple[str, str, str]]) -> str:
    """(counter name, output match, input match) -> an nft table with those named counters."""
    return CLIENT_COUNTERS.format(
        counters="\n".join(f"  counter {n}_out {{ }}\n  counter {n}_in {{ }}" for n, _, _ in pairs),
        out_rules="\n".join(f"    {o} counter name {n}_out" for n, o, _ in pairs),
        in_rules="\n".join(f"    {i} counter name {n}_in" for n, _, i in pairs))


def read_named_counters(lab: Lab, ns: str) -> dict[str, tuple[int, int]]:
    doc = json.loads(lab.run(ns, ["nft", "-j", "list", "counters", "table", "inet", "obs_test"]).stdout)
    return {c["name"]: (c["packets"], c["bytes"]) for o in doc["nftables"] if (c := o.get("counter"))}


def test_bytes_and_packets_by_direction_match_real_traffic(fresh: Lab) -> None:
    """dnat and fullnat, TCP and UDP: per backend, direction in/out on /metrics equal what the
    backend's own counters saw it receive/send, their sum what the client sent/received (IP
    packets: NAT does not change a packet's length), and for UDP exactly the payload plus 28
    header bytes per datagram; new connections equal the connections made. Traffic to be1 that
    is not ours (another table's DNAT, a direct connection) is counted nowhere."""
    lab = fresh
    client_pairs = [(f"{nat}_{proto}", f"ip daddr {vip} meta l4proto {proto}", f"ip saddr {vip} meta l4proto {proto}")
                    for nat, proto in FLOWS for vip in [VIP if nat == "dnat" else FULLNAT_VIP]]
    client_pairs += [("foreign", f"ip daddr {FOREIGN_VIP}", f"ip saddr {FOREIGN_VIP}"),
                     ("direct", f"ip daddr {backend_v4(1)}", f"ip saddr {backend_v4(1)}")]
    backend_pairs = [(f"{nat}_{proto}", f"ip daddr {peer} {proto} sport 8080", f"ip saddr {peer} {proto} dport 8080")
                     for nat, proto in FLOWS for peer in [CLIENT_V4 if nat == "dnat" else GW_BACKEND_V4]]
    ends = {"client": client_pairs, **{f"be{i}": backend_pairs for i in (1, 2, 3)}}
    try:
        for ns, pairs in ends.items():
            lab.run(ns, ["nft", "-f", "-"], input=counter_table(pairs))
        lab.run("gw", ["nft", "-f", "-"], input=FOREIGN)
        # --no-health: the gw's probes would reach the backends too (from the fullnat address).
        with LabDaemon(lab, direction_config(), extra_args=("--no-health",)):
            made = {}
            for nat, proto in FLOWS:
                vip = VIP if nat == "dnat" else FULLNAT_VIP
                size = 5000 if proto == "tcp" else 1000
                done = lab.run("client", [sys.executable, "-c", TRAFFIC, proto, vip, "8", str(size)])
                made[(nat, proto)] = json.loads(done.stdout)
            for target, port in ((FOREIGN_VIP, "80"), (backend_v4(1), "8080")):
                done = lab.run("client", [sys.executable, "-c", TRAFFIC, "tcp", target, "3", "2000", port])
                assert list(json.loads(done.stdout)) == ["be1"], done.stdout
            time.sleep(0.3)  # the last ACKs of the closes
            metrics = scrape(lab)
            client = read_named_counters(lab, "client")
            backend_seen = {i: read_named_counters(lab, f"be{i}") for i in (1, 2, 3)}
    finally:
        for ns in ends:
            lab.run(ns, ["nft", "delete table inet obs_test"], check=False)
        lab.run("gw", ["nft", "delete table ip obs_foreign"], check=False)

    def value(name: str, lb_name: str, backend: int, direction: str | None = None) -> int:
        want = {"lb": lb_name, "backend": f"{backend_v4(backend)}:8080"}
        if direction is not None:
            want["direction"] = direction
        hits = [v for labels, v in metrics[name].items() if dict(labels) == want]
        assert len(hits) == 1, (name, want, metrics.get(name))
        return int(hits[0])

    for nat, proto in FLOWS:
        lb_name, members = f"{nat}-{proto}", ((1, 2) if nat == "dnat" else (2, 3))
        per_backend = made[(nat, proto)]
        assert sorted(per_backend) == [f"be{i}" for i in members] and all(r[0] == 4 for r in per_backend.values())
        totals = {"in": [0, 0], "out": [0, 0]}
        for i in members:
            conns, sent, received = per_backend[f"be{i}"]
            got = {d: (value("gatelb_backend_packets_total", lb_name, i, d),
                       value("gatelb_backend_bytes_total", lb_name, i, d)) for d in ("in", "out")}
            assert value("gatelb_backend_new_connections_total", lb_name, i) == conns
            # What the backend itself received and sent on these flows.
            seen_in, seen_out = backend_seen[i][f"{nat}_{proto}_in"], backend_seen[i][f"{nat}_{proto}_out"]
            if i == 1 and (nat, proto) == ("dnat", "tcp"):  # be1 also got the foreign and direct flows
                others = [client[f"{o}_{d}"] for o in ("foreign", "direct") for d in ("out", "in")]
                assert all(p > 0 for p, _ in others), others
                seen_in = (seen_in[0] - others[0][0] - others[2][0], seen_in[1] - others[0][1] - others[2][1])
                seen_out = (seen_out[0] - others[1][0] - others[3][0], seen_out[1] - others[1][1] - others[3][1])
            assert got == {"in": seen_in, "out": seen_out}, (lb_name, i, got, seen_in, seen_out)
            if proto == "udp":  # one IP packet per datagram: 20 bytes IPv4 + 8 UDP
                assert got == {"in": (conns, sent + 28 * conns), "out": (conns, received + 28 * conns)}
            else:
                # IPv4 20 + TCP 20 + options (Linux's defaults, both ends): 12 bytes (timestamps)
                # on every segment but the SYN and the SYN-ACK, which carry 20 (MSS, SACK
                # permitted, timestamps, window scale): 52 bytes a packet, 8 more once per connection.
                for d, payload in (("in", sent), ("out", received)):
                    packets, nbytes = got[d]
                    assert packets >= 4 * conns and nbytes - payload == 52 * packets + 8 * conns, (d, got)
            for d in ("in", "out"):
                totals[d][0] += got[d][0]
                totals[d][1] += got[d][1]
        # What the client sent to (received from) the VIP is what its backends got (sent).
        assert client[f"{nat}_{proto}_out"] == tuple(totals["in"]), (lb_name, client, totals)
        assert client[f"{nat}_{proto}_in"] == tuple(totals["out"]), (lb_name, client, totals)
