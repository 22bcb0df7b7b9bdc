"""Run every benchmark (packs, RPC, start-up) and print one final table.

Run: ``python -m bench.run_all [--quick] [--json FILE] [--reference PATH | --no-reference]
[--sizes 2e7,1e8] [--reference-large]``.  Exit status 1 if a benchmark could
not run; a MISSed target is reported, not an error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from . import bench_packs, bench_rpc, bench_sim, bench_startup
from .common import BenchError, Row, add_common_arguments, print_table, report

SECTIONS = {
    "packs": (bench_packs, "parameter packs"),
    "rpc": (bench_rpc, "RPC round trips"),
    "startup": (bench_startup, "start-up"),
    "sim": (bench_sim, "simulation coordinator"),
}


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--sizes", help="pack sizes, e.g. 2e7,1e8 (bench_packs default)")
    parser.add_argument("--reference-large", action="store_true",
                        help="run the reference at every pack size")  # fmt: skip
    parser.add_argument("--only", choices=list(SECTIONS), action="append",
                        help="run only this section (repeatable)")  # fmt: skip
    return parser


def section_argv(args: argparse.Namespace, section: str) -> list[str]:
    """The shared options, as the section's own command line."""
    argv = []
    if args.quick:
        argv.append("--quick")
    if args.no_reference:
        argv.append("--no-reference")
    elif args.reference:
        argv += ["--reference", args.reference]
    if section == "packs":
        if args.sizes:
            argv += ["--sizes", args.sizes]
        if args.reference_large:
            argv.append("--reference-large")
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    rows: list[Row] = []
    started = time.perf_counter()
    for section in args.only or list(SECTIONS):
        module, title = SECTIONS[section]
        try:
            section_rows = module.run(module.parse_args(section_argv(args, section)))
        except BenchError as exc:
            print(f"run_all: {section}: {exc}", file=sys.stderr)
            return 1
        print_table(section_rows, title)
        rows += section_rows
    print(f"\n(all benchmarks took {time.perf_counter() - started:.0f} s)")
    report(rows, "all benchmarks", args.json, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
