"""pytest plugin: ``pytest --workload-factory MOD:ATTR`` runs every check as a test.

Registered as the ``pytest11`` entry point ``burn_p2p_conformance``, so it is
loaded in every pytest run of a project that installs this package: importing
it costs nothing but pytest itself, and it does nothing unless
``--workload-factory`` is given.  Without the entry point, load it with
``-p conformance.pytest_plugin``.

Each check becomes the test ``conformance::<check id>`` (select with ``-k``),
sharing one worker process per session.  A FAIL is a test failure whose
message is the check's one-line reason; a SKIP is a pytest skip with the
reason; ids in ``--workload-xfails-file`` are marked xfail.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

_SESSION_KEY = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("burn-p2p-conformance", "burn_p2p workload conformance checks")
    group.addoption("--workload-factory", metavar="MOD:ATTR", default=None,
                    help="run the conformance checks against this workload factory")  # fmt: skip
    group.addoption("--workload-config", metavar="JSON", default="{}",
                    help="JSON config passed to the factory (default {})")  # fmt: skip
    group.addoption("--workload-batches", metavar="FILE", default=None,
                    help="JSON array of BatchRefs (default: generated micro_epoch refs)")  # fmt: skip
    group.addoption("--workload-device", metavar="DEV", default="cpu",
                    help="device passed to init_model (default cpu)")  # fmt: skip
    group.addoption("--workload-custom-split", metavar="NAME", default="conformance-holdout",
                    help='name evaluate gets as {"Custom": NAME}')  # fmt: skip
    group.addoption("--workload-worker-cmd", metavar="CMD", default=None,
                    help="worker command, shell-quoted (default: python -m worker)")  # fmt: skip
    group.addoption("--workload-xfails-file", metavar="FILE", default=None,
                    help="expected failures: one 'CHECK_ID [reason]' per line")  # fmt: skip
    group.addoption("--workload-max-examples", metavar="N", type=int, default=10,
                    help="hypothesis examples per property check (default 10)")  # fmt: skip


class ConformanceItem(pytest.Item):
    def __init__(self, *, check: Any, xfail_reason: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        if xfail_reason is not None:
            self.add_marker(pytest.mark.xfail(reason=xfail_reason, strict=False))

    def runtest(self) -> None:
        from .errors import ConformanceFailure
        from .runner import FAIL, SKIP, execute

        outcome = execute(self.config.stash[_SESSION_KEY].get(), self.check)
        if outcome.status == SKIP:
            pytest.skip(outcome.reason)
        if outcome.status == FAIL:
            raise ConformanceFailure(outcome.reason, outcome.details)

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        from .errors import ConformanceFailure

        if isinstance(excinfo.value, ConformanceFailure):
            reason, details = excinfo.value.args
            return f"FAIL {self.check.id} {reason}" + (f"\n\n{details}" if details else "")
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"conformance check {self.check.id}: {self.check.description}"


class _LazySession:
    """One Session for the whole pytest session, started by the first check."""

    def __init__(self, options: Any) -> None:
        self.options = options
        self.session: Any = None

    def get(self) -> Any:
        if self.session is None:
            from .session import Session

            self.session = Session(self.options)
        return self.session

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


def _options(config: pytest.Config) -> Any:
    import shlex

    from fakecoord import wire
    from fakecoord.errors import DecodeError

    from .errors import UsageError
    from .runner import load_batches
    from .session import Options

    try:
        text = config.getoption("workload_config")
        workload_config = wire.decode_value(text.encode("utf-8", "surrogatepass"))
    except DecodeError as exc:
        raise UsageError(f"--workload-config is not valid JSON ({exc})") from None
    batches = config.getoption("workload_batches")
    cmd = config.getoption("workload_worker_cmd")
    roots = dict.fromkeys([str(config.rootpath), str(config.invocation_params.dir), os.getcwd()])
    return Options(
        factory=config.getoption("workload_factory"),
        config=workload_config,
        device=config.getoption("workload_device"),
        custom_split=config.getoption("workload_custom_split"),
        batches=load_batches(batches) if batches else None,
        worker_cmd=shlex.split(cmd) if cmd else None,
        pythonpath=list(roots),
        max_examples=config.getoption("workload_max_examples"),
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if not config.getoption("workload_factory", default=None):
        return
    from .checks import CHECKS
    from .errors import UsageError
    from .runner import parse_xfails

    try:
        options = _options(config)
        xfails: dict[str, str] = {}
        path = config.getoption("workload_xfails_file")
        if path:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"--workload-xfails-file {path!r}: {exc.strerror}") from None
            xfails = parse_xfails(text, f"--workload-xfails-file {path}")
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_SESSION_KEY] = _LazySession(options)
    suite = ConformanceSuite.from_parent(session, name="conformance", nodeid="conformance")
    for check in CHECKS:
        items.append(
            ConformanceItem.from_parent(
                suite, name=check.id, check=check, xfail_reason=xfails.get(check.id)
            )
        )


class ConformanceSuite(pytest.Collector):
    """The parent node of the check items (``conformance::<id>``)."""

    def collect(self) -> list[pytest.Item]:  # items are created in modifyitems
        return []


def pytest_unconfigure(config: pytest.Config) -> None:
    lazy = config.stash.get(_SESSION_KEY, None)
    if lazy is not None:
        lazy.close()
    helpers = sys.modules.get("conformance.helpers")
    if helpers is not None:  # sessions opened by parametrize_with_checks in this run
        helpers.close_all()
