"""agent/metrics.py against the fake nft: the reconciler feeds it (consumer and round observer),
the per-backend series are valid Prometheus text with the kernel's numbers, /healthz follows
kube-proxy's rules; the metrics address parser and the bash completion script."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatelb.agent.metrics import Metrics
from gatelb.agent.server import parse_address
from gatelb.cli.completion import bash_script
from gatelb.cli.main import build_parser
from gatelb.dataplane.layout import FAMILY_SETS, counter_shard
from gatelb.kernel.counters import RawCounts, counter_key
from gatelb.kernel.nlcounters import RawDump
from gatelb.model import Protocol
from gatelb.sources.static import StaticSource

from .test_reconciler import desired, ip, lb, make, start

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse(text: bytes) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def kernel(counts: dict[tuple[str, int], tuple[int, int, int]]) -> RawDump:
    """A dump where backend (address, port) of VIP 203.0.113.1 has (new, packets, bytes) client ->
    backend, and half those packets and a third of those bytes backend -> client; each backend's
    elements in the shard the layout gives its address."""
    vip = ip("203.0.113.1")
    sets: dict[str, RawCounts] = {}
    names = FAMILY_SETS[4]
    for (a, p), (n, pk, b) in counts.items():
        key, shard = counter_key(vip, Protocol.TCP, ip(a), p), counter_shard(ip(a))  # type: ignore[arg-type]
        sets.setdefault(names.flows[shard], {})[key] = (pk, b)
        sets.setdefault(names.replies[shard], {})[key] = (pk // 2, b // 3)
        sets.setdefault(names.conns[shard], {})[key] = (n, n * 60)
    return RawDump(generation=1, sets=sets)


def labels(lb_name: str, backend: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"lb": lb_name, "backend": backend, **more}.items()))


def test_backend_series_carry_the_kernel_counters_and_follow_changes() -> None:
    async def go() -> None:
        src = StaticSource("file", desired(lb("web", 11, 12)))
        r, _nft, _rec = make(src)
        dump = kernel({("198.51.100.11", 8080): (7, 40, 5000), ("198.51.100.12", 8080): (3, 20, 900)})
        metrics = Metrics(read_kernel=lambda: [dump])
        metrics.attach(r, None)
        await start(r, src)
        assert await r.round()
        m = parse(metrics.render())
        a, b = labels("web", "198.51.100.11:8080"), labels("web", "198.51.100.12:8080")
        assert m["gatelb_backend_new_connections_total"] == {a: 7, b: 3}
        def way(lb_name: str, backend: str, direction: str) -> tuple[tuple[str, str], ...]:
            return labels(lb_name, backend, direction=direction)
        a_in, a_out = way("web", "198.51.100.11:8080", "in"), way("web", "198.51.100.11:8080", "out")
        b_in, b_out = way("web", "198.51.100.12:8080", "in"), way("web", "198.51.100.12:8080", "out")
        assert m["gatelb_backend_packets_total"] == {a_in: 40, a_out: 20, b_in: 20, b_out: 10}
        assert m["gatelb_backend_bytes_total"] == {a_in: 5000, a_out: 1666, b_in: 900, b_out: 300}
        assert m["gatelb_backend_up"] == {a: 1, b: 1}
        assert m["gatelb_backend_serving"] == {a: 1, b: 1}
        info = {"lb": "web", "frontend": "203.0.113.1:80", "protocol": "tcp", "algorithm": "random", "pool": "public"}
        assert m["gatelb_lb_info"] == {tuple(sorted(info.items())): 1}
        # A second scrape with moved counters shows the new numbers (lines are cached per value).
        shard = counter_shard(ip("198.51.100.11"))  # type: ignore[arg-type]
        key = counter_key(ip("203.0.113.1"), Protocol.TCP, ip("198.51.100.11"), 8080)
        dump.sets[FAMILY_SETS[4].conns[shard]][key] = (9, 0)
        dump.sets[FAMILY_SETS[4].replies[shard]][key] = (21, 1700)
        m = parse(metrics.render())
        assert m["gatelb_backend_new_connections_total"] == {a: 9, b: 3}
        assert m["gatelb_backend_packets_total"] == {a_in: 40, a_out: 21, b_in: 20, b_out: 10}
        assert m["gatelb_backend_bytes_total"] == {a_in: 5000, a_out: 1700, b_in: 900, b_out: 300}
        # With the kernel's digests: a shard whose three digests are those of the last scrape is
        # not gone over again (its lines stand); a new digest makes it read.
        names = FAMILY_SETS[4]
        dump.digests = {n: b"d0" for n in (*names.flows, *names.replies, *names.conns)}
        parse(metrics.render())
        dump.sets[names.conns[shard]][key] = (10, 0)
        assert parse(metrics.render())["gatelb_backend_new_connections_total"] == {a: 9, b: 3}
        dump.digests[names.conns[shard]] = b"d1"
        assert parse(metrics.render())["gatelb_backend_new_connections_total"] == {a: 10, b: 3}
        assert m["gatelb_sync_duration_seconds_count"] == {(("kind", "full"),): 1}
        assert m["gatelb_pool_addresses_total"] == {(("pool", "public"),): 100}
        assert m["gatelb_pool_addresses_in_use"] == {(("pool", "public"),): 1}
        # An incremental change: the removed backend's series go, the new one's come.
        src.set(desired(lb("web", 11, 13)))
        r.trigger("file")
        assert await r.round()
        m = parse(metrics.render())
        assert set(m["gatelb_backend_up"]) == {a, labels("web", "198.51.100.13:8080")}
        assert m["gatelb_backend_new_connections_total"][labels("web", "198.51.100.13:8080")] == 0
        assert m["gatelb_sync_duration_seconds_count"] == {(("kind", "full"),): 1, (("kind", "partial"),): 1}
    asyncio.run(go())


def test_healthz_follows_failures_and_the_pending_limit() -> None:
    async def go() -> None:
        src = StaticSource("file", desired(lb("web", 11)))
        r, nft, _rec = make(src)
        problems: list[str] = []
        metrics = Metrics(problems=lambda: problems, healthz_timeout_s=0.05, read_kernel=list)
        metrics.attach(r, None)
        await start(r, src)
        assert await r.round()
        ok, body = metrics.health()
        assert ok and body["lastUpdated"] and body["currentTime"] and body["pendingChanges"] == 0
        nft.fail_next = "Error: Could not process rule: Operation not permitted"
        src.set(desired(lb("web", 11, 12)))
        r.trigger("file")
        assert not await r.round()
        ok, body = metrics.health()
        assert not ok and "the last sync failed: Error: Could not process rule" in body["problems"][0]
        assert body["pendingChanges"] >= 1  # the change that failed is still waiting
        assert parse(metrics.render())["gatelb_sync_errors_total"] == {(): 1}
        r.trigger("retry")
        assert await r.round()
        assert metrics.health()[0] and r.pending == 0 and r.pending_since is None
        # A change that waits (no round runs) longer than the limit is unhealthy too.
        r.trigger("file")
        await asyncio.sleep(0.08)
        ok, body = metrics.health()
        assert not ok and "has waited" in body["problems"][0]
        assert await r.round()
        problems.append("Lease gatelb-system/gatelb: 403 Forbidden")
        ok, body = metrics.health()
        assert not ok and body["problems"] == ["Lease gatelb-system/gatelb: 403 Forbidden"]
    asyncio.run(go())


def test_label_values_are_escaped() -> None:
    async def go() -> None:
        src = StaticSource("file", desired(lb('we"b\\x', 11)))
        r, _nft, _rec = make(src)
        metrics = Metrics(read_kernel=list)
        metrics.attach(r, None)
        await start(r, src)
        assert await r.round()
        m = parse(metrics.render())
        assert {dict(k)["lb"] for k in m["gatelb_backend_up"]} == {'we"b\\x'}
    asyncio.run(go())


@pytest.mark.parametrize(("text", "want"), [("127.0.0.1:9469", ("127.0.0.1", 9469)), ("[::1]:80", ("::1", 80)),
                                            ("off", None)])
def test_metrics_address(text: str, want: tuple[str, int] | None) -> None:
    assert parse_address(text) == want


@pytest.mark.parametrize(("text", "problem"), [("9469", "not HOST:PORT"), ("localhost:9469", "not an IP address"),
                                               ("127.0.0.1:70000", "not a port")])
def test_bad_metrics_address_names_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_address(text)


def test_bash_completion_completes_commands_and_choices() -> None:
    script = bash_script(build_parser())
    def complete(*words: str) -> str:
        line = " ".join(f"'{w}'" for w in words)
        done = subprocess.run(["bash", "-c", f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; '
                               '_gatelb; echo "${COMPREPLY[@]}"'], capture_output=True, text=True, check=True)
        return done.stdout.strip()
    assert complete("gatelb", "st") == "status"
    assert complete("gatelb", "status", "-o", "") == "table json yaml"
    assert complete("gatelb", "run", "--metrics-a") == "--metrics-address"


def test_the_dashboard_and_docs_use_only_series_the_daemon_serves() -> None:
    import re
    from pathlib import Path

    from gatelb.health.monitor import HealthChange, TargetKey
    from gatelb.health.state import Status

    async def go() -> set[str]:
        src = StaticSource("file", desired(lb("web", 11)))
        r, _nft, _rec = make(src)
        metrics = Metrics(read_kernel=list)
        metrics.attach(r, None)
        # the announcer's series (the daemon registers this collector when it announces)
        from gatelb.announce.peers import PeerCollector, PeerState

        peer = PeerState("upstream", "192.0.2.129", 64500, "Established", "up", 1, False)
        metrics.registry.register(PeerCollector(lambda: {"upstream": peer}))
        await start(r, src)
        assert await r.round()
        metrics.health_changed([HealthChange(TargetKey("web", ip("198.51.100.11"), 8080), Status.DOWN, Status.UP,
                                             0.0, "test")])
        metrics.probe_duration.labels("tcp", "success").observe(0.001)
        metrics.round_failed("x", 0.1)
        families = list(text_string_to_metric_families(metrics.render().decode()))
        return {f.name for f in families} | {s.name for f in families for s in f.samples}

    served = asyncio.run(go())
    root = Path(__file__).resolve().parents[2]
    for doc in ("deploy/grafana-dashboard.json", "docs/observability.md"):
        used = set(re.findall(r"\bgatelb_[a-z_]+[a-z]", (root / doc).read_text()))
        assert used, doc
        assert used <= served, (doc, sorted(used - served))


def test_the_daemon_reports_its_mode_s_problems_on_healthz(tmp_path: object) -> None:
    """Kubernetes mode: KubeSource.info()["problems"] (Lease, informers) make /healthz 503."""
    from pathlib import Path

    from gatelb.agent.daemon import Daemon, Parts
    from gatelb.agent.statefile import StateStore
    from gatelb.kernel.fake import FakeNft

    problems: list[str] = []
    daemon = Daemon(Parts(info=lambda: {"leader": False, "problems": list(problems)}),
                    StateStore(Path(str(tmp_path))), FakeNft(), health=False)
    assert daemon.metrics.health()[0]
    problems.append("Lease gatelb-system/gatelb-ipam: 403 Forbidden: lacks `update` on leases")
    ok, body = daemon.metrics.health()
    assert not ok and body["problems"] == problems
