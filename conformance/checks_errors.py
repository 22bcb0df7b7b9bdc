"""Error paths of every method: refused with ``ok: false`` and a message, and
the same worker process keeps serving afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import CheckFailed, describe, one_line
from .session import UNKNOWN_MODEL, Session, candidate
from .values import write_pack

VALIDATION = "the worker's parameter validation (refuse before calling a hook)"
MODELS = "the worker's model table (unknown handles must be refused)"


def _params(s: Session, m: str, m2: str, path: Path) -> dict[str, dict]:
    """Valid params for every method that takes an object (models ``m`` and ``m2``)."""
    dev = s.options.device
    schema = s.options.model_schema_hash
    return {
        "init_model": {"device": dev},
        "parameter_pack_plan": {
            "device": dev,
            "state_dict_filter": {"include_globs": [], "exclude_globs": []},
        },
        "train_window": {"model_id": m, "batches": []},
        "evaluate": {"model_id": m, "split": "Validation"},
        "apply_patch": {
            "patch_id": "conformance-error-path",
            "class": "Hot",
            "summary": "error path",
            "values": {},
            "required_client_capabilities": [],
        },
        "load_model_artifact": {"model_id": m, "artifact_path": str(path / "artifact.safetensors")},
        "materialize_model_artifact": {
            "model_id": m,
            "artifact_path": str(path / "artifact.safetensors"),
        },
        "export_parameter_pack": {
            "model_id": m,
            "parameter_pack_path": str(path / "pack"),
            "model_schema_hash": schema,
        },
        "import_parameter_pack": {"device": dev, "parameter_pack_path": str(path / "pack")},
        "run_inner_loop": {
            "model_id": m,
            "batches": [],
            "num_inner_steps": 1,
            "inner_optimizer_state_path": None,
            "output_parameter_pack_path": str(path / "inner-out"),
            "model_schema_hash": schema,
            "require_exact_steps": True,
        },
        "merge_candidate_models": {
            "base_model_id": m,
            "candidates": [candidate(m2, 1.0)],
            "policy": "WeightedMean",
        },
        "apply_single_root_ema": {"base_model_id": m, "merged_model_id": m2, "policy": "Ema"},
        "reconcile_canonical_model": {
            "local_model_id": m,
            "canonical_model_id": m2,
            "strategy": "Replace",
        },
        "release_model": {"model_id": m},
    }


REQUIRED = {
    "init_model": ["device"],
    "parameter_pack_plan": ["device"],
    "train_window": ["model_id", "batches"],
    "evaluate": ["model_id", "split"],
    "apply_patch": ["patch_id", "class"],
    "load_model_artifact": ["model_id", "artifact_path"],
    "materialize_model_artifact": ["model_id", "artifact_path"],
    "export_parameter_pack": ["model_id", "parameter_pack_path", "model_schema_hash"],
    "import_parameter_pack": ["device", "parameter_pack_path"],
    "run_inner_loop": [
        "model_id",
        "batches",
        "num_inner_steps",
        "output_parameter_pack_path",
        "model_schema_hash",
        "require_exact_steps",
    ],
    "merge_candidate_models": ["base_model_id", "candidates", "policy"],
    "apply_single_root_ema": ["base_model_id", "merged_model_id", "policy"],
    "reconcile_canonical_model": ["local_model_id", "canonical_model_id", "strategy"],
    "release_model": ["model_id"],
}

MODEL_SLOTS = [
    ("train_window", "model_id"),
    ("evaluate", "model_id"),
    ("load_model_artifact", "model_id"),
    ("materialize_model_artifact", "model_id"),
    ("export_parameter_pack", "model_id"),
    ("run_inner_loop", "model_id"),
    ("merge_candidate_models", "base_model_id"),
    ("merge_candidate_models", "candidates"),
    ("apply_single_root_ema", "base_model_id"),
    ("apply_single_root_ema", "merged_model_id"),
    ("reconcile_canonical_model", "local_model_id"),
    ("reconcile_canonical_model", "canonical_model_id"),
]


def _refused(
    s: Session, method: str, params: Any, what: str, hook: str, mention: str | None = None
) -> str:
    """Send a request that must be refused; returns the worker's message."""
    expected = f"{method} with {what} to answer ok:false with a message"
    if mention:
        expected += f" naming {mention!r}"
    ok, result = s.attempt(method, params, expected=expected, hook=hook)
    if ok:
        raise CheckFailed(expected, f"ok:true with {one_line(describe(result))}", hook)
    if not str(result).strip():
        raise CheckFailed(expected, "an empty error message", hook)
    if mention and mention not in result:
        raise CheckFailed(expected, f"the message {one_line(result, 160)!r}", hook)
    return result


def unknown_method(s: Session) -> str:
    for method in ("conformance_no_such_method", "Hello", "hello "):
        _refused(s, method, None, "an unknown method name", "the worker's method table")
    s.still_serves("unknown methods", "the worker's method table")
    return "unknown method names refused; still serving"


