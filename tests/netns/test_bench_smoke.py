"""Each benchmark runs in --quick mode and produces its figures (never checks how fast anything is).

The reference generators are checked here too: every kube-proxy layout loads into a real kernel.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from bench import gen
from bench.common import REPO, iptables_restore, run_measured, scratch_netns

SMOKE_TIMEOUT_S = 240


def _newest(results: Path, name: str, before: set[Path]) -> dict[str, object]:
    fresh = sorted(set(results.glob(f"{name}-*.json")) - before)
    assert fresh, f"{name} wrote no results file"
    data: dict[str, object] = json.loads(fresh[-1].read_text())
    return data


def _run_quick(module: str) -> tuple[str, dict[str, object]]:
    results = REPO / "bench" / "results"
    before = set(results.glob("*.json")) if results.exists() else set()
    done = subprocess.run([sys.executable, "-m", module, "--quick"], cwd=REPO, capture_output=True, text=True,
                          timeout=SMOKE_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout, _newest(results, module.split(".")[-1], before)


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_reference_layouts_load_into_the_kernel() -> None:
    svcs = gen.services(20, backends=3)
    for name, fn in gen.LAYOUTS.items():
        with scratch_netns() as ns:
            path = Path(f"/tmp/{ns}-{name}.nft")
            path.write_text(fn(svcs))
            try:
                run_measured(["nft", "-f", str(path)], netns=ns).check()
                listing = run_measured(["nft", "list", "table", "ip", "kube-proxy"], netns=ns).check().stdout
            finally:
                path.unlink()
        assert "198.18.0.20 . tcp . 80 : goto service-" in listing, name
    restore, _ = iptables_restore()
    with scratch_netns() as ns:
        path = Path(f"/tmp/{ns}-iptables.rules")
        path.write_text(gen.kube_proxy_iptables(svcs))
        try:
            run_measured([restore], netns=ns, stdin_path=str(path)).check()
            saved = run_measured([restore.replace("-restore", "-save"), "-t", "nat"], netns=ns).check().stdout
        finally:
            path.unlink()
    assert saved.count("-j DNAT --to-destination 198.19.") == 60


def test_control_plane_quick() -> None:
    out, data = _run_quick("bench.control_plane")
    assert "Full sync" in out and "Incremental" in out
    body = data["data"]
    assert isinstance(body, dict)
    full = body["full_sync"][0]
    assert full["n"] == 50
    assert _finite(full["gatelb_wall_s"]["median"])
    for phase in ("parse_s", "compile_s", "apply_s"):
        assert _finite(full["phases"][phase]["median"]), phase
    assert full["gatelb_maxrss_kib"][0] > 0
    assert _finite(full["nft_floor"]["wall_s"]["median"])
    assert set(full["references"]) == {"kp-nft-1.36", "kp-nft-1.31", "kp-iptables"}
    inc = body["incremental"][0]
    assert inc["verified"] is True
    for step in ("backend added", "backend removed", "L4LB added", "L4LB removed"):
        assert _finite(inc["latency_s"][step]["median"]), step


def test_reconciler_quick() -> None:
    out, data = _run_quick("bench.reconciler")
    assert "Kubernetes mode" in out and "File mode" in out and "Against the targets" in out
    body = data["data"]
    assert isinstance(body, dict)
    kube, files = body["kube"][0], body["file"][0]
    assert kube["n"] == 50 and files["n"] == 50
    assert kube["verified"] is True and files["verified"] is True
    for key in ("slice_ms", "add_kernel_ms", "add_status_ms"):
        assert _finite(kube[key]["p50"]), key
    assert _finite(files["change_ms"]["p50"])
    for figs in (kube, files):
        assert _finite(figs["first_kernel_s"]) and figs["rss_kib"] > 0
        assert _finite(figs["restart"]["ready_s"])
        assert figs["restart"]["generation_before"] is not None
    assert _finite(kube["first_status_s"])


@pytest.mark.skipif(not any(Path(p, "wrk").exists() for p in ("/usr/bin", "/usr/local/bin")),
                    reason="wrk is not installed (./quickstart setup installs it)")
def test_data_path_quick() -> None:
    out, data = _run_quick("bench.data_path")
    assert "Data path" in out
    body = data["data"]
    assert isinstance(body, dict)
    scenarios = body["scenarios"]
    assert set(scenarios) == {"direct", "direct+ct", "gatelb N=1", "gatelb N=50", "kp-iptables N=1",
                              "kp-iptables N=50"}
    for label, figs in scenarios.items():
        for key in ("rate", "connect_p50_us", "gbps"):
            assert _finite(figs[key]["median"]), (label, key)


def test_observability_quick() -> None:
    out, data = _run_quick("bench.observability")
    assert "gatelb status and /metrics" in out
    body = data["data"]
    assert isinstance(body, dict)
    row = body["sizes"][0]
    assert row["n"] == 50
    for key in ("daemon_table_s", "daemon_name_s", "daemon_json_s", "scrape_s", "local_table_s", "local_json_s"):
        assert _finite(row[key]["median"]), key
    # 50 load balancers x 10 backends, five series each, plus HELP/TYPE lines and the daemon's own.
    assert row["scrape_lines"] > 50 * 10 * 5
