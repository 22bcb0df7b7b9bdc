"""The generic checkpoint-command job runner (``python -m worker.job``), run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from worker import job as job_runner
from worker.packs import export_pack, import_pack
from worker.protocol import NO_FILTER

from .workloads import TinyWorkload

TINY = "tests.workloads:make_tiny"


class ShortWorkload(TinyWorkload):
    """Completes one step fewer than asked."""

    def run_inner_loop(self, state, job):
        result = super().run_inner_loop(state, job)
        return {**result, "steps_completed": job["num_inner_steps"] - 1}


def make_short(config):
    return ShortWorkload(config)


def make_no_inner_loop(config):
    workload = TinyWorkload(config)
    workload.run_inner_loop = None  # not callable: the hook is missing
    return workload


@pytest.fixture
def job_files(tmp_path: Path) -> dict:
    """A base pack of the tiny workload and a valid job manifest naming it."""
    base = tmp_path / "base"
    export_pack(TinyWorkload({}).init_model("cpu"), base, "schema-1")
    job = {
        "protocol_version": 1,
        "job_id": "round-1-peer-0",
        "model_schema_hash": "schema-1",
        "base_parameter_pack_path": str(base),
        "output_parameter_pack_path": str(tmp_path / "out" / "pack"),
        "result_manifest_path": str(tmp_path / "out" / "result.json"),
        "batches": [{"kind": "cached_microshard_group"}] * 3,
        "num_inner_steps": 3,
        "require_exact_steps": True,
        "state_dict_filter": {"include_globs": [], "exclude_globs": []},
        "inner_optimizer_state_path": str(tmp_path / "out" / "opt.json"),
    }
    return {"dir": tmp_path, "job": job, "path": tmp_path / "job.json"}


def write(files: dict, **changes) -> str:
    job = {**files["job"], **changes}
    files["path"].write_text(json.dumps(job), encoding="utf-8")
    return str(files["path"])


def run(*args: str) -> int:
    return job_runner.main(["--factory", TINY, "--config-json", "{}", *args])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("burn-p2p job: "), err
    return err.splitlines()[0]


def test_a_job_trains_from_the_base_pack_and_writes_the_result(job_files, capsys) -> None:
    assert run("--job", write(job_files)) == 0
    out = job_files["dir"] / "out"
    result = json.loads((out / "result.json").read_text())
    assert result["steps_completed"] == 3
    assert result["metrics"]["steps"] == 3
    assert result["local_parameter_pack_path"] == str(out / "pack")
    assert result["inner_optimizer_state_path"] == str(out / "opt.json")
    assert result["inner_optimizer_state_encoding"] == "json"
    # The output pack is a valid pack of the same layout, with trained (different) values.
    base_state, local_state = TinyWorkload({}).init_model("cpu"), TinyWorkload({}).init_model("cpu")
    import_pack(job_files["dir"] / "base", lambda: base_state, NO_FILTER)
    import_pack(out / "pack", lambda: local_state, NO_FILTER)
    before = base_state["model"].state_dict()
    after = local_state["model"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert capsys.readouterr().err == ""


def test_the_job_path_can_come_from_the_environment(job_files, monkeypatch) -> None:
    monkeypatch.setenv(job_runner.JOB_ENV, write(job_files))
    monkeypatch.setenv(job_runner.RESULT_ENV, job_files["job"]["result_manifest_path"])
    assert run() == 0
    assert (job_files["dir"] / "out" / "result.json").exists()


def test_no_job_at_all_is_a_usage_error(monkeypatch, capsys) -> None:
    monkeypatch.delenv(job_runner.JOB_ENV, raising=False)
    assert run() == 2
    assert job_runner.JOB_ENV in one_line_error(capsys)


def test_a_result_env_that_disagrees_with_the_job_is_refused(
    job_files, monkeypatch, capsys
) -> None:
    monkeypatch.setenv(job_runner.RESULT_ENV, str(job_files["dir"] / "elsewhere.json"))
    assert run("--job", write(job_files)) == 2
    assert "result_manifest_path" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"protocol_version": 2}, "params.protocol_version: expected 1"),
        ({"num_inner_steps": -1}, "params.num_inner_steps: expected an integer"),
        ({"require_exact_steps": "yes"}, "params.require_exact_steps: expected a boolean"),
        ({"batches": [{"no": "kind"}]}, "params.batches[0]"),
        ({"base_parameter_pack_path": 7}, "params.base_parameter_pack_path: expected a string"),
        ({"state_dict_filter": {"include_globs": [""]}}, "include_globs[0]"),
    ],
)
def test_an_invalid_manifest_names_the_field(job_files, capsys, changes, expected) -> None:
    assert run("--job", write(job_files, **changes)) == 2
    line = one_line_error(capsys)
    assert expected in line and str(job_files["path"]) in line
    assert not (job_files["dir"] / "out" / "result.json").exists()


def test_a_manifest_that_is_not_json_is_a_usage_error(job_files, capsys) -> None:
    job_files["path"].write_text("{not json", encoding="utf-8")
    assert run("--job", str(job_files["path"])) == 2
    assert "not valid UTF-8 JSON" in one_line_error(capsys)


def test_a_missing_base_pack_fails_the_job_naming_it(job_files, capsys) -> None:
    missing = str(job_files["dir"] / "nope")
    assert run("--job", write(job_files, base_parameter_pack_path=missing)) == 1
    line = one_line_error(capsys)
    assert "job 'round-1-peer-0' failed" in line and missing in line
    assert not (job_files["dir"] / "out" / "result.json").exists()


def test_a_raising_workload_fails_with_its_traceback_after_one_line(job_files, capsys) -> None:
    path = write(job_files)
    status = job_runner.main(
        [
            "--factory",
            "tests.workloads:make_misbehaving",
            "--config-json",
            '{"mode": "system_exit"}',
            "--job",
            path,
        ]
    )
    assert status == 1
    err = capsys.readouterr().err
    first, rest = err.split("\n", 1)
    assert first.startswith(
        "burn-p2p job: job 'round-1-peer-0' failed: run_inner_loop: workload hook"
    )
    assert "SystemExit" in first and "Traceback" in rest


def test_fewer_steps_than_required_fail_the_job(job_files, capsys) -> None:
    status = job_runner.main(["--factory", "tests.test_job:make_short", "--job", write(job_files)])
    assert status == 1
    assert "completed 2 steps but 3 were requested" in one_line_error(capsys)


def test_without_exact_steps_a_short_loop_is_reported_as_is(job_files) -> None:
    path = write(job_files, require_exact_steps=False)
    assert job_runner.main(["--factory", "tests.test_job:make_short", "--job", path]) == 0
    result = json.loads(Path(job_files["job"]["result_manifest_path"]).read_text())
    assert result["steps_completed"] == 2


def test_a_workload_without_run_inner_loop_is_refused(job_files, capsys) -> None:
    status = job_runner.main(
        ["--factory", "tests.test_job:make_no_inner_loop", "--job", write(job_files)]
    )
    assert status == 1
    assert "no run_inner_loop() hook" in one_line_error(capsys)


def test_a_bad_factory_is_a_usage_error(job_files, capsys) -> None:
    assert job_runner.main(["--factory", "tests.workloads:nope", "--job", write(job_files)]) == 2
    assert "has no attribute 'nope'" in one_line_error(capsys)
