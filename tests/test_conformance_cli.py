"""Tests of the conformance suite's interfaces: the runner API, the CLI and its
reports, the pytest plugin, ``parametrize_with_checks``, and the suite's own
sans-IO pieces (the subjects' proof of each check is tests/test_conformance.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

import tests.broken as bw
from conformance import __version__
from conformance.__main__ import main as cli_main
from conformance.checks import BY_ID, CHECKS
from conformance.errors import CheckFailed, UsageError
from conformance.helpers import checks_for, close_all
from conformance.options import Options
from conformance.runner import PASS, SKIP, WARN, XFAIL, parse_xfails, run_checks
from conformance.session import repeated_plan_key
from fakecoord import spec, wire
from fakecoord.errors import DecodeError

pytest_plugins = ["pytester", "tests.broken.fixtures"]

ROOT = Path(__file__).resolve().parent.parent
BROKEN = "tests.broken:make_broken"
STUB = "tests.broken:make_stub"
LINE = re.compile(r"^(PASS|WARN|FAIL|SKIP|XFAIL) ([a-z_]+\.[a-z_]+) \S.*$")
SUMMARY = re.compile(
    r"^\d+ passed, \d+ failed, \d+ skipped, \d+ xfailed, \d+ warned \(\d+ checks in .*\)$"
)


def options(factory: str, config: dict | None = None, **kwargs: Any) -> Options:
    kwargs.setdefault("exit_timeout", 5.0)
    return Options(factory, config or {}, pythonpath=(str(ROOT),), cwd=str(ROOT), **kwargs)


def statuses(report: Any) -> dict[str, str]:
    return {o.id: o.status for o in report.outcomes}


# ---------------------------------------------------------------------------
# Runner API: selection, skips, expected failures, usage errors


def test_runner_select_skip_and_xfail(zygote: str) -> None:
    opts = options(STUB, worker_cmd=bw.worker_command("unknown_method_ok", zygote))
    report = run_checks(
        opts,
        select=["errors.unknown_method", "errors.missing_params", "framing.*"],
        skip=["framing.*"],
        xfail={"errors.unknown_method": "our dispatcher is lenient"},
    )
    got = statuses(report)
    assert got["errors.unknown_method"] == XFAIL
    assert "our dispatcher is lenient" in report.by_id("errors.unknown_method").reason
    assert got["errors.missing_params"] == PASS
    assert {got[c.id] for c in CHECKS if c.group == "framing"} == {SKIP}
    assert report.exit_code == 0


def test_an_expected_failure_that_passes_stays_a_pass_and_says_so() -> None:
    report = run_checks(
        options(STUB), select=["errors.unknown_method"], xfail={"errors.*": "maybe later"}
    )
    outcome = report.outcomes[0]
    assert outcome.status == PASS and "remove it" in outcome.reason


@pytest.mark.parametrize(
    "kwargs",
    [{"select": ["no.such_check"]}, {"skip": ["packs.nope*"]}, {"xfail": {"nothing.here": "x"}}],
)
def test_unknown_check_ids_are_usage_errors(kwargs: dict) -> None:
    with pytest.raises(UsageError, match="matches no check"):
        run_checks(options(STUB), **kwargs)


def test_a_factory_the_worker_cannot_load_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no_such_factory"):
        run_checks(options("tests.broken:no_such_factory"), select=["protocol.hello"])


def test_parse_xfails_reads_ids_globs_reasons_and_comments() -> None:
    text = (
        "# comment\n\nprotocol.hello  hello is odd\nframing.* # stream is odd\nerrors.bad_files\n"
    )
    got = parse_xfails(text)
    assert got["protocol.hello"] == "hello is odd"
    assert got["framing.split_frames"] == "stream is odd"
    assert got["errors.bad_files"].startswith("listed in")
    with pytest.raises(UsageError, match="line 1"):
        parse_xfails("protocol.nope reason")


# ---------------------------------------------------------------------------
# CLI


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, list[str], str]:
    code = cli_main(["--pythonpath", str(ROOT), *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_cli_exit_0_prints_one_line_per_check_and_writes_reports(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    code, lines, _ = run_cli(
        capsys, "--factory", STUB, "--select", "errors.*", "--skip", "errors.bad_files",
        "--json", str(tmp_path / "r.json"), "--junit-xml", str(tmp_path / "r.xml"),
    )  # fmt: skip
    assert code == 0
    check_lines = [line for line in lines if LINE.match(line)]
    assert [LINE.match(line).group(2) for line in check_lines] == [
        c.id for c in CHECKS if c.group == "errors"
    ]
    assert "SKIP errors.bad_files skipped on request (--skip)" in lines
    assert re.fullmatch(
        r"4 passed, 0 failed, 1 skipped, 0 xfailed, 0 warned \(5 checks in .*\)", lines[-1]
    )
    assert SUMMARY.match(lines[-1])
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["format"] == "burn-p2p-conformance-report-v1"
    assert report["suite_version"] == __version__
    assert report["summary"]["passed"] == 4 and report["summary"]["skipped"] == 1
    assert {c["id"]: c["status"] for c in report["checks"]}["errors.bad_files"] == "SKIP"
    suite = ET.parse(tmp_path / "r.xml").getroot()
    assert suite.get("tests") == "5" and suite.get("failures") == "0"
    assert suite.find("testcase[@name='errors.bad_files']/skipped") is not None


def test_cli_reports_onto_a_stdout_link_and_a_fifo_are_written_into_them(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """Issue 16 item 16: the rename replaced a /dev/stdout-like link (nothing reached
    stdout, exit 0) and a FIFO (its reader waited forever)."""
    from tests.test_coord_packs import FifoReader

    read_end, write_end = os.pipe()
    stdout_like = tmp_path / "stdout"
    stdout_like.symlink_to(f"/proc/self/fd/{write_end}")
    fifo = tmp_path / "junit.fifo"
    reader = FifoReader(fifo)
    try:
        code, _, _ = run_cli(
            capsys, "--factory", STUB, "--select", "errors.unknown_method",
            "--json", str(stdout_like), "--junit-xml", str(fifo),
        )  # fmt: skip
    finally:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            sent = pipe.read()
    assert code == 0
    assert json.loads(sent)["summary"]["passed"] == 1
    assert ET.fromstring(reader.read_all()).get("tests") == "1"
    assert stdout_like.is_symlink() and os.readlink(stdout_like) == f"/proc/self/fd/{write_end}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.fifo", "stdout"]


def test_cli_exit_1_names_expectation_result_and_hook(
    capsys: pytest.CaptureFixture, zygote: str, tmp_path: Path
) -> None:
    worker = " ".join(bw.worker_command("missing_defaults", zygote))
    code, lines, _ = run_cli(
        capsys, "--factory", STUB, "--worker-cmd", worker, "--select", "errors.missing_params",
        "--junit-xml", str(tmp_path / "r.xml"),
    )  # fmt: skip
    assert code == 1
    (line,) = [line for line in lines if LINE.match(line)]
    assert line.startswith("FAIL errors.missing_params expected ")
    assert "; got ok:true" in line and "; fix: the worker's parameter validation" in line
    failure = ET.parse(tmp_path / "r.xml").getroot().find("testcase/failure")
    assert failure is not None and failure.get("message", "").startswith("expected ")


HOSTILE = "\x1b[31mred\x1b[0m \x00nul \udcff\ud800 \ufffe\uffff \x0c\x7f ok\u00e9\U0001f600\n"


def test_junit_xml_is_well_formed_whatever_the_failure_text_holds(tmp_path: Path) -> None:
    """Issue 16 item 15: a dead worker's stderr (ESC, NUL...) made the file unparsable."""
    from conformance.runner import FAIL, SKIP, Outcome, Report

    report = Report(options(STUB))
    report.outcomes = [
        Outcome(CHECKS[0], FAIL, f"worker died: {HOSTILE}", f"stderr:\n{HOSTILE}", 0.1, [HOSTILE]),
        Outcome(CHECKS[1], SKIP, HOSTILE),
    ]
    report.write_junit(tmp_path / "r.xml")
    root = ET.parse(tmp_path / "r.xml").getroot()  # well-formed
    failure = root.find("testcase/failure")
    assert failure is not None
    escaped = (
        "\\x1b[31mred\\x1b[0m \\x00nul \\udcff\\ud800 \\ufffe\\uffff \\x0c\\x7f ok\u00e9\U0001f600"
    )
    assert failure.get("message") == f"worker died: {escaped}\n"
    assert failure.text == f"stderr:\n{escaped}\n"
    prop = root.find("testcase/properties/property")
    assert prop is not None and prop.get("value") == f"{escaped}\n"
    skipped = root.find("testcase[2]/skipped")
    assert skipped is not None and skipped.get("message") == f"{escaped}\n"


