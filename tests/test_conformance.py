"""Tests of the conformance suite itself.

The proof that it works: the example workload passes every check through a
real ``python -m worker``; every check fails on a subject built to violate
it (tests/broken_workloads.py: one defect each) while the same check passes
on the same subject without the defect; a workload that cannot read the
generated batches gets SKIPs with a reason, not PASSes.  Then the CLI (exit
codes, line format, skip/xfail, reports), the pytest plugin and the
``parametrize_with_checks`` helper, and the suite's sans-IO pieces.

Broken subjects run through a fork server (see tests/broken_workloads.py)
so that dozens of torch worker processes do not each import torch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conformance.__main__ import main as cli_main
from conformance.checks import BY_ID, CHECKS
from conformance.errors import CheckFailed, UsageError
from conformance.helpers import checks_for, close_all
from conformance.options import Options, generated_batches
from conformance.runner import FAIL, PASS, SKIP, XFAIL, parse_xfails, run_checks
from conformance.session import repeated_plan_key
from fakecoord import spec, wire
from fakecoord.errors import DecodeError
from tests import broken_workloads as bw

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "conformance.example_workload:make_workload"
BROKEN = "tests.broken_workloads:make_broken"
STUB = "tests.broken_workloads:make_stub"
LINE = re.compile(r"^(PASS|FAIL|SKIP|XFAIL) ([a-z_]+\.[a-z_]+) \S.*$")
# Worker-level checks that the torch-free stub must pass with an intact worker.
STUB_CHECKS = [
    *(c.id for c in CHECKS if c.group == "framing"),
    "errors.unknown_method",
    "errors.unknown_model_ids",
    "errors.missing_params",
    "errors.ill_typed_params",
    "semantics.release_model",
]


def options(factory: str, config: dict | None = None, **kwargs: Any) -> Options:
    kwargs.setdefault("exit_timeout", 5.0)
    return Options(factory, config or {}, pythonpath=(str(ROOT),), cwd=str(ROOT), **kwargs)


def statuses(report: Any) -> dict[str, str]:
    return {o.id: o.status for o in report.outcomes}


def not_passed(report: Any) -> list[str]:
    return [o.line() for o in report.outcomes if o.status != PASS]


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The fork server's socket path (the server is stopped at teardown)."""
    path = str(tmp_path_factory.mktemp("zygote") / "zygote.sock")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.broken_workloads", "--zygote-serve", path],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not os.path.exists(path):
        assert process.poll() is None, "the fork server exited while starting"
        assert time.monotonic() < deadline, "the fork server did not start"
        time.sleep(0.05)
    yield path
    process.terminate()
    process.wait(30)


# ---------------------------------------------------------------------------
# A correct workload passes every check


def test_example_workload_passes_every_check_through_a_real_worker() -> None:
    report = run_checks(options(EXAMPLE))
    assert [o.id for o in report.outcomes] == [c.id for c in CHECKS]
    assert not_passed(report) == []
    assert report.exit_code == 0


def test_registry_ids_are_stable_dotted_and_described() -> None:
    assert len(BY_ID) == len(CHECKS) >= 30
    for check in CHECKS:
        assert re.fullmatch(r"[a-z]+\.[a-z_]+", check.id), check.id
        assert check.description and check.hooks


# ---------------------------------------------------------------------------
# Every check is proven able to fail: one subject per defect, caught by the
# check meant for it; the same check passes on the subject without the defect.


def _cases() -> dict[str, tuple[str, dict, str | None, str]]:
    """name -> (factory, config, worker defect or None, check id)."""
    out = {}
    for name, (_, _, check) in bw.DEFECTS.items():
        out[name] = (BROKEN, {"defect": name}, None, check)
    for name, (_, factory, config, check) in bw.WORKER_DEFECTS.items():
        out[name] = (bw.FACTORIES[factory], config, name, check)
    return out


CASES = _cases()


def test_every_check_has_a_defect_that_must_trip_it() -> None:
    assert {check for *_, check in CASES.values()} == set(BY_ID)


def _run_case(zygote: str, name: str) -> Any:
    factory, config, defect, check = CASES[name]
    # A short exit timeout: two subjects (a lingering thread, a worker waiting
    # for 2**64 bytes) are only ever stopped by it.
    opts = options(factory, config, worker_cmd=bw.worker_command(defect, zygote), exit_timeout=3.0)
    return run_checks(opts, select=[check]).outcomes[0]


