"""Put the conformance checks in your own test module, like scikit-learn's
``parametrize_with_checks``::

    from conformance.helpers import parametrize_with_checks

    @parametrize_with_checks(
        "my_pkg.train:make_workload",
        {"hidden": 8},
        expected_failures={"packs.import_exact": "we keep bfloat16 master weights"},
    )
    def test_conformance(check):
        check()

Every check becomes one test whose id is the check id.  Checks listed in
``expected_failures`` are marked ``xfail`` (non-strict) with the given reason.
A WARN passes with a :class:`~conformance.errors.ConformanceWarning` (a
failure with ``strict=True``).  ``batches`` may be a list of BatchRefs or the
path of a batches file (relative to the current directory), as on the
command line.  All tests of one decorator share one worker process, closed
at exit.
"""

from __future__ import annotations

import atexit
import json
from collections.abc import Iterable, Mapping
from typing import Any

from .checks import BY_ID, Check, resolve
from .errors import CheckFailed, CheckSkipped, ConformanceWarning
from .options import Options
from .session import Session

_SESSIONS: dict[str, Session] = {}


def _session_for(options: Options) -> Session:
    key = json.dumps(
        [
            options.factory,
            options.config,
            options.device,
            options.batches,
            options.worker_cmd,
            list(options.pythonpath),
            options.cwd,
            options.max_examples,
        ],
        sort_keys=True,
        default=str,
    )
    if key not in _SESSIONS:
        if not _SESSIONS:
            atexit.register(close_all)
        _SESSIONS[key] = Session(options)
    return _SESSIONS[key]


def close_all() -> None:
    """Stop the worker processes of every helper session (idempotent)."""
    while _SESSIONS:
        _, session = _SESSIONS.popitem()
        session.close()


class BoundCheck:
    """One check bound to a workload; call it inside a test.

    Raises :class:`~conformance.errors.CheckFailed` (an ``AssertionError``)
    when the check fails and calls ``pytest.skip`` when it cannot run.
    """

    def __init__(self, check: Check, options: Options, strict: bool = False) -> None:
        self.check = check
        self.options = options
        self.strict = strict

    def __repr__(self) -> str:
        return self.check.id

    def __call__(self) -> None:
        import warnings

        import pytest

        session = _session_for(self.options)
        session.begin_check(self.check.id)
        try:
            self.check.func(session)
            found = list(session.warnings)
        except CheckSkipped as exc:
            pytest.skip(exc.reason)
        except CheckFailed as exc:
            if exc.details and hasattr(exc, "add_note"):
                exc.add_note(exc.details)
            raise
        finally:
            session.end_check()
        if found and self.strict:
            raise CheckFailed("no WARN (strict=True)", "; ".join(found), "see the warning")
        for text in found:
            warnings.warn(ConformanceWarning(f"WARN {self.check.id} {text}"), stacklevel=2)


def checks_for(
    factory: str,
    config: Any = None,
    *,
    select: Iterable[str] | None = None,
    strict: bool = False,
    **options: Any,
) -> list[BoundCheck]:
    """The selected checks (ids or globs; all by default) bound to one workload.

    ``options`` are :class:`~conformance.options.Options` fields (``device``,
    ``batches`` (a list or a file path), ``worker_cmd``, ``pythonpath``,
    ``max_examples``, ``call_timeout``, ...); ``strict`` makes a WARN fail.
    Raises :class:`~conformance.errors.UsageError` for bad options or ids.
    """
    opts = Options(factory=factory, config=config, **options)
    ids = resolve(select) if select is not None else list(BY_ID)
    return [BoundCheck(BY_ID[i], opts, strict) for i in ids]


def parametrize_with_checks(
    factory: str,
    config: Any = None,
    *,
    expected_failures: Mapping[str, str] | None = None,
    select: Iterable[str] | None = None,
    strict: bool = False,
    **options: Any,
) -> Any:
    """A ``pytest.mark.parametrize("check", ...)`` over the checks for this workload.

    ``expected_failures`` maps check ids (or globs) to the reason they are
    expected to fail.  Raises :class:`~conformance.errors.UsageError` for an
    id that names no check, so a typo cannot silence a check.
    """
    import pytest

    expected: dict[str, str] = {}
    for pattern, reason in (expected_failures or {}).items():
        for check_id in resolve([pattern], "expected_failures key"):
            expected[check_id] = reason
    params = []
    for bound in checks_for(factory, config, select=select, strict=strict, **options):
        marks = []
        if bound.check.id in expected:
            marks.append(pytest.mark.xfail(reason=expected[bound.check.id], strict=False))
        params.append(pytest.param(bound, id=bound.check.id, marks=marks))
    return pytest.mark.parametrize("check", params)


__all__ = ["BoundCheck", "checks_for", "close_all", "parametrize_with_checks"]
