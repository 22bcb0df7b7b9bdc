"""The spec and everything derived from it: client methods, decoders, conformance
tables, hypothesis strategies."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from fakecoord import client as client_module
from fakecoord import examples, schema, spec, strategies, wire
from fakecoord.client import WorkerClient
from fakecoord.errors import DecodeError

METHODS = sorted(spec.METHODS)

# The public typed methods as they were before the spec existed (other code depends on them).
SIGNATURES = {
    "hello": [],
    "capability_probe": [],
    "init_model": [("device", "cpu")],
    "parameter_pack_plan": [("device",), ("state_dict_filter", None)],
    "train_window": [("model_id",), ("batches",)],
    "evaluate": [("model_id",), ("split",)],
    "apply_patch": [("patch",)],
    "load_model_artifact": [("model_id",), ("artifact_path",)],
    "materialize_model_artifact": [("model_id",), ("artifact_path",)],
    "export_parameter_pack": [
        ("model_id",), ("parameter_pack_path",), ("model_schema_hash",), ("state_dict_filter", None),
    ],
    "import_parameter_pack": [("device",), ("parameter_pack_path",), ("state_dict_filter", None)],
    "run_inner_loop": [("job",)],
    "merge_candidate_models": [("base_model_id",), ("candidates",), ("policy",)],
    "apply_single_root_ema": [("base_model_id",), ("merged_model_id",), ("policy",)],
    "reconcile_canonical_model": [("local_model_id",), ("canonical_model_id",), ("strategy",)],
    "release_model": [("model_id",)],
    "shutdown": [],
}  # fmt: skip


def _positional(signature: inspect.Signature) -> list[tuple[Any, ...]]:
    out = []
    for p in list(signature.parameters.values())[1:]:
        if p.kind is p.KEYWORD_ONLY:
            continue
        out.append((p.name,) if p.default is p.empty else (p.name, p.default))
    return out


def test_every_spec_method_has_a_typed_client_method() -> None:
    for name, m in spec.METHODS.items():
        method = getattr(WorkerClient, name)
        signature = inspect.signature(method)
        expected = [
            (a.name,) if a.default is spec.REQUIRED else (a.name, a.default) for a in m.client_args
        ]
        assert _positional(signature) == expected, name
        timeout = signature.parameters["timeout"]
        assert timeout.kind is timeout.KEYWORD_ONLY and timeout.default is None
        assert method.__doc__ and method.__name__ == name


def test_the_typed_methods_keep_their_old_signatures() -> None:
    for name, expected in SIGNATURES.items():
        assert _positional(inspect.signature(getattr(WorkerClient, name))) == expected, name


def test_methods_are_in_protocol_order_and_name_their_rust_types() -> None:
    assert list(spec.METHODS)[:3] == ["hello", "capability_probe", "init_model"]
    assert list(spec.METHODS)[-1] == "shutdown"
    for m in spec.METHODS.values():
        assert m.result.rust and (m.params is None or m.params.fields)
        if m.returns:
            assert m.returns in m.result.names  # type: ignore[attr-defined]


def test_params_are_built_as_the_client_always_sent_them(tmp_path: Any) -> None:
    """Same fields, same order, same omissions: requests stay byte-identical."""
    f = {"include_globs": ["a*"], "exclude_globs": []}
    cases = [
        (("init_model", ("cuda",)), {"device": "cuda"}),
        (("parameter_pack_plan", ("cpu", None)), {"device": "cpu", "state_dict_filter": spec.EMPTY_FILTER}),
        (("parameter_pack_plan", ("cpu", f)), {"device": "cpu", "state_dict_filter": f}),
        (("train_window", ("m1", ({"kind": "x"},))), {"model_id": "m1", "batches": [{"kind": "x"}]}),
        (("load_model_artifact", ("m1", tmp_path / "a")), {"model_id": "m1", "artifact_path": str(tmp_path / "a")}),
        (("export_parameter_pack", ("m1", tmp_path, "s", None)), {
            "model_id": "m1", "parameter_pack_path": str(tmp_path), "model_schema_hash": "s",
        }),
        (("import_parameter_pack", ("cpu", tmp_path, f)), {
            "device": "cpu", "parameter_pack_path": str(tmp_path), "state_dict_filter": f,
        }),
        (("merge_candidate_models", ("b", [{"model_id": "c"}], "Ema")), {
            "base_model_id": "b", "candidates": [{"model_id": "c"}], "policy": "Ema",
        }),
        (("apply_patch", ({"class": "Hot", "anything": 1},)), {"class": "Hot", "anything": 1}),
        (("evaluate", ("m1", float("nan"))), {"model_id": "m1", "split": float("nan")}),
        (("hello", ()), None),
    ]  # fmt: skip
    for (name, args), expected in cases:
        names = [a.name for a in spec.method(name).client_args]
        params = spec.build_params(name, dict(zip(names, args, strict=True)))
        assert params == expected or str(params) == str(expected), name
        if params is not None:
            assert list(params) == list(expected), name  # key order is on the wire


def test_an_unknown_method_is_named() -> None:
    with pytest.raises(KeyError, match="'nope' is not a protocol method"):
        spec.decode_result("nope", {})


# ---------------------------------------------------------------------------
# Decoders against the strategies


def _examples(strategy: st.SearchStrategy[Any], count: int = 60) -> Any:
    return settings(max_examples=count, deadline=None, suppress_health_check=list(HealthCheck))(
        given(strategy)
    )


@pytest.mark.parametrize("name", METHODS)
def test_decoders_accept_every_serde_form_the_strategies_draw(name: str) -> None:
    @_examples(strategies.results(name))
    def check(result: Any) -> None:
        spec.decode_result(name, result)
        body = wire.encode_body({"id": 4, "ok": True, "result": result})
        spec.decode_result(name, spec.parse_response(name, body, 4), validated=True)

    check()


@pytest.mark.parametrize("name", METHODS)
def test_decoders_refuse_every_mutation_at_its_path(name: str) -> None:
    @_examples(strategies.invalid_results(name))
    def check(case: tuple[str, Any]) -> None:
        path, result = case
        with pytest.raises(DecodeError) as info:
            spec.decode_result(name, result)
        assert info.value.field.startswith(path) and info.value.method == name

    check()


@pytest.mark.parametrize("name", [m for m in METHODS if spec.METHODS[m].params is not None])
def test_params_strategies_draw_params_of_the_spec_type(name: str) -> None:
    params_type = spec.METHODS[name].params

    @_examples(strategies.params(name, models=["m1", "m2"], root="/r"))
    def check(params: Any) -> None:
        assert schema.decode_bytes(params_type, wire.encode_body(params)) == params  # type: ignore[arg-type]
        for f in params_type.fields:  # type: ignore[union-attr]
            if isinstance(f.type, schema.Str) and f.type.role == "model_id":
                assert params[f.name] in ("m1", "m2")

    check()


# ---------------------------------------------------------------------------
# Conformance's error-path tables


# The hand-written tables conformance/checks_errors.py had before they were derived.
OLD_REQUIRED = {
    "init_model": ["device"],
    "parameter_pack_plan": ["device"],
    "train_window": ["model_id", "batches"],
    "evaluate": ["model_id", "split"],
    "apply_patch": ["patch_id", "class"],
    "load_model_artifact": ["model_id", "artifact_path"],
    "materialize_model_artifact": ["model_id", "artifact_path"],
    "export_parameter_pack": ["model_id", "parameter_pack_path", "model_schema_hash"],
    "import_parameter_pack": ["device", "parameter_pack_path"],
    "run_inner_loop": ["model_id", "batches", "num_inner_steps", "output_parameter_pack_path",
                       "model_schema_hash", "require_exact_steps"],
    "merge_candidate_models": ["base_model_id", "candidates", "policy"],
    "apply_single_root_ema": ["base_model_id", "merged_model_id", "policy"],
    "reconcile_canonical_model": ["local_model_id", "canonical_model_id", "strategy"],
    "release_model": ["model_id"],
}  # fmt: skip
OLD_MODEL_SLOTS = [
    ("train_window", "model_id"), ("evaluate", "model_id"), ("load_model_artifact", "model_id"),
    ("materialize_model_artifact", "model_id"), ("export_parameter_pack", "model_id"),
    ("run_inner_loop", "model_id"), ("merge_candidate_models", "base_model_id"),
    ("merge_candidate_models", "candidates"), ("apply_single_root_ema", "base_model_id"),
    ("apply_single_root_ema", "merged_model_id"), ("reconcile_canonical_model", "local_model_id"),
    ("reconcile_canonical_model", "canonical_model_id"),
]  # fmt: skip
CANDIDATE = {"peer_id": "p", "head_id": "h", "artifact_id": "a", "model_id": "m2",
             "sample_weight": 1.0, "quality_weight": 1.0}  # fmt: skip
OLD_ILL_TYPED = [
    ("init_model", "device", 7, "device"),
    ("init_model", "device", ["cpu"], "device"),
    ("parameter_pack_plan", "device", None, "device"),
    ("parameter_pack_plan", "state_dict_filter", "*", "state_dict_filter"),
    ("parameter_pack_plan", "state_dict_filter", {"include_globs": "*"}, "include_globs"),
    ("train_window", "model_id", 7, "model_id"),
    ("train_window", "batches", {"kind": "micro_epoch"}, "batches"),
    ("train_window", "batches", [5], "batches"),
    ("evaluate", "split", "Bogus", "split"),
    ("evaluate", "split", {"Custom": 5}, "split"),
    ("apply_patch", "class", "Lukewarm", "class"),
    ("apply_patch", "values", ["learning_rate"], "values"),
    ("load_model_artifact", "artifact_path", 7, "artifact_path"),
    ("materialize_model_artifact", "artifact_path", ["x"], "artifact_path"),
    ("export_parameter_pack", "parameter_pack_path", 7, "parameter_pack_path"),
    ("export_parameter_pack", "model_schema_hash", 7, "model_schema_hash"),
    ("export_parameter_pack", "state_dict_filter", 5, "state_dict_filter"),
    ("import_parameter_pack", "device", 7, "device"),
    ("import_parameter_pack", "parameter_pack_path", None, "parameter_pack_path"),
    ("run_inner_loop", "num_inner_steps", -1, "num_inner_steps"),
    ("run_inner_loop", "num_inner_steps", "2", "num_inner_steps"),
    ("run_inner_loop", "num_inner_steps", 2**32, "num_inner_steps"),
    ("run_inner_loop", "require_exact_steps", "yes", "require_exact_steps"),
    ("run_inner_loop", "output_parameter_pack_path", 7, "output_parameter_pack_path"),
    ("merge_candidate_models", "candidates", "all", "candidates"),
    ("merge_candidate_models", "candidates", [dict(CANDIDATE, sample_weight="heavy")],
     "sample_weight"),
    ("merge_candidate_models", "policy", "Bogus", "policy"),
    ("apply_single_root_ema", "policy", {"Custom": 3}, "policy"),
    ("reconcile_canonical_model", "strategy", "Bogus", "strategy"),
    ("reconcile_canonical_model", "strategy", {"RootEma": {"canonical_weight": "half"}},
     "strategy"),
]  # fmt: skip


def _shape(value: Any) -> Any:
    """The JSON shape of a value: kinds, keys, and for integers their sign and u32 overflow."""
    if isinstance(value, bool) or value is None:
        return repr(value) if value is None else "bool"
    if isinstance(value, int):
        return ("int", value < 0, value > 2**32 - 1)
    if isinstance(value, (float, str)):
        return type(value).__name__
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return {k: _shape(v) for k, v in value.items()}


def _covers(new: Any, old: Any) -> bool:
    """``new`` has ``old``'s shape; an object may have more keys than the old one named."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(
            k in new and _covers(new[k], v) for k, v in old.items()
        )
    if isinstance(old, list):
        return isinstance(new, list) and len(new) == len(old) and all(map(_covers, new, old))
    return new == old


