"""Dispatch and params: bad frames, unknown methods, and every method's params schema.

The table tests derive from ``worker.methods.METHODS`` itself: for every
method they build valid params from its schema, then drop each required
field, give each field values of the wrong type, and point each model-handle
slot at an unknown id; every refusal must name the method and the full
parameter path, leave the model table unchanged and keep the worker serving.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.service.support import (
    FastWorkload,
    assert_still_serving,
    call,
    decode_response,
    error,
    ok,
    respond,
)
from worker import schema
from worker.framing import encode_frame
from worker.methods import METHODS
from worker.service import Worker

# -- bad requests ---------------------------------------------------------------------------------


def test_unknown_method_echoes_the_id_and_lists_methods(worker):
    response = call(worker, "fly", None, request_id=12)
    assert response["ok"] is False and "'fly'" in response["error"]
    assert "parameter_pack_plan" in response["error"]
    assert_still_serving(worker)


def test_an_unknown_method_name_is_shown_truncated(worker):
    message = error(worker, "x" * 10_000)
    assert len(message.split(";")[0]) < 120 and "..." in message


@pytest.mark.parametrize(
    ("body", "request_id"),
    [
        (b"", 0), (b"\xc3\x28", 0), (b"{", 0), (b"7", 0), (b'{"method": "hello"}', 0),
        (b'{"id": "x", "method": "hello"}', 0), (b'{"id": 5}', 5), (b'{"id": 6, "method": null}', 6),
        (b'{"id": 8, "method": "\\ud800"}', 8),
    ],
)  # fmt: skip
def test_bad_frames_get_an_error_response(worker, body, request_id):
    response = decode_response(respond(worker, body), request_id)
    assert response["ok"] is False
    assert_still_serving(worker)


def test_lone_surrogates_in_params_never_break_the_response(tiny):
    body = b'{"id": 3, "method": "evaluate", "params": {"model_id": "\\udc80", "split": "Test"}}'
    response = decode_response(respond(tiny, body), 3)
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


def test_encode_frame_is_the_response_format(worker):
    frame = respond(worker, b'{"id": 1, "method": "hello", "params": null}')
    assert frame == encode_frame({"id": 1, "ok": True, "result": ok(worker, "hello")})


@pytest.mark.parametrize(
    ("method", "params", "path"),
    [
        ("merge_candidate_models", {"base_model_id": "m1", "candidates": [
            {"model_id": "m2", "sample_weight": 10**400, "quality_weight": 1}], "policy": "Ema"},
         "candidates[0].sample_weight"),
        ("reconcile_canonical_model", {"local_model_id": "m1", "canonical_model_id": "m2",
            "strategy": {"RootEma": {"canonical_weight": -(10**400)}}},
         "strategy.RootEma.canonical_weight"),
    ],
)  # fmt: skip
def test_a_number_too_large_for_a_float_names_the_parameter(tiny, method, params, path):
    message = error(tiny, method, params)
    assert message.startswith(f"{method}: params.{path}: expected a finite number, got ")
    assert "integer of about 401 digits> (int)" in message
    assert "internal error" not in message and len(message) < 200


# -- the schema of every method, from the table -------------------------------------------------
#
# A *slot* is a path to one field: a tuple of keys and list indices below params.

Slot = tuple[Any, ...]


def render(slot: Slot) -> str:
    """``("candidates", 0, "model_id")`` -> ``candidates[0].model_id``."""
    text = ""
    for part in slot:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class Examples:
    """Valid values for schema nodes, against the ``prepared`` fixture's files and models."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.handles = 0
        self.reads = {
            ("load_model_artifact", "artifact_path"): str(tmp / "artifact.safetensors"),
            ("import_parameter_pack", "parameter_pack_path"): str(tmp / "pack"),
        }

    def value(self, method: str, node: schema.Node, slot: Slot) -> Any:
        if isinstance(node, schema.Record):
            return {
                key: self.value(method, field, (*slot, key))
                for _, key, field, default in node.fields
                if default is schema.REQUIRED
            }
        if isinstance(node, schema.ModelId):
            self.handles += 1
            return "m1" if self.handles % 2 else "m2"
        if isinstance(node, schema.FsPath):
            key = (method, render(slot))
            return self.reads.get(key) or str(self.tmp / f"{method}-{render(slot)}")
        if isinstance(node, schema.Text):
            return "cpu"
        if isinstance(node, schema.UInt):
            return 1
        if isinstance(node, schema.Const):
            return node.value
        if isinstance(node, schema.Boolean):
            return False
        if isinstance(node, schema.Number):
            return 0.5
        if isinstance(node, schema.ListOf):
            return [self.value(method, node.item, (*slot, 0))]
        if isinstance(node, schema.BatchRefs):
            return [{"kind": "micro_epoch"}]
        if isinstance(node, schema.Variants):
            if node.units:
                return node.units[0]
            name, payload = next(iter(node.newtypes.items()))
            return {name: self.value(method, payload, (*slot, name))}
        if isinstance(node, (schema.AnyObject, schema.FilterSpec)):
            return {}
        if isinstance(node, (schema.NullParams, schema.AnyValue)):
            return None
        raise AssertionError(f"no example for {node!r}: teach this test the new node type")


