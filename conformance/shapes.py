"""Pure validators: does a value decode as the Rust coordinator decodes it?

Each function returns the value (or a normalised part of it) and raises
:class:`~conformance.errors.ShapeError` naming the dotted path, what was
expected and what came.  Shapes follow PROTOCOL.md §2 ("JSON shapes").
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ShapeError

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
PACK_FORMAT = "burn-p2p-python-flattened-parameter-pack-v1"
EVAL_SPLITS = ("Train", "Validation", "Test")
PATCH_OUTCOMES = ("Applied", "RequiresRestart")


def is_int(value: Any) -> bool:
    return type(value) is int


def is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def obj(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise ShapeError(path, "an object", value)
    return value


def field(value: dict, key: str, path: str) -> Any:
    if key not in value:
        raise ShapeError(f"{path}.{key}", "a value (the field is missing)", None)
    return value[key]


def string(value: Any, path: str, *, non_empty: bool = False) -> str:
    if not isinstance(value, str) or (non_empty and not value):
        raise ShapeError(path, "a non-empty string" if non_empty else "a string", value)
    return value


def optional_string(value: Any, path: str) -> str | None:
    return None if value is None else string(value, path)


def string_list(value: Any, path: str) -> list[str]:
    if not isinstance(value, list):
        raise ShapeError(path, "an array of strings", value)
    for i, item in enumerate(value):
        string(item, f"{path}[{i}]")
    return value


def uint(value: Any, path: str, maximum: int = U64_MAX) -> int:
    if not is_int(value) or not 0 <= value <= maximum:
        raise ShapeError(path, f"an integer in 0..={maximum}", value)
    return value


def metric_value(value: Any, path: str) -> Any:
    """MetricValue: an i64 integer, a finite float, a bool or a string; nothing else."""
    kind = type(value)
    if kind is bool or kind is str:
        return value
    if kind is int:
        if not I64_MIN <= value <= I64_MAX:
            raise ShapeError(path, "an integer that fits i64", value)
        return value
    if kind is float:
        if not math.isfinite(value):
            raise ShapeError(path, "a finite number", value)
        return value
    raise ShapeError(path, "an integer, float, boolean or string (no list, object or null)", value)


def metrics(value: Any, path: str) -> dict:
    """Metrics: an object of str -> MetricValue."""
    for key, item in obj(value, path).items():
        metric_value(item, f"{path}.{key}")
    return value


def capability(value: Any, path: str) -> dict:
    """CapabilityEstimate."""
    cap = obj(value, path)
    string_list(field(cap, "preferred_backends", path), f"{path}.preferred_backends")
    wups = field(cap, "work_units_per_second", path)
    if not is_number(wups):
        raise ShapeError(f"{path}.work_units_per_second", "a finite number", wups)
    uint(field(cap, "target_window_seconds", path), f"{path}.target_window_seconds")
    return cap


def patch_outcome(value: Any, path: str) -> Any:
    """PatchOutcome: "Applied", "RequiresRestart" or {"Rejected": str}."""
    if isinstance(value, str) and value in PATCH_OUTCOMES:
        return value
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("Rejected"), str):
        return value
    raise ShapeError(path, '"Applied", "RequiresRestart" or {"Rejected": str}', value)


def ack(value: Any, path: str) -> dict:
    """An ack decodes into an empty struct: any object (``{"ok": true}``), never null."""
    return obj(value, path)


def model_handle(value: Any, path: str, *, nullable: bool = False) -> str | None:
    """``{"model_id": str}`` (``null`` allowed when ``nullable``)."""
    model_id = field(obj(value, path), "model_id", path)
    if model_id is None and nullable:
        return None
    return string(model_id, f"{path}.model_id", non_empty=True)


def hello(value: Any, path: str = "result") -> dict:
    result = obj(value, path)
    version = field(result, "protocol_version", path)
    if not is_int(version) or version not in (1, 2):
        raise ShapeError(f"{path}.protocol_version", "the integer 1 or 2", version)
    string(field(result, "workload_name", path), f"{path}.workload_name", non_empty=True)
    string_list(field(result, "capabilities", path), f"{path}.capabilities")
    return result


def plan(value: Any, path: str = "result") -> dict:
    """A parameter pack Plan; the three key lists must be disjoint and keys unique."""
    result = obj(value, path)
    if type(field(result, "uses_custom_parameter_pack_hooks", path)) is not bool:
        raise ShapeError(
            f"{path}.uses_custom_parameter_pack_hooks",
            "a boolean",
            result["uses_custom_parameter_pack_hooks"],
        )
    optional_string(field(result, "layout_hash", path), f"{path}.layout_hash")
    seen: dict[str, str] = {}
    for key in ("included_keys", "excluded_float_keys", "ignored_non_float_keys"):
        for name in string_list(field(result, key, path), f"{path}.{key}"):
            if name in seen:
                raise ShapeError(
                    f"{path}.{key}",
                    f"keys listed once across the plan ({name!r} is also in {seen[name]})",
                    name,
                )
            seen[name] = key
    uint(field(result, "parameter_count", path), f"{path}.parameter_count")
    if "generic_plan_error" in result:
        string(result["generic_plan_error"], f"{path}.generic_plan_error")
    return result


def inner_loop_result(value: Any, path: str = "result") -> dict:
    result = obj(value, path)
    uint(field(result, "steps_completed", path), f"{path}.steps_completed", U32_MAX)
    metrics(field(result, "metrics", path), f"{path}.metrics")
    for key in ("inner_optimizer_state_path", "inner_optimizer_state_encoding"):
        optional_string(result.get(key), f"{path}.{key}")
    return result


def manifest(value: Any, path: str = "manifest.json") -> dict:
    """The five fields every pack manifest has (extra fields are allowed)."""
    result = obj(value, path)
    fmt = field(result, "format", path)
    if fmt != PACK_FORMAT:
        raise ShapeError(f"{path}.format", repr(PACK_FORMAT), fmt)
    string(field(result, "model_schema_hash", path), f"{path}.model_schema_hash")
    string(field(result, "layout_hash", path), f"{path}.layout_hash", non_empty=True)
    uint(field(result, "parameter_count", path), f"{path}.parameter_count")
    name = string(field(result, "values_f32_le", path), f"{path}.values_f32_le", non_empty=True)
    if name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        raise ShapeError(f"{path}.values_f32_le", "a relative path inside the pack", name)
    return result


__all__ = [
    "EVAL_SPLITS",
    "PACK_FORMAT",
    "ack",
    "capability",
    "hello",
    "inner_loop_result",
    "manifest",
    "metric_value",
    "metrics",
    "model_handle",
    "patch_outcome",
    "plan",
]
