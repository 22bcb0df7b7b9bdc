"""Sans-IO request parsing, parameter validation and result shaping.

Everything here is a pure function over bytes and plain Python values: the
checks the worker applies before a request reaches the workload, and the
conversions that make a hook's answer decodable by the Rust coordinator.
Each validator raises :class:`~worker.errors.ParamError` naming the method,
the parameter and what was expected.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import dataclass
from typing import Any

from .errors import ParamError, RequestError, WorkloadError, describe

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
NO_ID = 0
"""Id used in answers to requests that carried no valid id (real ids start at 1)."""

EVAL_SPLITS = ("Train", "Validation", "Test")
MERGE_POLICIES = (
    "WeightedMean",
    "NormClippedWeightedMean",
    "TrimmedMean",
    "Ema",
    "QualityWeightedEma",
)
PATCH_CLASSES = ("Hot", "Warm", "Cold")
PATCH_OUTCOMES = ("Applied", "RequiresRestart")


@dataclass(frozen=True)
class Request:
    id: int
    method: str
    params: Any


class BadRequest(RequestError):
    """A frame that is not a well-formed request; ``request_id`` is echoed if it was valid."""

    def __init__(self, message: str, request_id: int = NO_ID) -> None:
        super().__init__(message)
        self.request_id = request_id


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def is_u64(value: object) -> bool:
    return type(value) is int and 0 <= value <= U64_MAX


def parse_request(body: bytes) -> Request:
    """Decode one frame body into a :class:`Request`.

    Raises :class:`BadRequest` when the body is not UTF-8, not standard JSON,
    not an object, or lacks a valid ``id`` (u64) or ``method`` (string).
    """
    if not body:
        raise BadRequest("request: empty frame (length 0); expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request: frame is not valid UTF-8 ({exc})") from None
    try:
        message = _decoder.decode(text)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"request: frame is not valid JSON ({exc})") from None
    if not isinstance(message, dict):
        raise BadRequest(f"request: expected a JSON object, got {type(message).__name__}")
    request_id = message.get("id")
    if not is_u64(request_id):
        if "id" not in message:
            raise BadRequest("request: missing 'id' (expected an unsigned integer)")
        raise BadRequest(
            f"request: 'id' must be an unsigned 64-bit integer, got {describe(request_id)}"
        )
    method = message.get("method")
    if not isinstance(method, str):
        what = (
            "missing 'method'"
            if "method" not in message
            else f"'method' must be a string, got {describe(method)}"
        )
        raise BadRequest(f"request {request_id}: {what}", request_id)
    return Request(request_id, method, message.get("params"))


def ok_response(request_id: int, result: Any) -> dict:
    return {"id": request_id, "ok": True, "result": result}


def error_response(request_id: int, error: str) -> dict:
    # A hook's message may hold lone surrogates, which UTF-8 cannot carry:
    # replace them rather than lose the message.
    return {
        "id": request_id,
        "ok": False,
        "error": error.encode("utf-8", "replace").decode("utf-8"),
    }


ACK = {"ok": True}

# ---------------------------------------------------------------------------
# Parameter validators


def params_object(method: str, params: Any) -> dict:
    if not isinstance(params, dict):
        raise ParamError(method, "", "an object", params) from None
    return params


def params_null(method: str, params: Any) -> None:
    """Methods that take no params accept ``null`` (and, leniently, ``{}``)."""
    if params is not None and params != {}:
        raise ParamError(method, "", "null", params)


def require_str(method: str, params: dict, key: str, *, allow_empty: bool = False) -> str:
    if key not in params:
        raise ParamError(method, key, "a string (missing)")
    value = params[key]
    if not isinstance(value, str):
        raise ParamError(method, key, "a string", value)
    if not allow_empty and not value:
        raise ParamError(method, key, "a non-empty string", value)
    return value


def require_path(method: str, params: dict, key: str) -> str:
    value = require_str(method, params, key)
    if "\x00" in value:
        raise ParamError(method, key, "a filesystem path without NUL bytes", value)
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        raise ParamError(
            method, key, "a path the filesystem encoding can represent (no lone surrogates)", value
        ) from None
    return value


def optional_path(method: str, params: dict, key: str) -> str | None:
    if params.get(key) is None:
        return None
    return require_path(method, params, key)


def require_uint(method: str, params: dict, key: str, maximum: int = U32_MAX) -> int:
    if key not in params:
        raise ParamError(method, key, f"an integer in 0..={maximum} (missing)")
    value = params[key]
    if type(value) is not int or not 0 <= value <= maximum:
        raise ParamError(method, key, f"an integer in 0..={maximum}", value)
    return value


def require_bool(method: str, params: dict, key: str) -> bool:
    if key not in params:
        raise ParamError(method, key, "a boolean (missing)")
    value = params[key]
    if type(value) is not bool:
        raise ParamError(method, key, "a boolean", value)
    return value


def require_number(method: str, params: dict, key: str) -> float:
    if key not in params:
        raise ParamError(method, key, "a finite number (missing)")
    value = params[key]
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ParamError(method, key, "a finite number", value)
    return float(value)


def require_list(method: str, params: dict, key: str) -> list:
    if key not in params:
        raise ParamError(method, key, "a list (missing)")
    value = params[key]
    if not isinstance(value, list):
        raise ParamError(method, key, "a list", value)
    return value


@dataclass(frozen=True)
class StateFilter:
    """Which float state_dict entries a pack carries (PROTOCOL.md §2, Filter)."""

    include_globs: tuple[str, ...] = ()
    exclude_globs: tuple[str, ...] = ()

    @property
    def is_trivial(self) -> bool:
        return not self.include_globs and not self.exclude_globs

    def selects(self, name: str) -> bool:
        if self.include_globs and not any(fnmatch.fnmatchcase(name, g) for g in self.include_globs):
            return False
        return not any(fnmatch.fnmatchcase(name, g) for g in self.exclude_globs)

    def to_json(self) -> dict:
        return {
            "include_globs": list(self.include_globs),
            "exclude_globs": list(self.exclude_globs),
        }


NO_FILTER = StateFilter()


def parse_filter(method: str, value: Any, param: str = "state_dict_filter") -> StateFilter:
    """Validate a Filter object; ``None`` means no filter."""
    if value is None:
        return NO_FILTER
    if not isinstance(value, dict):
        raise ParamError(
            method, param, "an object {include_globs: [str], exclude_globs: [str]}", value
        )
    unknown = set(value) - {"include_globs", "exclude_globs"}
    if unknown:
        raise ParamError(method, param, "only include_globs and exclude_globs", sorted(unknown))
    globs = []
    for key in ("include_globs", "exclude_globs"):
        patterns = value.get(key, [])
        if patterns is None:
            patterns = []
        if not isinstance(patterns, list):
            raise ParamError(method, f"{param}.{key}", "a list of glob strings", patterns)
        for i, pattern in enumerate(patterns):
            if not isinstance(pattern, str) or not pattern.strip() or "\x00" in pattern:
                raise ParamError(
                    method, f"{param}.{key}[{i}]", "a non-blank glob string without NUL", pattern
                )
        globs.append(tuple(patterns))
    return StateFilter(globs[0], globs[1])


def optional_filter(method: str, params: dict) -> StateFilter:
    return parse_filter(method, params.get("state_dict_filter"))


def check_eval_split(method: str, value: Any, param: str = "split") -> Any:
    if value in EVAL_SPLITS and isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("Custom"), str):
        return value
    raise ParamError(method, param, '"Train", "Validation", "Test" or {"Custom": str}', value)


def check_merge_policy(method: str, value: Any, param: str = "policy") -> Any:
    if isinstance(value, str) and value in MERGE_POLICIES:
        return value
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("Custom"), str):
        return value
    raise ParamError(
        method, param, f'one of {", ".join(MERGE_POLICIES)} or {{"Custom": str}}', value
    )


def check_reconcile(method: str, value: Any, param: str = "strategy") -> Any:
    if value == "Replace":
        return value
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("RootEma"), dict):
        weight = value["RootEma"].get("canonical_weight")
        if type(weight) in (int, float) and math.isfinite(weight):
            return value
    raise ParamError(method, param, '"Replace" or {"RootEma": {"canonical_weight": float}}', value)


def check_batches(method: str, params: dict, key: str = "batches") -> list:
    """A list of BatchRef objects, each with a string ``kind``.

    Deliberately shallow: refs are the workload's business, and a deep check
    of 10k refs would cost more than decoding them.
    """
    batches = require_list(method, params, key)
    for i, ref in enumerate(batches):
        if type(ref) is not dict or type(ref.get("kind")) is not str:
            raise ParamError(method, f"{key}[{i}]", 'a BatchRef object with a string "kind"', ref)
    return batches


def check_patch(method: str, params: Any) -> dict:
    patch = params_object(method, params)
    require_str(method, patch, "patch_id", allow_empty=True)
    if patch.get("class") not in PATCH_CLASSES:
        raise ParamError(method, "class", '"Hot", "Warm" or "Cold"', patch.get("class"))
    if not isinstance(patch.get("values", {}), dict):
        raise ParamError(method, "values", "an object of PatchValues", patch.get("values"))
    return patch


# ---------------------------------------------------------------------------
# Result shaping: what hooks return -> what the Rust side decodes


def metric_value(hook: str, key: str, value: Any) -> int | float | bool | str:
    """Convert one metric to a MetricValue; raises :class:`WorkloadError`.

    ints, floats, bools and strings pass; numpy scalars and 0-d torch tensors
    become plain numbers; non-finite floats and anything else are refused.
    """
    kind = type(value)
    if kind is bool or kind is str:
        return value
    if kind is not int and kind is not float:
        plain = _plain_scalar(value)
        if plain is None:
            raise WorkloadError(
                f"{hook}: metric {key!r} must be an int, float, bool or str "
                f"(numpy and 0-d torch scalars are converted), got {describe(value)}"
            )
        value, kind = plain, type(plain)
    if kind is int and not I64_MIN <= value <= I64_MAX:
        raise WorkloadError(
            f"{hook}: metric {key!r} = {value} does not fit a signed 64-bit integer"
        )
    if kind is float and not math.isfinite(value):
        raise WorkloadError(
            f"{hook}: metric {key!r} is {value}, which JSON cannot carry to the coordinator; "
            "report a finite number (or a string such as 'nan')"
        )
    return value


def _plain_scalar(value: Any) -> Any:
    module = type(value).__module__
    if module == "numpy" or module.startswith("numpy."):
        if getattr(value, "shape", None) == () and hasattr(value, "item"):
            item = value.item()
            if type(item) in (bool, int, float, str):
                return item
        return None
    if module.startswith("torch") and hasattr(value, "dim") and hasattr(value, "item"):
        try:
            if value.dim() == 0 and not value.is_complex():
                return value.item()
        except Exception:
            return None
        return None
    # Subclasses of int/float/str (IntEnum, numpy.float64 is caught above).
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    return None


def metrics_map(hook: str, metrics: Any) -> dict:
    """Convert a hook's metrics dict; raises :class:`WorkloadError` naming the key."""
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise WorkloadError(
            f"{hook}: expected a metrics dict of str -> MetricValue, got {describe(metrics)}"
        )
    out = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise WorkloadError(f"{hook}: metric keys must be strings, got {describe(key)}")
        out[key] = metric_value(hook, key, value)
    return out


