"""Pure request parsing, parameter validators and result shaping (worker.protocol)."""

from __future__ import annotations

import enum
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import ParamError, RequestError, WorkloadError
from worker.protocol import (
    NO_FILTER,
    NO_ID,
    BadRequest,
    Request,
    StateFilter,
    check_batches,
    check_capability,
    check_eval_split,
    check_merge_policy,
    check_patch,
    check_patch_outcome,
    check_reconcile,
    metric_value,
    metrics_map,
    params_null,
    params_object,
    parse_filter,
    parse_request,
    require_bool,
    require_number,
    require_path,
    require_str,
    require_uint,
)

# -- parse_request ---------------------------------------------------------------


def test_parse_request_returns_id_method_params():
    request = parse_request(b'{"id": 7, "method": "init_model", "params": {"device": "cpu"}}')
    assert request == Request(7, "init_model", {"device": "cpu"})


def test_missing_params_is_null():
    assert parse_request(b'{"id": 1, "method": "hello"}').params is None


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty frame"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"id": 1, "method": "hello"', "not valid JSON"),
        (b'{"id": 1, "method": "hello", "params": NaN}', "not valid JSON"),
        (b'{"id": 1, "method": "hello", "params": Infinity}', "not valid JSON"),
        (b"[1, 2, 3]", "expected a JSON object, got list"),
        (b'"hello"', "expected a JSON object, got str"),
        (b'{"method": "hello"}', "missing 'id'"),
        (b'{"id": -1, "method": "hello"}', "'id' must be an unsigned 64-bit integer"),
        (b'{"id": 18446744073709551616, "method": "hello"}', "unsigned 64-bit"),
        (b'{"id": 1.0, "method": "hello"}', "unsigned 64-bit"),
        (b'{"id": true, "method": "hello"}', "unsigned 64-bit"),
        (b'{"id": "1", "method": "hello"}', "unsigned 64-bit"),
        (b"[" * 100_000, "not valid JSON"),
    ],
    ids=[
        "empty", "not-utf8", "truncated", "nan", "infinity", "list", "string", "no-id",
        "negative-id", "id-over-u64", "float-id", "bool-id", "string-id", "deep-nesting",
    ],
)  # fmt: skip
def test_malformed_frames_are_bad_requests_without_an_id(body, fragment):
    with pytest.raises(BadRequest) as info:
        parse_request(body)
    assert info.value.request_id == NO_ID
    assert fragment in str(info.value)
    assert str(info.value).startswith("request")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b'{"id": 9}', "missing 'method'"), (b'{"id": 9, "method": 5}', "'method' must be a string")],
)
def test_a_valid_id_is_echoed_even_when_the_method_is_bad(body, fragment):
    with pytest.raises(BadRequest) as info:
        parse_request(body)
    assert info.value.request_id == 9 and fragment in str(info.value)


def test_largest_u64_id_is_valid():
    assert parse_request(b'{"id": 18446744073709551615, "method": "x"}').id == 2**64 - 1


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_bad_request(body):
    try:
        request = parse_request(body)
    except BadRequest as exc:
        assert str(exc)
    else:
        assert isinstance(request.id, int) and isinstance(request.method, str)


# -- parameter validators ---------------------------------------------------------


def _error(fn, *args, **kwargs) -> ParamError:
    with pytest.raises(ParamError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, RequestError)
    return info.value


def test_params_object_and_null():
    assert params_object("m", {"a": 1}) == {"a": 1}
    error = _error(params_object, "init_model", [1])
    assert str(error).startswith("init_model: params: expected an object, got [1] (list)")
    params_null("hello", None)
    params_null("hello", {})
    assert "null" in str(_error(params_null, "hello", {"x": 1}))


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({}, "missing"), ({"device": 3}, "got 3 (int)"), ({"device": ""}, "non-empty")],
)
def test_require_str_names_method_param_and_expectation(params, fragment):
    error = _error(require_str, "init_model", params, "device")
    assert str(error).startswith("init_model: params.device: expected")
    assert fragment in str(error)
    assert (error.method, error.param) == ("init_model", "device")


def test_require_str_allow_empty():
    assert require_str("m", {"k": ""}, "k", allow_empty=True) == ""


def test_require_path_refuses_nul():
    assert "NUL" in str(_error(require_path, "m", {"p": "a\x00b"}, "p"))
    assert require_path("m", {"p": "a/b"}, "p") == "a/b"


