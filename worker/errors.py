"""The worker's one error hierarchy, split by who is at fault.

::

    WorkerError
    ├── StartupError            bad --factory / --config-json / flags: exit 2 before connecting
    ├── JobError                an invalid job manifest (python -m worker.job): exit 2
    ├── FrameError              the byte stream is not a sequence of frames
    │   └── FrameTooLarge       a header announced more than the limit: answer, drain, exit 1
    └── RequestError            one request refused: answered ok:false, the worker keeps serving
        ├── RequestFault        the request is wrong (the coordinator's fault)
        │   ├── BadRequest      the frame is not a request
        │   ├── UnknownMethod
        │   ├── ParamError      a parameter is missing or has the wrong type or value
        │   └── UnknownModelError  a model handle names no live model
        ├── WorkloadFault       the workload is wrong
        │   ├── WorkloadError   a hook raised, or returned what the protocol cannot carry
        │   └── LayoutError     a state does not fit the generic torch layout
        ├── EnvironmentFault    the files or the machine: unreadable or unwritable paths, full disk
        │   └── PackError       a pack or artifact file is invalid, or cannot be read or written
        └── InternalFault       a bug in the worker itself (answered with its traceback)

    WorkerStop (a BaseException)  raised by the worker's own SIGTERM/SIGINT handlers

A :class:`RequestError` carries the method (set by the dispatcher when the
raiser left it empty) and the parameter path as fields; ``str(error)`` is the
one rendering of the answer text.  Values that come from outside (requests,
packs, artifacts) are shown through :func:`describe`, which truncates them.
"""

from __future__ import annotations

_NOTHING = object()


def describe(value: object, limit: int = 80, *, typed: bool = True) -> str:
    """A short, safe rendering of ``value`` for an error message: its ``repr``
    cut to ``limit`` characters, followed by its type unless ``typed`` is false."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} ({type(value).__name__})" if typed else text


class WorkerError(Exception):
    """Base class of every error the worker raises on purpose."""


class StartupError(WorkerError):
    """The worker cannot start: bad ``--factory``, ``--config-json`` or flags."""


class JobError(WorkerError):
    """The job manifest of ``python -m worker.job`` is missing or invalid (exit status 2)."""


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
    """A request was refused before or while it ran; the worker keeps serving.

    ``method`` names the subject of the message (a method, ``"request"`` for a
    frame that is not one, ``"job manifest"``); ``param`` is the path of the
    parameter at fault below ``params`` (``""`` for params itself, ``None``
    when no parameter is).  ``str()`` renders ``method: params.<param>: detail``.
    """

    def __init__(self, detail: str, *, method: str | None = None, param: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.method = method
        self.param = param

    def __str__(self) -> str:
        text = self.detail
        if self.param is not None:
            text = f"params{'.' + self.param if self.param else ''}: {text}"
        return f"{self.method}: {text}" if self.method else text


class RequestFault(RequestError):
    """The request is wrong: the coordinator (or whoever wrote it) must change it."""


class BadRequest(RequestFault):
    """A frame that is not a well-formed request; ``request_id`` is echoed if it was valid."""

    def __init__(self, detail: str, request_id: int = 0) -> None:
        super().__init__(detail, method=f"request {request_id}" if request_id else "request")
        self.request_id = request_id


class UnknownMethod(RequestFault):
    """The method is not in the worker's table."""

    def __init__(self, name: str, known: list[str], protocol_version: int) -> None:
        super().__init__(
            f"unknown method {describe(name, typed=False)}; this worker "
            f"(protocol {protocol_version}) serves: {', '.join(known)}"
        )


class ParamError(RequestFault):
    """A parameter is missing or has the wrong type or value: ``expected X, got Y``."""

    def __init__(
        self, param: str, expected: str, got: object = _NOTHING, *, method: str | None = None
    ) -> None:
        detail = f"expected {expected}"
        if got is not _NOTHING:
            detail += f", got {describe(got)}"
        super().__init__(detail, method=method, param=param)


class UnknownModelError(RequestFault):
    """A model handle does not name a live model."""

    def __init__(self, param: str, model_id: str, live: list[str]) -> None:
        shown = ", ".join(live[:10]) + (f" and {len(live) - 10} more" if len(live) > 10 else "")
        super().__init__(
            f"unknown model id {describe(model_id, typed=False)} (live models: {shown or 'none'}); "
            "handles are valid from the call that returned them until release_model",
            param=param,
        )


class WorkloadFault(RequestError):
    """The workload is wrong: its author must change it."""


class WorkloadError(WorkloadFault):
    """A workload hook raised (anything, SystemExit and KeyboardInterrupt included)
    or returned something the protocol cannot carry."""


class LayoutError(WorkloadFault):
    """A state cannot be flattened into the generic torch layout."""


class EnvironmentFault(RequestError):
    """The files or the machine: a path that cannot be read or written, a full disk."""


class PackError(EnvironmentFault):
    """A parameter pack or artifact is invalid, or could not be read or written."""


class InternalFault(RequestError):
    """A bug in the worker or in code it called outside a hook."""


class WorkerStop(BaseException):
    """Raised by the worker's own SIGINT/SIGTERM handlers: stop serving now.

    A BaseException that is *not* KeyboardInterrupt/SystemExit, so a hook
    raising those is reported as a hook error, never taken for a stop.
    """
