"""The worker protocol, version 2, as the coordinator side sees it: one declarative spec.

Every method (docs/protocol.md §2) is one :class:`Method` entry in :data:`METHODS`:
its params and its result written as the Rust coordinator's serde types
(``crates/burn_p2p_python/src/worker.rs`` and the types it uses, in terms of
:mod:`fakecoord.schema`), plus how :class:`~fakecoord.client.WorkerClient`
exposes it.  Everything else on this side is derived from the table:

- the client's typed methods (signature, params, decoding, return value);
- the strict result decoders (:func:`decode_result`) and the envelope
  decoder (:func:`decode_response`, :func:`parse_response`);
- conformance's shape checks and its error-path tables (required params,
  model-handle slots, valid and ill-typed params: :mod:`fakecoord.examples`);
- the hypothesis strategies of :mod:`fakecoord.strategies`.

Adding a method is adding its entry here (and its tests).

Params structs carry the *worker contract* rather than serde's attributes:
a field with a default, or an ``Option``, may be absent from a request
(a worker must not require it), and ``checked`` says how far a worker must
refuse an ill-typed value (the Rust coordinator always sends every field).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import schema, wire
from .errors import _MISSING, DecodeError, ProtocolViolation, RemoteError
from .schema import (
    BOOL,
    F64,
    I64,
    JSON_VALUE,
    STRING,
    U32,
    U64,
    Enum,
    Field,
    Map,
    Option,
    Str,
    Struct,
    Tagged,
    Untagged,
    Variant,
    Vec,
)

PROTOCOL_VERSION = 2
SUPPORTED_PROTOCOL_VERSIONS = (1, 2)
"""The Rust coordinator refuses a worker whose hello says otherwise."""
DILOCO_CAPABILITY = "diloco_checkpoint_job"
"""Required before the coordinator uses ``run_inner_loop``."""

MISSING: Any = _MISSING
""":func:`parse_response`'s result when an ``ok: true`` response has none."""

# ---------------------------------------------------------------------------
# Strings by role (all are ``String``/``PathBuf`` on the wire)

MODEL_ID = Str("model_id")
"""A live model handle: a worker must refuse one it did not issue."""
RELEASED_MODEL_ID = Str("released_model_id")
"""``release_model``'s handle: releasing an unknown id is not an error."""
PATH = Str("path")
DEVICE = Str("device")
SCHEMA_HASH = Str("schema_hash")

# ---------------------------------------------------------------------------
# Shared shapes (docs/protocol.md §2, "JSON shapes")

