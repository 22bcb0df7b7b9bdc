"""Run checks and report: one :class:`Outcome` per check, a :class:`Report` for the run.

``run_checks(Options(factory="pkg.mod:make"), select=["packs.*"])`` is the
programmatic entry point; the CLI, the pytest plugin and the helper all use
:func:`execute` for a single check.

Statuses: PASS; WARN (passed, but the workload did something legal and
suspicious: the reason says what); FAIL; SKIP (could not run here, the reason
says how to make it run); XFAIL (a FAIL listed as expected).  With
``strict``, a WARN is a FAIL.  The exit status derives from the report alone:
1 when a check failed; else :data:`EXIT_INCOMPLETE` (3) when the training
checks could not run (the workload trained on none of the run's batches: the
certification is incomplete) unless ``allow_untrained``; else 0.
"""

from __future__ import annotations

import json
import re
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fakecoord import files
from fakecoord.version import package_version

from .checks import BY_ID, CHECKS, Check, resolve
from .errors import CheckFailed, CheckSkipped, UsageError, one_line
from .options import load_batches
from .session import Options, Session

PASS, WARN, FAIL, SKIP, XFAIL = "PASS", "WARN", "FAIL", "SKIP", "XFAIL"


@dataclass
class Outcome:
    check: Check
    status: str
    reason: str
    details: str = ""
    duration: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.check.id

    def line(self) -> str:
        """``STATUS id reason``: the one line the CLI prints."""
        return f"{self.status} {self.id} {self.reason}".rstrip()

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "status": self.status,
            "reason": self.reason,
            "description": self.check.description,
            "hooks": list(self.check.hooks),
            "duration_s": round(self.duration, 3),
            "details": self.details,
            "warnings": list(self.warnings),
        }


EXIT_INCOMPLETE = 3
"""The run's exit status when no check failed but the training checks could not run."""

REPORT_FORMAT = "burn-p2p-conformance-report-v1"
"""The JSON report's ``format``: raised only when a field changes meaning (CHANGELOG.md)."""


@dataclass
class Report:
    options: Options
    outcomes: list[Outcome] = field(default_factory=list)
    duration: float = 0.0
    spawns: int = 0
    """Worker processes the run started."""
    strict: bool = False
    """WARN counted as FAIL (``--strict``); the outcomes already carry it."""
    untrained: str | None = None
    """Why the training checks could not run (the workload trained on none of the
    run's batches), or None."""
    allow_untrained: bool = False
    """``--allow-untrained``: an untrained run may exit 0 (the author knows)."""

    def by_id(self, check_id: str) -> Outcome:
        for outcome in self.outcomes:
            if outcome.id == check_id:
                return outcome
        raise KeyError(check_id)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> bool:
        return self.count(FAIL) > 0

    @property
    def incomplete(self) -> bool:
        """No check failed, but the training checks could not run (and that is not allowed)."""
        return not self.failed and self.untrained is not None and not self.allow_untrained

    @property
    def outcome(self) -> str:
        """``failed``, ``incomplete`` or ``passed``: what the exit status says."""
        return "failed" if self.failed else "incomplete" if self.incomplete else "passed"

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else EXIT_INCOMPLETE if self.incomplete else 0

    def incomplete_text(self) -> str:
        """The closing explanation of an incomplete run (empty when complete)."""
        if not self.incomplete:
            return ""
        flag = self.options.flag
        return (
            f"INCOMPLETE: the training checks could not run ({self.untrained}). The workload "
            f"is not certified: pass {flag('batches')} FILE (a JSON array of BatchRefs it can "
            f"train on), or {flag('allow-untrained')} if you know it cannot train here "
            f"(exit status {EXIT_INCOMPLETE} otherwise)"
        )

    def summary(self) -> str:
        """The closing line (``warned`` is appended, so older parsers of the line still work)."""
        return (
            f"{self.count(PASS)} passed, {self.count(FAIL)} failed, {self.count(SKIP)} skipped, "
            f"{self.count(XFAIL)} xfailed, {self.count(WARN)} warned "
            f"({len(self.outcomes)} checks in {self.duration:.1f} s"
            + (", --strict" if self.strict else "")
            + ")"
        )

    def to_json(self) -> dict:
        return {
            "format": REPORT_FORMAT,
            "suite_version": package_version(),
            "factory": self.options.factory,
            "config": self.options.config,
            "device": self.options.device,
            "strict": self.strict,
            "summary": {
                "passed": self.count(PASS),
                "failed": self.count(FAIL),
                "skipped": self.count(SKIP),
                "xfailed": self.count(XFAIL),
                "warned": self.count(WARN),
                "total": len(self.outcomes),
                "duration_s": round(self.duration, 3),
                "worker_processes": self.spawns,
                "exit_status": self.exit_code,
                "outcome": self.outcome,
                "untrained": self.untrained,
                "allow_untrained": self.allow_untrained,
            },
            "checks": [o.to_json() for o in self.outcomes],
        }

    def write_json(self, path: str | Path) -> None:
        """The JSON report: published atomically, or written into a stream such as
        ``/dev/stdout`` or a FIFO (:func:`fakecoord.files.write_output`)."""
        files.write_output(path, (json.dumps(self.to_json(), indent=2) + "\n").encode("utf-8"))

    def write_junit(self, path: str | Path) -> None:
        """JUnit XML as CI systems read it: XFAIL and SKIP are ``<skipped>``."""
        suite = ET.Element(
            "testsuite",
            name="burn-p2p-conformance",
            tests=str(len(self.outcomes)),
            failures=str(self.count(FAIL)),
            errors="1" if self.incomplete else "0",
            skipped=str(self.count(SKIP) + self.count(XFAIL)),
            time=f"{self.duration:.3f}",
        )
        if self.incomplete:
            case = ET.SubElement(
                suite, "testcase", classname="conformance.run", name="certification_complete"
            )
            node = ET.SubElement(case, "error", message="incomplete: training checks did not run")
            node.text = self.incomplete_text()
        for outcome in self.outcomes:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"conformance.{outcome.check.group}",
                name=outcome.id,
                time=f"{outcome.duration:.3f}",
            )
            if outcome.warnings:
                properties = ET.SubElement(case, "properties")
                for warning in outcome.warnings:
                    ET.SubElement(properties, "property", name="warning", value=warning)
            if outcome.status == FAIL:
                node = ET.SubElement(case, "failure", message=outcome.reason)
                node.text = outcome.details or outcome.reason
            elif outcome.status in (SKIP, XFAIL):
                kind = "xfail" if outcome.status == XFAIL else "skip"
                ET.SubElement(case, "skipped", type=kind, message=outcome.reason)
            if outcome.warnings:
                out = ET.SubElement(case, "system-out")
                out.text = "".join(f"WARN {outcome.id} {w}\n" for w in outcome.warnings)
        for node in suite.iter():
            node.text = xml_safe(node.text)
            node.tail = xml_safe(node.tail)
            for key, value in node.attrib.items():
                node.attrib[key] = xml_safe(value) or ""
        files.write_output(path, ET.tostring(suite, encoding="utf-8", xml_declaration=True))


