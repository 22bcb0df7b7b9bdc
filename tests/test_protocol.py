"""Pure request parsing, the state filter and result shaping (worker.protocol).

Parameter schemas are tested in ``test_schema.py``.
"""

from __future__ import annotations

import enum
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import BadRequest, RequestFault, WorkloadError, WorkloadFault
from worker.protocol import (
    NO_FILTER,
    NO_ID,
    Request,
    StateFilter,
    check_capability,
    check_patch_outcome,
    finite_float,
    metric_value,
    metrics_map,
    parse_request,
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
    assert str(info.value).startswith("request: ")
    assert isinstance(info.value, RequestFault)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b'{"id": 9}', "missing 'method'"), (b'{"id": 9, "method": 5}', "'method' must be a string")],
)
def test_a_valid_id_is_echoed_even_when_the_method_is_bad(body, fragment):
    with pytest.raises(BadRequest) as info:
        parse_request(body)
    assert info.value.request_id == 9 and fragment in str(info.value)
    assert str(info.value).startswith("request 9: ")


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


# -- the state filter ---------------------------------------------------------------


def test_filter_semantics_are_case_sensitive_fnmatch():
    flt = StateFilter(("encoder.*", "head.*"), ("*.bias",))
    assert flt.selects("encoder.weight")
    assert not flt.selects("encoder.bias")
    assert not flt.selects("Encoder.weight")
    assert not flt.selects("decoder.weight")
    assert StateFilter((), ("*.bias",)).selects("anything.weight")
    assert NO_FILTER.is_trivial and NO_FILTER.selects("x")


class _TranslateCounter:
    """Counts ``fnmatch.translate`` (what compiling a glob costs); refuses calls once closed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import fnmatch

        self.calls = 0
        self.closed = False
        self._translate = fnmatch.translate
        monkeypatch.setattr(fnmatch, "translate", self)

    def __call__(self, pattern: str) -> str:
        assert not self.closed, (
            f"glob {pattern!r} compiled while matching, not when the filter was made"
        )
        self.calls += 1
        return self._translate(pattern)


def test_40000_globs_are_compiled_once_per_filter_not_once_per_key(monkeypatch):
    """Issue 16 item 19: past fnmatch's 32,768-pattern cache every key compiled every glob again."""
    keys = [f"layers.{i}.{kind}" for i in range(12) for kind in ("weight", "bias")]
    include = tuple(f"layers.{i}.w*ight" for i in range(40_000)) + (
        "layers.3.bias", "layers.[5-7].bias",
    )  # fmt: skip
    exclude = tuple(f"layers.{i}.*" for i in range(10, 40_010)) + ("item19-unique-?",)
    counter = _TranslateCounter(monkeypatch)
    flt = StateFilter(include, exclude)
    assert counter.calls <= len(include) + len(exclude)
    counter.closed = True
    selected = [k for k in keys if flt.selects(k)]
    weights = [f"layers.{i}.weight" for i in range(10)]
    biases = ["layers.3.bias", "layers.5.bias", "layers.6.bias", "layers.7.bias"]
    assert sorted(selected) == sorted(weights + biases)


_GLOB_CHARS = "ab.*?[]!-"


@given(
    st.lists(st.text(_GLOB_CHARS, min_size=1, max_size=6), max_size=6),
    st.lists(st.text(_GLOB_CHARS, min_size=1, max_size=6), max_size=6),
    st.lists(st.text("ab.[]!-*?", max_size=6), min_size=1, max_size=8),
)
def test_the_compiled_filter_selects_exactly_what_fnmatchcase_selects(include, exclude, names):
    import fnmatch

    flt = StateFilter(tuple(include), tuple(exclude))
    for name in names:
        want = (not include or any(fnmatch.fnmatchcase(name, g) for g in include)) and not any(
            fnmatch.fnmatchcase(name, g) for g in exclude
        )
        assert flt.selects(name) == want, (include, exclude, name)


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
    assert info.value.method == "evaluate" and isinstance(info.value, WorkloadFault)


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


@pytest.mark.parametrize("huge", [10**400, -(10**400)])
def test_a_work_rate_too_large_for_a_float_is_a_workload_error(huge):
    good = {"preferred_backends": [], "work_units_per_second": huge, "target_window_seconds": 1}
    with pytest.raises(WorkloadError, match="work_units_per_second must be a finite number"):
        check_capability(good)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1.0), (2.5, 2.5), (10**300, 1e300), (10**400, None), (float("inf"), None),
     (float("nan"), None), (True, None), ("1", None), (None, None)],
)  # fmt: skip
def test_finite_float(value, expected):
    assert finite_float(value) == expected