METRIC_VALUE = Untagged(
    "MetricValue",
    (("Integer", I64), ("Float", F64), ("Bool", BOOL), ("Text", STRING)),
    lossless_integers=True,
    description="an i64 integer, a finite float, a boolean or a string",
)
METRICS = Map(METRIC_VALUE, name="Metrics (BTreeMap<String, MetricValue>)")
CAPABILITY_ESTIMATE = Struct(
    "CapabilityEstimate",
    (
        Field("preferred_backends", Vec(STRING)),
        Field("work_units_per_second", F64),
        Field("target_window_seconds", U64),
    ),
)
EVAL_SPLIT = Enum(
    "EvalSplit",
    (Variant("Train"), Variant("Validation"), Variant("Test"), Variant("Custom", STRING)),
)
MERGE_POLICY = Enum(
    "MergePolicy",
    (
        Variant("WeightedMean"),
        Variant("NormClippedWeightedMean"),
        Variant("TrimmedMean"),
        Variant("Ema"),
        Variant("QualityWeightedEma"),
        Variant("Custom", STRING),
    ),
)
RECONCILE_STRATEGY = Enum(
    "TrainerCanonicalReconcileStrategy",
    (
        Variant("Replace"),
        Variant("RootEma", Struct("RootEma", (Field("canonical_weight", F64),))),
    ),
)
PATCH_OUTCOME = Enum(
    "PatchOutcome", (Variant("Applied"), Variant("RequiresRestart"), Variant("Rejected", STRING))
)
PATCH_CLASS = Enum("PatchClass", (Variant("Hot"), Variant("Warm"), Variant("Cold")))
PATCH_VALUE = Untagged(
    "PatchValue",
    (
        ("Bool", BOOL),
        ("Integer", I64),
        ("Float", F64),
        ("Text", STRING),
        ("TextList", Vec(STRING)),
    ),
    description="a boolean, an integer, a float, a string or an array of strings",
)
RUNTIME_PATCH = Struct(
    "RuntimePatch",
    (
        Field("patch_id", STRING),
        Field("class", PATCH_CLASS),
        Field("summary", STRING, default="", checked="no"),
        Field("values", Map(PATCH_VALUE), default={}, checked="shallow"),
        Field("required_client_capabilities", Vec(STRING), default=[], checked="no"),
    ),
)
STATE_DICT_FILTER = Struct(
    "PythonStateDictFilterConfig",
    (
        Field("include_globs", Vec(STRING), default=[]),
        Field("exclude_globs", Vec(STRING), default=[]),
    ),
)
EMPTY_FILTER: dict = {"include_globs": [], "exclude_globs": []}
PIPELINE_KIND = Enum(
    "LeaseDataPipelineKind",
    (
        Variant("sharded-static"),
        Variant("indexed-dataset"),
        Variant("generated-dataset"),
        Variant("custom"),
    ),
)
BATCH_REF = Tagged(
    "PythonBatchRef",
    "kind",
    (
        (
            "cached_microshard_group",
            Struct(
                "CachedMicroshardGroup",
                (
                    Field("shard_paths", Vec(PATH)),
                    Field("microshard_ids", Vec(STRING)),
                    Field("ordinals", Vec(U32)),
                    Field("bytes_len", U64),
                ),
            ),
        ),
        (
            "micro_epoch",
            Struct(
                "MicroEpoch",
                (
                    Field("lease_id", STRING),
                    Field("microshard_ids", Vec(STRING)),
                    Field("ordinals", Vec(U32)),
                    Field("bytes_len", U64),
                    Field("pipeline_kind", PIPELINE_KIND),
                    Field("payload", JSON_VALUE),
                ),
            ),
        ),
    ),
)
BATCHES = Vec(BATCH_REF)
CANDIDATE = Struct(
    "PythonMergeCandidateRef",
    (
        Field("peer_id", STRING),
        Field("head_id", STRING),
        Field("artifact_id", STRING),
        Field("model_id", MODEL_ID),
        Field("sample_weight", F64),
        Field("quality_weight", F64),
    ),
)
INNER_LOOP_JOB = Struct(
    "PythonDiLoCoInnerLoopPathRequest",
    (
        Field("model_id", MODEL_ID),
        Field("batches", BATCHES, checked="shallow"),
        Field("num_inner_steps", U32),
        Field("inner_optimizer_state_path", Option(PATH)),
        Field("output_parameter_pack_path", PATH),
        Field("model_schema_hash", SCHEMA_HASH),
        Field("require_exact_steps", BOOL),
        Field("state_dict_filter", STATE_DICT_FILTER, default=EMPTY_FILTER),
    ),
)

# ---------------------------------------------------------------------------
# Results (the Rust response structs)

