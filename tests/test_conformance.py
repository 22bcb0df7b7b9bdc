"""Tests of the conformance suite itself: it passes what works and catches what does not.

The proof: the example workload passes every check through a real ``python
-m worker``; every check FAILs on a subject built to violate it, and every
WARN is raised on a subject built to trigger it (tests/broken/: one defect
each), while the same checks PASS on the same subject without the defect; a
workload that cannot train on the generated batches gets SKIPs with a
reason, never PASS "trained" and never FAIL; workload code never runs in the
suite's own process, and hangs, exits and threads in hooks become FAILs of
the check that met them.  The CLI, reports, the pytest plugin and the
helper are in tests/test_conformance_cli.py.

Broken subjects (and the layout probe) run through a fork server
(tests/broken/zygote.py) so that dozens of processes do not each import torch;
the family runs three subjects at a time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import tests.broken as bw
from conformance.checks import BY_ID, CHECKS
from conformance.options import Options, generated_batches
from conformance.runner import FAIL, PASS, SKIP, WARN, run_checks
from tests.broken.worker_defects import WORKER_DEFECTS

pytest_plugins = ["tests.broken.fixtures"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "conformance.example_workload:make_workload"
BROKEN = "tests.broken:make_broken"
STUB = "tests.broken:make_stub"
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


def forked(
    factory: str, config: dict | None, zygote: str, defect: str | None = None, **kw: Any
) -> Options:
    """Options whose worker and layout probe are forked by the fork server (``kw`` may
    override either, e.g. ``worker_cmd=None`` for real worker processes)."""
    commands = {
        "worker_cmd": bw.worker_command(defect, zygote),
        "probe_cmd": bw.probe_command(zygote),
    }
    return options(factory, config, **{**commands, **kw})


def not_passed(report: Any) -> list[str]:
    return [o.line() for o in report.outcomes if o.status != PASS]


# ---------------------------------------------------------------------------
# A correct workload passes every check


def test_example_workload_passes_every_check_through_a_real_worker() -> None:
    report = run_checks(options(EXAMPLE))
    assert [o.id for o in report.outcomes] == [c.id for c in CHECKS]
    assert not_passed(report) == []
    assert report.exit_code == 0


def test_registry_ids_are_stable_dotted_and_described() -> None:
    assert len(BY_ID) == len(CHECKS) >= 42
    for check in CHECKS:
        assert re.fullmatch(r"[a-z]+\.[a-z_]+", check.id), check.id
        assert check.description and check.hooks
    assert CHECKS[-1].id == "protocol.shutdown_after_hooks"


# ---------------------------------------------------------------------------
# Every check is proven able to fail, every WARN able to warn: one subject per
# defect, caught by the check meant for it; the same check passes without it.


def _cases() -> dict[str, tuple[str, dict, str | None, str, str, dict]]:
    """name -> (factory, config, worker defect or None, check id, expected status, options)."""
    out = {}
    for name, (_, _, check, *extra) in bw.DEFECTS.items():
        out[name] = (BROKEN, {"defect": name}, None, check, FAIL, extra[0] if extra else {})
    for name, (_, _, check) in bw.WARNINGS.items():
        out[name] = (BROKEN, {"defect": name}, None, check, WARN, {})
    for name, (_, factory, config, check) in WORKER_DEFECTS.items():
        out[name] = (bw.FACTORIES[factory], config, name, check, FAIL, {})
    return out


CASES = _cases()


def test_every_check_has_a_defect_that_must_trip_it() -> None:
    assert {case[3] for case in CASES.values() if case[4] == FAIL} == set(BY_ID)


def _run_case(zygote: str, name: str) -> Any:
    factory, config, defect, check, _, extra = CASES[name]
    # A short exit timeout: two subjects (a lingering thread, a worker waiting
    # for 2**64 bytes) are only ever stopped by it.
    opts = forked(factory, config, zygote, defect, **{"exit_timeout": 3.0, **extra})
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


@pytest.mark.parametrize("name", sorted(CASES))
def test_defect_is_caught_by_its_check(broken_outcomes: dict[str, Any], name: str) -> None:
    outcome = broken_outcomes[name]
    assert outcome.id == CASES[name][3]
    assert outcome.status == CASES[name][4], outcome.line()
    if outcome.status == FAIL:
        assert outcome.reason.startswith("expected ") and "; got " in outcome.reason
        assert "; fix: " in outcome.reason
    else:
        assert outcome.warnings and outcome.reason


def test_a_merge_that_changes_the_parameter_count_fails_with_that_reason(
    broken_outcomes: dict[str, Any],
) -> None:
    outcome = broken_outcomes["merge_widens"]
    assert outcome.status == FAIL and "values instead of 49" in outcome.reason, outcome.line()
    assert "crashed" not in outcome.reason


# ---------------------------------------------------------------------------
# Legal but unusual workloads pass every check with exit 0 (no false alarms)


CONTROLS = "tests.broken:make_control"


@pytest.mark.parametrize(
    "control",
    [
        "shared_weights", "multi_module", "half_parameters", "batchnorm_buffers",
        "extra_state", "required_hooks_only", "opaque_state", "proper_inner_state",
    ],
)  # fmt: skip
def test_legal_unusual_workloads_pass_every_check(zygote: str, control: str) -> None:
    report = run_checks(forked(CONTROLS, {"control": control}, zygote))
    assert [o.line() for o in report.outcomes if o.status not in (PASS, SKIP)] == []
    assert report.exit_code == 0


def test_tied_weights_are_imported_tied_and_keep_tight_merge_tolerances(zygote: str) -> None:
    from conformance.session import Session

    with Session(forked(CONTROLS, {"control": "shared_weights"}, zygote)) as s:
        assert s.local_layout().shared == [["0.bias", "2.bias"], ["0.weight", "2.weight"]]
        assert s.low_precision() is False  # crafted packs respect the sharing


def test_the_network_device_is_sent_and_an_override_warns(zygote: str) -> None:
    report = run_checks(forked(EXAMPLE, None, zygote), select=["protocol.capability_probe"])
    assert not_passed(report) == []
    opts = forked(EXAMPLE, None, zygote, device="cpu")
    (outcome,) = run_checks(opts, select=["protocol.capability_probe"]).outcomes
    assert outcome.status == WARN and "'python-torch-cpu'" in outcome.reason


def _controls() -> list[tuple[str, dict, list[str]]]:
    by_base: dict[str, list[str]] = {}
    for registry in (bw.DEFECTS, bw.WARNINGS):
        for name, (_, base, *_) in registry.items():
            by_base.setdefault(base, []).append(name)
    return [
        (BROKEN, {"base": "example"}, by_base["example"]),
        (BROKEN, {"base": "custom_packs"}, by_base["custom_packs"]),
        (BROKEN, {"base": "mixed_precision"}, ["half_rounding"]),
        (STUB, {}, [n for n, d in WORKER_DEFECTS.items() if d[1] == "stub"]),
        (BROKEN, {"base": "example"}, [n for n, d in WORKER_DEFECTS.items() if d[1] == "example"]),
    ]


@pytest.mark.parametrize(
    ("factory", "config", "defects"),
    _controls(),
    ids=["example", "custom_packs", "mixed_precision", "stub", "example-worker-checks"],
)
def test_the_same_checks_pass_without_the_defect(
    zygote: str, factory: str, config: dict, defects: list[str]
) -> None:
    select = sorted({CASES[name][3] for name in defects})
    report = run_checks(forked(factory, config, zygote), select=select)
    assert not_passed(report) == []
    assert len(report.outcomes) == len(select)


def test_custom_pack_hooks_pass_every_pack_check(zygote: str) -> None:
    report = run_checks(
        forked(BROKEN, {"base": "custom_packs"}, zygote),
        select=["packs.*", "artifacts.*", "errors.bad_files"],
    )
    assert not_passed(report) == []


def test_stub_passes_the_worker_level_checks_through_a_real_worker() -> None:
    report = run_checks(options(STUB), select=STUB_CHECKS)
    assert not_passed(report) == []


def test_strict_turns_a_warning_into_a_failure(zygote: str) -> None:
    opts = forked(BROKEN, {"defect": "ema_noop"}, zygote)
    report = run_checks(opts, select=["semantics.ema_between"], strict=True)
    (outcome,) = report.outcomes
    assert outcome.status == FAIL and "--strict" in outcome.reason and outcome.warnings
    assert report.exit_code == 1 and report.to_json()["strict"] is True


# ---------------------------------------------------------------------------
# Training data: generated micro_epoch refs, or SKIP with a reason (never PASS
# "trained", never FAIL)


TRAINING_CHECKS = [
    "semantics.train_window_updates_model",
    "diloco.inner_loop_exact_steps",
    "diloco.inner_loop_updates_pack",
]


def test_a_workload_that_cannot_read_generated_refs_gets_skips_with_a_reason(zygote: str) -> None:
    opts = forked(BROKEN, {"base": "shards_only"}, zygote)
    select = ["protocol.train_window_metrics", *TRAINING_CHECKS, "packs.roundtrip_bit_identical"]
    report = run_checks(opts, select=select)
    for check_id in ["protocol.train_window_metrics", *TRAINING_CHECKS]:
        outcome = report.by_id(check_id)
        assert outcome.status == SKIP, outcome.line()
        assert "micro_epoch" in outcome.reason and "--batches" in outcome.reason
        assert "only cached_microshard_group" in outcome.reason  # the workload's own words
    # A check that merely prefers trained data still runs, on a fresh model.
    roundtrip = report.by_id("packs.roundtrip_bit_identical")
    assert roundtrip.status == PASS and "fresh model" in roundtrip.reason


def test_zero_steps_on_generated_refs_is_a_skip_not_a_pass_or_a_false_alarm(zygote: str) -> None:
    # Like the upstream MNIST example: 0 steps on refs it cannot read, and an
    # inner loop that raises "did not produce any optimizer steps".
    opts = forked(BROKEN, {"base": "zero_steps"}, zygote)
    report = run_checks(opts, select=[*TRAINING_CHECKS, "packs.roundtrip_bit_identical"])
    for check_id in TRAINING_CHECKS:
        outcome = report.by_id(check_id)
        assert outcome.status == SKIP, outcome.line()
        assert "0 training steps" in outcome.reason and "--batches" in outcome.reason
    assert "fresh model" in report.by_id("packs.roundtrip_bit_identical").reason


SHARD_REFS = [
    {"kind": "cached_microshard_group", "shard_paths": [], "microshard_ids": [f"ms-{i}"],
     "ordinals": [i], "bytes_len": 0}
    for i in range(3)
]  # fmt: skip


@pytest.mark.parametrize("base", ["shards_only", "zero_steps"])
def test_batches_the_workload_can_read_make_those_checks_run(zygote: str, base: str) -> None:
    opts = forked(BROKEN, {"base": base}, zygote, batches=SHARD_REFS)
    report = run_checks(opts, select=["protocol.train_window_metrics", *TRAINING_CHECKS])
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
# Isolation: no workload code in the suite's process; hooks that hang, exit or
# leave threads become FAILs of the check that met them, never a hang or a
# false pass


def test_no_workload_code_runs_in_the_suite_process(zygote: str, tmp_path: Path) -> None:
    marker = tmp_path / "built-by.txt"
    opts = forked(BROKEN, {"base": "marker", "marker": str(marker)}, zygote)
    report = run_checks(opts, select=["protocol.init_model", "packs.layout_hash_independent"])
    assert not_passed(report) == []
    pids = {int(line) for line in marker.read_text().split()}
    assert len(pids) >= 2 and os.getpid() not in pids  # the worker and the probe, never us


def test_a_hanging_init_model_costs_one_timeout_and_fails_every_check_that_needs_it(
    zygote: str,
) -> None:
    opts = forked(BROKEN, {"defect": "init_sleeps"}, zygote, **bw.HANG_TIMEOUT)
    select = ["protocol.init_model", "packs.plan_shape", "semantics.merge_identical_copies",
              "packs.layout_hash_independent"]  # fmt: skip
    report = run_checks(opts, select=select)
    first = report.by_id("protocol.init_model")
    assert first.status == FAIL and "within 5 s" in first.reason
    for check_id in select[1:3]:
        outcome = report.by_id(check_id)
        assert outcome.status == FAIL and "not called again" in outcome.reason, outcome.line()
    assert report.by_id("packs.layout_hash_independent").status == FAIL


def test_the_layout_probe_is_bounded_and_says_where_the_workload_stopped(
    zygote: str, tmp_path: Path
) -> None:
    from conformance.probe import Probe

    for defect, words in (("init_sleeps", "did not return within 3 s"),
                          ("init_exits", "exited with status 0 during init_model (call 1)")):  # fmt: skip
        probe = Probe(
            factory=BROKEN, config={"defect": defect}, device="cpu", calls=2,
            root=tmp_path / defect, timeout=3.0, command=bw.probe_command(zygote),
            pythonpath=[str(ROOT)], cwd=str(ROOT),
        )  # fmt: skip
        result = probe.result()
        assert result.layouts == [] and result.error and words in result.error, result.error
        assert not result.setup_failed


def test_a_hook_that_exits_or_leaves_a_thread_ends_the_cli_with_1_and_a_summary(
    zygote: str,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for defect, check in (("init_exits", "protocol.init_model"),
                          ("hook_thread", "protocol.shutdown_after_hooks")):  # fmt: skip
        worker = " ".join(bw.worker_command(None, zygote))
        done = subprocess.run(
            [sys.executable, "-m", "conformance", "--factory", BROKEN,
             "--config-json", json.dumps({"defect": defect}), "--worker-cmd", worker,
             "--select", "protocol.hello", "--select", check],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 1, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert lines[-1].startswith("1 passed, 1 failed, 0 skipped"), lines
        assert any(line.startswith(f"FAIL {check} ") for line in lines)