def bad_values(node: schema.Node) -> list[Any]:
    """Values ``node`` must refuse (each naming the node's own path or one below it)."""
    if isinstance(node, schema.ModelId):
        return [1, "", None]
    if isinstance(node, schema.FsPath):
        return [5, "a\x00b", "x\ud800"] + ([] if node.optional else ["", None])
    if isinstance(node, schema.Text):
        return [5, None, ["cpu"]] + ([] if node.allow_empty else [""])
    if isinstance(node, schema.UInt):
        return [-1, 1.5, True, "3", node.maximum + 1]
    if isinstance(node, schema.Const):
        return [node.value + 1, True, str(node.value)]
    if isinstance(node, schema.Boolean):
        return ["yes", 0, None]
    if isinstance(node, schema.Number):
        return ["1", None, True, 10**400]
    if isinstance(node, schema.ListOf):
        return [{}, "all", *([[bad] for bad in bad_values(node.item)[:2]])]
    if isinstance(node, schema.BatchRefs):
        return ["all", {}, [1], [{"no": "kind"}], [{"kind": 5}]]
    if isinstance(node, schema.Variants):
        out: list[Any] = ["Nope", {"Nope": 1}, 3, None]
        for name, payload in node.newtypes.items():
            out += [{name: bad} for bad in bad_values(payload)]
        return out
    if isinstance(node, schema.AnyObject):
        return [[1], "x"]
    if isinstance(node, schema.FilterSpec):
        return [[], "*", {"include_globs": "a*"}, {"include_globs": [""]}, {"other": []}]
    if isinstance(node, schema.Record):
        return [None, 1, [], "x"]
    if isinstance(node, schema.NullParams):
        return [{"x": 1}, [1]]
    if isinstance(node, schema.AnyValue):
        return []
    raise AssertionError(f"no bad values for {node!r}: teach this test the new node type")


def slots(node: schema.Node, slot: Slot = ()) -> Iterator[tuple[Slot, schema.Node, bool]]:
    """(slot, node, required) for every field below a Record, list items included."""
    if isinstance(node, schema.Record):
        for _, key, field, default in node.fields:
            yield (*slot, key), field, default is schema.REQUIRED
            yield from slots(field, (*slot, key))
    elif isinstance(node, schema.ListOf):
        yield from slots(node.item, (*slot, 0))


def with_value(params: Any, slot: Slot, value: Any, *, delete: bool = False) -> Any:
    params = json.loads(json.dumps(params))
    target = params
    for part in slot[:-1]:
        target = target[part]
    if delete:
        del target[slot[-1]]
    else:
        target[slot[-1]] = value
    return params


def valid_params(method: str, tmp: Path) -> Any:
    return Examples(tmp).value(method, METHODS[method].params, ())


def _cases(kind: str) -> Iterator[Any]:
    for name, spec in METHODS.items():
        for slot, node, required in slots(spec.params):
            path = render(slot)
            if kind == "required" and required:
                yield pytest.param(name, slot, id=f"{name}-{path}")
            elif kind == "ill-typed":
                for i, bad in enumerate(bad_values(node)):
                    yield pytest.param(name, slot, bad, id=f"{name}-{path}-{i}")
            elif kind == "model" and isinstance(node, schema.ModelId):
                yield pytest.param(name, slot, id=f"{name}-{path}")


def test_every_method_has_a_schema_the_tests_understand(tmp_path):
    for name, spec in METHODS.items():
        assert spec.name == name
        valid_params(name, tmp_path)
        list(slots(spec.params))
        bad_values(spec.params)


def test_the_slot_tables_cover_what_the_protocol_names():
    """A spot check that the derivation sees nested slots and every handle slot."""
    required = {(m, render(s)) for m, s in (c.values for c in _cases("required"))}
    assert ("merge_candidate_models", "candidates[0].model_id") in required
    assert ("run_inner_loop", "require_exact_steps") in required
    assert ("apply_patch", "class") in required
    assert ("run_inner_loop", "state_dict_filter") not in required
    handles = {(m, render(s)) for m, s in (c.values for c in _cases("model"))}
    assert {
        ("train_window", "model_id"), ("run_inner_loop", "model_id"),
        ("merge_candidate_models", "base_model_id"),
        ("merge_candidate_models", "candidates[0].model_id"),
        ("apply_single_root_ema", "merged_model_id"),
        ("reconcile_canonical_model", "canonical_model_id"),
    } <= handles  # fmt: skip
    assert ("release_model", "model_id") not in handles  # releasing an unknown id is fine


@pytest.mark.parametrize("method", [m for m in METHODS if m != "shutdown"])
def test_valid_params_from_the_schema_succeed(prepared, tmp_path, method):
    response = call(prepared, method, valid_params(method, tmp_path))
    assert response["ok"], response


