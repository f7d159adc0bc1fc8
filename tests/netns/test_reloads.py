"""Issue 13, "reloads must never hurt", against a real `gatelb run` in a lab: a truncated file
rewritten at once removes nothing, a file that stays empty does (after the hold), a non-UTF-8 file
keeps the last good configuration, every ConfigMap swap is applied, SIGHUP without a change says
so, `plan` and `status` work while the daemon holds the state directory, `plan` exits 3 when
something would change, and a load balancer that comes back after a restart gets its address."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from gatelb.lab.topology import Lab

from .gatelb_helpers import (  # noqa: F401 - fixtures `gl` and `lab`
    Daemon,
    Gatelb,
    backends,
    config,
    gatelb_cli,
    l4lb,
    module_lab,
)

VIP = "203.0.113.10"
TIMEOUT = 5.0


def web(name: str = "web", ip: str | None = VIP, port: int = 80) -> str:
    front: dict[str, object] = {"port": port}
    if ip is not None:
        front["ip"] = ip
    return l4lb(name, frontend=front, backend=backends())


def started(gl: Gatelb, path: Path, *extra: str) -> Daemon:
    daemon = gl.daemon(path, *extra).start()
    try:
        daemon.wait_event("sync")
    except BaseException:
        daemon.stop()
        raise
    return daemon


def until(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for `check()` (the state record is written at most once a second)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def served(lab: Lab, count: int = 20, target: str = VIP) -> int:
    return lab.connect_many("tcp", target, 80, count, timeout=TIMEOUT, concurrency=8).ok


def test_a_truncated_file_rewritten_at_once_removes_nothing(gl: Gatelb, lab: Lab) -> None:
    path = gl.write(config(web(), web("api", "203.0.113.11")), "gatelb.yaml")
    with started(gl, path) as daemon:
        mark = len(daemon.events())
        path.write_text("")  # `: > file`, then the editor writes the text
        daemon.wait_event("reload-held", after=mark)
        assert served(lab) == 20  # still served while held
        path.write_text(config(web(), web("api", "203.0.113.11")))
        daemon.wait_event("reload-hold-ended", after=mark)
        time.sleep(2.5)  # longer than the hold: nothing was removed meanwhile or after
        assert not [e for e in daemon.events()[mark:] if e.get("event") == "sync"], daemon.log()
        assert served(lab) == 20 and served(lab, target="203.0.113.11") == 20


def test_a_file_that_stays_empty_removes_everything_after_the_hold(gl: Gatelb, lab: Lab) -> None:
    path = gl.write(config(web()), "gatelb.yaml")
    with started(gl, path) as daemon:
        mark = len(daemon.events())
        emptied = time.time()
        path.write_text("")
        sync = daemon.wait_event("sync", after=mark)
        assert sync["changed"] == "web" and float(sync["wall_time"]) - emptied >= 2.0, sync
        assert served(lab, 3) == 0


def test_allow_empty_applies_an_emptied_file_at_once(gl: Gatelb) -> None:
    path = gl.write(config(web()), "gatelb.yaml")
    with started(gl, path, "--allow-empty") as daemon:
        mark = len(daemon.events())
        emptied = time.time()
        path.write_text("")
        sync = daemon.wait_event("sync", after=mark)
        assert float(sync["wall_time"]) - emptied < 2.0, sync
        assert not [e for e in daemon.events()[mark:] if e.get("event") == "reload-held"]


def test_a_non_utf8_file_keeps_the_last_good_configuration(gl: Gatelb, lab: Lab) -> None:
    path = gl.write(config(web()), "gatelb.yaml")
    with started(gl, path) as daemon:
        mark = len(daemon.events())
        path.write_bytes(config(web()).encode() + b"\n# caf\xe9\n")
        invalid = daemon.wait_event("config-invalid", after=mark)
        assert any("not UTF-8 text" in e and str(path) in e for e in invalid["errors"]), invalid
        assert invalid["keeping"] == "last good configuration"
        assert served(lab) == 20
    # The one-shot commands: exit 2, the same message, no traceback.
    out = gl.cli("apply", "-f", str(path))
    assert out.code == 2 and "not UTF-8 text" in out.stderr and "Traceback" not in out.output, out


def configmap(d: Path, stamp: str, text: str) -> None:
    """The kubelet's atomic writer: a new timestamped directory, `..data` swapped by rename."""
    new = d / f"..{stamp}"
    new.mkdir()
    (new / "lbs.yaml").write_text(text)
    old = os.readlink(d / "..data") if (d / "..data").is_symlink() else None
    os.symlink(new.name, d / "..data_tmp")
    os.replace(d / "..data_tmp", d / "..data")
    if not (d / "lbs.yaml").is_symlink():
        os.symlink("..data/lbs.yaml", d / "lbs.yaml")
    if old is not None:
        for f in (d / old).iterdir():
            f.unlink()
        (d / old).rmdir()


