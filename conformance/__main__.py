"""``python -m conformance --factory MOD:ATTR [options]`` (console script ``burn-p2p-conformance``).

Prints one line per check, ``PASS|FAIL|SKIP|XFAIL <id> <reason>``, then a
summary.  Exit status: 0 when no check failed, 1 when one did, 2 for a usage
error (bad flags, a factory that cannot be imported or started, unreadable
files), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from fakecoord import wire
from fakecoord.errors import DecodeError

from .errors import UsageError

PROG = "burn-p2p-conformance"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def argument_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Check a burn_p2p workload through a real worker process.",
        epilog="Check ids and what they mean: docs/workload-authors.md, or --list.",
    )
    p.add_argument("--factory", metavar="MOD:ATTR", help="the workload factory (required)")
    p.add_argument("--config-json", metavar="JSON", default="{}", help="passed to the factory")
    p.add_argument(
        "--batches",
        metavar="FILE",
        help="a JSON array of BatchRefs the workload can train on "
        "(default: generated micro_epoch refs)",
    )
    p.add_argument("--device", default="cpu", help="the device given to init_model (default cpu)")
    p.add_argument("--custom-split", metavar="NAME", default="conformance-holdout",
                   help='the name evaluate gets as {"Custom": NAME} (default conformance-holdout)')  # fmt: skip
    p.add_argument(
        "--worker-cmd",
        metavar="CMD",
        help="the worker command, shell-quoted; the four coordinator flags are appended "
        "(default: python -m worker)",
    )
    p.add_argument("--select", metavar="ID", action="append", default=None,
                   help="run only these checks (ids or globs such as 'packs.*'; repeatable)")  # fmt: skip
    p.add_argument("--skip", metavar="ID", action="append", default=[],
                   help="report these checks as SKIP without running them (repeatable)")  # fmt: skip
    p.add_argument("--xfail", metavar="ID[=REASON]", action="append", default=[],
                   help="a failure of this check is expected: XFAIL, not FAIL (repeatable)")  # fmt: skip
    p.add_argument("--xfails-file", metavar="FILE",
                   help="expected failures, one 'ID [reason]' per line, # comments")  # fmt: skip
    p.add_argument("--max-examples", metavar="N", type=int, default=10,
                   help="hypothesis examples per property check (default 10)")  # fmt: skip
    p.add_argument("--timeout", metavar="S", type=float, default=120.0,
                   help="seconds one call may take before the worker is killed (default 120)")  # fmt: skip
    p.add_argument("--pythonpath", metavar="DIR", action="append", default=[],
                   help="extra import roots for the worker (the current directory is one)")  # fmt: skip
    p.add_argument("--junit-xml", metavar="FILE", help="also write a JUnit XML report")
    p.add_argument("--json", metavar="FILE", help="also write a JSON report")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print the details (tracebacks, examples) of failures")  # fmt: skip
    return p


def _check_factory(spec: str, roots: Sequence[str]) -> None:
    """Fail early, naming the module, when ``MOD`` cannot be found."""
    module = spec.partition(":")[0].strip()
    for root in reversed(roots):
        if root not in sys.path:
            sys.path.insert(0, root)
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise UsageError(f"--factory {spec!r}: cannot import {module!r} ({exc})") from None
    if found is None:
        raise UsageError(
            f"--factory {spec!r}: no module named {module!r} (looked in the current directory, "
            "--pythonpath and PYTHONPATH)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    args = argument_parser().parse_args(argv)
    from .checks import CHECKS

    if args.list:
        for check in CHECKS:
            print(f"{check.id}  {check.description}")
        return 0
    if not args.factory:
        raise UsageError("--factory MOD:ATTR is required")
    from .runner import load_batches, parse_xfails, run_checks
    from .session import Options

    try:
        config = wire.decode_value(args.config_json.encode("utf-8", "surrogatepass"))
    except DecodeError as exc:
        raise UsageError(f"--config-json is not valid JSON ({exc})") from None
    roots = [*args.pythonpath, os.getcwd()]
    try:
        worker_cmd = shlex.split(args.worker_cmd) if args.worker_cmd is not None else None
    except ValueError as exc:
        raise UsageError(f"--worker-cmd: {exc}") from None
    options = Options(
        factory=args.factory,
        config=config,
        device=args.device,
        custom_split=args.custom_split,
        batches=load_batches(args.batches) if args.batches else None,
        worker_cmd=worker_cmd,
        pythonpath=roots,
        max_examples=args.max_examples,
        call_timeout=args.timeout,
    )
    _check_factory(args.factory, roots)
    xfail: dict[str, str] = {}
    if args.xfails_file:
        try:
            text = Path(args.xfails_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--xfails-file {args.xfails_file!r}: {exc.strerror}") from None
        xfail.update(parse_xfails(text, f"--xfails-file {args.xfails_file}"))
    for item in args.xfail:
        check_id, _, reason = item.partition("=")
        xfail[check_id] = reason or "expected to fail (--xfail)"
    print(f"burn-p2p conformance: {args.factory} on {args.device}", flush=True)
    report = run_checks(
        options,
        select=args.select,
        skip=args.skip,
        xfail=xfail,
        on_outcome=lambda outcome: print(outcome.line(), flush=True),
    )
    if args.verbose:
        for outcome in report.outcomes:
            if outcome.status == "FAIL" and outcome.details:
                print(f"\n--- {outcome.id}\n{outcome.details.rstrip()}")
    print(report.summary())
    if args.json:
        report.write_json(args.json)
    if args.junit_xml:
        report.write_junit(args.junit_xml)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
