"""Error paths of every method: refused with ``ok: false`` and a message, and
the same worker process keeps serving afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fakecoord import examples, files

from .errors import CheckFailed, describe, one_line
from .options import UNKNOWN_MODEL
from .session import Session
from .values import write_inconsistent_pack

VALIDATION = "the worker's parameter validation (refuse before calling a hook)"
MODELS = "the worker's model table (unknown handles must be refused)"

# The tables below are derived from fakecoord.spec (fakecoord.examples): a method
# added there is checked here without an edit.

REQUIRED: dict[str, list[str]] = {m: examples.required_params(m) for m in examples.object_methods()}
"""Method -> the params a worker must refuse a request without."""

MODEL_SLOTS: list[tuple[str, str]] = examples.model_slots()
"""``(method, param)`` for every param holding a live model handle."""


def _examples(s: Session, m: str, m2: str, path: Path) -> examples.Examples:
    return examples.Examples(
        device=s.device(),
        schema_hash=s.options.model_schema_hash,
        models=(m, m2),
        root=str(path),
    )


def _params(s: Session, m: str, m2: str, path: Path) -> dict[str, dict]:
    """Valid params for every method that takes an object (models ``m`` and ``m2``)."""
    ex = _examples(s, m, m2, path)
    return {method: examples.valid_params(method, ex) for method in examples.object_methods()}


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
    ex = _examples(s, m, m2, scratch)
    for method, key in MODEL_SLOTS:
        params = examples.with_model(
            method, key, _params(s, m, m2, scratch)[method], UNKNOWN_MODEL, ex
        )
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
        bad: Any
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


def ill_typed_params(s: Session) -> str:
    m, m2 = s.new_model(), s.new_model()
    scratch = s.path("ill-typed")
    scratch.mkdir()
    ex = _examples(s, m, m2, scratch)
    cases = [
        c for method in examples.object_methods() for c in examples.ill_typed_params(method, ex)
    ]
    valid = _params(s, m, m2, scratch)
    for case in cases:
        params = {**valid[case.method], case.field: case.value}
        what = f"params.{case.field} = {describe(case.value)}"
        _refused(s, case.method, params, what, VALIDATION, case.mention)
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
    files.write_bytes(blocker, b"not a directory")
    files.write_bytes(root / "escaped.f32le", template.values.astype("<f4").tobytes())  # outside
    garbage = root / "garbage.safetensors"
    files.write_bytes(garbage, b"this is not a model artifact")

    def pack(name: str, **overrides: Any) -> Path:
        overrides.setdefault("layout_hash", template.layout_hash)
        overrides.setdefault("model_schema_hash", s.options.model_schema_hash)
        return write_inconsistent_pack(root / name, template.values, **overrides)

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
        params = {"device": s.device(), "parameter_pack_path": str(path)}
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