ACK = Struct("AckResponse")
"""An empty struct: any object (``{"ok": true}``), never null."""
HELLO = Struct(
    "HelloResponse",
    (
        Field(
            "protocol_version",
            U32,
            accepted=(SUPPORTED_PROTOCOL_VERSIONS, "1 or 2 (the versions the coordinator speaks)"),
        ),
        Field("workload_name", STRING),
        Field("capabilities", Vec(STRING), default=[]),
    ),
)
CAPABILITY_PROBE = Struct(
    "CapabilityProbeResponse",
    (Field("runtime_device", STRING), Field("capability", CAPABILITY_ESTIMATE)),
)
MODEL_HANDLE = Struct("ModelHandleResponse", (Field("model_id", STRING),))
OPTIONAL_MODEL_HANDLE = Struct("OptionalModelHandleResponse", (Field("model_id", Option(STRING)),))
METRICS_RESPONSE = Struct("MetricsResponse", (Field("metrics", METRICS),))
PLAN = Struct(
    "PythonParameterPackPlanResponse",
    (
        Field("uses_custom_parameter_pack_hooks", BOOL, default=False),
        Field("layout_hash", Option(STRING), default=None),
        Field("included_keys", Vec(STRING), default=[]),
        Field("excluded_float_keys", Vec(STRING), default=[]),
        Field("ignored_non_float_keys", Vec(STRING), default=[]),
        Field("parameter_count", U64, default=0),
        Field("generic_plan_error", Option(STRING), default=None),
    ),
)
INNER_LOOP_RESULT = Struct(
    "PythonDiLoCoInnerLoopResponse",
    (
        Field("steps_completed", U32),
        Field("metrics", METRICS, default={}),
        Field("inner_optimizer_state_path", Option(PATH), default=None),
        Field("inner_optimizer_state_encoding", Option(STRING), default=None),
    ),
)
CHECKPOINT_RESULT = Struct(
    "PythonDiLoCoCheckpointResult",
    (
        Field("steps_completed", U32),
        Field("metrics", METRICS, default={}),
        Field("local_parameter_pack_path", Option(STRING), default=None),
        Field("inner_optimizer_state_path", Option(PATH), default=None),
        Field("inner_optimizer_state_encoding", Option(STRING), default=None),
    ),
)
"""The checkpoint-command backend's result manifest (docs/protocol.md §5), as the Rust coordinator
reads it from ``result_manifest_path``."""
RPC_RESPONSE = Struct(
    "RpcResponse",
    (
        Field("id", U64),
        Field("ok", BOOL),
        Field("result", Option(JSON_VALUE), default=None),
        Field("error", Option(STRING), default=None),
    ),
)
"""The response envelope, decoded straight from the frame's bytes."""
PACK_MANIFEST = Struct(
    "PythonParameterPackManifest",
    (
        Field("format", STRING),
        Field("model_schema_hash", STRING),
        Field("layout_hash", STRING),
        Field("parameter_count", U64),
        Field("values_f32_le", STRING),
    ),
)
"""A pack's ``manifest.json`` as the Rust coordinator reads it (docs/protocol.md §3)."""


# ---------------------------------------------------------------------------
# Methods


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED: Any = _Sentinel("REQUIRED")
"""A client argument without a default."""
OMIT: Any = _Sentinel("OMIT")
"""Leave the field out of the request when the caller passes None."""
SEND_NULL: Any = _Sentinel("SEND_NULL")
"""Send whatever the caller passes, None included (the worker judges it)."""


@dataclass(frozen=True)
class Arg:
    """A positional parameter of the client method, named after its params field.

    ``default`` is its Python default (:data:`REQUIRED`: none);
    ``when_none`` what the request carries when the caller passes None:
    :data:`SEND_NULL`, :data:`OMIT`, or a value to send instead.
    """

    name: str
    default: Any = REQUIRED
    when_none: Any = SEND_NULL


@dataclass(frozen=True)
class Method:
    """One protocol method.

    ``params``: the params struct (None: params is JSON null).  ``result``:
    the Rust type its result decodes into.  ``args``: the client method's
    parameters, in order, one per params field; or ``whole``: the client
    takes the whole params object under that name.  ``returns``: the client
    returns this field of the decoded result (an ack returns None, anything
    else the whole decoded result).  ``doc``: the client method's docstring.
    """

    name: str
    params: Struct | None
    result: schema.Type
    doc: str
    args: tuple[Arg, ...] = ()
    whole: str | None = None
    returns: str | None = None

    @property
    def client_args(self) -> tuple[Arg, ...]:
        return (Arg(self.whole),) if self.whole else self.args


