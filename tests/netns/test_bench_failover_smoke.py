"""bench.failover runs in --quick mode and produces its figures (never checks how fast anything is)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from bench.common import REPO

SMOKE_TIMEOUT_S = 120


def test_failover_quick() -> None:
    results = REPO / "bench" / "results"
    before = set(results.glob("failover-*.json")) if results.exists() else set()
    done = subprocess.run([sys.executable, "-m", "bench.failover", "--quick"], cwd=REPO, capture_output=True,
                          text=True, timeout=SMOKE_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Failover" in done.stdout and "cores" in done.stdout and "nftables" in done.stdout
    fresh = sorted(set(results.glob("failover-*.json")) - before)
    assert fresh, "bench.failover wrote no results file"
    data = json.loads(fresh[-1].read_text())["data"]
    assert data["params"]["runs"] == 2
    figures = data["figures"]
    for name in ("removed_ms", "detected_ms"):
        assert figures[name]["n"] == 2 and all(math.isfinite(v) and v > 0 for v in figures[name]["values"]), name
    # A run whose dead backend happened to get no connection has no "last new connection" figure.
    assert figures["last_new_ms"]["n"] + figures["no_hit_runs"] == 2
    assert isinstance(data["target_met"], bool)
