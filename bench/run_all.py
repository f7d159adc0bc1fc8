"""Run every benchmark and print their tables: `python -m bench.run_all` (as root, from the repo).

    python -m bench.run_all            # full sizes: minutes (control plane up to 10,000 L4LBs)
    python -m bench.run_all --quick    # the smoke run (about 20 s): checks that everything works

Each benchmark also writes its figures as JSON and markdown under bench/results/ (git-ignored).
Extra arguments after `--` go to every benchmark, e.g. `-- --sizes 1000`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a script (`python bench/run_all.py`): make `import bench` work
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import control_plane, data_path, observability, reconciler
from bench.common import exit_on_signals, log, require_root

BENCHMARKS = {"control_plane": control_plane.main, "reconciler": reconciler.main, "data_path": data_path.main,
              "observability": observability.main}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, one short round each")
    p.add_argument("--only", choices=sorted(BENCHMARKS), action="append", help="run only these")
    p.add_argument("rest", nargs="*", help="arguments passed to every benchmark (after --)")
    a = p.parse_args(argv)
    require_root()
    exit_on_signals()
    failed = []
    for name in a.only or list(BENCHMARKS):
        log(f"=== {name}")
        args = [*(["--quick"] if a.quick else []), *a.rest]
        try:
            rc = BENCHMARKS[name](args)
        except Exception as err:  # one broken benchmark must not hide the others' figures
            log(f"{name} failed: {type(err).__name__}: {err}")
            rc = 1
        if rc:
            failed.append(name)
    if failed:
        log(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
