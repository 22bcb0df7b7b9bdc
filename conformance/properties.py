"""Property checks: a check body run on explicit values, then on hypothesis-drawn ones.

hypothesis is imported on use (importing the suite stays cheap).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from .errors import CheckFailed


def for_examples(
    strategy: Any, body: Callable[[Any], None], max_examples: int, explicit: Sequence[Any] = ()
) -> int:
    """Run ``body`` on ``explicit`` values, then on up to ``max_examples`` drawn from a
    hypothesis ``strategy``; return how many ran.

    Stops at the first :class:`CheckFailed` and re-raises it with the example
    in ``details``.  There is no shrinking: every example costs worker calls,
    and a hang would cost a timeout per shrink step.  Generation is
    derandomized, so a run is reproducible.
    """
    with _HYPOTHESIS_LOCK:
        return _for_examples(strategy, body, max_examples, explicit)


_HYPOTHESIS_LOCK = threading.Lock()
"""Hypothesis is not thread-safe; runs on separate threads take turns here."""


def _for_examples(
    strategy: Any, body: Callable[[Any], None], max_examples: int, explicit: Sequence[Any]
) -> int:
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings

    failures: list[tuple[CheckFailed, Any]] = []
    ran = [0]

    def run(value: Any) -> None:
        if failures:
            return
        ran[0] += 1
        try:
            body(value)
        except CheckFailed as exc:
            failures.append((exc, value))

    for value in explicit:
        run(value)
    if not failures:

        @settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
        )
        @given(strategy)
        def prop(value: Any) -> None:
            run(value)

        prop()
    if failures:
        exc, value = failures[0]
        exc.details = f"falsifying example: {value!r}\n{exc.details}".rstrip()
        raise exc
    return ran[0]


__all__ = ["for_examples"]
