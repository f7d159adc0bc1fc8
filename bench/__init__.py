"""gatelb's benchmark suite: `python -m bench.run_all` (see docs/benchmarks.md)."""
