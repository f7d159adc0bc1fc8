"""Issue 13, the daemon repairs what happens behind its back (real kernel, real `gatelb run`):
our table deleted, a distribution-style `nft -f` reload starting with `flush ruleset`, an element
edited by someone else. Each is noticed from the kernel's nftables notifications, logged as a
warning and repaired with a full reload, and traffic flows again; `status` follows the kernel.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from gatelb.lab.topology import Lab

from .gatelb_helpers import Daemon, Gatelb, backends, config, gatelb_cli, l4lb, module_lab  # noqa: F401 - fixtures `gl` and `lab`

VIP = "203.0.113.10"
TIMEOUT = 5.0
DETECT_S = 2.0  # the bound: noticed within a second or two


def web() -> str:
    return l4lb("web", frontend={"ip": VIP, "port": 80}, backend=backends())


def served(lab: Lab, count: int = 30) -> dict[str, int]:
    result = lab.connect_many("tcp", VIP, 80, count, timeout=TIMEOUT, concurrency=8)
    assert result.ok == count, f"{result.failed} of {count} failed: {result.failures}"
    return result.per_backend


def started(gl: Gatelb) -> Daemon:
    daemon = gl.daemon(gl.write(config(web()), "gatelb.yaml")).start()
    try:
        daemon.wait_event("sync")
    except BaseException:
        daemon.stop()
        raise
    return daemon


def repaired(daemon: Daemon, mark: int, done_at: float) -> dict[str, object]:
    """The warning and the full resync after `mark`; the warning came within DETECT_S of `done_at`."""
    warning = daemon.wait_event("table-changed-externally", after=mark)
    assert warning["level"] == "warn" and warning["action"] == "full resync", warning
    noticed = datetime.fromisoformat(str(warning["time"]).replace("Z", "+00:00")).timestamp()
    assert noticed - done_at < DETECT_S, (noticed - done_at, warning)
    sync = daemon.wait_event("sync", after=mark)
    assert sync["full"] and sync["trigger"] == "repair", sync
    return warning


def test_deleted_table_is_noticed_and_restored(gl: Gatelb, lab: Lab) -> None:
    with started(gl) as daemon:
        assert len(served(lab)) == 3
        mark = len(daemon.events())
        gl.nft("delete", "table", "inet", "gatelb")
        warning = repaired(daemon, mark, time.time())
        changes = warning["changes"]
        assert isinstance(changes, dict) and changes.get("table deleted") == 1, warning
        assert warning["by_process"] == "nft"
        assert len(served(lab)) == 3
        assert gl.lb_status("web")["programmed"]


def test_flush_ruleset_reload_is_noticed_and_restored(gl: Gatelb, lab: Lab, tmp_path: object) -> None:
    """What `systemctl reload nftables` does on Debian: `nft -f /etc/nftables.conf`, which starts
    with `flush ruleset`. Its own table stays; ours comes back."""
    with started(gl) as daemon:
        mark = len(daemon.events())
        lab.run("gw", ["nft", "-f", "-"], input="flush ruleset\ntable inet distro {\n\tchain input {\n"
                "\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n")
        repaired(daemon, mark, time.time())
        assert len(served(lab)) == 3
        assert "table inet distro" in gl.nft("list", "tables").stdout
    gl.nft("delete", "table", "inet", "distro")


def test_foreign_element_edit_is_undone(gl: Gatelb, lab: Lab) -> None:
    """Someone removes the service's map element by hand: the generation does not change, the
    notification names the committer; the repair puts the element back."""
    with started(gl) as daemon:
        mark = len(daemon.events())
        gl.nft("delete", "element", "inet", "gatelb", "svc4", "{", VIP, ".", "tcp", ".", "80", "}")
        warning = repaired(daemon, mark, time.time())
        assert warning["changes"] == {"element deleted": 1}, warning
        assert len(served(lab)) == 3


def test_own_changes_are_not_taken_for_foreign_ones(gl: Gatelb, lab: Lab) -> None:
    """The daemon's own increments and full loads (nft and netlink batches) never trigger a repair."""
    with started(gl) as daemon:
        for skip in ((1,), (), (2,), ()):
            mark = daemon.rewrite(config(l4lb("web", frontend={"ip": VIP, "port": 80}, backend=backends(skip=skip))))
            daemon.wait_event("sync", after=mark)
        time.sleep(0.5)
        assert not [e for e in daemon.events() if e.get("event") == "table-changed-externally"], daemon.log()
        assert len(served(lab)) == 3