def test_required_params_and_model_slots_are_the_old_tables() -> None:
    assert set(OLD_REQUIRED) <= set(examples.object_methods())
    assert {m: examples.required_params(m) for m in OLD_REQUIRED} == OLD_REQUIRED
    assert [s for s in examples.model_slots() if s[0] in OLD_REQUIRED] == OLD_MODEL_SLOTS


def test_derived_ill_typed_params_cover_every_hand_written_case() -> None:
    ex = examples.Examples(models=("m1", "m2"))
    derived = [c for m in examples.object_methods() for c in examples.ill_typed_params(m, ex)]
    for method, key, value, mention in OLD_ILL_TYPED:
        assert any(
            (c.method, c.field, c.mention) == (method, key, mention)
            and _covers(_shape(c.value), _shape(value))
            for c in derived
        ), (method, key, value, mention)
    assert len(derived) > len(OLD_ILL_TYPED)


@pytest.mark.parametrize("name", examples.object_methods())
def test_valid_params_decode_and_every_ill_typed_variant_does_not(name: str) -> None:
    ex = examples.Examples(models=("m1", "m2"))
    params_type = spec.method(name).params
    valid = examples.valid_params(name, ex)
    schema.decode(params_type, valid)  # type: ignore[arg-type]
    for case in examples.ill_typed_params(name, ex):
        with pytest.raises(DecodeError):
            schema.decode(params_type, {**valid, case.field: case.value})  # type: ignore[arg-type]
    for f in examples.required_params(name):
        with pytest.raises(DecodeError, match=f):
            schema.decode(params_type, {k: v for k, v in valid.items() if k != f})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Adding a method


