"""The worker's stop request: made by its SIGTERM/SIGINT handlers, never lost.

The first stop signal records its reason and raises
:class:`~worker.errors.WorkerStop` wherever the main thread is.  A hook may
swallow that exception (a bare ``except:``), so the request is also kept
here: :meth:`~worker.service.Worker.call_hook` and the serve loop call
:func:`raise_if_requested` when a hook returns and between requests, and the
worker stops then.  Later signals raise again only while a hook runs (it may
be swallowing them); outside hooks they leave the worker's own cleanup
(temporary files being removed) uninterrupted, since a stop is already on
its way.  Signal handlers stay installed: nothing is ever ignored.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from .errors import WorkerStop

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_requested: str | None = None
_hooks_running = 0


def requested() -> str | None:
    """The reason of the pending stop (e.g. ``"SIGTERM"``), or None."""
    return _requested


def request(reason: str) -> None:
    """Record a stop request (the first reason is kept)."""
    global _requested
    if _requested is None:
        _requested = reason


def raise_if_requested() -> None:
    """Raise :class:`~worker.errors.WorkerStop` if a stop was requested."""
    if _requested is not None:
        raise WorkerStop(_requested)


def clear() -> None:
    """Forget a pending stop (tests; a fresh worker in the same process)."""
    global _requested
    _requested = None


@contextmanager
def hook_running() -> Iterator[None]:
    """Mark the block as workload code: stop signals raise in it every time."""
    global _hooks_running
    _hooks_running += 1
    try:
        yield
    finally:
        _hooks_running -= 1


def on_stop_signal(signum: int, _frame: FrameType | None) -> None:
    """The SIGTERM/SIGINT handler: record the stop, and raise it unless one is
    already on its way through the worker's own code."""
    first = _requested is None
    request(signal.Signals(signum).name)
    if first or _hooks_running:
        raise WorkerStop(signal.Signals(signum).name)


def install_signal_handlers() -> None:
    """Make SIGTERM and SIGINT stop the worker (see the module docstring)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop_signal)
