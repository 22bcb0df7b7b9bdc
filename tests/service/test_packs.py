"""Parameter packs through the dispatcher: plans, custom pack hooks, filters, export/import."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.service.support import (
    TINY_FLOAT_KEYS,
    MultiModule,
    error,
    export,
    import_,
    model_state,
    ok,
    perturb,
)
from tests.workloads import TinyWorkload
from worker.packs import MANIFEST_NAME, PACK_FORMAT
from worker.service import Worker

# -- parameter_pack_plan ------------------------------------------------------------------


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


def test_a_plan_with_40000_globs_compiles_each_glob_once(worker, monkeypatch):
    """Issue 16 item 19: 40,000 globs fell off fnmatch's cache (71-100 s for 24 keys)."""
    import fnmatch

    calls = []
    translate = fnmatch.translate
    monkeypatch.setattr(fnmatch, "translate", lambda g: calls.append(g) or translate(g))
    include = [f"{i}.*" for i in range(40_000)] + ["item19-literal"]
    exclude = [f"*.bias-{i}?" for i in range(40_000)] + ["*.bias"]
    flt = {"include_globs": include, "exclude_globs": exclude}
    plan = ok(worker, "parameter_pack_plan", {"device": "cpu", "state_dict_filter": flt})
    assert plan["included_keys"] == [k for k in TINY_FLOAT_KEYS if not k.endswith(".bias")]
    assert len(calls) <= len(include) + len(exclude)


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


# -- export / import through the worker ---------------------------------------------------------


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
