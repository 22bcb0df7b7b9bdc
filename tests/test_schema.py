"""Parameter schema nodes (worker.schema) and the protocol's enums (worker.methods).

Errors are checked as the dispatcher renders them: it sets ``method`` on the
error, and ``str()`` gives ``method: params.<path>: expected X, got Y``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from worker import schema
from worker.errors import ParamError, RequestError, RequestFault, UnknownModelError
from worker.methods import (
    EVAL_SPLIT,
    MERGE_POLICY,
    PATCH_CLASS,
    RECONCILE,
    Candidate,
    MergeParams,
    RuntimePatch,
)
from worker.protocol import NO_FILTER, StateFilter
from worker.schema import (
    BATCH_REFS,
    BOOL,
    FILTER,
    MODEL,
    NULL,
    NUMBER,
    OPTIONAL_PATH,
    PATH,
    TEXT,
    TEXT_ANY,
    U32,
    U64,
    Const,
    ListOf,
    Model,
    Record,
    param,
    whole,
)


def _error(node: schema.Node, value: Any, path: str = "p", models: Any = None) -> RequestError:
    with pytest.raises(RequestError) as info:
        node.decode(value, path, models or {})
    assert isinstance(info.value, RequestFault)
    info.value.method = "m"
    return info.value


@dataclass(frozen=True, kw_only=True)
class Device:
    device: str = param(TEXT)


# -- records ---------------------------------------------------------------------


def test_a_record_builds_its_dataclass_and_ignores_unknown_keys():
    assert Record(Device).decode({"device": "cpu", "extra": 1}, "", {}) == Device(device="cpu")


def test_params_that_are_not_an_object_name_params_itself():
    error = _error(Record(Device), [1], path="")
    assert str(error) == "m: params: expected an object, got [1] (list)"
    assert isinstance(error, ParamError) and error.param == ""


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({}, "expected a string (missing)"), ({"device": 3}, "got 3 (int)"),
     ({"device": ""}, "expected a non-empty string")],
)  # fmt: skip
def test_a_field_error_names_method_param_and_expectation(params, fragment):
    error = _error(Record(Device), params, path="")
    assert str(error).startswith("m: params.device: expected")
    assert fragment in str(error)
    assert (error.method, error.param) == ("m", "device")


def test_nested_paths_name_list_items_and_their_fields():
    models = {"m1": object(), "m2": object()}
    good = {"model_id": "m2", "sample_weight": 1, "quality_weight": 0.5}
    params = {"base_model_id": "m1", "candidates": [good, {**good, "model_id": 7}], "policy": "Ema"}
    error = _error(Record(MergeParams), params, path="", models=models)
    assert str(error).startswith("m: params.candidates[1].model_id: expected a string, got 7")


def test_a_whole_field_receives_the_object_as_sent():
    patch = {"patch_id": "", "class": "Warm", "custom": [1]}
    decoded = Record(RuntimePatch).decode(patch, "", {})
    assert decoded.patch is patch and decoded.patch_class == "Warm" and decoded.values is None


def test_optional_fields_take_their_default_and_wire_names_differ_from_attributes():
    @dataclass(frozen=True, kw_only=True)
    class Opt:
        kind: str = param(TEXT, wire="class")
        flag: bool = param(BOOL, False)
        raw: dict = whole()

    decoded = Record(Opt).decode({"class": "x"}, "", {})
    assert (decoded.kind, decoded.flag, decoded.raw) == ("x", False, {"class": "x"})
    assert "params.class" in str(_error(Record(Opt), {"kind": "x"}, path=""))


def test_candidates_reach_the_hook_with_the_model_in_place_of_the_handle():
    state = object()
    raw = {"peer_id": "p", "model_id": "m1", "sample_weight": 2, "quality_weight": 1, "x": 1}
    candidate = Record(Candidate).decode(raw, "c", {"m1": state})
    assert candidate.for_hook() == {
        "peer_id": "p", "model": state, "sample_weight": 2.0, "quality_weight": 1.0, "x": 1,
    }  # fmt: skip
    assert _error(Record(Candidate), {**raw, "peer_id": None}, path="c").param == "c.peer_id"


# -- scalars ---------------------------------------------------------------------


def test_null_params():
    assert NULL.decode(None, "", {}) is None
    assert NULL.decode({}, "", {}) is None
    assert "expected null" in str(_error(NULL, {"x": 1}, path=""))


def test_text_allowing_empty():
    assert TEXT_ANY.decode("", "p", {}) == ""
    assert "expected a string" in str(_error(TEXT_ANY, None))


def test_paths_refuse_nul_and_what_the_filesystem_cannot_encode():
    assert "NUL" in str(_error(PATH, "a\x00b"))
    assert "filesystem encoding" in str(_error(PATH, "a\ud800"))
    assert PATH.decode("a/b", "p", {}) == "a/b"
    assert OPTIONAL_PATH.decode(None, "p", {}) is None
    assert "non-empty" in str(_error(OPTIONAL_PATH, ""))


@pytest.mark.parametrize("value", [-1, 2**32, 1.0, True, "3", None])
def test_u32_refuses(value):
    error = _error(U32, value, path="n")
    assert "params.n" in str(error) and "0..=4294967295" in str(error)


def test_unsigned_bounds():
    assert U32.decode(0, "n", {}) == 0
    assert U32.decode(2**32 - 1, "n", {}) == 2**32 - 1
    assert U64.decode(2**64 - 1, "n", {}) == 2**64 - 1
    assert "0..=18446744073709551615" in str(_error(U64, 2**64))


def test_booleans_refuse_ints():
    assert BOOL.decode(False, "b", {}) is False
    assert "a boolean" in str(_error(BOOL, 0))
    assert "missing" in str(_error(Record(_Flag), {}, path=""))


@dataclass(frozen=True, kw_only=True)
class _Flag:
    b: bool = param(BOOL)


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), "1", None, True, 10**400, -(10**309)]
)
def test_numbers_refuse_non_finite_non_numbers_and_ints_beyond_float(value):
    error = _error(NUMBER, value, path="w")
    assert str(error).startswith("m: params.w: expected a finite number, got")
    assert len(str(error)) < 150


def test_numbers_accept_ints_as_floats():
    assert NUMBER.decode(2, "w", {}) == 2.0 and type(NUMBER.decode(2, "w", {})) is float
    assert NUMBER.decode(10**300, "w", {}) == 1e300


def test_const():
    assert Const(1).decode(1, "v", {}) == 1
    for bad in (2, True, 1.0, "1"):
        assert str(_error(Const(1), bad, path="v")).startswith("m: params.v: expected 1, got")


def test_lists_decode_every_item_with_its_index():
    assert ListOf(U32).decode([1, 2], "l", {}) == [1, 2]
    assert "params.l: expected a list" in str(_error(ListOf(U32), {}, path="l"))
    assert "params.l[1]: expected an integer" in str(_error(ListOf(U32), [1, -1], path="l"))


# -- model handles -------------------------------------------------------------------


def test_a_handle_resolves_to_its_model():
    state = object()
    assert MODEL.decode("m1", "model_id", {"m1": state}) == Model("m1", state)


def test_an_unknown_handle_names_the_slot_and_the_live_models():
    error = _error(MODEL, "m404", path="base_model_id", models={"m1": 1, "m2": 2})
    assert isinstance(error, UnknownModelError)
    assert str(error).startswith("m: params.base_model_id: unknown model id 'm404' (live models")
    assert "live models: m1, m2)" in str(error)
    many = {f"m{i}": i for i in range(1, 15)}
    assert "m10 and 4 more" in str(_error(MODEL, "x", models=many))
    assert "live models: none" in str(_error(MODEL, "x"))


def test_an_unknown_handle_is_shown_truncated():
    assert len(str(_error(MODEL, "h" * 100_000))) < 300


# -- filters ---------------------------------------------------------------------


def test_filters_accept_defaults_and_round_trip():
    assert FILTER.decode(None, "f", {}) is NO_FILTER
    assert FILTER.decode({}, "f", {}) == NO_FILTER
    assert FILTER.decode({"include_globs": None}, "f", {}) == NO_FILTER
    flt = FILTER.decode({"include_globs": ["a*"], "exclude_globs": ["*b"]}, "f", {})
    assert flt == StateFilter(("a*",), ("*b",))
    assert flt.to_json() == {"include_globs": ["a*"], "exclude_globs": ["*b"]}


@pytest.mark.parametrize(
    ("value", "param_path"),
    [
        ([], "state_dict_filter"),
        ({"include": ["a"]}, "state_dict_filter"),
        ({"include_globs": "a*"}, "state_dict_filter.include_globs"),
        ({"include_globs": ""}, "state_dict_filter.include_globs"),
        ({"include_globs": [""]}, "state_dict_filter.include_globs[0]"),
        ({"exclude_globs": ["ok", "  "]}, "state_dict_filter.exclude_globs[1]"),
        ({"exclude_globs": ["a\x00"]}, "state_dict_filter.exclude_globs[0]"),
        ({"exclude_globs": [3]}, "state_dict_filter.exclude_globs[0]"),
    ],
)
def test_invalid_filters_name_the_offending_part(value, param_path):
    error = _error(FILTER, value, path="state_dict_filter")
    assert str(error).startswith(f"m: params.{param_path}: expected")


# -- batch refs ------------------------------------------------------------------------


def test_batch_refs_are_shallow_and_never_copied():
    refs = [{"kind": "micro_epoch", "anything": [1]}, {"kind": "cached_microshard_group"}]
    assert BATCH_REFS.decode(refs, "batches", {}) is refs
    error = _error(BATCH_REFS, [{"kind": "a"}, {"no": 1}], path="batches")
    assert "params.batches[1]: expected a BatchRef object" in str(error)
    assert "params.batches: expected a list" in str(_error(BATCH_REFS, {}, path="batches"))


# -- enums -------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["Train", "Validation", "Test", {"Custom": "holdout"}])
def test_eval_splits(split):
    assert EVAL_SPLIT.decode(split, "split", {}) == split


@pytest.mark.parametrize(
    ("split", "where"),
    [("train", "split"), ({"Custom": 1}, "split.Custom"), ({"Custom": "a", "x": 1}, "split"),
     (None, "split"), (["Train"], "split"), ({"Train": None}, "split")],
)  # fmt: skip
def test_bad_eval_splits(split, where):
    assert str(_error(EVAL_SPLIT, split, path="split")).startswith(f"m: params.{where}: expected")


def test_enum_expectations_list_every_variant():
    assert EVAL_SPLIT.expected == '"Train", "Validation", "Test" or {"Custom": str}'
    assert RECONCILE.expected == '"Replace" or {"RootEma": {"canonical_weight": float}}'
    assert PATCH_CLASS.expected == '"Hot", "Warm" or "Cold"'
    assert MERGE_POLICY.expected.startswith('"WeightedMean", "NormClippedWeightedMean"')


@pytest.mark.parametrize(
    "policy",
    ["WeightedMean", "NormClippedWeightedMean", "TrimmedMean", "Ema", "QualityWeightedEma",
     {"Custom": "mine"}],
)  # fmt: skip
def test_merge_policies(policy):
    assert MERGE_POLICY.decode(policy, "policy", {}) == policy


@pytest.mark.parametrize("policy", ["Mean", {"Custom": None}, 3, None])
def test_bad_merge_policies(policy):
    assert "params.policy" in str(_error(MERGE_POLICY, policy, path="policy"))


@pytest.mark.parametrize("strategy", ["Replace", {"RootEma": {"canonical_weight": 0.25}}])
def test_reconcile_strategies(strategy):
    assert RECONCILE.decode(strategy, "strategy", {}) == strategy


@pytest.mark.parametrize(
    "strategy",
    ["replace", {"RootEma": {}}, {"RootEma": {"canonical_weight": float("nan")}},
     {"RootEma": {"canonical_weight": "0.5"}}, {"RootEma": 0.5}, None,
     {"RootEma": {"canonical_weight": 10**400}}],
)  # fmt: skip
def test_bad_reconcile_strategies(strategy):
    assert "params.strategy" in str(_error(RECONCILE, strategy, path="strategy"))


def test_runtime_patches():
    patch = {"patch_id": "p", "class": "Hot", "summary": "", "values": {"lr": 0.1}}
    assert Record(RuntimePatch).decode(patch, "", {}).patch is patch
    assert "params.class" in str(_error(Record(RuntimePatch), {**patch, "class": "hot"}, ""))
    assert "params.values" in str(_error(Record(RuntimePatch), {**patch, "values": []}, ""))
    assert "params.values" in str(_error(Record(RuntimePatch), {**patch, "values": None}, ""))
    assert "params.patch_id" in str(_error(Record(RuntimePatch), {"class": "Hot"}, ""))