def test_a_new_spec_entry_is_all_this_side_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    params = schema.Struct(
        "frobnicate params",
        (schema.Field("model_id", spec.MODEL_ID), schema.Field("level", schema.U32, default=1)),
    )
    entry = spec.Method(
        "frobnicate",
        params=params,
        result=spec.MODEL_HANDLE,
        doc="Frobnicate a model.",
        args=(spec.Arg("model_id"), spec.Arg("level", None, spec.OMIT)),
        returns="model_id",
    )
    monkeypatch.setitem(spec.METHODS, "frobnicate", entry)
    typed = client_module._typed_method(entry)
    assert str(inspect.signature(typed)) == "(self, model_id, level=None, *, timeout=None)"

    class Recorder:
        def _invoke(self, method: str, arguments: dict, timeout: Any) -> Any:
            return method, spec.build_params(method, arguments), timeout

    assert typed(Recorder(), "m1", timeout=3) == ("frobnicate", {"model_id": "m1"}, 3)
    assert spec.build_params("frobnicate", {"model_id": "m1", "level": None}) == {"model_id": "m1"}
    assert spec.decode_result("frobnicate", {"model_id": "m3"}) == "m3"
    assert examples.required_params("frobnicate") == ["model_id"]
    assert ("frobnicate", "model_id") in examples.model_slots()
    assert [c.value for c in examples.ill_typed_params("frobnicate", examples.Examples())][-2:] == [
        "2",
        1.5,
    ]
    drawn = find(strategies.params("frobnicate"), lambda p: "level" in p)
    assert type(drawn["level"]) is int and 0 <= drawn["level"] <= 2**32 - 1
