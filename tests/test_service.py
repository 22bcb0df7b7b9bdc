"""The sans-IO core: ``Worker.respond(body) -> frame`` for every method of PROTOCOL.md §2.

Bad input never raises, hangs or corrupts: it gets an ``ok: false`` answer
naming the method and the parameter, echoing the request id when it was
valid, and the worker keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from torch import nn

from tests.workloads import Misbehaving, TinyWorkload
from worker.framing import decode_frames, encode_frame
from worker.packs import MANIFEST_NAME, PACK_FORMAT
from worker.service import METHODS, Worker, capabilities

# -- helpers ---------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"response carries the non-standard JSON constant {name}")


def decode_response(frame: bytes, request_id: int | None = None) -> dict:
    """Check ``frame`` is exactly one standard-JSON response frame; return it."""
    (body,) = decode_frames(frame)
    response = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    assert isinstance(response, dict), response
    assert type(response.get("id")) is int and response["id"] >= 0, response
    assert type(response.get("ok")) is bool, response
    if response["ok"]:
        assert set(response) == {"id", "ok", "result"}, response
    else:
        assert set(response) == {"id", "ok", "error"}, response
        assert isinstance(response["error"], str) and response["error"].strip(), response
    if request_id is not None:
        assert response["id"] == request_id, response
    return response


def call(worker: Worker, method: str, params: Any = None, request_id: int = 1) -> dict:
    body = json.dumps({"id": request_id, "method": method, "params": params}).encode()
    return decode_response(worker.respond(body), request_id)


def ok(worker: Worker, method: str, params: Any = None) -> Any:
    response = call(worker, method, params)
    assert response["ok"], response["error"]
    return response["result"]


def error(worker: Worker, method: str, params: Any = None, request_id: int = 7) -> str:
    response = call(worker, method, params, request_id)
    assert response["ok"] is False, response
    return response["error"]


def assert_still_serving(worker: Worker) -> None:
    assert ok(worker, "hello")["protocol_version"] == 2
    assert not worker.shutdown_requested


def model_state(worker: Worker, model_id: str) -> dict[str, torch.Tensor]:
    state = worker.models[model_id]
    modules = state["modules"] if "modules" in state else {"": state["model"]}
    out = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            out[f"{name}.{key}" if name else key] = value.detach().clone()
    return out


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def perturb(worker: Worker, model_id: str, seed: int = 5) -> None:
    generator = torch.Generator().manual_seed(seed)
    state = worker.models[model_id]
    modules = state["modules"].values() if "modules" in state else [state["model"]]
    with torch.no_grad():
        for module in modules:
            for value in module.state_dict().values():
                if value.is_floating_point():
                    value.add_(torch.randn(value.shape, generator=generator))


class FastWorkload(TinyWorkload):
    """TinyWorkload whose loops cost O(1) whatever the request asks for (for fuzzing)."""

    def train_window(self, state, batches):
        return {"batches": len(batches)}

    def run_inner_loop(self, state, job):
        return {"steps_completed": job["num_inner_steps"], "metrics": {"ok": True}}


class MultiModule(TinyWorkload):
    """A ``{"modules": {...}}`` state: an encoder and a head with a BatchNorm."""

    workload_name = "multi"

    def init_model(self, device):
        torch.manual_seed(0)
        return {
            "modules": {
                "head": nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1)),
                "encoder": nn.Linear(3, 2),
            }
        }


class Minimal:
    """Only the required hooks; no run_inner_loop, no apply_patch, no custom I/O."""

    def runtime_device(self):
        return "python-torch-cpu"

    def capability_probe(self):
        return {"preferred_backends": [], "work_units_per_second": 1, "target_window_seconds": 0}

    def init_model(self, device):
        return nn.Linear(2, 2)

    def train_window(self, state, batches):
        return {}

    def evaluate(self, state, split):
        return {}


@pytest.fixture
def worker() -> Worker:
    return Worker(TinyWorkload({}))


@pytest.fixture
def tiny(worker) -> Worker:
    """A worker with two live models, m1 and m2."""
    assert ok(worker, "init_model", {"device": "cpu"}) == {"model_id": "m1"}
    assert ok(worker, "init_model", {"device": "cpu"}) == {"model_id": "m2"}
    return worker


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


# -- parameter_pack_plan ------------------------------------------------------------------

TINY_FLOAT_KEYS = [
    "0.bias", "0.weight", "1.bias", "1.running_mean", "1.running_var", "1.weight", "3.bias",
    "3.weight",
]  # fmt: skip


def test_plan_lists_keys_and_counts(worker):
    plan = ok(worker, "parameter_pack_plan", {"device": "cpu", "state_dict_filter": None})
    assert plan["uses_custom_parameter_pack_hooks"] is False
    assert plan["layout_hash"].startswith("torch-layout-")
    assert plan["included_keys"] == TINY_FLOAT_KEYS
    assert plan["excluded_float_keys"] == []
    assert plan["ignored_non_float_keys"] == ["1.num_batches_tracked"]
    assert plan["parameter_count"] == (4 * 8 + 8) + 4 * 8 + (8 + 1)  # Linear, BatchNorm, Linear
    assert "generic_plan_error" not in plan
    assert worker.models == {}  # the plan's throwaway model is not a handle


def test_plan_with_a_filter(worker):
    flt = {"include_globs": ["0.*", "3.*"], "exclude_globs": ["*.bias"]}
    plan = ok(worker, "parameter_pack_plan", {"device": "cpu", "state_dict_filter": flt})
    assert plan["included_keys"] == ["0.weight", "3.weight"]
    assert plan["excluded_float_keys"] == [
        k for k in TINY_FLOAT_KEYS if k not in ("0.weight", "3.weight")
    ]
    assert plan["parameter_count"] == 32 + 8
    unfiltered = ok(worker, "parameter_pack_plan", {"device": "cpu"})
    assert plan["layout_hash"] != unfiltered["layout_hash"]


def test_plan_for_multi_module_states():
    worker = Worker(MultiModule({}))
    plan = ok(
        worker,
        "parameter_pack_plan",
        {"device": "cpu", "state_dict_filter": {"include_globs": ["encoder.*", "head.1.*"]}},
    )
    assert plan["included_keys"] == [
        "encoder.bias", "encoder.weight", "head.1.bias", "head.1.running_mean",
        "head.1.running_var", "head.1.weight",
    ]  # fmt: skip
    assert plan["excluded_float_keys"] == ["head.0.bias", "head.0.weight"]
    assert plan["ignored_non_float_keys"] == ["head.1.num_batches_tracked"]
    assert plan["parameter_count"] == 2 + 6 + 4


class OpaqueWithPackHooks(TinyWorkload):
    """Custom pack I/O over a state the generic layout cannot read."""

    def __init__(self, config):
        super().__init__(config)
        self.calls = []

    def init_model(self, device):
        return {"weights": [1.0, 2.0]}

    def export_parameter_pack_path(self, state, path, model_schema_hash, state_dict_filter=None):
        self.calls.append(("export", path, model_schema_hash, state_dict_filter))
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "custom.json").write_text(json.dumps(state))

    def import_parameter_pack_path(self, device, path, state_dict_filter=None):
        self.calls.append(("import", path, state_dict_filter))
        return json.loads((Path(path) / "custom.json").read_text())


class PackHooksWithoutFilter(OpaqueWithPackHooks):
    def export_parameter_pack_path(self, state, path, model_schema_hash):
        super().export_parameter_pack_path(state, path, model_schema_hash)

    def import_parameter_pack_path(self, device, path):
        return super().import_parameter_pack_path(device, path)


def test_plan_reports_the_generic_error_when_custom_hooks_exist():
    plan = ok(Worker(OpaqueWithPackHooks({})), "parameter_pack_plan", {"device": "cpu"})
    assert plan["uses_custom_parameter_pack_hooks"] is True
    assert plan["layout_hash"] is None and plan["parameter_count"] == 0
    assert plan["included_keys"] == [] and "torch.nn.Module" in plan["generic_plan_error"]


def test_plan_without_custom_hooks_for_an_opaque_state_is_an_error(worker):
    worker.workload.init_model = lambda device: {"weights": [1.0]}
    message = error(worker, "parameter_pack_plan", {"device": "cpu"})
    assert message.startswith("parameter_pack_plan:") and "torch.nn.Module" in message


def test_plan_marks_custom_hooks_even_for_torch_states():
    class TorchWithHooks(TinyWorkload):
        def export_parameter_pack_path(self, state, path, model_schema_hash):
            pass

    plan = ok(Worker(TorchWithHooks({})), "parameter_pack_plan", {"device": "cpu"})
    assert plan["uses_custom_parameter_pack_hooks"] is True
    assert plan["included_keys"] == TINY_FLOAT_KEYS


# -- custom pack hooks and filters -----------------------------------------------------------


def test_custom_pack_hooks_receive_the_filter_as_json(tmp_path):
    workload = OpaqueWithPackHooks({})
    worker = Worker(workload)
    ok(worker, "init_model", {"device": "cpu"})
    flt = {"include_globs": ["a*"], "exclude_globs": []}
    ok(worker, "export_parameter_pack", {
        "model_id": "m1", "parameter_pack_path": str(tmp_path / "p"), "model_schema_hash": "h",
        "state_dict_filter": flt,
    })  # fmt: skip
    imported = ok(worker, "import_parameter_pack", {
        "device": "cpu", "parameter_pack_path": str(tmp_path / "p"), "state_dict_filter": flt,
    })  # fmt: skip
    assert worker.models[imported["model_id"]] == {"weights": [1.0, 2.0]}
    assert workload.calls == [
        ("export", str(tmp_path / "p"), "h", flt),
        ("import", str(tmp_path / "p"), flt),
    ]


def test_filter_refused_when_custom_hooks_cannot_take_it(tmp_path):
    worker = Worker(PackHooksWithoutFilter({}))
    ok(worker, "init_model", {"device": "cpu"})
    params = {"model_id": "m1", "parameter_pack_path": str(tmp_path / "p"), "model_schema_hash": ""}
    ok(worker, "export_parameter_pack", params)  # no filter: fine
    message = error(
        worker, "export_parameter_pack", {**params, "state_dict_filter": {"include_globs": ["x"]}}
    )
    assert message.startswith("export_parameter_pack: params.state_dict_filter: expected no filter")
    message = error(worker, "import_parameter_pack", {
        "device": "cpu", "parameter_pack_path": str(tmp_path / "p"),
        "state_dict_filter": {"exclude_globs": ["x"]},
    })  # fmt: skip
    assert "import_parameter_pack: params.state_dict_filter" in message


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

PATCH = {
    "patch_id": "p1", "class": "Hot", "summary": "lr", "values": {"lr": 0.1, "tags": ["a"]},
    "required_client_capabilities": [],
}  # fmt: skip


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


# -- export / import through the worker ---------------------------------------------------------


def export(worker, model_id, path, flt=None, schema="schema-1"):
    params = {"model_id": model_id, "parameter_pack_path": str(path), "model_schema_hash": schema}
    if flt is not None:
        params["state_dict_filter"] = flt
    return call(worker, "export_parameter_pack", params)


def import_(worker, path, flt=None):
    params = {"device": "cpu", "parameter_pack_path": str(path)}
    if flt is not None:
        params["state_dict_filter"] = flt
    return call(worker, "import_parameter_pack", params)


def test_export_import_round_trip(tiny, tmp_path):
    perturb(tiny, "m1")
    response = export(tiny, "m1", tmp_path / "pack")
    assert response["result"] == {"ok": True}
    manifest = json.loads((tmp_path / "pack" / MANIFEST_NAME).read_text())
    assert manifest["format"] == PACK_FORMAT and manifest["model_schema_hash"] == "schema-1"
    imported = import_(tiny, tmp_path / "pack")["result"]["model_id"]
    assert imported == "m3"
    exported = model_state(tiny, "m1")
    loaded = model_state(tiny, imported)
    for key in TINY_FLOAT_KEYS:
        assert torch.equal(exported[key], loaded[key]), key
    # Non-float entries are not transported: they keep the fresh model's value.
    assert torch.equal(
        loaded["1.num_batches_tracked"], model_state(tiny, "m2")["1.num_batches_tracked"]
    )


def test_multi_module_filtered_export_import(tmp_path):
    worker = Worker(MultiModule({}))
    ok(worker, "init_model", {"device": "cpu"})
    perturb(worker, "m1")
    flt = {"include_globs": ["encoder.*"], "exclude_globs": ["*.bias"]}
    assert export(worker, "m1", tmp_path / "pack", flt)["ok"]
    manifest = json.loads((tmp_path / "pack" / MANIFEST_NAME).read_text())
    assert manifest["parameter_count"] == 6
    assert manifest["state_dict_filter"] == {
        "include_globs": ["encoder.*"],
        "exclude_globs": ["*.bias"],
    }
    assert (tmp_path / "pack" / "values.f32le").stat().st_size == 6 * 4

    imported = import_(worker, tmp_path / "pack", flt)["result"]["model_id"]
    source, loaded = model_state(worker, "m1"), model_state(worker, imported)
    fresh_worker = Worker(MultiModule({}))
    ok(fresh_worker, "init_model", {"device": "cpu"})
    fresh = model_state(fresh_worker, "m1")
    assert torch.equal(loaded["encoder.weight"], source["encoder.weight"])
    for key in ("encoder.bias", "head.0.weight", "head.1.running_mean"):
        assert torch.equal(loaded[key], fresh[key]), key
        assert not torch.equal(loaded[key], source[key]), key

    # The pack only fits a target under the same filter.
    for other in (None, {"include_globs": ["encoder.*"]}, {"include_globs": ["head.*"]}):
        message = import_(worker, tmp_path / "pack", other)["error"]
        assert message.startswith("import_parameter_pack:") and "layout" in message


def test_import_of_a_missing_pack_allocates_nothing(tiny, tmp_path):
    message = import_(tiny, tmp_path / "nope")["error"]
    assert message.startswith("import_parameter_pack:") and "nope" in message
    assert list(tiny.models) == ["m1", "m2"]


def test_import_does_not_call_init_model_for_an_invalid_pack(tiny, tmp_path):
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / MANIFEST_NAME).write_text('{"format": "other"}')
    calls = []
    tiny.workload.init_model = lambda device: calls.append(device)
    assert "format" in import_(tiny, tmp_path / "pack")["error"]
    assert calls == []


def test_export_of_an_opaque_state_without_hooks_is_an_error(tiny, tmp_path):
    tiny.models["m1"] = {"weights": [1.0]}
    message = export(tiny, "m1", tmp_path / "pack")["error"]
    assert message.startswith("export_parameter_pack:") and "torch.nn.Module" in message
    assert not (tmp_path / "pack").exists()


# -- run_inner_loop ------------------------------------------------------------------------------


def inner_job(tmp_path, **overrides):
    job = {
        "model_id": "m1", "batches": [{"kind": "micro_epoch"}], "num_inner_steps": 2,
        "inner_optimizer_state_path": None, "output_parameter_pack_path": str(tmp_path / "out"),
        "model_schema_hash": "schema-7", "require_exact_steps": True,
    }  # fmt: skip
    job.update(overrides)
    return job


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


# -- merge, EMA, reconcile, release, shutdown -----------------------------------------------------


def candidate(model_id, weight=1.0):
    return {
        "peer_id": "peer", "head_id": "h", "artifact_id": "a", "model_id": model_id,
        "sample_weight": weight, "quality_weight": 1,
    }  # fmt: skip


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


def test_shutdown_acks_and_flags(worker):
    assert ok(worker, "shutdown") == {"ok": True}
    assert worker.shutdown_requested


# -- bad requests ---------------------------------------------------------------------------------


def test_unknown_method_echoes_the_id_and_lists_methods(worker):
    response = call(worker, "fly", None, request_id=12)
    assert response["ok"] is False and "'fly'" in response["error"]
    assert "parameter_pack_plan" in response["error"]
    assert_still_serving(worker)


@pytest.mark.parametrize(
    ("body", "request_id"),
    [
        (b"", 0), (b"\xc3\x28", 0), (b"{", 0), (b"7", 0), (b'{"method": "hello"}', 0),
        (b'{"id": "x", "method": "hello"}', 0), (b'{"id": 5}', 5), (b'{"id": 6, "method": null}', 6),
        (b'{"id": 8, "method": "\\ud800"}', 8),
    ],
)  # fmt: skip
def test_bad_frames_get_an_error_response(worker, body, request_id):
    response = decode_response(worker.respond(body), request_id)
    assert response["ok"] is False
    assert_still_serving(worker)


def test_lone_surrogates_in_params_never_break_the_response(tiny, tmp_path):
    body = b'{"id": 3, "method": "evaluate", "params": {"model_id": "\\udc80", "split": "Test"}}'
    response = decode_response(tiny.respond(body), 3)
    assert response["ok"] is False and "unknown model id" in response["error"]


def test_hook_error_text_that_json_cannot_carry_still_gives_a_response(tiny):
    def evaluate(state, split):
        raise ValueError("bad \ud800 surrogate")

    tiny.workload.evaluate = evaluate
    message = error(tiny, "evaluate", {"model_id": "m1", "split": "Test"})
    assert message.startswith("evaluate:")


def test_result_that_is_not_json_is_an_error(tiny):
    tiny.workload.capability_probe = lambda: {
        "preferred_backends": [], "work_units_per_second": 1, "target_window_seconds": 1,
        "extra": float("nan"),
    }  # fmt: skip
    message = error(tiny, "capability_probe")
    assert message.startswith("capability_probe:") and "standard JSON" in message


# Table: method -> (valid params, [(param, ill-typed value)], [required params]).
# Valid params assume the ``prepared`` fixture: models m1, m2, an artifact and a pack.
FILTER_BAD = ("state_dict_filter", {"include_globs": "enc*"})


def valid_params(tmp: Path) -> dict[str, tuple[Any, list[tuple[str, Any]], list[str]]]:
    pack, artifact = str(tmp / "pack"), str(tmp / "artifact.safetensors")
    return {
        "hello": (None, [("params", {"x": 1})], []),
        "capability_probe": (None, [("params", [1])], []),
        "init_model": ({"device": "cpu"}, [("device", 5)], ["device"]),
        "parameter_pack_plan": (
            {"device": "cpu"}, [("device", ["cpu"]), FILTER_BAD], ["device"],
        ),
        "train_window": (
            {"model_id": "m1", "batches": []},
            [("model_id", 1), ("batches", "all"), ("batches", [1])],
            ["model_id", "batches"],
        ),
        "evaluate": (
            {"model_id": "m1", "split": "Train"}, [("model_id", None), ("split", "train")],
            ["model_id", "split"],
        ),
        "apply_patch": (
            dict(PATCH), [("patch_id", 3), ("class", "Lukewarm"), ("values", [1])],
            ["patch_id", "class"],
        ),
        "load_model_artifact": (
            {"model_id": "m1", "artifact_path": artifact},
            [("model_id", 2.5), ("artifact_path", 5), ("artifact_path", "a\x00b")],
            ["model_id", "artifact_path"],
        ),
        "materialize_model_artifact": (
            {"model_id": "m1", "artifact_path": str(tmp / "out.safetensors")},
            [("model_id", {}), ("artifact_path", False)],
            ["model_id", "artifact_path"],
        ),
        "export_parameter_pack": (
            {"model_id": "m1", "parameter_pack_path": str(tmp / "out"), "model_schema_hash": "h"},
            [("model_id", 1), ("parameter_pack_path", 1), ("model_schema_hash", 1), FILTER_BAD],
            ["model_id", "parameter_pack_path", "model_schema_hash"],
        ),
        "import_parameter_pack": (
            {"device": "cpu", "parameter_pack_path": pack},
            [("device", 1), ("parameter_pack_path", ""), FILTER_BAD],
            ["device", "parameter_pack_path"],
        ),
        "run_inner_loop": (
            inner_job(tmp),
            [
                ("model_id", 1), ("batches", None), ("num_inner_steps", -1),
                ("num_inner_steps", 1.5), ("inner_optimizer_state_path", 5),
                ("output_parameter_pack_path", 5), ("model_schema_hash", None),
                ("require_exact_steps", "yes"), FILTER_BAD,
            ],
            ["model_id", "batches", "num_inner_steps", "output_parameter_pack_path",
             "model_schema_hash", "require_exact_steps"],
        ),
        "merge_candidate_models": (
            {"base_model_id": "m1", "candidates": [candidate("m2")], "policy": "WeightedMean"},
            [("base_model_id", 1), ("candidates", {}), ("candidates", [1]), ("policy", "Mean")],
            ["base_model_id", "candidates", "policy"],
        ),
        "apply_single_root_ema": (
            {"base_model_id": "m1", "merged_model_id": "m2", "policy": "Ema"},
            [("base_model_id", 1), ("merged_model_id", []), ("policy", 1)],
            ["base_model_id", "merged_model_id", "policy"],
        ),
        "reconcile_canonical_model": (
            {"local_model_id": "m1", "canonical_model_id": "m2", "strategy": "Replace"},
            [("local_model_id", 1), ("canonical_model_id", 1), ("strategy", {"RootEma": 1})],
            ["local_model_id", "canonical_model_id", "strategy"],
        ),
        "release_model": ({"model_id": "m1"}, [("model_id", 1)], ["model_id"]),
        # shutdown takes no params and is deliberately lenient: a stop is never refused.
        "shutdown": (None, [], []),
    }  # fmt: skip


def test_the_table_covers_every_method(tmp_path):
    assert set(valid_params(tmp_path)) == set(METHODS)


@pytest.fixture
def prepared(tiny, tmp_path) -> Worker:
    assert export(tiny, "m2", tmp_path / "pack")["ok"]
    ok(
        tiny,
        "materialize_model_artifact",
        {"model_id": "m2", "artifact_path": str(tmp_path / "artifact.safetensors")},
    )
    return tiny


def _cases(kind: str):
    table = valid_params(Path("/unused"))
    for method, (_, bad, required) in table.items():
        if kind == "missing":
            yield from (pytest.param(method, p, id=f"{method}-{p}") for p in required)
        elif kind == "ill-typed":
            yield from (
                pytest.param(method, p, v, id=f"{method}-{p}-{i}") for i, (p, v) in enumerate(bad)
            )
        elif method not in ("hello", "capability_probe", "shutdown"):
            yield pytest.param(method, id=method)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "shutdown"])
def test_valid_params_from_the_table_succeed(prepared, tmp_path, method):
    params = valid_params(tmp_path)[method][0]
    response = call(prepared, method, params)
    assert response["ok"], response


def _assert_names(message: str, method: str, param: str) -> None:
    first = message.splitlines()[0]
    assert first.startswith(method), message
    assert "params" in first and (param == "params" or param in first), message
    assert "expected" in first or "unknown model id" in first, message


@pytest.mark.parametrize(("method", "param"), list(_cases("missing")))
def test_missing_param_is_named(prepared, tmp_path, method, param):
    params = dict(valid_params(tmp_path)[method][0])
    del params[param]
    before = dict(prepared.models)
    _assert_names(error(prepared, method, params, request_id=99), method, param)
    assert prepared.models == before
    assert_still_serving(prepared)


@pytest.mark.parametrize(("method", "param", "value"), list(_cases("ill-typed")))
def test_ill_typed_param_is_named(prepared, tmp_path, method, param, value):
    valid = valid_params(tmp_path)[method][0]
    params = value if param == "params" else {**valid, param: value}
    before = dict(prepared.models)
    _assert_names(error(prepared, method, params, request_id=99), method, param)
    assert prepared.models == before
    assert_still_serving(prepared)


@pytest.mark.parametrize("method", list(_cases("not-object")))
@pytest.mark.parametrize("params", [None, [], "x", 3])
def test_params_that_are_not_an_object_are_named(prepared, method, params):
    _assert_names(error(prepared, method, params), method, "params")


MODEL_PARAMS = [
    ("train_window", "model_id"), ("evaluate", "model_id"), ("load_model_artifact", "model_id"),
    ("materialize_model_artifact", "model_id"), ("export_parameter_pack", "model_id"),
    ("run_inner_loop", "model_id"), ("merge_candidate_models", "base_model_id"),
    ("apply_single_root_ema", "base_model_id"), ("apply_single_root_ema", "merged_model_id"),
    ("reconcile_canonical_model", "local_model_id"),
    ("reconcile_canonical_model", "canonical_model_id"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "param"), MODEL_PARAMS)
def test_unknown_model_ids_are_named(prepared, tmp_path, method, param):
    params = {**valid_params(tmp_path)[method][0], param: "m404"}
    message = error(prepared, method, params)
    assert message.startswith(f"{method}: params.{param}: unknown model id 'm404'"), message
    assert "live models: m1, m2" in message


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
    assert not prepared.shutdown_requested
    delattr(prepared.workload, hook)
    assert_still_serving(prepared)


# -- fuzzing -----------------------------------------------------------------------------------------

# No '/' and no '.' in any generated string: every path the fuzzer invents is a
# plain name inside its own temporary directory. Surrogates are included.
safe_text = st.text(
    alphabet=st.characters(exclude_characters="/.", exclude_categories=()), max_size=6
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(-1e6, 1e6) | safe_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(safe_text, children, max_size=3),
    max_leaves=8,
)  # fmt: skip
model_ids = st.sampled_from(["m1", "m2", "m3", "m404", ""])
PLAUSIBLE = {
    "model_id": model_ids, "base_model_id": model_ids, "merged_model_id": model_ids,
    "local_model_id": model_ids, "canonical_model_id": model_ids,
    "device": st.sampled_from(["cpu", "cuda"]),
    "batches": st.lists(st.fixed_dictionaries({"kind": safe_text}), max_size=3),
    "num_inner_steps": st.integers(0, 3), "require_exact_steps": st.booleans(),
    "split": st.sampled_from(["Train", "Test", {"Custom": "c"}]),
    "policy": st.sampled_from(["Ema", "WeightedMean", {"Custom": "c"}]),
    "strategy": st.sampled_from(["Replace", {"RootEma": {"canonical_weight": 0.5}}]),
    "state_dict_filter": st.none() | st.fixed_dictionaries(
        {}, optional={"include_globs": st.lists(safe_text, max_size=2),
                      "exclude_globs": st.lists(safe_text, max_size=2)},
    ),
    "candidates": st.lists(
        st.fixed_dictionaries({"model_id": model_ids, "sample_weight": st.floats(0, 2),
                               "quality_weight": st.floats(0, 2)}),
        max_size=2,
    ),
    "class": st.sampled_from(["Hot", "Warm", "Cold"]),
    "values": st.dictionaries(safe_text, st.integers(), max_size=2),
}  # fmt: skip


def params_for(method: str):
    """Complete plausible params (to reach the hooks), partial ones, or any JSON."""
    valid, bad, required = valid_params(Path("/unused"))[method]
    keys = sorted(set(required) | {p for p, _ in bad if p != "params"} | set(valid or {}))
    plausible = {k: PLAUSIBLE.get(k, safe_text) for k in keys}
    complete = st.fixed_dictionaries(
        {k: plausible[k] for k in required},
        optional={k: plausible[k] for k in keys if k not in required},
    )
    partial = st.fixed_dictionaries({}, optional={k: plausible[k] | json_values for k in keys})
    return complete | partial | json_values


@contextlib.contextmanager
def inside_temporary_directory():
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as directory:
        os.chdir(directory)
        try:
            yield
        finally:
            os.chdir(old)


@given(st.data())
def test_fuzzed_params_for_every_method_get_a_clean_answer(data):
    method = data.draw(st.sampled_from(sorted(METHODS)), label="method")
    params = data.draw(params_for(method), label="params")
    request_id = data.draw(st.integers(1, 2**64 - 1), label="id")
    worker = Worker(FastWorkload({}))
    for _ in range(2):
        ok(worker, "init_model", {"device": "cpu"})
    with inside_temporary_directory():
        body = json.dumps({"id": request_id, "method": method, "params": params}).encode()
        response = decode_response(worker.respond(body), request_id)
    event(f"{method}: ok={response['ok']}")
    if method != "shutdown":
        assert_still_serving(worker)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_always_get_a_valid_response_frame(body):
    worker = Worker(FastWorkload({}))
    decode_response(worker.respond(body))
    assert_still_serving(worker)


@given(
    st.dictionaries(
        st.sampled_from(["id", "method", "params", "extra"]),
        st.one_of(json_values, st.sampled_from(sorted(METHODS))),
    )
)
def test_arbitrary_request_objects_always_get_a_valid_response(message):
    worker = Worker(FastWorkload({}))
    with inside_temporary_directory():
        frame = worker.respond(json.dumps(message).encode())
    response = decode_response(frame)
    request_id = message.get("id")
    if type(request_id) is int and 0 <= request_id < 2**64:
        assert response["id"] == request_id  # a valid id is echoed, whatever else is wrong
    else:
        assert response["id"] == 0 and response["ok"] is False


def test_encode_frame_is_the_response_format(worker):
    frame = worker.respond(b'{"id": 1, "method": "hello", "params": null}')
    assert frame == encode_frame({"id": 1, "ok": True, "result": ok(worker, "hello")})