@pytest.fixture(scope="module")
def broken_outcomes(zygote: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Every selected broken subject, run three at a time (workers are processes)."""
    wanted = sorted(
        {
            item.callspec.params["name"]
            for item in request.session.items
            if getattr(item, "originalname", None) == "test_defect_is_caught_by_its_check"
        }
    )
    with ThreadPoolExecutor(3) as pool:
        return dict(zip(wanted, pool.map(lambda n: _run_case(zygote, n), wanted), strict=True))


# Which defect covers what (each docstring in tests/broken_workloads.py says how):
# NaN metric and list metric -> protocol.train_window_metrics; float window ->
# protocol.capability_probe; artifact load ignoring the file -> artifacts.roundtrip_restores;
# merge returning the base -> semantics.merge_weighted_mean; merge mutating the
# base -> semantics.merge_preserves_base; EMA extrapolating -> semantics.ema_between;
# Replace keeping local -> semantics.reconcile_replace; inner loop miscounting /
# doing nothing -> diloco.*; unstable layout -> packs.layout_stable; bad
# PatchOutcome -> protocol.apply_patch_outcome; evaluate raising SystemExit ->
# protocol.evaluate_metrics; and one worker defect per framing/validation check.
@pytest.mark.parametrize("name", sorted(CASES))
def test_defect_is_caught_by_its_check(broken_outcomes: dict[str, Any], name: str) -> None:
    outcome = broken_outcomes[name]
    assert outcome.id == CASES[name][3]
    assert outcome.status == FAIL, outcome.line()
    assert outcome.reason.startswith("expected ") and "; got " in outcome.reason
    assert "; fix: " in outcome.reason


@pytest.mark.parametrize(
    ("factory", "config", "defects"),
    [
        (BROKEN, {"base": "example"}, [n for n, d in bw.DEFECTS.items() if d[1] == "example"]),
        (
            BROKEN,
            {"base": "custom_packs"},
            [n for n, d in bw.DEFECTS.items() if d[1] == "custom_packs"],
        ),
        (BROKEN, {"base": "mixed_precision"}, ["half_rounding"]),
        (STUB, {}, [n for n, d in bw.WORKER_DEFECTS.items() if d[1] == "stub"]),
        (
            BROKEN,
            {"base": "example"},
            [n for n, d in bw.WORKER_DEFECTS.items() if d[1] == "example"],
        ),
    ],
    ids=["example", "custom_packs", "mixed_precision", "stub", "example-worker-checks"],
)
def test_the_same_checks_pass_without_the_defect(
    zygote: str, factory: str, config: dict, defects: list[str]
) -> None:
    select = sorted({CASES[name][3] for name in defects})
    report = run_checks(
        options(factory, config, worker_cmd=bw.worker_command(None, zygote)), select=select
    )
    assert not_passed(report) == []
    assert len(report.outcomes) == len(select)


def test_custom_pack_hooks_pass_every_pack_check(zygote: str) -> None:
    report = run_checks(
        options(BROKEN, {"base": "custom_packs"}, worker_cmd=bw.worker_command(None, zygote)),
        select=["packs.*", "artifacts.*", "errors.bad_files"],
    )
    assert not_passed(report) == []


def test_stub_passes_the_worker_level_checks_through_a_real_worker() -> None:
    report = run_checks(options(STUB), select=STUB_CHECKS)
    assert not_passed(report) == []


# ---------------------------------------------------------------------------
# Training data: generated micro_epoch refs, or SKIP with a reason


DATA_CHECKS = [
    "protocol.train_window_metrics",
    "diloco.inner_loop_exact_steps",
    "diloco.inner_loop_updates_pack",
]


def test_a_workload_that_cannot_read_generated_refs_gets_skips_with_a_reason(zygote: str) -> None:
    opts = options(BROKEN, {"base": "shards_only"}, worker_cmd=bw.worker_command(None, zygote))
    report = run_checks(opts, select=[*DATA_CHECKS, "packs.roundtrip_bit_identical"])
    for check_id in DATA_CHECKS:
        outcome = report.by_id(check_id)
        assert outcome.status == SKIP, outcome.line()
        assert "micro_epoch" in outcome.reason and "--batches" in outcome.reason
        assert "only cached_microshard_group" in outcome.reason  # the workload's own words
    # A check that merely prefers trained data still runs, on a fresh model.
    roundtrip = report.by_id("packs.roundtrip_bit_identical")
    assert roundtrip.status == PASS and "fresh model" in roundtrip.reason


def test_batches_the_workload_can_read_make_those_checks_run(zygote: str) -> None:
    refs = [
        {"kind": "cached_microshard_group", "shard_paths": [], "microshard_ids": [f"ms-{i}"],
         "ordinals": [i], "bytes_len": 0}
        for i in range(3)
    ]  # fmt: skip
    opts = options(
        BROKEN, {"base": "shards_only"}, worker_cmd=bw.worker_command(None, zygote), batches=refs
    )
    report = run_checks(opts, select=DATA_CHECKS)
    assert not_passed(report) == []
    assert "--batches" in report.by_id("protocol.train_window_metrics").reason


def test_generated_refs_are_micro_epoch_refs_with_a_payload() -> None:
    refs = generated_batches(3)
    assert [r["kind"] for r in refs] == ["micro_epoch"] * 3
    assert len({json.dumps(r["payload"]) for r in refs}) == 3
    for ref in refs:
        assert ref["pipeline_kind"] == "generated-dataset"
        assert set(ref) >= {"lease_id", "microshard_ids", "ordinals", "bytes_len", "payload"}


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
        run_checks(options("tests.broken_workloads:no_such_factory"), select=["protocol.hello"])


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
    assert re.fullmatch(r"4 passed, 0 failed, 1 skipped, 0 xfailed \(5 checks in .*\)", lines[-1])
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["passed"] == 4 and report["summary"]["skipped"] == 1
    assert {c["id"]: c["status"] for c in report["checks"]}["errors.bad_files"] == "SKIP"
    suite = ET.parse(tmp_path / "r.xml").getroot()
    assert suite.get("tests") == "5" and suite.get("failures") == "0"
    assert suite.find("testcase[@name='errors.bad_files']/skipped") is not None


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
        (["--factory", "tests.broken_workloads:no_such_factory"], "no_such_factory"),
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


def test_cli_list_and_help_exit_0(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["--list"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(CHECKS[0].id + "  ")
    assert cli_main(["--help"]) == 0


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
            "*conformance::errors.unknown_method FAILED*",
            "*conformance::errors.unknown_model_ids PASSED*",
            "*FAIL errors.unknown_method expected *; got ok:true*",
        ]
    )


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
