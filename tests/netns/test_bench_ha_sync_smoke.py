"""bench.ha_sync runs in --quick mode and produces its figures (never checks how fast anything is,
only that every figure was measured: the rate, both CPU figures, the bandwidth, every probe's lag,
and the standby's external cache equal to the active's internal one)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from bench.common import REPO

SMOKE_TIMEOUT_S = 180


def test_ha_sync_quick() -> None:
    results = REPO / "bench" / "results"
    before = set(results.glob("ha_sync-*.json")) if results.exists() else set()
    done = subprocess.run([sys.executable, "-m", "bench.ha_sync", "--quick"], cwd=REPO, capture_output=True,
                          text=True, timeout=SMOKE_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "State sync" in done.stdout and "cores" in done.stdout
    fresh = sorted(set(results.glob("ha_sync-*.json")) - before)
    assert fresh, "bench.ha_sync wrote no results file"
    (row,) = json.loads(fresh[-1].read_text())["data"]["rows"]
    for name in ("created_per_s", "cpu_active_pct", "cpu_standby_pct", "sync_wire_mbit_s", "lag_p99_ms"):
        assert isinstance(row[name], (int, float)) and math.isfinite(row[name]) and row[name] > 0, (name, row[name])
    assert row["probes"] > 0 and row["probes_seen"] == row["probes"], row
    assert row["internal_active_end"] == row["external_standby_end"] > 0, row