def test_status_reflects_the_kernel(gl: Gatelb, lab: Lab) -> None:
    """No daemon: the table removed behind a one-shot apply shows as not programmed."""
    gl.apply_ok(config(web(), l4lb("other", frontend={"ip": "203.0.113.11", "port": 80}, backend=backends())))
    assert gl.lb_status("web")["programmed"] and gl.lb_status("other")["programmed"]
    gl.nft("delete", "element", "inet", "gatelb", "svc4", "{", "203.0.113.11", ".", "tcp", ".", "80", "}")
    assert gl.lb_status("web")["programmed"]
    assert not gl.lb_status("other")["programmed"]
    gl.nft("delete", "table", "inet", "gatelb")
    assert not gl.lb_status("web")["programmed"]


# -- ownership of the table per namespace -------------------------------------------------------

def test_second_gatelb_in_the_namespace_refuses(gl: Gatelb, lab: Lab, tmp_path: Path) -> None:
    other = Gatelb(lab, tmp_path / "second")
    text = config(l4lb("intruder", frontend={"ip": "203.0.113.20", "port": 80}, backend=backends()))
    with started(gl) as daemon:
        before = gl.table()
        run = other.cli("run", "-f", str(other.write(text)), "--no-health")
        assert run.code == 1, run.output
        assert "owned by gatelb run pid" in run.stderr and str(gl.state_dir) in run.stderr, run.stderr
        for args in (("apply", "-f", str(other.write(text))), ("flush",)):
            out = other.cli(*args)
            assert out.code == 1 and "owned by gatelb run pid" in out.stderr, out.output
        assert other.plan(text).code == 3  # read-only: allowed (3: it would change something)
        assert gl.table() == before
        assert len(served(lab)) == 3
        assert not [e for e in daemon.events() if e.get("event") == "table-changed-externally"]
    assert other.apply(text).code == 0  # the owner is gone: the namespace is free again


# -- other tables that can win over ours ---------------------------------------------------------

FOREIGN = """table inet glbfw {
\tchain c_forward {
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established accept
\t}
\tchain c_early {
\t\ttype nat hook prerouting priority -150; policy accept;
\t\tjump c_sub
\t}
\tchain c_sub {
\t\tip daddr 203.0.113.99 dnat ip to 198.51.100.11
\t}
\tchain c_late {
\t\ttype nat hook prerouting priority 10; policy accept;
\t\tip daddr 203.0.113.98 dnat ip to 198.51.100.11
\t}
\tchain c_quiet {
\t\ttype filter hook input priority filter; policy accept;
\t\tct state established accept
\t}
}
"""


def test_foreign_tables_that_can_win_are_reported_and_left_alone(gl: Gatelb, lab: Lab) -> None:
    with started(gl) as daemon:
        mark = len(daemon.events())
        lab.run("gw", ["nft", "-f", "-"], input=FOREIGN)
        try:
            warning = daemon.wait_event("foreign-rules", after=mark)
            assert warning["level"] == "warn" and warning["count"] == 2, warning
            found = {(f["chain"], f["can"], f["why"].partition(" (handle")[0]) for f in gl.status()["foreignRules"]}
            assert found == {("c_forward", "drop", "policy drop"),
                             ("c_early", "rewrite", "rule with dnat in chain c_sub")}, found
            # Left alone: the table is as we wrote it, and ours was not touched for it.
            assert "policy drop" in gl.nft("list", "table", "inet", "glbfw").stdout
            assert not [e for e in daemon.events() if e.get("event") == "table-changed-externally"]
        finally:
            gl.nft("delete", "table", "inet", "glbfw")
        daemon.wait_event("foreign-rules-cleared", after=mark)
        assert gl.status()["foreignRules"] == []
