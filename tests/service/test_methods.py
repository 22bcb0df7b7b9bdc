"""The methods of docs/protocol.md §2 through the dispatcher: results, hook calls, the model table.

Each request goes through the production path (``Connection`` and
``Worker.handle``, see ``support.respond``); a hook that raises anything
becomes an ``ok:false`` answer naming the method and the hook, and the
worker keeps serving.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.service.support import (
    PATCH,
    Minimal,
    assert_same_state,
    assert_still_serving,
    candidate,
    error,
    inner_job,
    model_state,
    ok,
)
from tests.workloads import Misbehaving
from worker.protocol import Request
from worker.service import Worker, capabilities

# -- hello, capability_probe, init_model ------------------------------------------------


def test_hello_shape_and_capabilities(worker):
    result = ok(worker, "hello")
    assert result == {
        "protocol_version": 2,
        "workload_name": "tiny",
        "capabilities": [
            "artifact_path_io", "parameter_pack_export", "parameter_pack_import",
            "diloco_checkpoint_job", "exact_step_budget",
        ],
    }  # fmt: skip


def test_hello_advertises_diloco_only_with_run_inner_loop():
    result = ok(Worker(Minimal()), "hello")
    assert result["workload_name"] == "Minimal"
    assert "diloco_checkpoint_job" not in result["capabilities"]
    assert "exact_step_budget" not in result["capabilities"]
    assert capabilities(Minimal()) == result["capabilities"]


def test_non_callable_run_inner_loop_is_not_a_capability():
    workload = Minimal()
    workload.run_inner_loop = "not a hook"
    assert "diloco_checkpoint_job" not in ok(Worker(workload), "hello")["capabilities"]


def test_hello_accepts_empty_object_params(worker):
    assert ok(worker, "hello", {})["protocol_version"] == 2


def test_capability_probe_shape(worker):
    result = ok(worker, "capability_probe")
    assert result == {
        "runtime_device": "python-torch-cpu",
        "capability": {
            "preferred_backends": ["cpu"], "work_units_per_second": 10.0,
            "target_window_seconds": 1,
        },
    }  # fmt: skip


@pytest.mark.parametrize(
    ("hook", "value", "fragment"),
    [
        ("runtime_device", 5, "runtime_device() must return a string"),
        ("capability_probe", {"preferred_backends": "cpu"}, "preferred_backends"),
        (
            "capability_probe",
            {"preferred_backends": [], "work_units_per_second": float("nan"),
             "target_window_seconds": 1},
            "work_units_per_second",
        ),
    ],
)  # fmt: skip
def test_capability_probe_refuses_what_rust_cannot_decode(worker, hook, value, fragment):
    setattr(worker.workload, hook, lambda: value)
    message = error(worker, "capability_probe")
    assert message.startswith("capability_probe:") and fragment in message


def test_init_model_allocates_fresh_handles(worker):
    ids = [ok(worker, "init_model", {"device": "cpu"})["model_id"] for _ in range(3)]
    assert ids == ["m1", "m2", "m3"]
    assert len({id(worker.models[m]) for m in ids}) == 3


def test_init_model_returning_none_is_an_error(worker):
    worker.workload.init_model = lambda device: None
    message = error(worker, "init_model", {"device": "cpu"})
    assert message.startswith("init_model:") and "returned None" in message
    assert worker.models == {}


# -- train_window, evaluate, metrics -----------------------------------------------------------


def test_train_window_changes_the_model_and_returns_metrics(tiny):
    before = model_state(tiny, "m1")
    result = ok(tiny, "train_window", {"model_id": "m1", "batches": [{"kind": "micro_epoch"}] * 2})
    assert result["metrics"]["steps"] == 2 and isinstance(result["metrics"]["loss"], float)
    after = model_state(tiny, "m1")
    assert not torch.equal(before["0.weight"], after["0.weight"])
    assert_same_state(model_state(tiny, "m2"), before)  # other handles untouched


def test_numpy_and_torch_metrics_are_converted():
    worker = Worker(Misbehaving({"mode": "numpy"}))
    ok(worker, "init_model", {"device": "cpu"})
    metrics = ok(worker, "train_window", {"model_id": "m1", "batches": []})["metrics"]
    assert metrics == {"loss": 0.5, "n": 3, "t": 2.5}
    assert type(metrics["n"]) is int


@pytest.mark.parametrize(("mode", "key"), [("nan", "loss"), ("list", "loss")])
def test_bad_metrics_name_the_key_and_the_hook(mode, key):
    worker = Worker(Misbehaving({"mode": mode}))
    ok(worker, "init_model", {"device": "cpu"})
    message = error(worker, "train_window", {"model_id": "m1", "batches": []})
    assert message.startswith("train_window:") and f"metric {key!r}" in message
    assert_still_serving(worker)


def test_evaluate_passes_the_split_and_converts_tensor_metrics(tiny):
    result = ok(tiny, "evaluate", {"model_id": "m1", "split": {"Custom": "holdout"}})
    assert json.loads(result["metrics"]["split"]) == {"Custom": "holdout"}
    assert type(result["metrics"]["loss"]) is float


def test_evaluate_metric_of_a_multi_element_tensor_is_refused(tiny):
    tiny.workload.evaluate = lambda state, split: {"per_class": torch.ones(3)}
    message = error(tiny, "evaluate", {"model_id": "m1", "split": "Test"})
    assert message.startswith("evaluate: metric 'per_class'")


def test_numpy_metrics_through_evaluate(tiny):
    tiny.workload.evaluate = lambda state, split: {"acc": np.float64(0.75), "ok": np.bool_(True)}
    assert ok(tiny, "evaluate", {"model_id": "m1", "split": "Validation"})["metrics"] == {
        "acc": 0.75, "ok": True,
    }  # fmt: skip


# -- apply_patch ------------------------------------------------------------------------------


def test_apply_patch_outcomes(worker):
    assert ok(worker, "apply_patch", PATCH) == "Applied"
    assert ok(worker, "apply_patch", {**PATCH, "class": "Cold"}) == "RequiresRestart"


def test_apply_patch_without_the_hook_is_rejected_not_failed():
    outcome = ok(Worker(Minimal()), "apply_patch", PATCH)
    assert (
        set(outcome) == {"Rejected"} and "does not support runtime patches" in outcome["Rejected"]
    )


def test_apply_patch_bad_outcome_is_an_error(worker):
    worker.workload.apply_patch = lambda patch: "Maybe"
    assert error(worker, "apply_patch", PATCH).startswith("apply_patch:")


# -- merge, EMA, reconcile, release, shutdown -----------------------------------------------------


def test_merge_passes_states_in_place_of_ids(tiny):
    seen = {}

    def merge(base, candidates, policy):
        seen.update(base=base, candidates=candidates, policy=policy)
        return tiny.workload.init_model("cpu")

    tiny.workload.merge_candidate_models = merge
    result = ok(tiny, "merge_candidate_models", {
        "base_model_id": "m1", "candidates": [candidate("m2", 3)], "policy": {"Custom": "x"},
    })  # fmt: skip
    assert result == {"model_id": "m3"}
    assert seen["base"] is tiny.models["m1"] and seen["policy"] == {"Custom": "x"}
    (got,) = seen["candidates"]
    assert "model_id" not in got and got["model"] is tiny.models["m2"]
    assert got["sample_weight"] == 3.0 and type(got["quality_weight"]) is float
    assert got["peer_id"] == "peer"


def test_merge_returning_none_yields_a_null_model_id(tiny):
    result = ok(
        tiny, "merge_candidate_models", {"base_model_id": "m1", "candidates": [], "policy": "Ema"}
    )
    assert result == {"model_id": None}
    assert list(tiny.models) == ["m1", "m2"]


def test_merge_with_an_unknown_candidate_names_it(tiny):
    message = error(tiny, "merge_candidate_models", {
        "base_model_id": "m1", "candidates": [candidate("m2"), candidate("m9")], "policy": "Ema",
    })  # fmt: skip
    assert message.startswith("merge_candidate_models") and "candidates[1]" in message
    assert "'m9'" in message


def test_root_ema_replaces_the_merged_handle(tiny):
    old = tiny.models["m2"]
    assert ok(tiny, "apply_single_root_ema", {
        "base_model_id": "m1", "merged_model_id": "m2", "policy": "Ema",
    }) == {"model_id": "m2"}  # fmt: skip
    assert tiny.models["m2"] is not old


def test_root_ema_none_keeps_the_handle(tiny):
    tiny.workload.apply_single_root_ema = lambda base, merged, policy: None
    old = tiny.models["m2"]
    ok(
        tiny,
        "apply_single_root_ema",
        {"base_model_id": "m1", "merged_model_id": "m2", "policy": "Ema"},
    )
    assert tiny.models["m2"] is old


@pytest.mark.parametrize(
    ("strategy", "replaced"), [("Replace", False), ({"RootEma": {"canonical_weight": 0.5}}, True)]
)
def test_reconcile(tiny, strategy, replaced):
    old = tiny.models["m2"]
    result = ok(tiny, "reconcile_canonical_model", {
        "local_model_id": "m1", "canonical_model_id": "m2", "strategy": strategy,
    })  # fmt: skip
    assert result == {"model_id": "m2"}
    assert (tiny.models["m2"] is not old) is replaced


def test_release_model(tiny):
    assert ok(tiny, "release_model", {"model_id": "m1"}) == {"ok": True}
    assert ok(tiny, "release_model", {"model_id": "m1"}) == {"ok": True}  # unknown: not an error
    assert ok(tiny, "release_model", {"model_id": ""}) == {"ok": True}
    assert "unknown model id 'm1'" in error(tiny, "evaluate", {"model_id": "m1", "split": "Test"})
    assert ok(tiny, "init_model", {"device": "cpu"}) == {"model_id": "m3"}  # ids are never reused


def test_shutdown_acks_and_ends_the_session(worker):
    assert ok(worker, "shutdown") == {"ok": True}  # ``call`` checks the connection closes
    answer = worker.handle(Request(9, "shutdown", {"anything": [1]}))
    assert answer.ends_session and answer.result == {"ok": True} and answer.error is None
    assert not worker.handle(Request(10, "hello", None)).ends_session


# -- hooks that raise anything ----------------------------------------------------------------------

RAISING = [
    ("capability_probe", "runtime_device", None),
    ("capability_probe", "capability_probe", None),
    ("init_model", "init_model", {"device": "cpu"}),
    ("parameter_pack_plan", "init_model", {"device": "cpu"}),
    ("train_window", "train_window", {"model_id": "m1", "batches": []}),
    ("evaluate", "evaluate", {"model_id": "m1", "split": "Test"}),
    ("apply_patch", "apply_patch", PATCH),
    ("load_model_artifact", "load_model_artifact_path", {"model_id": "m1", "artifact_path": "a"}),
    ("load_model_artifact", "load_model_artifact", "artifact"),
    ("materialize_model_artifact", "materialize_model_artifact_path",
     {"model_id": "m1", "artifact_path": "a"}),
    ("materialize_model_artifact", "materialize_model_artifact",
     {"model_id": "m1", "artifact_path": "a"}),
    ("export_parameter_pack", "export_parameter_pack_path",
     {"model_id": "m1", "parameter_pack_path": "p", "model_schema_hash": ""}),
    ("import_parameter_pack", "import_parameter_pack_path", {"device": "cpu", "parameter_pack_path": "p"}),
    ("import_parameter_pack", "init_model", "pack"),
    ("run_inner_loop", "run_inner_loop", "job"),
    ("merge_candidate_models", "merge_candidate_models",
     {"base_model_id": "m1", "candidates": [], "policy": "Ema"}),
    ("apply_single_root_ema", "apply_single_root_ema",
     {"base_model_id": "m1", "merged_model_id": "m2", "policy": "Ema"}),
    ("reconcile_canonical_model", "reconcile_canonical_model",
     {"local_model_id": "m1", "canonical_model_id": "m2", "strategy": "Replace"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "hook", "params"), RAISING, ids=lambda v: v if isinstance(v, str) else ""
)
@pytest.mark.parametrize(
    "exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit(), RuntimeError("boom")],
    ids=lambda e: type(e).__name__,
)  # fmt: skip
def test_hooks_raising_anything_become_errors(prepared, tmp_path, method, hook, params, exc):
    if params == "artifact":
        params = {"model_id": "m1", "artifact_path": str(tmp_path / "artifact.safetensors")}
    elif params == "pack":
        params = {"device": "cpu", "parameter_pack_path": str(tmp_path / "pack")}
    elif params == "job":
        params = inner_job(tmp_path)

    def raising(*args, **kwargs):
        raise exc

    setattr(prepared.workload, hook, raising)
    before = dict(prepared.models)
    message = error(prepared, method, params)
    first, _, rest = message.partition("\n")
    assert first.startswith(f"{method}:") and hook in first and type(exc).__name__ in first
    assert "Traceback" in rest
    assert prepared.models == before
    delattr(prepared.workload, hook)
    assert_still_serving(prepared)