def unknown_model_ids(s: Session) -> str:
    m, m2 = s.new_model(), s.new_model()
    scratch = s.path("unknown-ids")
    scratch.mkdir()
    count = 0
    for method, key in MODEL_SLOTS:
        params = _params(s, m, m2, scratch)[method]
        if key == "candidates":
            params[key] = [candidate(UNKNOWN_MODEL, 1.0)]
        else:
            params[key] = UNKNOWN_MODEL
        _refused(s, method, params, f"{key} = an unknown handle", MODELS, mention=UNKNOWN_MODEL)
        count += 1
    s.still_serves("requests with unknown model ids", MODELS)
    return f"{count} unknown-handle requests refused with the handle named; still serving"


def missing_params(s: Session) -> str:
    m, m2 = s.new_model(), s.new_model()
    scratch = s.path("missing")
    scratch.mkdir()
    count = 0
    for method, keys in REQUIRED.items():
        for bad in (None, [], "params"):
            _refused(s, method, bad, f"params {describe(bad)} instead of an object", VALIDATION)
            count += 1
        for key in keys:
            params = _params(s, m, m2, scratch)[method]
            del params[key]
            _refused(s, method, params, f"params.{key} missing", VALIDATION, mention=key)
            count += 1
    s.still_serves("requests with missing params", VALIDATION)
    return f"{count} requests with missing params refused, each naming the parameter"


def _ill_typed(m: str) -> list[tuple[str, str, Any, str]]:
    """(method, key, bad value, name the message must mention)."""
    return [
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
        ("merge_candidate_models", "candidates", [dict(candidate(m, 1.0), sample_weight="heavy")],
         "sample_weight"),
        ("merge_candidate_models", "policy", "Bogus", "policy"),
        ("apply_single_root_ema", "policy", {"Custom": 3}, "policy"),
        ("reconcile_canonical_model", "strategy", "Bogus", "strategy"),
        ("reconcile_canonical_model", "strategy", {"RootEma": {"canonical_weight": "half"}},
         "strategy"),
    ]  # fmt: skip


def ill_typed_params(s: Session) -> str:
    m, m2 = s.new_model(), s.new_model()
    scratch = s.path("ill-typed")
    scratch.mkdir()
    cases = _ill_typed(m2)
    for method, key, value, mention in cases:
        params = _params(s, m, m2, scratch)[method]
        params[key] = value
        _refused(s, method, params, f"params.{key} = {describe(value)}", VALIDATION, mention)
    s.still_serves("requests with ill-typed params", VALIDATION)
    return f"{len(cases)} ill-typed or out-of-range params refused, each naming the parameter"


LOAD_HOOK = "load_model_artifact_path() / load_model_artifact()"
MATERIALIZE_HOOK = "materialize_model_artifact_path() / materialize_model_artifact()"


def bad_files(s: Session) -> str:
    template = s.template()
    m = s.new_model()
    root = s.path("bad-files")
    root.mkdir()
    blocker = root / "a-regular-file"
    blocker.write_bytes(b"not a directory")
    template.values.astype("<f4").tofile(root / "escaped.f32le")  # a valid file, outside
    garbage = root / "garbage.safetensors"
    garbage.write_bytes(b"this is not a model artifact")

    def pack(name: str, **overrides: Any) -> Path:
        layout_hash = overrides.pop("layout_hash", template.layout_hash)
        hash_ = s.options.model_schema_hash
        return write_pack(root / name, template.values, layout_hash, hash_, **overrides)

    imports = [
        (root / "no-such-pack", "a pack directory that does not exist"),
        (pack("bad-format", fmt="not-a-pack-format"), "a manifest with an unknown format"),
        (
            pack("short", parameter_count=template.parameter_count + 1),
            "a values file shorter than parameter_count * 4 bytes",
        ),
        (
            pack("wrong-layout", layout_hash="torch-layout-" + "0" * 64),
            "a pack whose layout_hash is not the model's",
        ),
        (
            pack("escape", values_name="../escaped.f32le"),
            "values_f32_le pointing outside the pack ('../escaped.f32le')",
        ),
    ]
    for path, what in imports:
        params = {"device": s.options.device, "parameter_pack_path": str(path)}
        _refused(s, "import_parameter_pack", params, what, s.import_hook)
    for path, what in (
        (root / "missing.safetensors", "an artifact path that does not exist"),
        (garbage, "an artifact file holding garbage"),
    ):
        params = {"model_id": m, "artifact_path": str(path)}
        _refused(s, "load_model_artifact", params, what, LOAD_HOOK)
    params = {
        "model_id": m,
        "parameter_pack_path": str(blocker / "pack"),
        "model_schema_hash": s.options.model_schema_hash,
    }
    _refused(s, "export_parameter_pack", params, "a pack path under a regular file", s.export_hook)
    params = {"model_id": m, "artifact_path": str(blocker / "artifact.safetensors")}
    what = "an artifact path under a regular file"
    _refused(s, "materialize_model_artifact", params, what, MATERIALIZE_HOOK)
    s.still_serves("refused file operations", "the worker")
    return "missing, malformed, short, mismatched and escaping packs/artifacts refused"


__all__ = ["bad_files", "ill_typed_params", "missing_params", "unknown_method", "unknown_model_ids"]