def _fields_as_args(params: Struct) -> tuple[Arg, ...]:
    return tuple(Arg(f.name) for f in params.fields)


def _params(method_name: str, *fields: Field) -> Struct:
    return Struct(f"{method_name} params", fields)


_FILTER = Field("state_dict_filter", STATE_DICT_FILTER, default=EMPTY_FILTER)
_ARTIFACT_PARAMS = (Field("model_id", MODEL_ID), Field("artifact_path", PATH))

_TRAIN_WINDOW = _params(
    "train_window", Field("model_id", MODEL_ID), Field("batches", BATCHES, checked="shallow")
)
_EVALUATE = _params("evaluate", Field("model_id", MODEL_ID), Field("split", EVAL_SPLIT))
_LOAD_ARTIFACT = _params("load_model_artifact", *_ARTIFACT_PARAMS)
_MATERIALIZE_ARTIFACT = _params("materialize_model_artifact", *_ARTIFACT_PARAMS)
_MERGE = _params(
    "merge_candidate_models",
    Field("base_model_id", MODEL_ID),
    Field("candidates", Vec(CANDIDATE)),
    Field("policy", MERGE_POLICY),
)
_EMA = _params(
    "apply_single_root_ema",
    Field("base_model_id", MODEL_ID),
    Field("merged_model_id", MODEL_ID),
    Field("policy", MERGE_POLICY),
)
_RECONCILE = _params(
    "reconcile_canonical_model",
    Field("local_model_id", MODEL_ID),
    Field("canonical_model_id", MODEL_ID),
    Field("strategy", RECONCILE_STRATEGY),
)
_RELEASE = _params("release_model", Field("model_id", RELEASED_MODEL_ID))

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "hello",
            params=None,
            result=HELLO,
            doc='``{"protocol_version": 1|2, "workload_name": str, "capabilities": [str]}``.',
        ),
        Method(
            "capability_probe",
            params=None,
            result=CAPABILITY_PROBE,
            doc='``{"runtime_device": str, "capability": CapabilityEstimate}``.',
        ),
        Method(
            "init_model",
            params=_params("init_model", Field("device", DEVICE)),
            result=MODEL_HANDLE,
            doc="A new model handle.",
            args=(Arg("device", default="cpu"),),
            returns="model_id",
        ),
        Method(
            "parameter_pack_plan",
            params=_params("parameter_pack_plan", Field("device", DEVICE), _FILTER),
            result=PLAN,
            doc="The Plan for ``device`` (an empty filter is sent when None).",
            args=(Arg("device"), Arg("state_dict_filter", None, EMPTY_FILTER)),
        ),
        Method(
            "train_window",
            params=_TRAIN_WINDOW,
            result=METRICS_RESPONSE,
            doc="The workload's metrics, strictly decoded (no coordinator additions: see "
            "``handling``).",
            args=_fields_as_args(_TRAIN_WINDOW),
            returns="metrics",
        ),
        Method(
            "evaluate",
            params=_EVALUATE,
            result=METRICS_RESPONSE,
            doc='Metrics; ``split`` is "Train", "Validation", "Test" or ``{"Custom": str}``.',
            args=_fields_as_args(_EVALUATE),
            returns="metrics",
        ),
        Method(
            "apply_patch",
            params=RUNTIME_PATCH,
            result=PATCH_OUTCOME,
            doc='A PatchOutcome: "Applied", "RequiresRestart" or ``{"Rejected": str}``.',
            whole="patch",
        ),
        Method(
            "load_model_artifact",
            params=_LOAD_ARTIFACT,
            result=ACK,
            doc="Load the artifact at ``artifact_path`` into the model.",
            args=_fields_as_args(_LOAD_ARTIFACT),
        ),
        Method(
            "materialize_model_artifact",
            params=_MATERIALIZE_ARTIFACT,
            result=ACK,
            doc="Write the model's artifact at ``artifact_path``.",
            args=_fields_as_args(_MATERIALIZE_ARTIFACT),
        ),
        Method(
            "export_parameter_pack",
            params=_params(
                "export_parameter_pack",
                Field("model_id", MODEL_ID),
                Field("parameter_pack_path", PATH),
                Field("model_schema_hash", SCHEMA_HASH),
                _FILTER,
            ),
            result=ACK,
            doc="Export a pack (``state_dict_filter`` is omitted from the request when None).",
            args=(
                Arg("model_id"),
                Arg("parameter_pack_path"),
                Arg("model_schema_hash"),
                Arg("state_dict_filter", None, OMIT),
            ),
        ),
        Method(
            "import_parameter_pack",
            params=_params(
                "import_parameter_pack",
                Field("device", DEVICE),
                Field("parameter_pack_path", PATH),
                _FILTER,
            ),
            result=MODEL_HANDLE,
            doc="A new model handle holding the pack's values.",
            args=(Arg("device"), Arg("parameter_pack_path"), Arg("state_dict_filter", None, OMIT)),
            returns="model_id",
        ),
        Method(
            "run_inner_loop",
            params=INNER_LOOP_JOB,
            result=INNER_LOOP_RESULT,
            doc="An InnerLoopResult (``inner_optimizer_state_*`` filled in as None when absent).",
            whole="job",
        ),
        Method(
            "merge_candidate_models",
            params=_MERGE,
            result=OPTIONAL_MODEL_HANDLE,
            doc="A new model handle, or None when the workload declined to merge.",
            args=_fields_as_args(_MERGE),
            returns="model_id",
        ),
        Method(
            "apply_single_root_ema",
            params=_EMA,
            result=MODEL_HANDLE,
            doc="The merged handle, now holding the EMA of base and merged.",
            args=_fields_as_args(_EMA),
            returns="model_id",
        ),
        Method(
            "reconcile_canonical_model",
            params=_RECONCILE,
            result=MODEL_HANDLE,
            doc="The canonical handle, now holding the reconciled model.",
            args=_fields_as_args(_RECONCILE),
            returns="model_id",
        ),
        Method(
            "release_model",
            params=_RELEASE,
            result=ACK,
            doc="Strict: a refusal raises :class:`RemoteError` (the real coordinator ignores it).",
            args=_fields_as_args(_RELEASE),
        ),
        Method(
            "shutdown",
            params=None,
            result=ACK,
            doc="Send ``shutdown`` and wait up to ``shutdown_timeout`` s for the worker to exit.",
        ),
    )
}
"""Every protocol method, in docs/protocol.md §2's order."""