def _assert_names(message: str, method: str, path: str) -> None:
    first = message.splitlines()[0]
    assert first.startswith(f"{method}: params{'.' + path if path else ''}"), message
    assert "expected" in first or "unknown model id" in first, message


@pytest.mark.parametrize(("method", "slot"), list(_cases("required")))
def test_a_missing_required_field_is_named(prepared, tmp_path, method, slot):
    params = with_value(valid_params(method, tmp_path), slot, None, delete=True)
    before = dict(prepared.models)
    message = error(prepared, method, params, request_id=99)
    assert message.startswith(f"{method}: params.{render(slot)}: expected "), message
    assert "(missing)" in message.splitlines()[0]
    assert prepared.models == before
    assert_still_serving(prepared)


@pytest.mark.parametrize(("method", "slot", "value"), list(_cases("ill-typed")))
def test_an_ill_typed_field_is_named(prepared, tmp_path, method, slot, value):
    params = with_value(valid_params(method, tmp_path), slot, value)
    before = dict(prepared.models)
    _assert_names(error(prepared, method, params, request_id=99), method, render(slot))
    assert prepared.models == before
    assert_still_serving(prepared)


@pytest.mark.parametrize(("method", "slot"), list(_cases("model")))
def test_every_model_handle_slot_names_an_unknown_id(prepared, tmp_path, method, slot):
    params = with_value(valid_params(method, tmp_path), slot, "m404")
    message = error(prepared, method, params)
    assert message.startswith(f"{method}: params.{render(slot)}: unknown model id 'm404'"), message
    assert "live models: m1, m2" in message


@pytest.mark.parametrize("method", [m for m, s in METHODS.items() if s.params is not schema.ANY])
def test_params_of_the_wrong_shape_are_named(prepared, method):
    for params in bad_values(METHODS[method].params):
        _assert_names(error(prepared, method, params), method, "")


def test_shutdown_takes_any_params(worker):
    assert METHODS["shutdown"].params is schema.ANY
    for params in (None, {}, [1], "x", {"model_id": 5}):
        assert ok(Worker(worker.workload), "shutdown", params) == {"ok": True}


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


def plausible(node: schema.Node) -> st.SearchStrategy[Any]:
    """Values of roughly the right shape for ``node``: enough to reach the hooks."""
    if isinstance(node, schema.Record):
        fields = {key: plausible(f) for _, key, f, d in node.fields if d is schema.REQUIRED}
        optional = {key: plausible(f) for _, key, f, d in node.fields if d is not schema.REQUIRED}
        return st.fixed_dictionaries(fields, optional=optional)
    if isinstance(node, schema.ModelId):
        return model_ids
    if isinstance(node, schema.Text):
        return st.sampled_from(["cpu", "cuda"]) | safe_text
    if isinstance(node, schema.UInt):
        return st.integers(0, 3)
    if isinstance(node, schema.Const):
        return st.just(node.value)
    if isinstance(node, schema.Boolean):
        return st.booleans()
    if isinstance(node, schema.Number):
        return st.floats(0, 2)
    if isinstance(node, schema.ListOf):
        return st.lists(plausible(node.item), max_size=2)
    if isinstance(node, schema.BatchRefs):
        return st.lists(st.fixed_dictionaries({"kind": safe_text}), max_size=3)
    if isinstance(node, schema.Variants):
        options = [st.sampled_from(node.units)] if node.units else []
        options += [
            st.builds(lambda v, name=name: {name: v}, plausible(payload))
            for name, payload in node.newtypes.items()
        ]
        return st.one_of(options)
    if isinstance(node, schema.AnyObject):
        return st.dictionaries(safe_text, st.integers(), max_size=2)
    if isinstance(node, schema.FilterSpec):
        globs = st.lists(safe_text, max_size=2)
        return st.none() | st.fixed_dictionaries(
            {}, optional={"include_globs": globs, "exclude_globs": globs}
        )
    return json_values


def params_for(method: str) -> st.SearchStrategy[Any]:
    """Complete plausible params (to reach the hooks), partial ones, or any JSON."""
    node = METHODS[method].params
    if not isinstance(node, schema.Record):
        return st.none() | json_values
    keys = {key: plausible(f) | json_values for _, key, f, _ in node.fields}
    partial = st.fixed_dictionaries({}, optional=keys)
    return plausible(node) | partial | json_values


@contextlib.contextmanager
def inside_temporary_directory() -> Iterator[None]:
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
        response = call(worker, method, params, request_id)
    event(f"{method}: ok={response['ok']}")
    if not response["ok"]:
        assert "internal error" not in response["error"].splitlines()[0], response
    if method != "shutdown":
        assert_still_serving(worker)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_always_get_a_valid_response_frame(body):
    worker = Worker(FastWorkload({}))
    decode_response(respond(worker, body))
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
        frame = respond(worker, json.dumps(message).encode())
    response = decode_response(frame)
    request_id = message.get("id")
    if type(request_id) is int and 0 <= request_id < 2**64:
        assert response["id"] == request_id  # a valid id is echoed, whatever else is wrong
    else:
        assert response["id"] == 0 and response["ok"] is False
