"""Every protocol method (docs/protocol.md §2): its params schema and its handler, in one table.

Adding a method is one :class:`Method` entry in :data:`METHODS` (with a
params dataclass if it takes params) and its handler, plus its tests.  The
dispatcher (``Worker.handle``) decodes and checks params with the schema
before the handler runs, so handlers receive typed values (model handles
resolved, filters as :class:`~worker.protocol.StateFilter`) and validate
nothing themselves; they check only what the *workload* returns.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import artifacts, files, packs
from .errors import EnvironmentFault, LayoutError, PackError, WorkloadError, describe
from .layout import compute_layout
from .protocol import (
    ACK,
    NO_FILTER,
    U32_MAX,
    StateFilter,
    check_capability,
    check_patch_outcome,
    metrics_map,
)
from .schema import (
    ANY,
    BATCH_REFS,
    BOOL,
    FILTER,
    MODEL,
    NULL,
    NUMBER,
    OPTIONAL_PATH,
    PATH,
    TEXT,
    TEXT_ANY,
    U32,
    AnyObject,
    ListOf,
    Model,
    Node,
    Record,
    Variants,
    param,
    whole,
)

if TYPE_CHECKING:
    from .service import Worker

# -- enums (externally tagged, as serde encodes them) -----------------------------

EVAL_SPLIT = Variants(("Train", "Validation", "Test"), {"Custom": TEXT_ANY})
MERGE_POLICY = Variants(
    ("WeightedMean", "NormClippedWeightedMean", "TrimmedMean", "Ema", "QualityWeightedEma"),
    {"Custom": TEXT_ANY},
)
PATCH_CLASS = Variants(("Hot", "Warm", "Cold"))


@dataclass(frozen=True, kw_only=True)
class RootEma:
    canonical_weight: float = param(NUMBER)


RECONCILE = Variants(("Replace",), {"RootEma": Record(RootEma)})


# -- params ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DeviceParams:
    device: str = param(TEXT)


@dataclass(frozen=True, kw_only=True)
class PlanParams:
    device: str = param(TEXT)
    state_dict_filter: StateFilter = param(FILTER, NO_FILTER)


@dataclass(frozen=True, kw_only=True)
class TrainWindowParams:
    model_id: Model = param(MODEL)
    batches: list[dict[str, Any]] = param(BATCH_REFS)


@dataclass(frozen=True, kw_only=True)
class EvaluateParams:
    model_id: Model = param(MODEL)
    split: Any = param(EVAL_SPLIT)


@dataclass(frozen=True, kw_only=True)
class RuntimePatch:
    patch_id: str = param(TEXT_ANY)
    patch_class: str = param(PATCH_CLASS, wire="class")
    values: dict[str, Any] | None = param(AnyObject("an object of PatchValues"), None)
    patch: dict[str, Any] = whole()


@dataclass(frozen=True, kw_only=True)
class ArtifactParams:
    model_id: Model = param(MODEL)
    artifact_path: str = param(PATH)


@dataclass(frozen=True, kw_only=True)
class ExportParams:
    model_id: Model = param(MODEL)
    parameter_pack_path: str = param(PATH)
    model_schema_hash: str = param(TEXT_ANY)
    state_dict_filter: StateFilter = param(FILTER, NO_FILTER)


@dataclass(frozen=True, kw_only=True)
class ImportParams:
    device: str = param(TEXT)
    parameter_pack_path: str = param(PATH)
    state_dict_filter: StateFilter = param(FILTER, NO_FILTER)


@dataclass(frozen=True, kw_only=True)
class InnerLoopJob:
    model_id: Model = param(MODEL)
    batches: list[dict[str, Any]] = param(BATCH_REFS)
    num_inner_steps: int = param(U32)
    inner_optimizer_state_path: str | None = param(OPTIONAL_PATH, None)
    output_parameter_pack_path: str = param(PATH)
    model_schema_hash: str = param(TEXT_ANY)
    require_exact_steps: bool = param(BOOL)
    state_dict_filter: StateFilter = param(FILTER, NO_FILTER)
    job: dict[str, Any] = whole()


@dataclass(frozen=True, kw_only=True)
class Candidate:
    peer_id: str | None = param(TEXT_ANY, None)
    head_id: str | None = param(TEXT_ANY, None)
    artifact_id: str | None = param(TEXT_ANY, None)
    model_id: Model = param(MODEL)
    sample_weight: float = param(NUMBER)
    quality_weight: float = param(NUMBER)
    raw: dict[str, Any] = whole()

    def for_hook(self) -> dict[str, Any]:
        """The dict the workload receives: as sent, with ``model`` (the state) in
        place of ``model_id`` and the weights as floats."""
        out = {k: v for k, v in self.raw.items() if k != "model_id"}
        out["model"] = self.model_id.state
        out["sample_weight"] = self.sample_weight
        out["quality_weight"] = self.quality_weight
        return out


@dataclass(frozen=True, kw_only=True)
class MergeParams:
    base_model_id: Model = param(MODEL)
    candidates: list[Candidate] = param(ListOf(Record(Candidate, "a Candidate object")))
    policy: Any = param(MERGE_POLICY)


@dataclass(frozen=True, kw_only=True)
class RootEmaParams:
    base_model_id: Model = param(MODEL)
    merged_model_id: Model = param(MODEL)
    policy: Any = param(MERGE_POLICY)


@dataclass(frozen=True, kw_only=True)
class ReconcileParams:
    local_model_id: Model = param(MODEL)
    canonical_model_id: Model = param(MODEL)
    strategy: Any = param(RECONCILE)


@dataclass(frozen=True, kw_only=True)
class ReleaseParams:
    model_id: str = param(TEXT_ANY)  # any string: releasing an unknown id is not an error


# -- handlers ---------------------------------------------------------------------


def hello(worker: Worker, _: None) -> dict[str, Any]:
    return worker.hello_result


def capability_probe(worker: Worker, _: None) -> dict[str, Any]:
    device = worker.call_hook("runtime_device")
    if not isinstance(device, str):
        raise WorkloadError(f"runtime_device() must return a string, got {describe(device)}")
    capability = check_capability(worker.call_hook("capability_probe"))
    return {"runtime_device": device, "capability": capability}


def init_model(worker: Worker, p: DeviceParams) -> dict[str, Any]:
    state = worker.call_hook("init_model", p.device)
    return {"model_id": worker.add_model("init_model", state)}


def parameter_pack_plan(worker: Worker, p: PlanParams) -> dict[str, Any]:
    state = worker.call_hook("init_model", p.device)
    custom = worker.has("export_parameter_pack_path", "import_parameter_pack_path")
    try:
        plan = compute_layout(state, p.state_dict_filter).plan()
    except LayoutError as exc:
        if not custom:
            raise
        return {
            "uses_custom_parameter_pack_hooks": True, "layout_hash": None, "included_keys": [],
            "excluded_float_keys": [], "ignored_non_float_keys": [], "parameter_count": 0,
            "generic_plan_error": str(exc),
        }  # fmt: skip
    plan["uses_custom_parameter_pack_hooks"] = custom
    return plan


def train_window(worker: Worker, p: TrainWindowParams) -> dict[str, Any]:
    metrics = worker.call_hook("train_window", p.model_id.state, p.batches)
    return {"metrics": metrics_map("train_window", metrics)}


def evaluate(worker: Worker, p: EvaluateParams) -> dict[str, Any]:
    metrics = worker.call_hook("evaluate", p.model_id.state, p.split)
    return {"metrics": metrics_map("evaluate", metrics)}


def apply_patch(worker: Worker, p: RuntimePatch) -> Any:
    if not worker.has("apply_patch"):
        return {
            "Rejected": "python workload does not support runtime patches (it has no apply_patch hook)"
        }
    return check_patch_outcome(worker.call_hook("apply_patch", p.patch))


def load_model_artifact(worker: Worker, p: ArtifactParams) -> dict[str, Any]:
    model, path = p.model_id, p.artifact_path
    if worker.has("load_model_artifact_path"):
        updated = worker.call_hook("load_model_artifact_path", model.state, path)
    elif worker.has("load_model_artifact"):
        try:
            data = artifacts.read_whole(path, repr(path))
        except PackError as exc:
            exc.param = "artifact_path"
            raise
        updated = worker.call_hook("load_model_artifact", model.state, data)
    else:
        artifacts.load_state(model.state, path)
        updated = None
    if updated is not None:
        worker.models[model.id] = updated
    return ACK


def materialize_model_artifact(worker: Worker, p: ArtifactParams) -> dict[str, Any]:
    state, path = p.model_id.state, p.artifact_path
    if worker.has("materialize_model_artifact_path"):
        worker.call_hook("materialize_model_artifact_path", state, path)
    elif worker.has("materialize_model_artifact"):
        data = worker.call_hook("materialize_model_artifact", state)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise WorkloadError(
                f"hook materialize_model_artifact must return bytes, got {describe(data)}"
            )
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            files.write_file_atomically(target, data)
        except OSError as exc:
            raise EnvironmentFault(
                f"cannot write {path!r}: {packs.os_reason(exc)}", param="artifact_path"
            ) from None
    else:
        artifacts.save_state(state, path)
    return ACK


def export_parameter_pack(worker: Worker, p: ExportParams) -> dict[str, Any]:
    worker.export(p.model_id.state, p.parameter_pack_path, p.model_schema_hash, p.state_dict_filter)
    return ACK


def import_parameter_pack(worker: Worker, p: ImportParams) -> dict[str, Any]:
    if worker.has("import_parameter_pack_path"):
        hook = "import_parameter_pack_path"
        kwargs = worker.filter_kwarg(hook, p.state_dict_filter)
        state = worker.call_hook(hook, p.device, p.parameter_pack_path, **kwargs)
    else:
        hook = "init_model"
        state = packs.import_pack(
            p.parameter_pack_path, lambda: worker.call_hook(hook, p.device), p.state_dict_filter
        )
    return {"model_id": worker.add_model(hook, state)}


def run_inner_loop(worker: Worker, job: InnerLoopJob) -> dict[str, Any]:
    manifest = Path(job.output_parameter_pack_path, packs.MANIFEST_NAME)
    before = _stat_or_none(manifest)
    result = worker.call_hook("run_inner_loop", job.model_id.state, job.job)
    if result is None:
        result = {}
    if not isinstance(result, dict):
        raise WorkloadError(
            f"hook run_inner_loop must return a dict or None, got {describe(result)}"
        )
    done = result.get("steps_completed", job.num_inner_steps)
    if type(done) is not int or not 0 <= done <= U32_MAX:
        raise WorkloadError(
            f"steps_completed must be an integer in 0..={U32_MAX}, got {describe(done)}"
        )
    if job.require_exact_steps and done != job.num_inner_steps:
        raise WorkloadError(
            f"the inner loop completed {done} steps but {job.num_inner_steps} were requested "
            "with require_exact_steps; run exactly num_inner_steps steps"
        )
    out: dict[str, Any] = {
        "steps_completed": done,
        "metrics": metrics_map("run_inner_loop", result.get("metrics")),
    }
    for key in ("inner_optimizer_state_path", "inner_optimizer_state_encoding"):
        value = result.get(key)
        if value is not None and not isinstance(value, str):
            raise WorkloadError(f"{key} must be a string or None, got {describe(value)}")
        out[key] = value
    # All or nothing: the handle takes a returned state only once the pack is out.
    state = job.model_id.state if result.get("state") is None else result["state"]
    after = _stat_or_none(manifest)
    if after is None or after == before:
        worker.export(
            state, job.output_parameter_pack_path, job.model_schema_hash, job.state_dict_filter
        )
    worker.models[job.model_id.id] = state
    return out


def merge_candidate_models(worker: Worker, p: MergeParams) -> dict[str, Any]:
    candidates = [c.for_hook() for c in p.candidates]
    merged = worker.call_hook("merge_candidate_models", p.base_model_id.state, candidates, p.policy)
    if merged is None:
        return {"model_id": None}
    return {"model_id": worker.add_model("merge_candidate_models", merged)}


def apply_single_root_ema(worker: Worker, p: RootEmaParams) -> dict[str, Any]:
    merged = p.merged_model_id
    updated = worker.call_hook(
        "apply_single_root_ema", p.base_model_id.state, merged.state, p.policy
    )
    if updated is not None:
        worker.models[merged.id] = updated
    return {"model_id": merged.id}


def reconcile_canonical_model(worker: Worker, p: ReconcileParams) -> dict[str, Any]:
    canonical = p.canonical_model_id
    updated = worker.call_hook(
        "reconcile_canonical_model", p.local_model_id.state, canonical.state, p.strategy
    )
    if updated is not None:
        worker.models[canonical.id] = updated
    return {"model_id": canonical.id}


def release_model(worker: Worker, p: ReleaseParams) -> dict[str, Any]:
    worker.models.pop(p.model_id, None)
    return ACK


def shutdown(worker: Worker, _: Any) -> dict[str, Any]:
    return ACK


def _stat_or_none(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


# -- the table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One protocol method: its name, the schema of its params and its handler.
    ``ends_session``: the connection closes (exit 0) once the answer is sent."""

    name: str
    params: Node
    handler: Callable[[Worker, Any], Any]
    ends_session: bool = False


