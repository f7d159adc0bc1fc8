"""``python -m gatelb.lab.cleanup``: remove lab namespaces left behind by a crashed run.

Only namespaces named by the lab pattern whose creator process is dead are touched; see
`gatelb.lab.naming.cleanup_leftovers`.
"""

from __future__ import annotations

from gatelb.lab.naming import cleanup_leftovers


def main() -> int:
    for ns in cleanup_leftovers():
        print(f"removed {ns}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