def check_patch_outcome(value: Any) -> Any:
    if isinstance(value, str) and value in PATCH_OUTCOMES:
        return value
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("Rejected"), str):
        return value
    raise WorkloadError(
        'apply_patch: hook must return "Applied", "RequiresRestart" or {"Rejected": str}, '
        f"got {describe(value)}"
    )


def check_capability(value: Any) -> dict:
    """Validate a CapabilityEstimate as the Rust side decodes it."""
    hook = "capability_probe"
    if not isinstance(value, dict):
        raise WorkloadError(
            f"{hook}: hook must return a CapabilityEstimate object, got {describe(value)}"
        )
    backends = value.get("preferred_backends")
    if not isinstance(backends, list) or not all(isinstance(b, str) for b in backends):
        raise WorkloadError(
            f"{hook}: preferred_backends must be a list of strings, got {describe(backends)}"
        )
    wups = value.get("work_units_per_second")
    if type(wups) not in (int, float) or not math.isfinite(wups):
        raise WorkloadError(
            f"{hook}: work_units_per_second must be a finite number, got {describe(wups)}"
        )
    window = value.get("target_window_seconds")
    if type(window) is not int or not 0 <= window <= U64_MAX:
        raise WorkloadError(
            f"{hook}: target_window_seconds must be a non-negative integer, got {describe(window)}"
        )
    return {**value, "work_units_per_second": float(wups)}
