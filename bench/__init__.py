"""Benchmarks of the worker against the limits measured in the same run (see README.md).

Run from the repository root as modules, e.g. ``python -m bench.run_all``.
Nothing here is a test: the scripts print figures; ``--quick`` only checks
that they still run.
"""
