"""A reader that went away: ``python -m fakecoord run ... | head`` and ``python -m
conformance --list | head`` end quietly, as a Unix filter does."""

from __future__ import annotations

import os
import sys

EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: the status a shell reports for a filter whose reader went away."""


def stdout_gone() -> int:
    """Call on :class:`BrokenPipeError`: point stdout at /dev/null (so that the interpreter's
    final flush cannot raise again and print a traceback) and return :data:`EXIT_BROKEN_PIPE`."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
        pass
    return EXIT_BROKEN_PIPE


__all__ = ["EXIT_BROKEN_PIPE", "stdout_gone"]
