"""Sans-IO request parsing, answers and result shaping (docs/protocol.md §1-2).

Pure functions over bytes and plain Python values: turning a frame body into
a :class:`Request`, the response objects, the state filter, and the
conversions that make a hook's answer decodable by the Rust coordinator
(each raises :class:`~worker.errors.WorkloadError` naming what is wrong).
Parameter schemas are in :mod:`worker.schema` and :mod:`worker.methods`.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from .errors import BadRequest, RequestError, WorkloadError, describe, error_text

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
NO_ID = 0
"""Id used in answers to requests that carried no valid id (real ids start at 1)."""

PATCH_OUTCOMES = ("Applied", "RequiresRestart")


# Not frozen: one of each is made per request, and a frozen __init__ costs 3x.
@dataclass(slots=True)
class Request:
    """One well-formed request: a u64 id, a method name and its (undecoded) params."""

    id: int
    method: str
    params: Any


@dataclass(slots=True)
class Answer:
    """The worker's answer to one request, before encoding: a result, or the
    refusal to render; ``ends_session`` closes the connection once it is sent."""

    request_id: int
    method: str
    result: Any = None
    error: RequestError | None = None
    ends_session: bool = False


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def is_u64(value: object) -> TypeGuard[int]:
    return type(value) is int and 0 <= value <= U64_MAX


def parse_request(body: bytes | bytearray) -> Request:
    """Decode one frame body into a :class:`Request`.

    Raises :class:`~worker.errors.BadRequest` when the body is not UTF-8, not
    standard JSON, not an object, or lacks a valid ``id`` (u64) or ``method``
    (string); its ``request_id`` is the id when that was valid, else 0.
    """
    if not body:
        raise BadRequest("empty frame (length 0); expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"frame is not valid UTF-8 ({exc})") from None
    try:
        message = _decoder.decode(text)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"frame is not valid JSON ({exc})") from None
    if not isinstance(message, dict):
        raise BadRequest(f"expected a JSON object, got {type(message).__name__}")
    request_id = message.get("id")
    if not is_u64(request_id):
        if "id" not in message:
            raise BadRequest("missing 'id' (expected an unsigned integer)")
        raise BadRequest(f"'id' must be an unsigned 64-bit integer, got {describe(request_id)}")
    method = message.get("method")
    if not isinstance(method, str):
        what = (
            "missing 'method'"
            if "method" not in message
            else f"'method' must be a string, got {describe(method)}"
        )
        raise BadRequest(what, request_id)
    return Request(request_id, method, message.get("params"))


def ok_response(request_id: int, result: Any) -> dict[str, Any]:
    return {"id": request_id, "ok": True, "result": result}


def error_response(request_id: int, error: str) -> dict[str, Any]:
    """The ``ok:false`` answer; every error text the worker sends passes here, so
    it is capped and its control characters (and lone surrogates, which UTF-8
    cannot carry) are escaped (:func:`~worker.errors.error_text`)."""
    return {"id": request_id, "ok": False, "error": error_text(error)}


ACK = {"ok": True}
"""The result of methods that only acknowledge (the Rust side decodes an empty struct)."""


class GlobSet:
    """Globs matched as :func:`fnmatch.fnmatchcase` matches each, compiled once.

    A name matches when it equals a glob without ``*?[``, starts with the
    literal part of a ``literal*`` glob, or matches one of the others, which
    are compiled into one regular expression when the set is built
    (``fnmatch``'s own cache holds 32,768 patterns: a request with more
    globs than that compiled every glob again for every key).
    """

    __slots__ = ("_literals", "_match", "_prefix_lengths", "_prefixes")

    def __init__(self, globs: tuple[str, ...]) -> None:
        literals, prefixes, wild = set(), set(), []
        for glob in dict.fromkeys(globs):
            if not _GLOB_MAGIC.intersection(glob):
                literals.add(glob)
            elif glob.endswith("*") and not _GLOB_MAGIC.intersection(glob[:-1]):
                prefixes.add(glob[:-1])
            else:
                wild.append(glob)
        self._literals = frozenset(literals)
        self._prefixes = frozenset(prefixes)
        self._prefix_lengths = sorted({len(p) for p in prefixes})
        self._match = re.compile("|".join(map(fnmatch.translate, wild))).match if wild else None

    def matches(self, name: str) -> bool:
        if name in self._literals:
            return True
        for length in self._prefix_lengths:
            if length > len(name):
                break
            if name[:length] in self._prefixes:
                return True
        return self._match is not None and self._match(name) is not None


_GLOB_MAGIC = frozenset("*?[")


@dataclass(frozen=True)
class StateFilter:
    """Which float state_dict entries a pack carries (docs/protocol.md §2, Filter).

    The globs are compiled once, when the filter is made (one per request).
    """

    include_globs: tuple[str, ...] = ()
    exclude_globs: tuple[str, ...] = ()
    _include: GlobSet = field(init=False, repr=False, compare=False)
    _exclude: GlobSet = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_include", GlobSet(self.include_globs))
        object.__setattr__(self, "_exclude", GlobSet(self.exclude_globs))

    @property
    def is_trivial(self) -> bool:
        return not self.include_globs and not self.exclude_globs

    def selects(self, name: str) -> bool:
        if self.include_globs and not self._include.matches(name):
            return False
        return not self._exclude.matches(name)

    def to_json(self) -> dict[str, list[str]]:
        return {
            "include_globs": list(self.include_globs),
            "exclude_globs": list(self.exclude_globs),
        }


NO_FILTER = StateFilter()


# ---------------------------------------------------------------------------
# Result shaping: what hooks return -> what the Rust side decodes


def finite_float(value: Any) -> float | None:
    """``value`` as a finite float if it is an int or float that has one, else None
    (an integer too large for a float is refused, never an OverflowError)."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            return None
    return None


MetricValue = int | float | bool | str


def metric_value(method: str, key: str, value: Any) -> MetricValue:
    """Convert one metric of ``method``'s hook to a MetricValue; raises :class:`WorkloadError`.

    ints, floats, bools and strings pass; numpy scalars and 0-d torch tensors
    become plain numbers; non-finite floats and anything else are refused.
    """
    plain: MetricValue
    if type(value) in (bool, str, int, float):
        plain = value
    else:
        converted = _plain_scalar(value)
        if converted is None:
            raise WorkloadError(
                f"metric {key!r} must be an int, float, bool or str "
                f"(numpy and 0-d torch scalars are converted), got {describe(value)}",
                method=method,
            )
        plain = converted
    if type(plain) is int and not I64_MIN <= plain <= I64_MAX:
        raise WorkloadError(
            f"metric {key!r} = {describe(plain, typed=False)} does not fit a signed 64-bit integer",
            method=method,
        )
    if type(plain) is float and not math.isfinite(plain):
        raise WorkloadError(
            f"metric {key!r} is {plain}, which JSON cannot carry to the coordinator; "
            "report a finite number (or a string such as 'nan')",
            method=method,
        )
    return plain


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


def metrics_map(method: str, metrics: Any) -> dict[str, MetricValue]:
    """Convert the metrics dict ``method``'s hook returned; raises :class:`WorkloadError`
    naming the key.  None means no metrics."""
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise WorkloadError(
            f"expected a metrics dict of str -> MetricValue, got {describe(metrics)}",
            method=method,
        )
    out = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise WorkloadError(f"metric keys must be strings, got {describe(key)}", method=method)
        out[key] = metric_value(method, key, value)
    return out


def check_patch_outcome(value: Any) -> Any:
    """A PatchOutcome as the Rust side decodes it; raises :class:`WorkloadError`."""
    if isinstance(value, str) and value in PATCH_OUTCOMES:
        return value
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("Rejected"), str):
        return value
    raise WorkloadError(
        'hook must return "Applied", "RequiresRestart" or {"Rejected": str}, '
        f"got {describe(value)}",
        method="apply_patch",
    )


def check_capability(value: Any) -> dict[str, Any]:
    """A CapabilityEstimate as the Rust side decodes it; raises :class:`WorkloadError`."""
    method = "capability_probe"
    if not isinstance(value, dict):
        raise WorkloadError(
            f"hook must return a CapabilityEstimate object, got {describe(value)}", method=method
        )
    backends = value.get("preferred_backends")
    if not isinstance(backends, list) or not all(isinstance(b, str) for b in backends):
        raise WorkloadError(
            f"preferred_backends must be a list of strings, got {describe(backends)}",
            method=method,
        )
    wups = finite_float(value.get("work_units_per_second"))
    if wups is None:
        raise WorkloadError(
            "work_units_per_second must be a finite number, got "
            f"{describe(value.get('work_units_per_second'))}",
            method=method,
        )
    window = value.get("target_window_seconds")
    if type(window) is not int or not 0 <= window <= U64_MAX:
        raise WorkloadError(
            f"target_window_seconds must be a non-negative integer, got {describe(window)}",
            method=method,
        )
    return {**value, "work_units_per_second": wups}