_NOT_XML = re.compile("[^\t\n\r\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""The characters XML 1.0 forbids (controls, lone surrogates, U+FFFE, U+FFFF), and the
DEL and C1 controls it discourages."""


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def xml_safe(text: str | None) -> str | None:
    """``text`` with every character XML 1.0 forbids written as ``\\xNN`` / ``\\uNNNN``.

    A dead worker's stderr (colour codes: ESC) or an exception's text may hold
    any character; unescaped, one makes the JUnit file not well-formed and CI
    parsers drop the whole run.
    """
    return text if text is None else _NOT_XML.sub(_escape_char, text)


def execute(
    session: Session, check: Check, xfail_reason: str | None = None, *, strict: bool = False
) -> Outcome:
    """Run one check on ``session``; never raises (except KeyboardInterrupt and
    :class:`UsageError`).  Anything else a check raises, SystemExit included,
    is a FAIL of that check."""
    start = time.monotonic()
    session.begin_check(check.id)
    try:
        reason = one_line(check.func(session) or check.description)
        warnings = list(session.warnings)
        if not warnings:
            outcome = Outcome(check, PASS, reason)
        elif strict:
            strict_flag = session.options.flag("strict")
            text = one_line(f"warning ({strict_flag} makes it a failure): " + "; ".join(warnings))
            outcome = Outcome(check, FAIL, text, f"passed otherwise: {reason}", warnings=warnings)
        else:
            outcome = Outcome(
                check, WARN, one_line("; ".join(warnings)), f"passed otherwise: {reason}",
                warnings=warnings,
            )  # fmt: skip
    except CheckFailed as exc:
        outcome = Outcome(check, FAIL, exc.reason, exc.details, warnings=list(session.warnings))
    except CheckSkipped as exc:
        outcome = Outcome(check, SKIP, exc.reason, warnings=list(session.warnings))
    except (UsageError, KeyboardInterrupt):
        raise
    except BaseException as exc:
        outcome = _unexpected(check, exc)
    finally:
        session.end_check()
    outcome.duration = time.monotonic() - start
    if xfail_reason is not None:
        if outcome.status == FAIL:
            outcome = Outcome(
                check,
                XFAIL,
                one_line(f"{xfail_reason} (failed: {outcome.reason})"),
                outcome.details,
                outcome.duration,
            )
        elif outcome.status in (PASS, WARN):
            outcome.reason = one_line(
                f"{outcome.reason} (listed as an expected failure: {xfail_reason}; it passes, "
                "so remove it from the list)"
            )
    return outcome


def _unexpected(check: Check, exc: BaseException) -> Outcome:
    group = [e for e in getattr(exc, "exceptions", ()) if isinstance(e, CheckFailed)]
    if group:
        return Outcome(check, FAIL, group[0].reason, group[0].details)
    text = f"{type(exc).__name__}: {exc}"
    return Outcome(
        check,
        FAIL,
        one_line(
            f"the check itself crashed ({text}); this is a bug in the conformance suite "
            "or the worker died in an unexpected way"
        ),
        traceback.format_exc(),
    )


def parse_xfails(text: str, source: str = "--xfails-file") -> dict[str, str]:
    """Parse an expected-failures file: one ``CHECK_ID_OR_GLOB [reason]`` per line;
    blank lines and lines starting with ``#`` are ignored.  Returns
    ``{check_id: reason}``; raises :class:`UsageError` for a pattern matching no check.
    """
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, *rest = line.split(None, 1)
        reason = rest[0].lstrip("#").strip() if rest else ""
        for check_id in resolve([pattern], f"{source} line {number}:"):
            out[check_id] = reason or f"listed in {source}"
    return out


def selected_checks(
    select: Iterable[str] | None = None, skip: Iterable[str] = ()
) -> tuple[list[Check], set[str]]:
    """The checks to run (registry order) and the ids to report as skipped."""
    ids = resolve(select) if select is not None else [c.id for c in CHECKS]
    skipped = set(resolve(skip, "--skip")) if skip else set()
    return [BY_ID[i] for i in ids], skipped


def run_checks(
    options: Options,
    *,
    select: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    xfail: Mapping[str, str] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    session: Session | None = None,
    strict: bool = False,
    allow_untrained: bool = False,
) -> Report:
    """Run the selected checks against the workload in ``options``.

    ``select``/``skip`` take ids or globs (``"packs.*"``); ``xfail`` maps ids
    (or globs) to reasons; ``strict`` makes a WARN a FAIL.  Raises
    :class:`UsageError` for unknown ids and when the worker cannot start at
    all (the factory does not import, the config is refused, the worker
    command is wrong).
    """
    checks, skipped = selected_checks(select, skip)
    expected_failures: dict[str, str] = {}
    for pattern, reason in (xfail or {}).items():
        for check_id in resolve([pattern], "--xfail"):
            expected_failures[check_id] = reason
    report = Report(options, strict=strict, allow_untrained=allow_untrained)
    start = time.monotonic()
    own = session is None
    session = session or Session(options)
    try:
        to_run = [c for c in checks if c.id not in skipped]
        if to_run:
            preflight(session, to_run)
        for check in checks:
            if check.id in skipped:
                outcome = Outcome(check, SKIP, "skipped on request (--skip)")
            else:
                outcome = execute(session, check, expected_failures.get(check.id), strict=strict)
            report.outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        report.untrained = session.untrained()
    finally:
        report.spawns = session.spawns
        if own:
            session.close()
    report.duration = time.monotonic() - start
    return report


EXTRA_MODULES = ("numpy", "hypothesis")
"""What the ``[conformance]`` extra installs and the suite imports on use."""
INSTALL_LINE = "pip install 'burn-p2p-python-worker[conformance]'"


def require_extra() -> None:
    """Raise :class:`UsageError` naming the ``[conformance]`` extra when one of its
    modules cannot be imported (instead of checks that crash on the import)."""
    import importlib

    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UsageError(
                f"the conformance suite needs its [conformance] extra, which is not installed "
                f"(cannot import {name!r}: {exc}); install it with: {INSTALL_LINE}"
            ) from None


def preflight(session: Session, checks: Sequence[Check] = ()) -> None:
    """Start the layout probe in the background when a check will need it, and the
    worker the first check needs (a raw one when only framing checks run); a
    worker that cannot start, or a missing ``[conformance]`` extra, is a
    :class:`UsageError`."""
    require_extra()
    if any(c.uses_probe for c in checks):
        session.start_probe()
    try:
        if checks and all(c.group == "framing" for c in checks):
            session.raw()
        else:
            session.client()
            _check_workload_object(session)
    except CheckFailed as exc:
        raise UsageError(
            f"cannot start the workload {session.options.factory!r}: {exc.got}"
            + (f"\n{exc.details}" if exc.details and exc.details not in exc.got else "")
        ) from None


def _check_workload_object(session: Session) -> None:
    """One usage error, not dozens of FAILs, when the factory returned None (every
    worker then names the workload ``NoneType``): every check would fail alike.

    Lenient on purpose: anything else a broken worker answers here (a malformed
    hello, a crash) is left to the checks, which judge it."""
    from fakecoord.errors import FakecoordError

    factory = session.options.factory
    client = session.client()
    try:
        hello = client.call("hello", None, timeout=session.options.exit_timeout)
    except FakecoordError:
        return
    if isinstance(hello, dict) and hello.get("workload_name") == "NoneType":
        raise UsageError(
            f"the factory {factory!r} returned None: it must return the workload object "
            "(docs/workload-authors.md §2)"
        )


__all__ = [
    "EXIT_INCOMPLETE",
    "FAIL",
    "PASS",
    "SKIP",
    "WARN",
    "XFAIL",
    "Outcome",
    "Report",
    "execute",
    "load_batches",
    "parse_xfails",
    "preflight",
    "run_checks",
    "selected_checks",
]
