"""The conformance suite's one error hierarchy.

A check reports its verdict by raising :class:`CheckFailed` (what was
expected, what came back, which hook to fix) or :class:`CheckSkipped` (why
it could not run); returning normally means it passed.  Every class the
suite raises on purpose lives here::

    ConformanceError
    ├── UsageError          the caller's bad invocation (exit status 2 on the command line)
    ├── CheckFailed         the workload or worker under test broke a rule (an AssertionError)
    ├── ConformanceFailure  a failed check, as the pytest plugin's item raises it
    ├── CheckSkipped        a check could not run here
    ├── RawWorkerError      a raw-socket worker could not start, or its stream broke
    │   ├── WorkerGone        the connection closed
    │   └── NoAnswer          nothing (or part of a frame) arrived in time
    ├── LayoutUnavailable   the workload's state has no generic torch layout
    └── NetworkRefused      a node would fail the flow after the call answered (network_calls)

    ConformanceWarning (a UserWarning)   a WARN, as pytest shows it

Bytes and values the worker sends are judged with fakecoord's decoder, so
its :class:`~fakecoord.errors.DecodeError` (and ``PackError`` for packs on
disk) are what the checks turn into :class:`CheckFailed`.
"""

from __future__ import annotations

from fakecoord.errors import describe  # one rendering of values in messages, shared

REASON_LIMIT = 400
"""Characters kept of a one-line reason; the full text stays in ``details``."""


def one_line(text: object, limit: int = REASON_LIMIT) -> str:
    """``text`` on one line (first line only, whitespace collapsed), at most ``limit`` chars."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    first = " ".join(lines[0].split()) if lines else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return first


class ConformanceError(Exception):
    """Base class of every error the conformance suite raises on purpose."""


class UsageError(ConformanceError):
    """Bad options: unknown check ids, a factory that cannot be imported, bad files."""


class CheckFailed(ConformanceError, AssertionError):
    """A check found a violation.

    ``expected`` and ``got`` are short phrases; ``hook`` names what to fix (a
    workload hook such as ``evaluate()``, or the worker itself); ``details``
    may hold long text (a traceback, a falsifying example) kept out of the
    one-line reason.  It is an ``AssertionError`` so that pytest shows it as
    a test failure rather than an error.
    """

    def __init__(self, expected: str, got: str, hook: str, details: str = "") -> None:
        self.expected = one_line(expected)
        self.got = one_line(got)
        self.hook = one_line(hook)
        self.details = details
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        return f"expected {self.expected}; got {self.got}; fix: {self.hook}"


class ConformanceFailure(ConformanceError):
    """A failing check item of the pytest plugin; ``args`` are its reason and details."""

    def __init__(self, reason: str, details: str = "") -> None:
        super().__init__(reason, details)
        self.reason = reason
        self.details = details


class CheckSkipped(ConformanceError):
    """A check could not run here; ``reason`` says why (and how to make it run)."""

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason)
        super().__init__(self.reason)


class RawWorkerError(ConformanceError):
    """A raw-socket worker could not start, or its stream broke where an answer was due."""


class WorkerGone(RawWorkerError):
    """The connection closed (at a frame boundary when ``mid_frame`` is False)."""

    def __init__(self, message: str, mid_frame: bool) -> None:
        super().__init__(message)
        self.mid_frame = mid_frame


class NoAnswer(RawWorkerError):
    """Nothing (or only part of a frame) arrived before the timeout."""


class LayoutUnavailable(ConformanceError):
    """The workload's state is not one of the generic layout's shapes (docs/protocol.md §3)."""


class NetworkRefused(ConformanceError):
    """A node would fail here although the worker answered: the message is the node's
    reason (an unreadable inner optimizer state, a miscounted exact step budget)."""


class ConformanceWarning(UserWarning):
    """A check passed, but the workload did something legal and suspicious (a WARN).

    The pytest plugin and ``parametrize_with_checks`` issue it; strict mode
    turns it into a failure instead.
    """


__all__ = [
    "CheckFailed",
    "CheckSkipped",
    "ConformanceError",
    "ConformanceFailure",
    "ConformanceWarning",
    "LayoutUnavailable",
    "NetworkRefused",
    "NoAnswer",
    "RawWorkerError",
    "UsageError",
    "WorkerGone",
    "describe",
    "one_line",
]
