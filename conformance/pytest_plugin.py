"""pytest plugin: ``pytest --workload-factory MOD:ATTR`` runs every check as a test.

Registered as the ``pytest11`` entry point ``burn_p2p_conformance``, so it is
loaded in every pytest run of a project that installs this package: importing
it costs nothing but pytest itself, and it does nothing unless a workload
factory is given, on the command line or in the ini file::

    [tool.pytest.ini_options]
    workload_factory = "my_pkg.train:make_workload"
    workload_config = '{"hidden": 64}'
    workload_batches = "ci/batches.json"      # relative to the ini file

Without the entry point, load it with ``-p conformance.pytest_plugin``.

Each check becomes the test ``conformance::<check id>`` (the same node id
from any working directory; select with ``-k``), collected like any other
test and sharing one worker process per session.  A FAIL is a test failure
whose message is the check's one-line reason; a SKIP is a pytest skip with
the reason; a WARN passes with a :class:`ConformanceWarning` (a failure with
``--workload-strict``); ids in the xfails file are marked xfail.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from .errors import ConformanceWarning

_SESSION_KEY = pytest.StashKey[Any]()
_SUITE_KEY = pytest.StashKey[Any]()

# (name, metavar, help, ini type); each is --workload-NAME on the command line
# and workload_NAME in the ini file.
OPTIONS = (
    ("factory", "MOD:ATTR", "run the conformance checks against this workload factory", "string"),
    ("config", "JSON", "JSON config passed to the factory (default {})", "string"),
    ("batches", "FILE", "JSON array of BatchRefs (default: generated micro_epoch refs)", "string"),
    ("device", "DEV", "override the workload's runtime_device in init_model (WARN)", "string"),
    ("custom-split", "NAME", 'name evaluate gets as {"Custom": NAME}', "string"),
    ("worker-cmd", "CMD", "worker command, shell-quoted (default: python -m worker)", "string"),
    ("xfails-file", "FILE", "expected failures: one 'CHECK_ID [reason]' per line", "string"),
    ("max-examples", "N", "hypothesis examples per property check (default 10)", "string"),
    ("timeout", "S", "the longest any wait of a check may take (default 120)", "string"),
    ("pythonpath", "DIR", "extra import roots for the worker (repeatable)", "linelist"),
)
PATH_OPTIONS = ("batches", "xfails-file", "pythonpath")
"""Relative to the invocation directory on the command line, to the ini file's directory in it."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("burn-p2p-conformance", "burn_p2p workload conformance checks")
    ini_type: Any
    for name, metavar, text, ini_type in OPTIONS:
        dest = "workload_" + name.replace("-", "_")
        action = "append" if ini_type == "linelist" else "store"
        group.addoption(f"--workload-{name}", dest=dest, metavar=metavar, default=None,
                        action=action, help=text)  # fmt: skip
        parser.addini(dest, f"{text} (--workload-{name})", type=ini_type, default=None)
    group.addoption("--workload-strict", dest="workload_strict", action="store_true",
                    default=None, help="a WARN fails its check")  # fmt: skip
    group.addoption("--workload-allow-untrained", dest="workload_allow_untrained",
                    action="store_true", default=None,
                    help="exit 0 even when the training checks could not run")  # fmt: skip
    parser.addini("workload_allow_untrained", "exit 0 even when the training checks could not "
                  "run (--workload-allow-untrained)", type="bool", default=False)  # fmt: skip
    parser.addini("workload_strict", "a WARN fails its check (--workload-strict)", type="bool",
                  default=False)  # fmt: skip


def _setting(config: pytest.Config, name: str) -> Any:
    """A setting from the command line, else from the ini file (paths made absolute)."""
    dest = "workload_" + name.replace("-", "_")
    value = config.getoption(dest, default=None)
    base = config.invocation_params.dir
    if value is None:
        value = config.getini(dest) if _has_ini(config, dest) else None
        base = config.inipath.parent if config.inipath else config.rootpath
    if value is None or name not in PATH_OPTIONS:
        return value
    if isinstance(value, list):
        return [str(base / v) for v in value]
    return str(base / value)


def _has_ini(config: pytest.Config, dest: str) -> bool:
    try:
        return config.getini(dest) not in (None, "", [])
    except ValueError:
        return False


def _workload_given(config: pytest.Config) -> bool:
    return bool(_setting(config, "factory"))


def pytest_report_header(config: pytest.Config) -> str | None:
    if not _workload_given(config):
        return None
    return f"burn-p2p conformance: {_setting(config, 'factory')} (conformance::<check id>)"