@pytest.mark.parametrize("value", [-1, 2**32, 1.0, True, "3", None])
def test_require_uint_refuses(value):
    error = _error(require_uint, "run_inner_loop", {"n": value}, "n")
    assert "params.n" in str(error) and "0..=4294967295" in str(error)


def test_require_uint_bounds():
    assert require_uint("m", {"n": 0}, "n") == 0
    assert require_uint("m", {"n": 2**32 - 1}, "n") == 2**32 - 1


def test_require_bool_refuses_ints():
    assert require_bool("m", {"b": False}, "b") is False
    assert "a boolean" in str(_error(require_bool, "m", {"b": 0}, "b"))
    assert "missing" in str(_error(require_bool, "m", {}, "b"))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "1", None, True])
def test_require_number_refuses_non_finite_and_non_numbers(value):
    assert "finite number" in str(_error(require_number, "m", {"w": value}, "w"))


def test_require_number_accepts_ints_as_floats():
    assert require_number("m", {"w": 2}, "w") == 2.0


# -- filters ---------------------------------------------------------------------


def test_filter_semantics_are_case_sensitive_fnmatch():
    flt = StateFilter(("encoder.*", "head.*"), ("*.bias",))
    assert flt.selects("encoder.weight")
    assert not flt.selects("encoder.bias")
    assert not flt.selects("Encoder.weight")
    assert not flt.selects("decoder.weight")
    assert StateFilter((), ("*.bias",)).selects("anything.weight")
    assert NO_FILTER.is_trivial and NO_FILTER.selects("x")


def test_parse_filter_accepts_defaults_and_round_trips():
    assert parse_filter("m", None) is NO_FILTER
    assert parse_filter("m", {}) == NO_FILTER
    flt = parse_filter("m", {"include_globs": ["a*"], "exclude_globs": ["*b"]})
    assert flt.to_json() == {"include_globs": ["a*"], "exclude_globs": ["*b"]}


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ([], "state_dict_filter"),
        ({"include": ["a"]}, "state_dict_filter"),
        ({"include_globs": "a*"}, "state_dict_filter.include_globs"),
        ({"include_globs": [""]}, "state_dict_filter.include_globs[0]"),
        ({"exclude_globs": ["ok", "  "]}, "state_dict_filter.exclude_globs[1]"),
        ({"exclude_globs": ["a\x00"]}, "state_dict_filter.exclude_globs[0]"),
        ({"exclude_globs": [3]}, "state_dict_filter.exclude_globs[0]"),
    ],
)
def test_invalid_filters_name_the_offending_part(value, param):
    error = _error(parse_filter, "export_parameter_pack", value)
    assert str(error).startswith(f"export_parameter_pack: params.{param}: expected")


# -- enums -------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["Train", "Validation", "Test", {"Custom": "holdout"}])
def test_eval_splits(split):
    assert check_eval_split("evaluate", split) == split


@pytest.mark.parametrize(
    "split", ["train", {"Custom": 1}, {"Custom": "a", "x": 1}, None, ["Train"]]
)
def test_bad_eval_splits(split):
    assert "params.split" in str(_error(check_eval_split, "evaluate", split))


@pytest.mark.parametrize(
    "policy",
    ["WeightedMean", "NormClippedWeightedMean", "TrimmedMean", "Ema", "QualityWeightedEma",
     {"Custom": "mine"}],
)  # fmt: skip
def test_merge_policies(policy):
    assert check_merge_policy("merge_candidate_models", policy) == policy


@pytest.mark.parametrize("policy", ["Mean", {"Custom": None}, 3, None])
def test_bad_merge_policies(policy):
    assert "params.policy" in str(_error(check_merge_policy, "merge_candidate_models", policy))


@pytest.mark.parametrize("strategy", ["Replace", {"RootEma": {"canonical_weight": 0.25}}])
def test_reconcile_strategies(strategy):
    assert check_reconcile("reconcile_canonical_model", strategy) == strategy


@pytest.mark.parametrize(
    "strategy",
    ["replace", {"RootEma": {}}, {"RootEma": {"canonical_weight": float("nan")}},
     {"RootEma": {"canonical_weight": "0.5"}}, {"RootEma": 0.5}, None],
)  # fmt: skip
def test_bad_reconcile_strategies(strategy):
    assert "params.strategy" in str(_error(check_reconcile, "reconcile_canonical_model", strategy))


