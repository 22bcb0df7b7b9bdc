"""``burn-p2p-python``: a drop-in ``python_executable`` for the Rust coordinator.

The coordinator runs ``<python_executable> -m burn_p2p_python_runtime.worker
--factory ... --config-json ... --connect-host ... --connect-port ...`` with
its own copy of the seed worker first on ``PYTHONPATH``.  Asked for that
module, this launcher runs *our* worker with the same arguments; any other
invocation is handed to the real interpreter unchanged (``os.execv``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

RUNTIME_MODULE = "burn_p2p_python_runtime.worker"
# Interpreter options that may precede -m: without an argument, and with one.
_FLAG_OPTIONS = frozenset("bBdEiIOPqsSuvR")
_ARG_OPTIONS = frozenset("WX")


def worker_args(argv: Sequence[str]) -> list[str] | None:
    """If ``argv`` (without argv[0]) runs the runtime module, return the
    worker's own arguments (what follows the module name); otherwise None."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg == "-" or arg.startswith("--"):
            return None  # a script, stdin, or a long option: not ours
        for j, letter in enumerate(arg[1:], start=1):
            if letter == "m":
                module = arg[j + 1 :] or (argv[i + 1] if i + 1 < len(argv) else None)
                if module != RUNTIME_MODULE:
                    return None
                return list(argv[i + 1 :] if arg[j + 1 :] else argv[i + 2 :])
            if letter in _ARG_OPTIONS:
                i += 0 if arg[j + 1 :] else 1  # -Wx or -W x
                break
            if letter not in _FLAG_OPTIONS:
                return None  # -c, -h, -V, ...: pass through
        i += 1
    return None


def main(argv: Sequence[str] | None = None) -> NoReturn:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = worker_args(argv)
    if args is None:
        os.execv(sys.executable, [sys.executable, *argv])
    # `python -m` puts the working directory first on sys.path; a console
    # script puts its own bin/ there instead.  Workload modules next to the
    # job must import as they would under the real interpreter.
    sys.path[0] = os.getcwd()
    from .__main__ import main as worker_main
    from .stopping import exit_process

    exit_process(worker_main(args))  # within a bounded time, whatever threads remain


if __name__ == "__main__":
    sys.exit(main())