def method(name: str) -> Method:
    """The spec of ``name``; raises ``KeyError`` naming it for an unknown method."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a protocol method (known: {', '.join(METHODS)})") from None


# ---------------------------------------------------------------------------
# Requests


def build_params(name: str, arguments: Mapping[str, Any]) -> Any:
    """The params object the client sends for ``arguments`` (its method's args by name).

    Shapes, does not validate: fields in spec order, None replaced or
    omitted as the :class:`Arg` says, path-likes as strings, mappings as
    dicts, sequences as lists.  Whatever the caller passes is sent, so a
    test can send ill-typed params on purpose (the worker judges them).
    """
    m = method(name)
    if m.params is None:
        return None
    if m.whole:
        return _plain(arguments[m.whole], m.params)
    params: dict[str, Any] = {}
    for arg in m.args:
        value = arguments[arg.name]
        if value is None and arg.when_none is not SEND_NULL:
            if arg.when_none is OMIT:
                continue
            value = schema._copy(arg.when_none)
        params[arg.name] = _plain(value, m.params.field(arg.name).type)
    return params


def _plain(value: Any, t: schema.Type) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping) and not isinstance(value, dict):
        return dict(value)
    if isinstance(t, Vec) and not isinstance(value, (str, bytes, Mapping, type(None))):
        try:
            items = list(value)
        except TypeError:
            return value
        return [_plain(item, t.item) for item in items]
    if isinstance(t, Struct) and isinstance(value, Mapping):
        return dict(value)
    return value


# ---------------------------------------------------------------------------
# Responses


@dataclass(frozen=True)
class Response:
    """A decoded response envelope; ``result`` and ``error`` are :data:`MISSING` when absent."""

    id: int
    ok: bool
    result: Any
    error: Any


def _envelope_path(field: str) -> str:
    if field == "":
        return "response"
    if field == "result" or field.startswith(("result.", "result[")):
        return field
    return f"response{field}" if field.startswith("[") else f"response.{field}"


def decode_response(body: bytes | bytearray | memoryview) -> Response:
    """``serde_json::from_slice::<RpcResponse>(body)``: the envelope as the Rust coordinator reads it.

    ``result`` is checked as a ``serde_json::Value``.  Raises
    :class:`DecodeError` with ``field`` ``response``, ``response.<key>`` or
    the path inside ``result``.
    """
    try:
        tree = wire.parse_json(body)
        envelope: Any = RPC_RESPONSE.decode(tree, "", schema.from_bytes(body), 0)
    except DecodeError as exc:
        raise exc.at(field=_envelope_path(exc.field or "")) from None
    given = set(tree) if isinstance(tree, dict) else set(RPC_RESPONSE.names[: len(tree)])
    return Response(
        envelope["id"],
        envelope["ok"],
        envelope["result"] if "result" in given else MISSING,
        envelope["error"] if "error" in given else MISSING,
    )


def parse_response(name: str, body: bytes | bytearray | memoryview, expected_id: int) -> Any:
    """The raw ``result`` of the response to request ``expected_id`` of method ``name``.

    Returns :data:`MISSING` when an ``ok: true`` response has no ``result``.
    Raises :class:`RemoteError` for ``ok: false`` and
    :class:`ProtocolViolation` (a :class:`DecodeError` for what serde would
    refuse) for anything else.  One deliberate strictness beyond the Rust
    coordinator: ``ok: false`` needs a string ``error`` (docs/protocol.md §1); the
    Rust side would show "unknown python worker error".
    """
    try:
        response = decode_response(body)
    except DecodeError as exc:
        raise exc.at(method=name) from None
    if response.id != expected_id:
        raise ProtocolViolation(
            f"{name}: response.id: expected {expected_id} (the id of the request in flight), "
            f"got {response.id}; the worker must answer requests in order with their own ids",
            name,
            "response.id",
        )
    if not response.ok:
        if not isinstance(response.error, str):
            raise DecodeError(
                "response.error", "a string (ok is false)", response.error, method=name
            )
        raise RemoteError(name, response.error)
    return response.result


def decode_result(name: str, result: Any, *, validated: bool = False) -> Any:
    """What the client's typed method returns for ``result``, decoded as the Rust type.

    ``validated``: ``result`` came from :func:`decode_response` (already a
    checked ``serde_json::Value``).  Raises :class:`DecodeError` (method set)
    for what the Rust coordinator would refuse, ``KeyError`` for an unknown method.
    """
    m = method(name)
    try:
        if result is MISSING:
            raise DecodeError("result", m.result.expected, MISSING)
        ctx = schema.FROM_CHECKED_VALUE if validated else schema.FROM_VALUE
        decoded: Any = schema.decode(m.result, result, "result", ctx=ctx)
    except DecodeError as exc:
        raise exc.at(method=name) from None
    if m.result is ACK:
        return None
    return decoded[m.returns] if m.returns else decoded


__all__ = [
    "ACK",
    "BATCH_REF",
    "CANDIDATE",
    "DILOCO_CAPABILITY",
    "EMPTY_FILTER",
    "METHODS",
    "METRICS",
    "METRIC_VALUE",
    "MISSING",
    "MODEL_ID",
    "PACK_MANIFEST",
    "PROTOCOL_VERSION",
    "RPC_RESPONSE",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "Arg",
    "Method",
    "Response",
    "build_params",
    "decode_response",
    "decode_result",
    "method",
    "parse_response",
]
