"""``run_inner_loop`` through the dispatcher: results, step budgets, the output pack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.service.support import (
    TINY_FLOAT_KEYS,
    Minimal,
    call,
    error,
    export,
    import_,
    inner_job,
    model_state,
    ok,
)
from tests.workloads import TinyWorkload
from worker.packs import MANIFEST_NAME
from worker.service import Worker

# -- run_inner_loop ------------------------------------------------------------------------------


def test_inner_loop_result_shape_and_exported_pack(tiny, tmp_path):
    before = model_state(tiny, "m1")
    result = ok(tiny, "run_inner_loop", inner_job(tmp_path))
    assert set(result) == {
        "steps_completed", "metrics", "inner_optimizer_state_path", "inner_optimizer_state_encoding",
    }  # fmt: skip
    assert type(result["steps_completed"]) is int and result["steps_completed"] == 2
    assert result["metrics"]["steps"] == 2
    assert result["inner_optimizer_state_path"] is None
    assert result["inner_optimizer_state_encoding"] is None
    after = model_state(tiny, "m1")
    assert not torch.equal(before["0.weight"], after["0.weight"])
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert manifest["model_schema_hash"] == "schema-7"
    loaded = model_state(tiny, import_(tiny, tmp_path / "out")["result"]["model_id"])
    for key in TINY_FLOAT_KEYS:
        assert torch.equal(loaded[key], after[key]), key


def test_inner_loop_optimizer_state_path_round_trips(tiny, tmp_path):
    opt = str(tmp_path / "opt" / "state.json")
    result = ok(tiny, "run_inner_loop", inner_job(tmp_path, inner_optimizer_state_path=opt))
    assert result["inner_optimizer_state_path"] == opt
    assert result["inner_optimizer_state_encoding"] == "json"


def test_inner_loop_exports_with_the_jobs_filter(tiny, tmp_path):
    flt = {"include_globs": ["3.*"]}
    ok(tiny, "run_inner_loop", inner_job(tmp_path, state_dict_filter=flt))
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert manifest["parameter_count"] == 9
    assert manifest["state_dict_filter"] == {"include_globs": ["3.*"], "exclude_globs": []}


@pytest.mark.parametrize(
    ("done", "exact", "accepted"), [(1, True, False), (1, False, True), (2, True, True)]
)
def test_inner_loop_exact_steps(tiny, tmp_path, done, exact, accepted):
    tiny.workload.run_inner_loop = lambda state, job: {"steps_completed": done}
    response = call(tiny, "run_inner_loop", inner_job(tmp_path, require_exact_steps=exact))
    assert response["ok"] is accepted, response
    if accepted:
        assert response["result"]["steps_completed"] == done
    else:
        assert (
            response["error"].startswith("run_inner_loop:")
            and "require_exact_steps" in response["error"]
        )


@pytest.mark.parametrize("done", [True, -1, 2.0, "2", 2**32])
def test_inner_loop_refuses_bad_step_counts(tiny, tmp_path, done):
    tiny.workload.run_inner_loop = lambda state, job: {"steps_completed": done}
    message = error(tiny, "run_inner_loop", inner_job(tmp_path, require_exact_steps=False))
    assert message.startswith("run_inner_loop:") and "steps_completed" in message


def test_inner_loop_returning_none_means_all_steps(tiny, tmp_path):
    tiny.workload.run_inner_loop = lambda state, job: None
    result = ok(tiny, "run_inner_loop", inner_job(tmp_path))
    assert result == {
        "steps_completed": 2, "metrics": {}, "inner_optimizer_state_path": None,
        "inner_optimizer_state_encoding": None,
    }  # fmt: skip


def test_inner_loop_returning_a_non_dict_is_an_error(tiny, tmp_path):
    tiny.workload.run_inner_loop = lambda state, job: [2]
    assert "must return a dict" in error(tiny, "run_inner_loop", inner_job(tmp_path))


def test_inner_loop_returned_state_replaces_the_handle(tiny, tmp_path):
    replacement = tiny.workload.init_model("cpu")
    with torch.no_grad():
        replacement["model"][0].weight.fill_(0.25)
    tiny.workload.run_inner_loop = lambda state, job: {"state": replacement}
    ok(tiny, "run_inner_loop", inner_job(tmp_path))
    assert tiny.models["m1"] is replacement
    loaded = model_state(tiny, import_(tiny, tmp_path / "out")["result"]["model_id"])
    assert torch.equal(loaded["0.weight"], torch.full((8, 4), 0.25))


def test_inner_loop_keeps_a_pack_the_workload_wrote(tiny, tmp_path):
    def run(state, job):
        out = Path(job["output_parameter_pack_path"])
        out.mkdir()
        (out / MANIFEST_NAME).write_text('{"written_by": "workload"}')
        return {"steps_completed": job["num_inner_steps"]}

    tiny.workload.run_inner_loop = run
    ok(tiny, "run_inner_loop", inner_job(tmp_path))
    assert json.loads((tmp_path / "out" / MANIFEST_NAME).read_text()) == {"written_by": "workload"}


def test_inner_loop_replaces_a_stale_pack_it_did_not_write(tiny, tmp_path):
    assert export(tiny, "m2", tmp_path / "out", schema="stale")["ok"]
    tiny.workload.run_inner_loop = lambda state, job: None
    ok(tiny, "run_inner_loop", inner_job(tmp_path))
    assert (
        json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["model_schema_hash"]
        == "schema-7"
    )


def test_inner_loop_without_the_hook_is_an_error(tmp_path):
    worker = Worker(Minimal())
    ok(worker, "init_model", {"device": "cpu"})
    message = error(worker, "run_inner_loop", inner_job(tmp_path))
    assert message.startswith("run_inner_loop:") and "no run_inner_loop() hook" in message


class ReturnsUnexportableState(TinyWorkload):
    def run_inner_loop(self, state, job):
        return {"steps_completed": job["num_inner_steps"], "state": {"not": "a module"}}


def test_a_failed_inner_loop_leaves_the_handle_untouched(tmp_path):
    """Issue #9 item 13: the returned state used to be stored before the export
    that then failed; all or nothing now."""
    worker = Worker(ReturnsUnexportableState({}))
    ok(worker, "init_model", {"device": "cpu"})
    state = worker.models["m1"]
    text = error(worker, "run_inner_loop", inner_job(tmp_path))
    assert text.startswith("run_inner_loop:") and "generic torch layout" in text
    assert worker.models["m1"] is state
    assert not (tmp_path / "out").exists()
