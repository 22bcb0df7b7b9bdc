"""``python -m conformance --factory MOD:ATTR [options]`` (console script ``burn-p2p-conformance``).

Prints one line per check, ``PASS|WARN|FAIL|SKIP|XFAIL <id> <reason>``, then a
summary.  The exit status comes from that summary: 0 when no check failed
(WARNs included, unless ``--strict``), 1 when one failed or could not
complete; 3 when none failed but the training checks could not run (the
workload trained on none of the batches: incomplete, unless
``--allow-untrained``); 2 for a usage error (bad flags, a factory that cannot be imported
or started, unreadable files), with the reason on stderr; 130 after Ctrl-C
and 143 after SIGTERM (every worker and probe stopped and reaped first).  The
suite never runs workload code in its own process.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from fakecoord import wire
from fakecoord.errors import DecodeError
from fakecoord.pipes import stdout_gone
from fakecoord.signals import Terminated, interrupt_status, sigterm_raises

from . import __version__
from .errors import UsageError

PROG = "burn-p2p-conformance"
USAGE = (
    "%(prog)s --factory MOD:ATTR [--config-json JSON] [--batches FILE] [options]\n"
    "       %(prog)s --list | --version | --help"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class _HelpOrVersion(Exception):
    """--help or --version was printed: exit 0 without running anything."""


def argument_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        usage=USAGE,
        description="Check a burn_p2p workload through a real worker process.",
        epilog="--list prints every check id with what it checks. Exit status: 0 no check "
        "failed, 1 a check failed (or a WARN with --strict), 2 usage error, 3 incomplete: "
        "no check failed but the training checks could not run (pass --batches, or "
        "--allow-untrained).",
        exit_on_error=False,
    )
    p.add_argument("--factory", metavar="MOD:ATTR", help="the workload factory (required)")
    p.add_argument("--config-json", metavar="JSON", default="{}", help="passed to the factory")
    p.add_argument(
        "--batches",
        metavar="FILE",
        help="a JSON array of BatchRefs the workload can train on "
        "(default: generated micro_epoch refs)",
    )
    p.add_argument("--device", default=None,
                   help="override the device given to init_model, import_parameter_pack and "
                        "parameter_pack_plan (default: the workload's own runtime_device, as "
                        "the network sends it; an override that differs is a WARN)")  # fmt: skip
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
                   help="the longest any wait may take: one hook call (the worker is then "
                        "killed), a worker's start, the layout probe (default 120)")  # fmt: skip
    p.add_argument("--allow-untrained", action="store_true",
                   help="exit 0 even when the training checks could not run (the workload "
                        "trained on none of the batches; default: exit 3, incomplete)")  # fmt: skip
    p.add_argument("--strict", action="store_true",
                   help="a WARN (legal but suspicious behaviour) fails its check")  # fmt: skip
    p.add_argument("--pythonpath", metavar="DIR", action="append", default=[],
                   help="extra import roots for the worker (the current directory is one)")  # fmt: skip
    p.add_argument("--junit-xml", metavar="FILE", help="also write a JUnit XML report")
    p.add_argument("--json", metavar="FILE", help="also write a JSON report")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print the details (tracebacks, examples) of failures and warnings")  # fmt: skip
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _check_factory(spec: str, roots: Sequence[str]) -> None:
    """Fail early, naming the module, when the factory's top-level package cannot be found.

    Only looked up, never imported (finding a top-level name runs no module
    code): no workload code runs in the suite's process; the worker reports
    any deeper import error.
    """
    top = spec.partition(":")[0].strip().partition(".")[0]
    saved = list(sys.path)
    sys.path[:0] = [r for r in roots if r not in sys.path]
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError) as exc:
        raise UsageError(f"--factory {spec!r}: cannot look up {top!r} ({exc})") from None
    finally:
        sys.path[:] = saved
    if found is None:
        raise UsageError(
            f"--factory {spec!r}: no module named {top!r} (looked in the current directory, "
            "--pythonpath and PYTHONPATH)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (see the module docstring)."""
    try:
        with sigterm_raises():
            code = _main(argv)
            sys.stdout.flush()  # a reader that went away is found here, not at exit
            return code
    except _HelpOrVersion:
        return 0
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (fakecoord.signals): workers reaped
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"{PROG}: {what}", file=sys.stderr)
        return interrupt_status(exc)
    except BrokenPipeError:  # e.g. `--list | head`: the reader went away, not an error
        return stdout_gone()
    except BaseException as exc:  # SystemExit included: never 0 without a summary
        print(f"{PROG}: internal error, the run did not complete: {exc!r}", file=sys.stderr)
        return 1


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    try:
        return argument_parser().parse_args(argv)
    except argparse.ArgumentError as exc:
        raise UsageError(str(exc)) from None
    except SystemExit as exc:  # --help and --version print, then exit 0
        if exc.code in (0, None):
            raise _HelpOrVersion() from None
        raise UsageError(f"bad arguments (exit {exc.code})") from None


def _main(argv: Sequence[str] | None) -> int:
    args = _parse(argv)
    from .checks import CHECKS

    if args.list:
        for check in CHECKS:
            print(f"{check.id}  {check.description}")
        return 0
    if not args.factory:
        raise UsageError("--factory MOD:ATTR is required")
    from .options import Options, load_batches
    from .runner import parse_xfails, run_checks

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
    where = f" on --device {args.device}" if args.device else ""
    print(f"burn-p2p conformance: {args.factory}{where}", flush=True)
    report = run_checks(
        options,
        select=args.select,
        skip=args.skip,
        xfail=xfail,
        on_outcome=lambda outcome: print(outcome.line(), flush=True),
        strict=args.strict,
        allow_untrained=args.allow_untrained,
    )
    if args.verbose:
        for outcome in report.outcomes:
            if outcome.status in ("FAIL", "WARN") and outcome.details:
                print(f"\n--- {outcome.id}\n{outcome.details.rstrip()}")
    try:
        if args.json:
            report.write_json(args.json)
        if args.junit_xml:
            report.write_junit(args.junit_xml)
    except OSError as exc:
        print(f"{PROG}: error: cannot write a report: {exc}", file=sys.stderr)
        print(report.summary(), flush=True)
        return max(report.exit_code, 1)
    print(report.summary(), flush=True)
    if report.incomplete:
        print(report.incomplete_text(), flush=True)
    return report.exit_code


def cli() -> NoReturn:
    """The console script: :func:`main`, then exit with its status.

    A non-daemon thread left behind (there should be none: no workload code
    runs here) cannot hold the process open after the summary.
    """
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = stdout_gone()
    sys.stderr.flush()
    main_thread = threading.main_thread()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not main_thread):
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    cli()
