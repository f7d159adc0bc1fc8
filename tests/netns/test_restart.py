"""A restart of `gatelb run` over the table its previous run left: nothing is reloaded.

The daemon adopts the table when the kernel's generation (the one element of the set
`generation` in `table inet gatelb`) equals the one in its state record. Proven here with the
real kernel, in both modes (`gatelb run -f` and `gatelb run --kubeconfig` against the API
stand-in, which runs in the gw namespace: tests/k8s_standin/in_netns.py), with health checks on,
while a paced client keeps opening new connections through the VIPs:

- `nft monitor` in the gw namespace sees no transaction from the stop to the end of the first
  round of the new process, the generation is the same and the table reads the same;
- the new process logs `adopted` and no `sync` with changes for its first round;
- not one connection fails during the whole restart;
- the next change is an increment (`full: false`, generation + 1), not a reload.

And the negative case: a table changed behind the daemon's back while it was down is not
adopted; the restart loads it in full, and traffic flows afterwards.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi, DiscoveryV1Api

from gatelb.lab.procs import stop_process
from gatelb.lab.results import ClientResult
from gatelb.lab.running import RunningClient
from gatelb.lab.topology import Lab, backend_v4
from tests.k8s_standin.client import apply
from tests.k8s_standin.in_netns import StandinInNetns
from tests.k8s_standin.server import StandinServer

from .gatelb_helpers import (  # noqa: F401 - fixtures `gl` and `lab`
    Daemon,
    Gatelb,
    backends,
    config,
    gatelb_cli,
    l4lb,
    module_lab,
)

VIPS = ("203.0.113.10", "203.0.113.11")
RATE = 40.0  # new connections per second through each VIP during a restart
CLIENT_S = 4.0  # how long the paced clients run: the restart must fit in it with room to spare
TIMEOUT = 1.0  # seconds per connection attempt


# -- the kernel, watched ------------------------------------------------------------------------


class NftMonitor:
    """`nft monitor` in the gw namespace: every change of the namespace's ruleset, as nft prints
    it. ready() returns once the monitor provably sees changes (it saw a probe table come and go);
    changes() are the lines printed after that."""

    PROBE = "gatelb_restart_probe"

    def __init__(self, lab: Lab, path: Path) -> None:
        self._lab = lab
        self._path = path
        with open(path, "wb") as out:
            self._proc = lab.popen("gw", ["nft", "monitor"], stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def _lines(self) -> list[str]:
        return self._path.read_text(errors="replace").splitlines() if self._path.exists() else []

    def ready(self, timeout: float = 5.0) -> NftMonitor:
        deadline = time.monotonic() + timeout
        while True:
            self._lab.run("gw", ["nft", f"add table inet {self.PROBE}; delete table inet {self.PROBE}"])
            time.sleep(0.05)
            if f"delete table inet {self.PROBE}" in self._lines():
                return self
            assert self._proc.poll() is None, f"nft monitor exited: {self._lines()}"
            assert time.monotonic() < deadline, f"nft monitor saw no change within {timeout} s: {self._lines()}"

    def changes(self) -> list[str]:
        lines = self._lines()
        start = max(i for i, line in enumerate(lines) if line == f"delete table inet {self.PROBE}") + 1
        if start < len(lines) and lines[start].startswith("# new generation"):
            start += 1  # the end of the probe's own transaction
        return lines[start:]

    def stop(self) -> None:
        stop_process(self._proc)

    def __enter__(self) -> NftMonitor:
        return self.ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def generation_elements(lab: Lab) -> list[int]:
    """The elements of the table's `generation` set (one, normally)."""
    out = lab.run("gw", ["nft", "-j", "list", "set", "inet", "gatelb", "generation"]).stdout
    for obj in json.loads(out)["nftables"]:
        if "set" in obj:
            return [int(e) for e in obj["set"].get("elem", [])]
    raise AssertionError(f"no generation set: {out}")


def table_text(lab: Lab) -> str:
    return lab.run("gw", ["nft", "-s", "list", "table", "inet", "gatelb"]).stdout  # -s: without counters


