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

Once the worker has decided to exit, :func:`exit_process` ends the process
within :data:`EXIT_GRACE_SECONDS` whatever the workload left behind: the
normal exit waits for non-daemon threads and runs ``atexit`` hooks, and a
workload thread that never ends used to keep the process alive forever
(every later signal ignored).  Past the grace, or at a further stop signal,
stdio and logging are flushed and the process ends with ``os._exit`` and the
status already decided.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

from .errors import WorkerStop

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

EXIT_GRACE_SECONDS = 1.0
"""How long the normal exit may take (workload threads, atexit hooks) before ``os._exit``;
below the coordinator side's 2 s exit grace, so the worker's own status is what it sees."""
FLUSH_SECONDS = 0.5
"""How long flushing stdio and logging may take when forcing the exit (a lock held forever)."""

_requested: str | None = None
_hooks_running = 0
_exit_status: int | None = None


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
    if _exit_status is not None:
        force_exit()  # a stop while the process is already ending: end it now
    first = _requested is None
    request(signal.Signals(signum).name)
    if first or _hooks_running:
        raise WorkerStop(signal.Signals(signum).name)


def install_signal_handlers() -> None:
    """Make SIGTERM and SIGINT stop the worker (see the module docstring)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop_signal)


def exit_process(status: int, grace: float = EXIT_GRACE_SECONDS) -> NoReturn:
    """End the process with ``status`` within ``grace`` seconds (entry points only).

    Starts the normal exit (``sys.exit``: non-daemon threads joined, atexit
    hooks run); a daemon thread calls :func:`force_exit` if it has not
    finished after ``grace`` seconds, and so does a stop signal meanwhile.
    """
    global _exit_status
    _exit_status = status
    threading.Thread(
        target=_force_exit_after, args=(grace,), name="burn-p2p-worker-exit", daemon=True
    ).start()
    sys.exit(status)


def _force_exit_after(grace: float) -> None:
    time.sleep(grace)
    force_exit()


def force_exit() -> NoReturn:
    """Flush stdio and logging (for at most :data:`FLUSH_SECONDS`), then ``os._exit`` with the
    status :func:`exit_process` was given."""
    try:
        flusher = threading.Thread(target=_flush, name="burn-p2p-worker-flush", daemon=True)
        flusher.start()
        flusher.join(FLUSH_SECONDS)
    except RuntimeError:  # no new threads once the interpreter is finalizing
        _flush()
    os._exit(_exit_status if _exit_status is not None else 1)


def _flush() -> None:
    logging = sys.modules.get("logging")
    if logging is not None:
        try:
            logging.shutdown()
        except Exception:  # noqa: BLE001  (a handler that cannot flush must not stop the exit)
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001
            pass