def test_cli_an_untrained_run_exits_3_incomplete_unless_allowed(
    capsys: pytest.CaptureFixture, zygote: str, tmp_path: Path
) -> None:
    # train_window raises SystemExit on every generated ref: SKIPs, never exit 0.
    worker = " ".join(bw.worker_command(None, zygote))
    argv = ["--factory", BROKEN, "--config-json", '{"base": "train_exits"}',
            "--worker-cmd", worker, "--select", "semantics.train_window_updates_model",
            "--json", str(tmp_path / "r.json"), "--junit-xml", str(tmp_path / "r.xml")]  # fmt: skip
    code, lines, _ = run_cli(capsys, *argv)
    assert code == 3
    assert lines[-1].startswith("INCOMPLETE: the training checks could not run")
    assert "--batches FILE" in lines[-1] and "--allow-untrained" in lines[-1]
    assert "SystemExit" in lines[-1]
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["outcome"] == "incomplete" and summary["exit_status"] == 3
    suite = ET.parse(tmp_path / "r.xml").getroot()
    assert suite.get("errors") == "1"
    assert suite.find("testcase[@name='certification_complete']/error") is not None
    code, lines, _ = run_cli(capsys, *argv, "--allow-untrained")
    assert code == 0 and SUMMARY.match(lines[-1])
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["outcome"] == "passed"