def test_check_batches_is_shallow_but_requires_a_kind():
    refs = [{"kind": "micro_epoch", "anything": [1]}, {"kind": "cached_microshard_group"}]
    assert check_batches("train_window", {"batches": refs}) == refs
    error = _error(check_batches, "train_window", {"batches": [{"kind": "a"}, {"no": 1}]})
    assert "params.batches[1]" in str(error)
    assert "params.batches" in str(_error(check_batches, "train_window", {"batches": {}}))


def test_check_patch():
    patch = {"patch_id": "p", "class": "Hot", "summary": "", "values": {"lr": 0.1}}
    assert check_patch("apply_patch", patch) is patch
    assert "params.class" in str(_error(check_patch, "apply_patch", {**patch, "class": "hot"}))
    assert "params.values" in str(_error(check_patch, "apply_patch", {**patch, "values": []}))
    assert "params.patch_id" in str(_error(check_patch, "apply_patch", {"class": "Hot"}))


# -- result shaping ------------------------------------------------------------------


class Color(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3), (2.5, 2.5), (True, True), ("text", "text"),
        (np.float32(0.5), 0.5), (np.float64(1.25), 1.25), (np.int64(7), 7), (np.bool_(True), True),
        (np.array(4.0), 4.0), (torch.tensor(2.5), 2.5), (torch.tensor(3), 3),
        (torch.tensor(True), True), (torch.tensor(1.5, requires_grad=True) * 2, 3.0),
        (Color.RED, 1),
    ],
    ids=lambda v: type(v).__name__,
)  # fmt: skip
def test_metric_values_become_plain_json_scalars(value, expected):
    out = metric_value("train_window", "m", value)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(
    "value",
    [
        float("nan"), float("inf"), np.float32("nan"), torch.tensor(float("inf")),
        [1.0], None, {"a": 1}, np.array([1.0, 2.0]), torch.tensor([1.0]), 2**63, -(2**63) - 1,
        torch.tensor(1 + 2j), object(),
    ],
    ids=lambda v: type(v).__name__,
)  # fmt: skip
def test_bad_metric_values_name_the_hook_and_key(value):
    with pytest.raises(WorkloadError) as info:
        metric_value("evaluate", "accuracy", value)
    assert str(info.value).startswith("evaluate: metric 'accuracy'")


def test_bad_metric_error_describes_the_offending_value():
    with pytest.raises(WorkloadError) as info:
        metric_value("evaluate", "accuracy", [1.0, 2.0])
    assert "[1.0, 2.0] (list)" in str(info.value)


def test_metrics_map():
    assert metrics_map("train_window", None) == {}
    assert metrics_map("train_window", {"a": np.int32(1)}) == {"a": 1}
    with pytest.raises(WorkloadError, match="train_window: expected a metrics dict"):
        metrics_map("train_window", [("a", 1)])
    with pytest.raises(WorkloadError, match="metric keys must be strings"):
        metrics_map("train_window", {1: 1})
    with pytest.raises(WorkloadError, match="metric 'bad'"):
        metrics_map("train_window", {"ok": 1, "bad": math.nan})


@pytest.mark.parametrize("outcome", ["Applied", "RequiresRestart", {"Rejected": "why"}])
def test_patch_outcomes(outcome):
    assert check_patch_outcome(outcome) == outcome


@pytest.mark.parametrize("outcome", ["applied", None, {"Rejected": 1}, {"Applied": ""}])
def test_bad_patch_outcomes(outcome):
    with pytest.raises(WorkloadError, match="apply_patch"):
        check_patch_outcome(outcome)


def test_capability_estimate():
    good = {"preferred_backends": ["cpu"], "work_units_per_second": 3, "target_window_seconds": 2}
    out = check_capability(good)
    assert out["work_units_per_second"] == 3.0 and type(out["work_units_per_second"]) is float


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"preferred_backends": "cpu"}, "preferred_backends"),
        ({"preferred_backends": [1]}, "preferred_backends"),
        ({"work_units_per_second": float("nan")}, "work_units_per_second"),
        ({"work_units_per_second": "fast"}, "work_units_per_second"),
        ({"target_window_seconds": -1}, "target_window_seconds"),
        ({"target_window_seconds": 1.5}, "target_window_seconds"),
    ],
)
def test_bad_capability_estimates_name_the_field(change, field):
    good = {"preferred_backends": ["cpu"], "work_units_per_second": 3, "target_window_seconds": 2}
    with pytest.raises(WorkloadError) as info:
        check_capability({**good, **change})
    assert str(info.value).startswith("capability_probe:") and field in str(info.value)
