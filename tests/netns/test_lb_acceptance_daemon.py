"""Acceptance of issue 2 for `gatelb run`: the daemon follows its file (a rewrite is synced without
a command), keeps established connections when a backend is removed, and given a bad file keeps
serving the last good configuration until the next good one.
"""

from __future__ import annotations

from gatelb.lab.topology import Lab

from .gatelb_helpers import Daemon, Gatelb, backends, config, gatelb_cli, l4lb, module_lab  # noqa: F401 - fixtures `gl` and `lab`

VIP = "203.0.113.10"
TIMEOUT = 5.0


def web(skip: tuple[int, ...] = (), port: int = 80) -> str:
    return l4lb("web", frontend={"ip": VIP, "port": port}, backend=backends(skip=skip))


def started(gl: Gatelb, text: str) -> Daemon:
    """A running daemon that has applied `text`."""
    daemon = gl.daemon(gl.write(text, "gatelb.yaml")).start()
    try:
        daemon.wait_event("sync")
    except BaseException:
        daemon.stop()
        raise
    return daemon


def served(lab: Lab, count: int = 30, target: str = VIP, port: int = 80) -> dict[str, int]:
    result = lab.connect_many("tcp", target, port, count, timeout=TIMEOUT, concurrency=8)
    assert result.ok == count, f"{result.failed} of {count} failed: {result.failures}"
    return result.per_backend


def test_daemon_follows_the_file_and_keeps_an_open_connection(gl: Gatelb, lab: Lab) -> None:
    with started(gl, config(web())) as daemon, lab.hold(VIP, 80, timeout=TIMEOUT) as conn:
        assert conn.exchange("before") == "before"
        gone = int(conn.backend.removeprefix("be"))
        mark = daemon.rewrite(config(web(skip=(gone,))))
        sync = daemon.wait_event("sync", after=mark)
        assert sync["trigger"] == "file" and not sync["full"], sync
        hits = served(lab, 60)
        assert conn.backend not in hits and len(hits) == 2, hits
        assert conn.exchange("after the change") == "after the change"


def test_daemon_keeps_the_last_good_configuration_on_a_bad_file(gl: Gatelb, lab: Lab) -> None:
    with started(gl, config(web())) as daemon:
        assert len(served(lab)) == 3
        before = gl.table("-s")  # stateless: the traffic below moves the counters
        mark = daemon.rewrite(config(web(port=70000)))
        invalid = daemon.wait_event("config-invalid", after=mark)
        assert any("L4LB web: spec.frontend.port" in e for e in invalid["errors"]), invalid
        assert invalid["keeping"] == "last good configuration"
        assert len(served(lab)) == 3
        assert gl.table("-s") == before
        # The next good file is picked up: a second L4LB appears.
        second = l4lb("second", frontend={"ip": "203.0.113.11", "port": 80}, backend=backends(skip=(1,)))
        mark = daemon.rewrite(config(web(), second))
        daemon.wait_event("sync", after=mark)
        assert set(served(lab, target="203.0.113.11")) == {"be2", "be3"}
        assert len(served(lab)) == 3
    assert "config-invalid" in daemon.log()