def test_cli_xfail_flags_and_file_turn_a_failure_into_xfail(
    capsys: pytest.CaptureFixture, zygote: str, tmp_path: Path
) -> None:
    worker = " ".join(bw.worker_command("unknown_method_ok", zygote))
    xfails = tmp_path / "xfails.txt"
    xfails.write_text("# known\nerrors.unknown_method  lenient dispatcher\n")
    for extra in (
        ["--xfail", "errors.unknown_method=lenient dispatcher"],
        ["--xfails-file", str(xfails)],
    ):
        code, lines, _ = run_cli(
            capsys, "--factory", STUB, "--worker-cmd", worker, "--select", "errors.unknown_method",
            *extra,
        )  # fmt: skip
        assert code == 0
        assert any(
            line.startswith("XFAIL errors.unknown_method lenient dispatcher") for line in lines
        )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--factory", "no_colon"], "MODULE:ATTR"),
        (["--factory", "no_such_module_xyz:make"], "no module named 'no_such_module_xyz'"),
        (["--factory", "tests.broken:no_such_factory"], "no_such_factory"),
        (["--factory", STUB, "--config-json", "{bad"], "--config-json"),
        (["--factory", STUB, "--skip", "no.such_check"], "matches no check"),
        (["--factory", STUB, "--batches", "/no/such/batches.json"], "--batches"),
        (["--factory", STUB, "--no-such-flag"], "unrecognized arguments"),
        ([], "--factory"),
    ],
)
def test_cli_usage_errors_exit_2_and_say_what(
    capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, *argv, "--select", "protocol.hello")
    assert code == 2
    assert err.startswith("burn-p2p-conformance: error: ") and message in err


