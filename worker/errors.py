"""The worker's one error hierarchy.

Every error that reaches the coordinator is a :class:`WorkerError` whose text
names the method, the parameter and what was expected.  Anything else a hook
raises is wrapped in :class:`WorkloadError` with its traceback.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base class of every error the worker raises on purpose."""


class StartupError(WorkerError):
    """The worker cannot start: bad ``--factory``, ``--config-json`` or flags."""


class FrameError(WorkerError):
    """The byte stream is not a valid sequence of frames."""


class FrameTooLarge(FrameError):
    """A frame header announced more bytes than the configured limit."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(
            f"frame of {length} bytes exceeds the limit of {limit} bytes; the connection "
            "will be closed (raise it with --max-frame-bytes or BURN_P2P_WORKER_MAX_FRAME_BYTES)"
        )
        self.length = length
        self.limit = limit


class RequestError(WorkerError):
    """A request was refused before or while it ran; the worker keeps serving."""


class ParamError(RequestError):
    """A parameter is missing or has the wrong type or value."""

    def __init__(self, method: str, param: str, expected: str, got: object = ...) -> None:
        text = f"{method}: params{'.' + param if param else ''}: expected {expected}"
        if got is not ...:
            text += f", got {describe(got)}"
        super().__init__(text)
        self.method = method
        self.param = param


class UnknownModelError(RequestError):
    """A model handle does not name a live model."""


class LayoutError(RequestError):
    """A state cannot be flattened into the generic torch layout."""


class PackError(RequestError):
    """A parameter pack or artifact is invalid, or could not be written."""


class WorkloadError(RequestError):
    """A workload hook raised (anything, SystemExit and KeyboardInterrupt included)
    or returned something the protocol cannot carry."""


def describe(value: object, limit: int = 80) -> str:
    """A short, safe rendering of ``value`` with its type, for error messages."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} ({type(value).__name__})"