def _table(*methods: Method) -> dict[str, Method]:
    return {m.name: m for m in methods}


METHODS: dict[str, Method] = _table(
    Method("hello", NULL, hello),
    Method("capability_probe", NULL, capability_probe),
    Method("init_model", Record(DeviceParams), init_model),
    Method("parameter_pack_plan", Record(PlanParams), parameter_pack_plan),
    Method("train_window", Record(TrainWindowParams), train_window),
    Method("evaluate", Record(EvaluateParams), evaluate),
    Method("apply_patch", Record(RuntimePatch), apply_patch),
    Method("load_model_artifact", Record(ArtifactParams), load_model_artifact),
    Method("materialize_model_artifact", Record(ArtifactParams), materialize_model_artifact),
    Method("export_parameter_pack", Record(ExportParams), export_parameter_pack),
    Method("import_parameter_pack", Record(ImportParams), import_parameter_pack),
    Method("run_inner_loop", Record(InnerLoopJob), run_inner_loop),
    Method("merge_candidate_models", Record(MergeParams), merge_candidate_models),
    Method("apply_single_root_ema", Record(RootEmaParams), apply_single_root_ema),
    Method("reconcile_canonical_model", Record(ReconcileParams), reconcile_canonical_model),
    Method("release_model", Record(ReleaseParams), release_model),
    # Deliberately lenient: a stop is never refused, whatever its params.
    Method("shutdown", ANY, shutdown, ends_session=True),
)
"""The one table of protocol methods, in docs/protocol.md order: name -> :class:`Method`."""
