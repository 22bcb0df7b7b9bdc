"""Strict decoding of responses and results, as the Rust coordinator (serde) decodes them.

Pure functions over bytes and plain values; no I/O.  Every refusal is a
:class:`~fakecoord.errors.ProtocolViolation` whose message names the method
and the offending field as a dotted path (``result.metrics.loss``).

What serde refuses and these decoders therefore refuse: non-UTF-8 frames,
non-standard JSON (``NaN``, ``Infinity``, numbers out of float64 range),
missing required fields, wrong JSON types (``1.5`` or ``true`` for an
integer, ``null`` for an object), integers out of range (u32, u64, i64),
unknown enum variants.  Unknown extra fields are accepted, as serde does.

One deliberate strictness beyond serde: an integer MetricValue outside i64 is
refused (serde's untagged enum would silently turn it into a float).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, NoReturn

from .errors import _MISSING, ProtocolViolation, RemoteError, describe

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1

SUPPORTED_PROTOCOL_VERSIONS = (1, 2)
PATCH_OUTCOME_UNITS = ("Applied", "RequiresRestart")

MISSING: Any = _MISSING
"""Returned by :func:`parse_response` when an ``ok: true`` response has no ``result``."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name} (the Rust decoder rejects NaN/Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range for a 64-bit float")
    return value


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def fail(method: str, field: str, expected: str, got: Any = MISSING) -> NoReturn:
    """Raise the :class:`ProtocolViolation` for ``field`` of ``method``'s response."""
    raise ProtocolViolation(
        f"{method}: {field}: expected {expected}, got {describe(got)}", method, field
    )


# ---------------------------------------------------------------------------
# Frames and the response envelope


