"""``python -m worker --factory MOD:ATTR --config-json JSON --connect-host H --connect-port P``.

A bad ``--factory`` or ``--config-json`` exits with status 2 before
connecting, with one line on stderr naming the problem (and the traceback
below it when importing or calling the factory failed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from . import stopping
from .errors import StartupError, WorkerStop, describe, safe_str
from .framing import DEFAULT_MAX_FRAME_BYTES

MAX_FRAME_ENV = "BURN_P2P_WORKER_MAX_FRAME_BYTES"


def parse_factory_spec(spec: str) -> tuple[str, str]:
    """Split ``module:attr``; raises :class:`StartupError` unless both parts are non-empty."""
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name.strip() or not attr.strip():
        raise StartupError(
            f"--factory must be MODULE:ATTR with both parts non-empty (e.g. my_pkg.train:make_workload), got {spec!r}"
        )
    return module_name.strip(), attr.strip()


def load_factory(spec: str) -> Any:
    """Import the factory named by ``spec``; raises :class:`StartupError` (with the cause chained)."""
    module_name, attr = parse_factory_spec(spec)
    try:
        module = importlib.import_module(module_name)
    except WorkerStop:
        raise
    except BaseException as exc:
        raise StartupError(
            f"--factory {spec!r}: cannot import module {module_name!r}: {type(exc).__name__}: "
            f"{safe_str(exc)} (is its directory on PYTHONPATH?)"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise StartupError(
                f"--factory {spec!r}: module {module_name!r} has no attribute {attr!r}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise StartupError(
            f"--factory {spec!r}: {attr!r} is not callable (it is a {type(obj).__name__})"
        )
    return obj


def parse_config(text: str) -> Any:
    """Decode ``--config-json``; raises :class:`StartupError` (nesting past the
    recursion limit included)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise StartupError(
            f"--config-json is not valid JSON: {describe(safe_str(exc), 200, typed=False)} "
            "(pass e.g. '{}')"
        ) from None


def build_workload(factory_spec: str, config_text: str) -> Any:
    """Parse the config, import the factory and call it; raises :class:`StartupError`."""
    config = parse_config(config_text)
    factory = load_factory(factory_spec)
    try:
        return factory(config)
    except WorkerStop:
        raise
    except BaseException as exc:
        raise StartupError(
            f"--factory {factory_spec!r}: the factory raised {type(exc).__name__}: {safe_str(exc)}"
        ) from exc


def _frame_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer number of bytes, got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer number of bytes, got {text!r}"
        )
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port in 1..65535, got {text!r}")
    return value


class _PrintVersion(argparse.Action):
    """``--version``: the installed version is read only when asked for (start-up
    never pays for ``importlib.metadata``)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **_: Any) -> None:
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS,
            help="print the version and exit",
        )  # fmt: skip

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from . import PROTOCOL_VERSION, __version__

        print(f"{parser.prog} {__version__} (protocol {PROTOCOL_VERSION})")
        parser.exit()


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker", description="burn_p2p Python worker (protocol v2)"
    )
    parser.add_argument("--version", action=_PrintVersion)
    parser.add_argument("--factory", required=True, help="MODULE:ATTR of the workload factory")
    parser.add_argument("--config-json", required=True, help="JSON passed to the factory")
    parser.add_argument(
        "--connect-host", required=True, help="coordinator host (normally 127.0.0.1)"
    )
    parser.add_argument("--connect-port", required=True, type=_port, help="coordinator port")
    parser.add_argument(
        "--max-frame-bytes", type=_frame_limit, default=None,
        help=f"refuse larger request frames (default {DEFAULT_MAX_FRAME_BYTES}, or ${MAX_FRAME_ENV})",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # First, so a stop signal during start-up (importing torch and the
    # workload) is a stop, not an import error.
    stopping.install_signal_handlers()
    try:
        args = argument_parser().parse_args(argv)
        limit = args.max_frame_bytes
        if limit is None:
            env = os.environ.get(MAX_FRAME_ENV)
            try:
                limit = _frame_limit(env) if env else DEFAULT_MAX_FRAME_BYTES
            except argparse.ArgumentTypeError as exc:
                print(f"burn-p2p worker: ${MAX_FRAME_ENV}: {exc}", file=sys.stderr)
                return 2
        try:
            workload = build_workload(args.factory, args.config_json)
        except StartupError as exc:
            print(f"burn-p2p worker: {exc}", file=sys.stderr)
            if exc.__cause__ is not None:
                traceback.print_exception(exc.__cause__, file=sys.stderr)
            return 2
        from .server import run
    except WorkerStop as stop:
        print(f"burn-p2p worker: received {stop} while starting; exiting", file=sys.stderr)
        return 0
    return run(workload, args.connect_host, args.connect_port, limit)


if __name__ == "__main__":
    stopping.exit_process(main())
