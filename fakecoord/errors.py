"""The fake coordinator's one error hierarchy.

Every error :mod:`fakecoord` raises on purpose is a :class:`FakecoordError`.
Messages name the method (and, for decoding errors, the offending field) so a
failing test or simulation says what the worker got wrong.
"""

from __future__ import annotations

import signal

_MISSING = object()


class FakecoordError(Exception):
    """Base class of every error fakecoord raises on purpose."""


class WorkerExited(FakecoordError):
    """The worker process exited: before it connected, or during a call.

    ``returncode`` is the exit status (negative: killed by that signal);
    ``stderr_tail`` is the end of what it wrote on stderr ("" when the client
    could not keep it, e.g. ``stderr`` was a pipe owned by the caller).
    """

    def __init__(
        self,
        returncode: int | None,
        stderr_tail: str,
        method: str | None = None,
        *,
        when: str | None = None,
    ) -> None:
        where = f"{method}: " if method else ""
        status = describe_returncode(returncode)
        text = f"{where}the worker exited ({status})"
        if when:
            text += f" {when}"
        if stderr_tail.strip():
            text += f"; the end of its stderr:\n{stderr_tail.rstrip()}"
        else:
            text += " and left nothing on stderr"
        super().__init__(text)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.method = method


class WorkerTimeout(FakecoordError):
    """The worker did not connect, or did not answer a call, in time; it has been killed."""

    def __init__(
        self, message: str, method: str | None = None, timeout: float | None = None
    ) -> None:
        super().__init__(message)
        self.method = method
        self.timeout = timeout


class ProtocolViolation(FakecoordError):
    """The worker broke the wire contract: a bad frame, a wrong response id, or a
    result the Rust coordinator could not decode.  ``method`` and ``field``
    (a dotted path such as ``result.metrics.loss``) say where."""

    def __init__(self, message: str, method: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.field = field


class RemoteError(FakecoordError):
    """The worker answered ``ok: false``; ``message`` is its error text verbatim."""

    def __init__(self, method: str, message: str) -> None:
        first_line = message.splitlines()[0] if message else "(empty error text)"
        super().__init__(f"{method}: the worker refused the call: {first_line}")
        self.method = method
        self.message = message


class ClientClosed(FakecoordError):
    """A call on a client that is closed, shut down, or broken by an earlier error."""


class InvalidParams(FakecoordError):
    """The caller's params cannot be sent (not standard JSON: NaN, sets, objects...)."""


class PackError(FakecoordError):
    """A parameter pack on disk is missing, invalid or inconsistent, or cannot be written."""


class PlanRefused(FakecoordError):
    """A parameter pack plan the coordinator would refuse to train with (see ``handling``)."""


def describe_returncode(returncode: int | None) -> str:
    """``"status 3"``, ``"killed by SIGKILL"`` or ``"status unknown"``."""
    if returncode is None:
        return "status unknown"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"status {returncode}"


def describe(value: object, limit: int = 80) -> str:
    """A short rendering of ``value`` with its JSON type, for error messages."""
    if value is _MISSING:
        return "nothing (the field is missing)"
    kind = {
        type(None): "null",
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} ({kind})"


__all__ = [
    "ClientClosed",
    "FakecoordError",
    "InvalidParams",
    "PackError",
    "PlanRefused",
    "ProtocolViolation",
    "RemoteError",
    "WorkerExited",
    "WorkerTimeout",
    "describe",
    "describe_returncode",
]


# ---------------------------------------------------------------------------
# The simulation (``python -m fakecoord run``, :mod:`fakecoord.sim`)


class SimError(FakecoordError):
    """The simulation cannot run or go on: no worker starts, a bad checkpoint, a failed setup."""


class SettingsError(SimError):
    """An invalid setting or input (flag, config file, batches, device), found before anything
    was created; ``python -m fakecoord run`` exits 2."""


class FaultSpecError(SettingsError):
    """A ``--fault`` spec that is malformed or names a peer or round that does not exist."""


class RunFailed(SimError):
    """The run stopped early: too many consecutive rounds without any contributing peer."""


class SimStopped(FakecoordError):
    """Raised inside peer threads once the run is being torn down (after Ctrl-C)."""


class OuterError(FakecoordError):
    """Bad input to the DiLoCo outer step: mismatched sizes, unknown names, non-finite values."""

    def __init__(self, message: str, source: int | None = None) -> None:
        super().__init__(message)
        self.source = source
        """Which contributor's pack held the bad values (index into the locals), if known."""


class JobFailed(FakecoordError):
    """A checkpoint-command job exited with a non-zero status; the message quotes its log."""

    def __init__(self, returncode: int, log: str, reason: str) -> None:
        super().__init__(
            f"job command exited ({describe_returncode(returncode)}): {reason or 'no output'} "
            f"(log: {log})"
        )
        self.returncode = returncode
        self.log = log


__all__ += [
    "FaultSpecError",
    "JobFailed",
    "OuterError",
    "RunFailed",
    "SettingsError",
    "SimError",
    "SimStopped",
]
