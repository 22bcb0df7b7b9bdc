"""``python -m fakecoord run [options]``: a local multi-peer training simulation.

With no options it trains the built-in demo workload with 4 peers (DiLoCo).
``python -m fakecoord`` without a subcommand means ``run``.  The options and
exit statuses are described in :mod:`fakecoord.sim.cli` and
docs/simulation.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fakecoord`` and the ``fakecoord`` console script."""
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # e.g. `... | head`: the reader went away
        from .pipes import stdout_gone

        return stdout_gone()


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        argv = argv[1:]
    elif argv and not argv[0].startswith("-"):
        print(f"fakecoord: unknown command {argv[0]!r}; the only command is 'run'", file=sys.stderr)
        return 2
    from .errors import MissingExtra
    from .optional import require

    try:  # the simulation's modules import numpy: say so before they fail to
        require("numpy", "python -m fakecoord run")
    except MissingExtra as exc:
        print(f"fakecoord: {exc}", file=sys.stderr)
        return 2
    from .sim.cli import main as run_main

    return run_main(argv)


if __name__ == "__main__":
    sys.exit(main())
