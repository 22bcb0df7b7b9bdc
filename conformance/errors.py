"""The conformance suite's one error hierarchy.

A check reports its verdict by raising :class:`CheckFailed` (what was
expected, what came back, which hook to fix) or :class:`CheckSkipped` (why
it could not run); returning normally means it passed.  :class:`UsageError`
is a bad invocation (exit status 2 on the command line).
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


class CheckSkipped(ConformanceError):
    """A check could not run here; ``reason`` says why (and how to make it run)."""

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason)
        super().__init__(self.reason)


class WireError(ConformanceError):
    """Bytes from the worker are not a valid frame or not standard JSON."""


class ShapeError(ConformanceError):
    """A value does not decode into the shape the Rust coordinator expects.

    ``path`` is a dotted location such as ``result.metrics.loss``.
    """

    def __init__(self, path: str, expected: str, got: object) -> None:
        self.path = path
        self.expected = expected
        self.got = got
        super().__init__(f"{path}: expected {expected}, got {describe(got)}")


class PackProblem(ConformanceError):
    """A parameter pack on disk is missing, malformed or inconsistent."""


__all__ = [
    "CheckFailed",
    "CheckSkipped",
    "ConformanceError",
    "PackProblem",
    "ShapeError",
    "UsageError",
    "WireError",
    "describe",
    "one_line",
]