def test_cli_list_help_and_version_exit_0(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["--list"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(CHECKS[0].id + "  ")
    assert cli_main(["--help"]) == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: burn-p2p-conformance --factory MOD:ATTR ")
    assert "docs/" not in help_text  # the wheel ships no docs: point at --list instead
    assert cli_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"burn-p2p-conformance {__version__}"


def test_cli_warn_lines_reports_and_strict(
    capsys: pytest.CaptureFixture, zygote: str, tmp_path: Path
) -> None:
    worker = " ".join(bw.worker_command(None, zygote))
    argv = ["--factory", BROKEN, "--config-json", '{"defect": "ema_noop"}', "--worker-cmd",
            worker, "--select", "semantics.ema_between", "--select", "protocol.hello"]  # fmt: skip
    code, lines, _ = run_cli(
        capsys, *argv, "--json", str(tmp_path / "r.json"), "--junit-xml", str(tmp_path / "r.xml")
    )
    assert code == 0
    assert any(
        line.startswith("WARN semantics.ema_between apply_single_root_ema left") for line in lines
    )
    assert lines[-1].startswith("1 passed, 0 failed, 0 skipped, 0 xfailed, 1 warned")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["warned"] == 1 and report["summary"]["exit_status"] == 0
    (warned,) = [c for c in report["checks"] if c["status"] == WARN]
    assert warned["warnings"] and warned["id"] == "semantics.ema_between"
    case = ET.parse(tmp_path / "r.xml").getroot().find("testcase[@name='semantics.ema_between']")
    assert case is not None and case.find("properties/property[@name='warning']") is not None
    assert "WARN semantics.ema_between" in (case.findtext("system-out") or "")
    code, lines, _ = run_cli(capsys, *argv, "--strict")
    assert code == 1 and any(
        line.startswith("FAIL semantics.ema_between warning") for line in lines
    )


def test_cli_a_worker_that_exits_is_named_once_per_line(
    capsys: pytest.CaptureFixture, zygote: str
) -> None:
    worker = " ".join(bw.worker_command(None, zygote))
    code, lines, _ = run_cli(
        capsys, "--factory", BROKEN, "--config-json", '{"defect": "init_exits"}',
        "--worker-cmd", worker, "--select", "protocol.init_model",
    )  # fmt: skip
    assert code == 1
    (line,) = [line for line in lines if line.startswith("FAIL ")]
    assert line.count("exited") == 1, line


def test_python_dash_m_conformance_runs_as_a_program(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "conformance", "--factory", STUB, "--select", "protocol.hello"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "PASS protocol.hello protocol 2, workload 'conformance-stub'" in result.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "conformance", "--factory", "nope_xyz:make"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 2 and "nope_xyz" in missing.stderr


# ---------------------------------------------------------------------------
# pytest plugin and helper


def _plugin_args() -> list[str]:
    from importlib.metadata import entry_points

    installed = any(ep.name == "burn_p2p_conformance" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "conformance.pytest_plugin"]


def test_pytest_plugin_runs_each_check_as_a_test_with_a_stable_id(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, zygote: str
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    worker = " ".join(bw.worker_command("unknown_method_ok", zygote))
    (pytester.path / "xfails.txt").write_text("errors.missing_params  pretend it fails\n")
    result = pytester.runpytest(
        *_plugin_args(), "--workload-factory", STUB, "--workload-worker-cmd", worker,
        "--workload-xfails-file", "xfails.txt", "-k", "errors and not bad_files", "-v",
        "-p", "no:cacheprovider",
    )  # fmt: skip
    result.assert_outcomes(passed=2, failed=1, xpassed=1, deselected=len(CHECKS) - 4)
    result.stdout.fnmatch_lines(
        [
            f"*collected {len(CHECKS)} items / {len(CHECKS) - 4} deselected / 4 selected",
            "*conformance::errors.unknown_method FAILED*",
            "*conformance::errors.unknown_model_ids PASSED*",
            "*FAIL errors.unknown_method expected *; got ok:true*",
        ]
    )


@pytest.mark.parametrize(
    ("body", "words"),
    [("return None", "returned None"), ("raise RuntimeError('no GPU here')", "no GPU here")],
)
def test_a_bad_factory_is_one_usage_error_under_the_cli_and_pytest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, body: str, words: str
) -> None:
    pytester.makepyfile(badfactory=f"def make(config):\n    {body}\n")
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{pytester.path}")
    cli = subprocess.run(
        [sys.executable, "-m", "conformance", "--factory", "badfactory:make"],
        cwd=pytester.path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 2 and words in cli.stderr and cli.stdout.count("FAIL") == 0
    result = pytester.runpytest(
        *_plugin_args(), "--workload-factory", "badfactory:make", "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stdout.str() + result.stderr.str()
    assert words in text and "FAIL " not in text
    assert len(text.splitlines()) < 60


def test_pytest_hints_name_workload_options_and_an_untrained_run_exits_3(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, zygote: str
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    worker = " ".join(bw.worker_command(None, zygote))
    args = [*_plugin_args(), "--workload-factory", BROKEN,
            "--workload-config", '{"base": "train_exits"}', "--workload-worker-cmd", worker,
            "-k", "train_window_updates_model", "-rs", "-p", "no:cacheprovider"]  # fmt: skip
    result = pytester.runpytest(*args)
    assert result.ret == 3
    text = result.stdout.str()
    assert "--workload-batches FILE" in text and "INCOMPLETE" in text
    assert " --batches " not in text
    assert pytester.runpytest(*args, "--workload-allow-untrained").ret == 0


def test_a_missing_extra_is_named_with_the_install_line(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "hypothesis.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'hypothesis'\", name='hypothesis')\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{blocked}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, "-m", "conformance", "--factory", STUB, "--select", "packs.*"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "[conformance] extra" in done.stderr and "hypothesis" in done.stderr
    assert "pip install 'burn-p2p-python-worker[conformance]'" in done.stderr
    assert "crashed" not in done.stdout


def test_pytest_plugin_reads_ini_options_and_ids_do_not_depend_on_the_cwd(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, zygote: str
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    worker = " ".join(bw.worker_command(None, zygote))
    pytester.makepyprojecttoml(
        f"""
        [tool.pytest.ini_options]
        workload_factory = "{BROKEN}"
        workload_config = '{{"defect": "ema_noop"}}'
        workload_worker_cmd = "{worker}"
        workload_xfails_file = "ci/xfails.txt"
        """
    )
    (pytester.path / "ci").mkdir()
    (pytester.path / "ci" / "xfails.txt").write_text("# none\n")
    sub = pytester.mkdir("sub")
    monkeypatch.chdir(sub)  # relative ini paths resolve against the ini file, not the cwd
    result = pytester.runpytest(
        *_plugin_args(), "-k", "ema_between or hello", "-v", "-p", "no:cacheprovider",
        "--rootdir", str(pytester.path),
    )  # fmt: skip
    result.assert_outcomes(passed=2, deselected=len(CHECKS) - 2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*conformance::protocol.hello PASSED*",
            "*conformance::semantics.ema_between PASSED*",
            "*ConformanceWarning: WARN semantics.ema_between apply_single_root_ema left*",
        ]
    )
    strict = pytester.runpytest(
        *_plugin_args(), "-k", "ema_between", "--workload-strict", "-p", "no:cacheprovider",
        "--rootdir", str(pytester.path),
    )  # fmt: skip
    strict.assert_outcomes(failed=1, deselected=len(CHECKS) - 1)


def test_pytest_plugin_is_inert_without_workload_factory(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    assert True\n")
    result = pytester.runpytest(*_plugin_args(), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "conformance::" not in result.stdout.str()


def test_parametrize_with_checks_marks_expected_failures(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, zygote: str
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    worker = bw.worker_command("unknown_method_ok", zygote)
    pytester.makepyfile(
        f"""
        from conformance.helpers import parametrize_with_checks

        @parametrize_with_checks(
            "{STUB}",
            select=["errors.unknown_method", "errors.unknown_model_ids"],
            worker_cmd={worker!r},
            expected_failures={{"errors.unknown_method": "lenient dispatcher"}},
        )
        def test_conformance(check):
            check()
        """
    )
    try:
        result = pytester.runpytest("-v", "-p", "no:cacheprovider")
    finally:
        close_all()
    result.assert_outcomes(passed=1, xfailed=1)
    result.stdout.fnmatch_lines(["*test_conformance?errors.unknown_model_ids? PASSED*"])


def test_helper_refuses_unknown_ids_and_binds_checks() -> None:
    with pytest.raises(UsageError, match="matches no check"):
        checks_for(STUB, select=["errors.typo"])
    bound = checks_for(STUB, select=["framing.*"])
    assert [repr(b) for b in bound] == [c.id for c in CHECKS if c.group == "framing"]


def test_helper_and_options_take_a_batches_file_path(tmp_path: Path) -> None:
    refs = [{"kind": "cached_microshard_group", "shard_paths": ["a.bin"], "microshard_ids": ["a"],
             "ordinals": [0], "bytes_len": 4}]  # fmt: skip
    path = tmp_path / "batches.json"
    path.write_text(json.dumps({"batches": refs}))
    (bound,) = checks_for(STUB, select=["protocol.hello"], batches=str(path))
    assert bound.options.batches == refs
    assert Options(STUB, batches=path).batches == refs
    with pytest.raises(UsageError, match="cannot read"):
        Options(STUB, batches=tmp_path / "missing.json")


# ---------------------------------------------------------------------------
# The suite's own sans-IO pieces (frames and decoding are fakecoord's: tests/test_wire.py)


@pytest.mark.parametrize(
    "body", [b"NaN", b'{"x": Infinity}', b"\xff", b'"\\ud800"', b"1e400", b"{", b""]
)
def test_wire_decode_refuses_what_the_rust_side_refuses(body: bytes) -> None:
    with pytest.raises(DecodeError):
        wire.decode_value(body)


CAPABILITY = {"preferred_backends": ["cpu"], "work_units_per_second": 1.0}


@pytest.mark.parametrize(
    ("method", "result", "path"),
    [
        ("evaluate", {"metrics": {"loss": float("nan")}}, "result.metrics.loss"),
        ("evaluate", {"metrics": {"loss": [1.0]}}, "result.metrics.loss"),
        ("evaluate", {"metrics": {"loss": None}}, "result.metrics.loss"),
        ("evaluate", {"metrics": {"n": 2**63}}, "result.metrics.n"),
        ("capability_probe",
         {"runtime_device": "cpu", "capability": {**CAPABILITY, "target_window_seconds": 2.5}},
         "result.capability.target_window_seconds"),
        ("capability_probe",
         {"runtime_device": "cpu", "capability": {**CAPABILITY, "target_window_seconds": True}},
         "result.capability.target_window_seconds"),
        ("apply_patch", "applied", "result"),
        ("apply_patch", {"Rejected": 5}, "result.Rejected"),
        ("release_model", None, "result"),
    ],
)  # fmt: skip
def test_result_decoding_names_the_offending_path(method: str, result: Any, path: str) -> None:
    with pytest.raises(DecodeError) as info:
        spec.decode_result(method, result)
    assert info.value.field == path


def test_result_decoding_accepts_valid_values_and_plans_list_each_key_once() -> None:
    assert spec.decode_result("evaluate", {"metrics": {"a": 1, "b": 0.5, "c": True, "d": "x"}})
    assert spec.decode_result("apply_patch", {"Rejected": "no"}) == {"Rejected": "no"}
    hello = {"protocol_version": 1, "workload_name": "w", "capabilities": []}
    assert spec.decode_result("hello", hello) == hello
    plan = {"uses_custom_parameter_pack_hooks": False, "layout_hash": "h", "included_keys": ["a"],
            "excluded_float_keys": ["a"], "ignored_non_float_keys": [], "parameter_count": 1}  # fmt: skip
    assert spec.decode_result("parameter_pack_plan", plan) == {**plan, "generic_plan_error": None}
    assert repeated_plan_key(plan) == ("excluded_float_keys", "a", "included_keys")
    assert repeated_plan_key({**plan, "excluded_float_keys": ["b"]}) is None


def test_independent_layout_hash_matches_the_workers_on_several_states() -> None:
    import torch
    from torch import nn

    from conformance.layout import local_layout
    from worker.layout import compute_layout
    from worker.protocol import StateFilter

    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).to(torch.float16)
    states = [
        nn.Linear(2, 3),
        {"model": bn, "optimizer": None},
        {"modules": {"b": nn.Linear(1, 2), "a": nn.Linear(2, 1).to(torch.bfloat16)}},
    ]
    for state in states:
        for include, exclude in (((), ()), (("*weight",), ()), ((), ("a.*", "1.*"))):
            mine = local_layout(state, include, exclude)
            theirs = compute_layout(state, StateFilter(include, exclude))
            assert (mine.hash, mine.names) == (theirs.hash, theirs.included_keys)
            assert mine.ignored == theirs.ignored_non_float_keys


def test_the_suites_filter_compiles_40000_globs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16 item 19 on the coordinator side: fnmatch recompiled every glob for every name."""
    import fnmatch

    from conformance.layout import selects

    calls: list[str] = []
    translate = fnmatch.translate
    monkeypatch.setattr(fnmatch, "translate", lambda g: calls.append(g) or translate(g))
    include = [f"layers.{i}.*" for i in range(40_000)]
    exclude = [f"*.bias-{i}?" for i in range(40_000)] + ["*.bias"]
    names = [f"layers.{i}.{kind}" for i in (0, 7, 39_999, 40_000) for kind in ("weight", "bias")]
    kept = [n for n in names if selects(n, include, exclude)]
    assert kept == ["layers.0.weight", "layers.7.weight", "layers.39999.weight"]
    assert len(calls) <= len(include) + len(exclude)
    assert selects("x", [], []) and not selects("x", [], ["x"]) and not selects("x", ["y"], [])


def test_exact_values_are_exact_in_their_dtype() -> None:
    import numpy as np
    import torch

    from conformance.values import exact_values

    spans = [(7, "torch.float16"), (7, "torch.bfloat16"), (9, "torch.float32")]
    values = torch.from_numpy(exact_values(spans, 23, seed=5))
    half, brain = values[:7], values[7:14]
    assert torch.equal(half.to(torch.float16).to(torch.float32), half)
    assert torch.equal(brain.to(torch.bfloat16).to(torch.float32), brain)
    common = torch.from_numpy(exact_values(None, 50, seed=6))
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(common.to(dtype).to(torch.float32), common)
    assert np.signbit(exact_values(None, 1, seed=0)[0])  # -0.0 comes first


def test_check_failed_reason_is_one_line() -> None:
    exc = CheckFailed("a thing\nwith lines", "another\nthing", "hook()", details="long\ntext")
    assert exc.reason == "expected a thing; got another; fix: hook()"
    assert exc.details == "long\ntext"
    assert isinstance(exc, AssertionError)


# ---------------------------------------------------------------------------
# The guide stays true


def test_guide_shows_the_example_workload_verbatim_and_every_check() -> None:
    guide = (ROOT / "docs" / "workload-authors.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", guide, flags=re.S)
    example = (ROOT / "conformance" / "example_workload.py").read_text(encoding="utf-8")
    assert example in blocks
    documented = set(re.findall(r"^\| `([a-z]+\.[a-z_]+)` \|", guide, flags=re.M))
    assert documented == set(BY_ID)
    assert f"{len(CHECKS)} named checks" in guide


# ---------------------------------------------------------------------------
# Our own demo workload conforms where the network is strict


def test_the_demo_workload_weighs_merges_and_takes_patches_as_the_network_expects(
    tmp_path: Path,
) -> None:
    from fakecoord.sim.shards import write_demo_dataset

    data = tmp_path / "data"
    dataset = write_demo_dataset(data, seed=0, train_shards=1)
    batches = [dataset.ref([0, 1]), dataset.ref([2, 3])]
    report = run_checks(
        options("fakecoord.demo:make_workload", {"data_dir": str(data)}, batches=batches),
        select=[
            "semantics.merge_policy_weights",
            "semantics.results_keep_layout",
            "semantics.train_window_updates_model",
            "protocol.apply_patch_outcome",
            "protocol.evaluate_metrics",
            "flows.merge_edge_cases",
        ],
        strict=True,
    )
    assert statuses(report) == {
        "semantics.merge_policy_weights": PASS,
        "semantics.results_keep_layout": PASS,
        "semantics.train_window_updates_model": PASS,
        "protocol.apply_patch_outcome": PASS,
        "protocol.evaluate_metrics": PASS,  # any custom split is served
        "flows.merge_edge_cases": PASS,  # weights summing to 0 keep the base
    }, [(o.id, o.reason) for o in report.outcomes]