def decode_json(method: str, body: bytes | bytearray) -> Any:
    """Decode one frame body as strict UTF-8 standard JSON; raises ProtocolViolation."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolViolation(
            f"{method}: the response frame is not valid UTF-8 ({exc})", method, "response"
        ) from None
    try:
        return _decoder.decode(text)
    except (ValueError, RecursionError) as exc:
        error = exc
    located = _locate_nonstandard(text)
    if located is not None:
        field, token = located
        raise ProtocolViolation(
            f"{method}: {field}: expected standard JSON, got {token} "
            "(the Rust decoder rejects NaN, Infinity and numbers out of float64 range)",
            method,
            field,
        )
    raise ProtocolViolation(
        f"{method}: the response frame is not standard JSON ({error}); "
        f"it starts with {text[:60]!r}",
        method,
        "response",
    )


class _NonStandard:
    """Stands for a NaN/Infinity/out-of-range number while locating it."""

    def __init__(self, token: str) -> None:
        self.token = token


def _lenient_float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _NonStandard(text)


_lenient_decoder = json.JSONDecoder(parse_constant=_NonStandard, parse_float=_lenient_float)


def _locate_nonstandard(text: str) -> tuple[str, str] | None:
    """The dotted path and token of the first non-standard number, if that is the
    only thing wrong with ``text`` (error path only: decodes ``text`` again)."""
    try:
        value = _lenient_decoder.decode(text)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, _NonStandard):
            if path != "result" and not path.startswith(("result.", "result[")):
                path = f"response.{path}" if path else "response"
            return path, node.token
        if isinstance(node, dict):
            stack.extend((f"{path}.{k}" if path else k, v) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(node))))
    return None


def parse_response(method: str, body: bytes | bytearray, expected_id: int) -> Any:
    """Check one response frame for request ``expected_id`` and return its raw ``result``.

    Returns :data:`MISSING` when an ``ok: true`` response has no ``result``.
    Raises :class:`RemoteError` for ``ok: false`` and :class:`ProtocolViolation`
    for a frame that is not a well-formed response to this request.
    """
    message = decode_json(method, body)
    if not isinstance(message, dict):
        fail(method, "response", "a JSON object {id, ok, result|error}", message)
    response_id = message.get("id", MISSING)
    if type(response_id) is not int or not 0 <= response_id <= U64_MAX:
        fail(method, "response.id", "an unsigned 64-bit integer", response_id)
    if response_id != expected_id:
        raise ProtocolViolation(
            f"{method}: response.id: expected {expected_id} (the id of the request in flight), "
            f"got {response_id}; the worker must answer requests in order with their own ids",
            method,
            "response.id",
        )
    ok = message.get("ok", MISSING)
    if type(ok) is not bool:
        fail(method, "response.ok", "a boolean", ok)
    if not ok:
        error = message.get("error", MISSING)
        if not isinstance(error, str):
            fail(method, "response.error", "a string (ok is false)", error)
        raise RemoteError(method, error)
    return message.get("result", MISSING)


# ---------------------------------------------------------------------------
# Field readers: each takes the parent object and a dotted path prefix


def expect_object(method: str, value: Any, field: str) -> dict:
    if not isinstance(value, dict):
        fail(method, field, "a JSON object", value)
    return value


def _get(method: str, obj: dict, key: str, path: str, expected: str) -> Any:
    if key not in obj:
        fail(method, f"{path}.{key}", expected)
    return obj[key]


def read_str(method: str, obj: dict, key: str, path: str = "result") -> str:
    value = _get(method, obj, key, path, "a string")
    if not isinstance(value, str):
        fail(method, f"{path}.{key}", "a string", value)
    return value


def read_optional_str(method: str, obj: dict, key: str, path: str = "result") -> str | None:
    """An ``Option<String>``: missing and ``null`` both mean None."""
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        fail(method, f"{path}.{key}", "a string or null", value)
    return value


def read_bool(method: str, obj: dict, key: str, path: str = "result") -> bool:
    value = _get(method, obj, key, path, "a boolean")
    if type(value) is not bool:
        fail(method, f"{path}.{key}", "a boolean", value)
    return value


def read_uint(
    method: str, obj: dict, key: str, path: str = "result", maximum: int = U64_MAX
) -> int:
    expected = f"an integer in 0..={maximum}"
    value = _get(method, obj, key, path, expected)
    if type(value) is not int or not 0 <= value <= maximum:
        fail(method, f"{path}.{key}", expected, value)
    return value


def read_f64(method: str, obj: dict, key: str, path: str = "result") -> float:
    value = _get(method, obj, key, path, "a number")
    if type(value) not in (int, float):
        fail(method, f"{path}.{key}", "a number", value)
    return float(value)


def read_str_list(method: str, obj: dict, key: str, path: str = "result") -> list[str]:
    value = _get(method, obj, key, path, "an array of strings")
    if not isinstance(value, list):
        fail(method, f"{path}.{key}", "an array of strings", value)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            fail(method, f"{path}.{key}[{i}]", "a string", item)
    return value


def check_metric_value(method: str, value: Any, field: str) -> int | float | bool | str:
    """A MetricValue: an i64 integer, a finite float, a boolean or a string."""
    kind = type(value)
    if kind is bool or kind is str:
        return value
    if kind is float:
        if not math.isfinite(value):
            fail(method, field, "a finite float (JSON has no NaN/Infinity)", value)
        return value
    if kind is int:
        if not I64_MIN <= value <= I64_MAX:
            fail(method, field, "a MetricValue integer within i64", value)
        return value
    fail(
        method,
        field,
        "a MetricValue (an i64 integer, a finite float, a boolean or a string)",
        value,
    )


def read_metrics(method: str, obj: dict, key: str = "metrics", path: str = "result") -> dict:
    field = f"{path}.{key}"
    value = _get(method, obj, key, path, "a metrics object")
    metrics = expect_object(method, value, field)
    for name, metric in metrics.items():
        check_metric_value(method, metric, f"{field}.{name}")
    return metrics


# ---------------------------------------------------------------------------
# Per-method result decoders (PROTOCOL.md §2)


def decode_ack(method: str, result: Any) -> None:
    """An ack decodes into an empty Rust struct: any JSON object, never ``null``."""
    expect_object(method, result, "result")


def decode_hello(result: Any) -> dict:
    m = "hello"
    obj = expect_object(m, result, "result")
    version = read_uint(m, obj, "protocol_version", maximum=U32_MAX)
    if version not in SUPPORTED_PROTOCOL_VERSIONS:
        fail(m, "result.protocol_version", "1 or 2 (the versions the coordinator speaks)", version)
    read_str(m, obj, "workload_name")
    read_str_list(m, obj, "capabilities")
    return obj


def decode_capability_probe(result: Any) -> dict:
    m = "capability_probe"
    obj = expect_object(m, result, "result")
    read_str(m, obj, "runtime_device")
    capability = expect_object(
        m, _get(m, obj, "capability", "result", "a CapabilityEstimate object"), "result.capability"
    )
    read_str_list(m, capability, "preferred_backends", "result.capability")
    read_f64(m, capability, "work_units_per_second", "result.capability")
    read_uint(m, capability, "target_window_seconds", "result.capability")
    return obj


def _decode_model_id(method: str, result: Any) -> str:
    return read_str(method, expect_object(method, result, "result"), "model_id")


def decode_init_model(result: Any) -> str:
    return _decode_model_id("init_model", result)


def decode_parameter_pack_plan(result: Any) -> dict:
    m = "parameter_pack_plan"
    obj = expect_object(m, result, "result")
    read_bool(m, obj, "uses_custom_parameter_pack_hooks")
    if obj.get("layout_hash", MISSING) is not None:
        read_str(m, obj, "layout_hash")
    for key in ("included_keys", "excluded_float_keys", "ignored_non_float_keys"):
        read_str_list(m, obj, key)
    read_uint(m, obj, "parameter_count")
    read_optional_str(m, obj, "generic_plan_error")
    return obj


def decode_train_window(result: Any) -> dict:
    return read_metrics("train_window", expect_object("train_window", result, "result"))


def decode_evaluate(result: Any) -> dict:
    return read_metrics("evaluate", expect_object("evaluate", result, "result"))


def decode_patch_outcome(result: Any) -> str | dict:
    """``"Applied"``, ``"RequiresRestart"`` or ``{"Rejected": str}``."""
    m = "apply_patch"
    expected = 'a PatchOutcome: "Applied", "RequiresRestart" or {"Rejected": string}'
    if isinstance(result, str):
        if result not in PATCH_OUTCOME_UNITS:
            fail(m, "result", f"{expected} (unknown variant)", result)
        return result
    if isinstance(result, dict):
        if len(result) != 1 or "Rejected" not in result:
            fail(m, "result", f"{expected} (unknown variant)", result)
        if not isinstance(result["Rejected"], str):
            fail(m, "result.Rejected", "a string", result["Rejected"])
        return result
    fail(m, "result", expected, result)


def decode_import_parameter_pack(result: Any) -> str:
    return _decode_model_id("import_parameter_pack", result)


def decode_run_inner_loop(result: Any) -> dict:
    """An InnerLoopResult; missing optional paths are filled in as None."""
    m = "run_inner_loop"
    obj = expect_object(m, result, "result")
    return {
        **obj,
        "steps_completed": read_uint(m, obj, "steps_completed", maximum=U32_MAX),
        "metrics": read_metrics(m, obj),
        "inner_optimizer_state_path": read_optional_str(m, obj, "inner_optimizer_state_path"),
        "inner_optimizer_state_encoding": read_optional_str(
            m, obj, "inner_optimizer_state_encoding"
        ),
    }


def decode_merge_candidate_models(result: Any) -> str | None:
    m = "merge_candidate_models"
    return read_optional_str(m, expect_object(m, result, "result"), "model_id")


def decode_apply_single_root_ema(result: Any) -> str:
    return _decode_model_id("apply_single_root_ema", result)


def decode_reconcile_canonical_model(result: Any) -> str:
    return _decode_model_id("reconcile_canonical_model", result)


def _ack(method: str) -> Callable[[Any], None]:
    def decode(result: Any) -> None:
        decode_ack(method, result)

    decode.__name__ = f"decode_{method}"
    return decode


RESULT_DECODERS: dict[str, Callable[[Any], Any]] = {
    "hello": decode_hello,
    "capability_probe": decode_capability_probe,
    "init_model": decode_init_model,
    "parameter_pack_plan": decode_parameter_pack_plan,
    "train_window": decode_train_window,
    "evaluate": decode_evaluate,
    "apply_patch": decode_patch_outcome,
    "load_model_artifact": _ack("load_model_artifact"),
    "materialize_model_artifact": _ack("materialize_model_artifact"),
    "export_parameter_pack": _ack("export_parameter_pack"),
    "import_parameter_pack": decode_import_parameter_pack,
    "run_inner_loop": decode_run_inner_loop,
    "merge_candidate_models": decode_merge_candidate_models,
    "apply_single_root_ema": decode_apply_single_root_ema,
    "reconcile_canonical_model": decode_reconcile_canonical_model,
    "release_model": _ack("release_model"),
    "shutdown": _ack("shutdown"),
}
"""Method name -> decoder of its raw ``result`` (raises ProtocolViolation)."""


def decode_result(method: str, result: Any) -> Any:
    """Decode ``result`` of a protocol method; raises KeyError for an unknown method."""
    return RESULT_DECODERS[method](result)
