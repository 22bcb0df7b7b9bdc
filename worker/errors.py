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

import reprlib
import traceback

_NOTHING = object()

SHOWN_VALUE_CHARS = 80
"""Most characters an untrusted value takes in a message (:func:`describe`)."""
MAX_ERROR_CHARS = 16 * 1024
"""Most characters of an ``ok:false`` error text, traceback included (:func:`error_text`)."""


class _BoundedRepr(reprlib.Repr):
    """``reprlib`` limits, plus bytes-like values sliced before their repr is made."""

    def repr_int(self, value: int, level: int) -> str:
        if value.bit_length() <= 256:
            return repr(value)
        digits = int(value.bit_length() * 0.30103) + 1  # log10(2): never formats the digits
        return f"<{'negative ' if value < 0 else ''}integer of about {digits} digits>"

    def repr_bytes(self, value: bytes, level: int) -> str:
        return self._sliced(value)

    def repr_bytearray(self, value: bytearray, level: int) -> str:
        return self._sliced(value)

    def _sliced(self, value: bytes | bytearray) -> str:
        if len(value) <= self.maxstring:
            return repr(value)
        return repr(value[: self.maxstring]) + "..."


_BOUNDED = _BoundedRepr()
_BOUNDED.maxstring = SHOWN_VALUE_CHARS + 2  # a slice's repr: quotes and escapes come after
_BOUNDED.maxother = SHOWN_VALUE_CHARS
_BOUNDED.maxlong = SHOWN_VALUE_CHARS
for _name in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_BOUNDED, _name, 8)
_BOUNDED.maxlevel = 3


def escape_controls(text: str, keep: str = "") -> str:
    """``text`` with every non-printable character (ESC, newlines, bidi overrides,
    lone surrogates...) but those in ``keep`` written as a Python escape."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in keep else ascii(ch)[1:-1] for ch in text)


def safe_repr(value: object) -> str:
    """``repr(value)`` computed in bounded time and space (long strings, huge
    containers and integers are elided), never raising: an object whose
    ``__repr__`` fails is shown by its type."""
    try:
        text = _BOUNDED.repr(value)
    except Exception as exc:  # a hostile or broken __repr__, an int past the digit limit
        text = f"<{type(value).__name__} object; repr() raised {type(exc).__name__}>"
    return escape_controls(text)


def safe_str(value: object) -> str:
    """``str(value)`` that never raises (for exception messages of hooks)."""
    try:
        return str(value)
    except Exception as exc:
        return f"<{type(value).__name__} object; str() raised {type(exc).__name__}>"


def describe(value: object, limit: int = SHOWN_VALUE_CHARS, *, typed: bool = True) -> str:
    """A short, safe rendering of ``value`` for an error message: its ``repr``
    with control characters escaped, cut to ``limit`` characters, followed by
    its type unless ``typed`` is false.  Never raises; costs O(limit)."""
    text = safe_repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} ({type(value).__name__})" if typed else text


def error_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """An error text as answered: control characters escaped (newlines and tabs
    kept, so a traceback stays readable below the first line) and cut to
    ``limit`` characters, saying how many were cut."""
    cut = max(0, len(text) - limit)
    text = escape_controls(text[:limit], keep="\n\t")
    if not cut and len(text) <= limit:
        return text
    note = f"\n... [{cut + max(0, len(text) - limit)} more characters cut]"
    return text[: limit - len(note)] + note


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` (e.g. an exception message from a hook) made safe for a first
    line: cut to ``limit`` characters, newlines and control characters escaped."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return escape_controls(text)


def hook_failure(exc: BaseException) -> str:
    """``Type: message`` on one line, then the traceback's frames (the message is
    not repeated raw below, so it cannot forge lines)."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    return f"{type(exc).__name__}: {one_line(safe_str(exc))}\nTraceback (most recent call last):\n{frames}"


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
