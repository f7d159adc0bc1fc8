"""Run the gatelb CLI in this process and record its own peak RSS apart from its children's.

    python -m bench.rss_wrapper OUT.json <gatelb arguments...>

`/usr/bin/time -f %M` (and wait4) report the largest RSS of the process *or any child it waited
for*, which for `gatelb apply` is usually nft, not gatelb. Inside the process, RUSAGE_SELF is
gatelb alone and RUSAGE_CHILDREN is nft (the largest of its nft runs).
"""

from __future__ import annotations

import json
import resource
import sys


def main() -> int:
    out, args = sys.argv[1], sys.argv[2:]
    from gatelb.cli.main import main as gatelb_main

    try:
        rc: int = gatelb_main(args)
    except SystemExit as exc:  # argparse errors and explicit exits
        rc = exc.code if isinstance(exc.code, int) else 1
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out, "w") as f:
        json.dump({"rc": rc, "self_maxrss_kib": me.ru_maxrss, "children_maxrss_kib": kids.ru_maxrss,
                   "self_cpu_s": me.ru_utime + me.ru_stime,
                   "children_cpu_s": kids.ru_utime + kids.ru_stime}, f)
    return rc


if __name__ == "__main__":
    sys.exit(main())
