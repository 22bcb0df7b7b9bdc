"""SIGTERM handled as Ctrl-C is: the one place both CLIs (``fakecoord run``, ``conformance``) get it.

``timeout``, ``kill``, systemd and CI cancellation send SIGTERM.  Inside
:func:`sigterm_raises` the main thread gets :class:`Terminated` (a
``KeyboardInterrupt``), so every cleanup written for Ctrl-C (workers killed
and reaped, staging removed, the last checkpoint kept) runs for SIGTERM too;
the CLIs then exit with :data:`TERMINATED_STATUS` (128 + 15) instead of
:data:`INTERRUPTED_STATUS`.  Further SIGTERMs during that cleanup are
recorded and do not interrupt it (the handler stays a Python function, never
``SIG_IGN``, so children started meanwhile keep the default disposition).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

INTERRUPTED_STATUS = 130
"""Exit status after Ctrl-C (128 + SIGINT)."""
TERMINATED_STATUS = 143
"""Exit status after SIGTERM (128 + SIGTERM)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (raised in the main thread, where Ctrl-C raises ``KeyboardInterrupt``)."""


def _after_the_first(signum: int, frame: FrameType | None) -> None:
    """A SIGTERM during the cleanup the first one started: nothing more to do."""


def _raise(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, _after_the_first)
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` in the main thread (elsewhere: no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_status(exc: BaseException) -> int:
    """143 for :class:`Terminated`, 130 for any other ``KeyboardInterrupt``."""
    return TERMINATED_STATUS if isinstance(exc, Terminated) else INTERRUPTED_STATUS


__all__ = [
    "INTERRUPTED_STATUS",
    "TERMINATED_STATUS",
    "Terminated",
    "interrupt_status",
    "sigterm_raises",
]
