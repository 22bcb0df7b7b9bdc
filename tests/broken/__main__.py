"""``python -m tests.broken DEFECT|- <worker flags>``: our worker with a worker defect applied.

Also ``--probe REQUEST`` (the layout probe), ``--zygote-serve PATH`` and
``--via-zygote PATH ARGS`` (see :mod:`tests.broken.zygote`).
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """``DEFECT|- <worker flags>``: patch the worker with DEFECT, then run it;
    ``--probe REQUEST``: run the layout probe."""
    if argv[:1] == ["--probe"]:
        from conformance.probe import child_main

        child_main(argv[1])  # ends the process
    defect, *rest = argv
    if defect != "-":
        from .worker_defects import WORKER_DEFECTS

        WORKER_DEFECTS[defect][0]()
    from worker.__main__ import main as worker_main

    return worker_main(rest)


if __name__ == "__main__":
    from .zygote import via_zygote, zygote_serve

    args = sys.argv[1:]
    if args[:1] == ["--zygote-serve"]:
        sys.exit(zygote_serve(args[1]))
    if args[:1] == ["--via-zygote"]:
        sys.exit(via_zygote(args[1], args[2:]))
    sys.exit(main(args))