class ConformanceItem(pytest.Item):
    def __init__(self, *, check: Any, xfail_reason: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        if xfail_reason is not None:
            self.add_marker(pytest.mark.xfail(reason=xfail_reason, strict=False))

    def runtest(self) -> None:
        from .errors import ConformanceFailure
        from .runner import FAIL, SKIP, WARN, execute

        lazy = self.config.stash[_SESSION_KEY]
        outcome = execute(lazy.get(), self.check, strict=lazy.strict)
        if outcome.status == SKIP:
            pytest.skip(outcome.reason)
        if outcome.status == FAIL:
            raise ConformanceFailure(outcome.reason, outcome.details)
        if outcome.status == WARN:
            for text in outcome.warnings:
                warnings.warn(ConformanceWarning(f"WARN {self.check.id} {text}"), stacklevel=1)

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        from .errors import ConformanceFailure

        if isinstance(excinfo.value, ConformanceFailure):
            reason, details = excinfo.value.args
            return f"FAIL {self.check.id} {reason}" + (f"\n\n{details}" if details else "")
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"conformance check {self.check.id}: {self.check.description}"


class ConformanceSuite(pytest.Collector):
    """The parent node of the check items (``conformance::<id>``), collected with the session."""

    def collect(self) -> list[pytest.Item]:
        from .checks import CHECKS

        xfails = self.config.stash[_SUITE_KEY]
        return [
            ConformanceItem.from_parent(
                self, name=check.id, check=check, xfail_reason=xfails.get(check.id)
            )
            for check in CHECKS
        ]


class _LazySession:
    """One Session for the whole pytest session, started by the first check."""

    def __init__(self, options: Any, strict: bool) -> None:
        self.options = options
        self.strict = strict
        self.session: Any = None

    def get(self) -> Any:
        """The session, started by the first check: a workload that cannot start (a
        factory that does not import, raises or returns None) ends the run with one
        usage error instead of one FAIL per check."""
        if self.session is None:
            from .checks import CHECKS
            from .errors import UsageError
            from .runner import preflight
            from .session import Session

            self.session = Session(self.options)
            try:
                preflight(self.session, CHECKS)
            except UsageError as exc:
                self.close()
                pytest.exit(f"burn-p2p conformance: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
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
    from .options import Options

    try:
        text = _setting(config, "config") or "{}"
        workload_config = wire.decode_value(text.encode("utf-8", "surrogatepass"))
    except DecodeError as exc:
        raise UsageError(f"workload config is not valid JSON ({exc})") from None
    cmd = _setting(config, "worker-cmd")
    roots = [*(_setting(config, "pythonpath") or [])]
    roots += [str(config.rootpath), str(config.invocation_params.dir), os.getcwd()]
    kwargs: dict[str, Any] = {}
    for name, field, kind in (
        ("max-examples", "max_examples", int),
        ("timeout", "call_timeout", float),
    ):
        raw = _setting(config, name)
        if raw is not None:
            try:
                kwargs[field] = kind(raw)
            except ValueError:
                raise UsageError(f"workload {name} must be a number, got {raw!r}") from None
    return Options(
        factory=_setting(config, "factory"),
        config=workload_config,
        device=_setting(config, "device") or None,
        custom_split=_setting(config, "custom-split") or "conformance-holdout",
        interface="pytest",
        batches=_setting(config, "batches"),
        worker_cmd=shlex.split(cmd) if cmd else None,
        pythonpath=list(dict.fromkeys(roots)),
        **kwargs,
    )


def pytest_configure(config: pytest.Config) -> None:
    if not _workload_given(config):
        return
    from .errors import UsageError
    from .runner import parse_xfails

    try:
        options = _options(config)
        xfails: dict[str, str] = {}
        path = _setting(config, "xfails-file")
        if path:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"workload xfails file {path!r}: {exc.strerror}") from None
            xfails = parse_xfails(text, f"workload xfails file {path}")
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    strict = bool(
        config.getoption("workload_strict", default=None) or config.getini("workload_strict")
    )
    config.stash[_SESSION_KEY] = _LazySession(options, strict)
    config.stash[_SUITE_KEY] = xfails


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """Add the suite to the session's own collection (counted, selected, deselected as usual)."""
    outcome = yield
    if not isinstance(collector, pytest.Session) or _SESSION_KEY not in collector.config.stash:
        return
    report = outcome.get_result()
    if report.passed:
        suite = ConformanceSuite.from_parent(
            collector, name="conformance", nodeid="conformance", path=collector.config.rootpath
        )
        report.result.append(suite)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """An otherwise passing run whose training checks could not run exits 3 (incomplete),
    as the command line does, unless ``--workload-allow-untrained``."""
    config = session.config
    lazy = config.stash.get(_SESSION_KEY, None)
    if lazy is None or lazy.session is None or exitstatus != 0:
        return
    untrained = lazy.session.untrained()
    allowed = config.getoption("workload_allow_untrained", default=None) or config.getini(
        "workload_allow_untrained"
    )
    if untrained and not allowed:
        from .runner import EXIT_INCOMPLETE

        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"burn-p2p conformance INCOMPLETE: the training checks could not run "
                f"({untrained}); pass --workload-batches FILE, or --workload-allow-untrained"
            )
        session.exitstatus = EXIT_INCOMPLETE


def pytest_unconfigure(config: pytest.Config) -> None:
    lazy = config.stash.get(_SESSION_KEY, None)
    if lazy is not None:
        lazy.close()
    helpers = sys.modules.get("conformance.helpers")
    if helpers is not None:  # sessions opened by parametrize_with_checks in this run
        helpers.close_all()