def applied_at(state_dir: Path) -> float:
    """When the daemon last wrote its record (0: no record yet)."""
    try:
        return float(json.loads((state_dir / "state.json").read_text())["applied"]["appliedAt"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def wait_until(ok: Callable[[], Any], what: str, timeout: float = 20.0, log: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := ok()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s\n{log()[-4000:]}"
        time.sleep(0.02)
    return value


# -- traffic --------------------------------------------------------------------------------------


def paced_clients(lab: Lab) -> list[RunningClient]:
    return [lab.start_client("tcp", vip, 80, count=int(CLIENT_S * RATE), rate=RATE, timeout=TIMEOUT)
            for vip in VIPS]


def check_no_failure(results: list[ClientResult], down: float, up: float) -> None:
    """Every connection of the clients succeeded, and they were connecting all through the
    restart (from before `down` to after `up`, UNIX times)."""
    for result in results:
        starts = [a.at for a in result.attempts if a.at is not None]
        assert min(starts) < down and max(starts) > up + 0.2, (
            f"{result.target}: the client ran from {min(starts) - down:+.2f} s to {max(starts) - up:+.2f} s "
            "around the restart; it must cover all of it")
        assert result.failed == 0, f"{result.target}: {result.failures}"
        assert len(result.backends) == 3, result.per_backend


def served(lab: Lab, vip: str) -> None:
    result = lab.connect_many("tcp", vip, 80, count=24, timeout=TIMEOUT)
    assert result.ok == 24 and len(result.backends) == 3, (result.failures, result.per_backend)


# -- file mode ----------------------------------------------------------------------------------


def file_config(skip: tuple[int, ...] = ()) -> str:
    return config(l4lb("web", frontend={"ip": VIPS[0], "port": 80}, backend=backends()),
                  l4lb("api", frontend={"ip": VIPS[1], "port": 80}, backend=backends(skip=skip)))


def started(daemon: Daemon) -> Daemon:
    daemon.start()
    try:
        daemon.wait_event("sync")
    except BaseException:
        daemon.stop()
        raise
    return daemon


def restart_with_nothing_to_do(lab: Lab, gl: Gatelb, daemon: Daemon, monitor: NftMonitor, generation: list[int],
                               table: str) -> None:
    """SIGTERM (in Kubernetes mode the Lease is handed back, the table stays) and the same command
    again while paced clients keep connecting: the new process adopts the table and sends no
    transaction at all, and no connection fails."""
    clients = paced_clients(lab)
    time.sleep(0.5)
    down = time.time()
    daemon.stop()
    mark = len(daemon.events())
    daemon.start()
    adopted = daemon.wait_event("adopted", after=mark)
    # The first round has run once the new process wrote its record.
    wait_until(lambda: applied_at(gl.state_dir) > down, "the first round after the restart", log=daemon.log)
    up = time.time()
    results = [c.result() for c in clients]

    after = daemon.events()[mark:]
    assert adopted["generation"] == generation[0] and adopted["services"] == 2, adopted
    assert [e for e in after if e.get("event") in ("sync", "sync-failed")] == [], after
    assert monitor.changes() == [], "a transaction during the restart"
    assert generation_elements(lab) == generation
    assert table_text(lab) == table
    check_no_failure(results, down, up)


def test_file_mode_restart_adopts_the_table_and_keeps_every_connection(gl: Gatelb, lab: Lab) -> None:
    daemon = gl.daemon(gl.write(file_config(), "gatelb.yaml"), health=True)
    with started(daemon), NftMonitor(lab, gl.state_dir.parent / "monitor.log") as monitor:
        for vip in VIPS:
            served(lab, vip)
        wait_until(lambda: applied_at(gl.state_dir), "the first state record", log=daemon.log)
        generation, table = generation_elements(lab), table_text(lab)
        assert len(generation) == 1

        restart_with_nothing_to_do(lab, gl, daemon, monitor, generation, table)

        # The next change is an increment over the adopted table.
        mark = daemon.rewrite(file_config(skip=(2,)))
        sync = daemon.wait_event("sync", after=mark)
        assert sync["full"] is False and sync["generation"] == generation[0] + 1, sync
        assert sync["load_balancers"] == 1, sync
        assert generation_elements(lab) == [generation[0] + 1]
        assert monitor.changes(), "nft monitor saw the increment"
        assert set(lab.connect_many("tcp", VIPS[1], 80, count=24, timeout=TIMEOUT).backends) == {"be1", "be3"}
        served(lab, VIPS[0])
    assert "Traceback" not in daemon.log(), daemon.log()


TAMPERING = {
    "a second generation element": "add element inet gatelb generation {{ 99 }}",
    "generation moved": "delete element inet gatelb generation {{ {g} }}; add element inet gatelb generation {{ {h} }}",
    "flushed table": "flush table inet gatelb",
}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_file_mode_restart_over_a_changed_table_loads_it_in_full(gl: Gatelb, lab: Lab, how: str) -> None:
    daemon = gl.daemon(gl.write(file_config(), "gatelb.yaml"))
    with started(daemon):
        served(lab, VIPS[0])
        wait_until(lambda: applied_at(gl.state_dir), "the first state record", log=daemon.log)
        [generation] = generation_elements(lab)
        daemon.stop()
        lab.run("gw", ["nft", TAMPERING[how].format(g=generation, h=generation + 7)])
        mark = len(daemon.events())
        daemon.start()
        sync = daemon.wait_event("sync", after=mark)
        assert sync["full"] is True, sync
        assert "adopted" not in [e.get("event") for e in daemon.events()[mark:]], daemon.log()
        assert len(generation_elements(lab)) == 1, "the full load replaced the whole table"
        for vip in VIPS:
            served(lab, vip)
        # And the run goes on incrementally from there.
        mark = daemon.rewrite(file_config(skip=(2,)))
        sync = daemon.wait_event("sync", after=mark)
        assert sync["full"] is False, sync
        assert set(lab.connect_many("tcp", VIPS[1], 80, count=24, timeout=TIMEOUT).backends) == {"be1", "be3"}


# -- Kubernetes mode ----------------------------------------------------------------------------


@pytest.fixture
def cluster(lab: Lab) -> Iterator[StandinInNetns]:
    """The API stand-in in the gw namespace, set up as docs/kubernetes.md says (CRDs, deploy/rbac.yaml)."""
    standin = StandinInNetns(lab.gw, crd_init_s=0.0)
    standin.start()
    try:
        standin.call(lambda server, client: apply(client, "rbac.yaml"))
        yield standin
    finally:
        standin.close()


def endpoint_slice(svc: str, ready: tuple[int, ...]) -> dict[str, Any]:
    return {"metadata": {"name": f"{svc}-1", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [backend_v4(i)], "conditions": {"ready": True}} for i in ready]}


def create_services(standin: StandinInNetns) -> None:
    async def make(server: StandinServer, client: ApiClient) -> None:
        await CustomObjectsApi(client).create_cluster_custom_object("gatelb.io", "v1alpha1", "ippools", {
            "apiVersion": "gatelb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "public"},
            "spec": {"addresses": ["203.0.113.10-203.0.113.19"]}})
        for name, vip in zip(("web", "api"), VIPS, strict=True):
            await CoreV1Api(client).create_namespaced_service("default", {
                "metadata": {"name": name, "annotations": {"gatelb.io/loadBalancerIPs": vip}},
                "spec": {"type": "LoadBalancer", "ports": [{"name": "tcp", "port": 80, "protocol": "TCP"}]}})
            await DiscoveryV1Api(client).create_namespaced_endpoint_slice("default", endpoint_slice(name, (1, 2, 3)))

    standin.call(make)


def ingress(standin: StandinInNetns, name: str) -> list[str]:
    async def get(server: StandinServer, client: ApiClient) -> list[str]:
        obj = server.store.objects.get(("v1/services", "default", name)) or {}
        return [i["ip"] for i in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]

    return standin.call(get)


def test_kubernetes_mode_restart_adopts_the_table_and_keeps_every_connection(
        gl: Gatelb, lab: Lab, cluster: StandinInNetns) -> None:
    create_services(cluster)
    kubeconfig = gl.config_dir / "kubeconfig.yaml"
    kubeconfig.write_text(cluster.kubeconfig_yaml())
    daemon = gl.kube_daemon(kubeconfig, "--backend-mode", "pod", health=True)
    with started(daemon), NftMonitor(lab, gl.state_dir.parent / "monitor.log") as monitor:
        assert wait_until(lambda: ingress(cluster, "web") and ingress(cluster, "api"), "Service status",
                          log=daemon.log)
        assert (ingress(cluster, "web"), ingress(cluster, "api")) == ([VIPS[0]], [VIPS[1]])
        for vip in VIPS:
            served(lab, vip)
        wait_until(lambda: applied_at(gl.state_dir), "the first state record", log=daemon.log)
        generation, table = generation_elements(lab), table_text(lab)
        assert len(generation) == 1

        restart_with_nothing_to_do(lab, gl, daemon, monitor, generation, table)

        # An EndpointSlice event after the restart is an increment of that Service only.
        mark = len(daemon.events())
        cluster.call(lambda server, client: DiscoveryV1Api(client).replace_namespaced_endpoint_slice(
            "api-1", "default", endpoint_slice("api", (1, 3))))
        sync = daemon.wait_event("sync", after=mark)
        assert sync["full"] is False and sync["generation"] == generation[0] + 1, sync
        assert sync["load_balancers"] == 1, sync
        assert monitor.changes(), "nft monitor saw the increment"
        assert set(lab.connect_many("tcp", VIPS[1], 80, count=24, timeout=TIMEOUT).backends) == {"be1", "be3"}
        served(lab, VIPS[0])
    assert "Traceback" not in daemon.log(), daemon.log()