def test_every_configmap_swap_is_applied(gl: Gatelb) -> None:
    d = gl.config_dir / "configmap"
    d.mkdir()
    configmap(d, "2026_12_01_00_00_00.1", config(web(port=80)))
    with started(gl, d) as daemon:
        for i, port in enumerate((81, 82, 83), start=2):
            mark = len(daemon.events())
            configmap(d, f"2026_12_01_00_00_0{i}.{i}", config(web(port=port)))
            daemon.wait_event("sync", after=mark)
            until(lambda port=port: gl.lb_status("web")["frontend"]["port"] == port)


def test_sighup_without_a_change_says_so_and_with_one_applies_it(gl: Gatelb) -> None:
    path = gl.write(config(web()), "gatelb.yaml")
    with started(gl, path) as daemon:
        mark = len(daemon.events())
        daemon.signal(signal.SIGHUP)
        reloaded = daemon.wait_event("reloaded", after=mark)
        assert reloaded["changed_files"] == "no changes", reloaded


def test_plan_and_status_work_while_the_daemon_runs(gl: Gatelb) -> None:
    path = gl.write(config(web()), "gatelb.yaml")
    with started(gl, path):
        same = gl.cli("plan", "-f", str(path))
        assert same.code == 0 and "no changes" in same.stdout, same
        other = gl.plan(config(web(port=8443)))
        assert other.code == 3 and "web" in other.stdout, other
        assert gl.status()["loadBalancers"][0]["name"] == "web"
        busy = gl.apply(config(web(port=8443)))  # a writer still finds the directory in use
        assert busy.code == 1 and "in use" in busy.stderr, busy


def test_a_load_balancer_back_after_a_restart_gets_its_address(gl: Gatelb) -> None:
    names = ("a", "b", "c")
    path = gl.write(config(*(web(n, ip=None) for n in names)), "gatelb.yaml")
    with started(gl, path) as daemon:
        until(lambda: len(gl.status()["loadBalancers"]) == 3)
        before = {n: gl.vip(n) for n in names}
        mark = daemon.rewrite(config(web("c", ip=None)))
        daemon.wait_event("sync", after=mark)
        time.sleep(1.5)  # the record is written at most once a second
    with started(gl, gl.write(config(web("b", ip=None), web("c", ip=None)), "gatelb.yaml")):
        until(lambda: {lb["name"] for lb in gl.status()["loadBalancers"]} == {"b", "c"})
        assert gl.vip("b") == before["b"] and gl.vip("c") == before["c"], before


def test_delete_by_name(gl: Gatelb) -> None:
    gl.apply_ok(config(web(), web("api", "203.0.113.11")))
    missing = gl.cli("delete", "nope")
    assert missing.code == 2 and "L4LB nope not found" in missing.stderr, missing
    assert {lb["name"] for lb in gl.status()["loadBalancers"]} == {"web", "api"}
    done = gl.cli("delete", "api")
    assert done.code == 0, done
    assert {lb["name"] for lb in gl.status()["loadBalancers"]} == {"web"}
    empty = gl.apply(config())
    assert empty.code == 2 and "--allow-empty" in empty.stderr, empty
    assert gl.cli("apply", "--allow-empty", "-f", str(gl.write(config()))).code == 0
