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

RUNTIME_MODULE = "burn_p2p_python_runtime.worker"
# Interpreter options that may precede -m and take no argument.
_FLAG_OPTIONS = set("bBdEhiIOqsSuvx")


def worker_args(argv: Sequence[str]) -> list[str] | None:
    """If ``argv`` (without argv[0]) asks for the runtime module, return the
    worker's own arguments; otherwise None."""
    for i, arg in enumerate(argv):
        if arg == "-m":
            if i + 1 < len(argv) and argv[i + 1] == RUNTIME_MODULE:
                return list(argv[i + 2 :])
            return None
        if arg.startswith("-m") and len(arg) > 2:
            return list(argv[i + 1 :]) if arg[2:] == RUNTIME_MODULE else None
        if not (arg.startswith("-") and len(arg) > 1 and set(arg[1:]) <= _FLAG_OPTIONS):
            return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = worker_args(argv)
    if args is None:
        os.execv(sys.executable, [sys.executable, *argv])
    from .__main__ import main as worker_main

    return worker_main(args)


if __name__ == "__main__":
    sys.exit(main())
