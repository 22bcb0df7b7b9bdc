"""What the real coordinator does around some calls (docs/protocol.md §2, "Coordinator-side handling").

The typed methods of :class:`~fakecoord.client.WorkerClient` are strict: they
return what the worker said or raise.  These helpers add the real
coordinator's behaviour on top: counts added to training metrics, failures
turned into metrics or patch outcomes, the exported manifest checked, a
useless DiLoCo plan refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import wire
from .client import WorkerClient
from .errors import DecodeError, PlanRefused, ProtocolViolation, RemoteError

MANIFEST_NAME = "manifest.json"  # as fakecoord.packs (which needs numpy; this module does not)

_REF_COUNTS = (("examples_processed", "examples"), ("tokens_processed", "tokens"))


def batch_counts(batches: Sequence[Any]) -> dict[str, int]:
    """The counts the coordinator knows from the batch refs alone.

    Always ``batch_count``.  ``microshard_count`` when every ref carries a
    ``microshard_ids`` list (their total length).  ``examples_processed`` /
    ``tokens_processed`` when every ref tells a non-negative integer
    ``examples`` / ``tokens``, on the ref itself or in its ``payload`` object.
    """
    counts = {"batch_count": len(batches)}
    if not batches:
        return counts
    if all(
        isinstance(ref, Mapping) and isinstance(ref.get("microshard_ids"), list) for ref in batches
    ):
        counts["microshard_count"] = sum(len(ref["microshard_ids"]) for ref in batches)
    for metric, key in _REF_COUNTS:
        told = [_told_count(ref, key) for ref in batches]
        if all(n is not None for n in told):
            counts[metric] = sum(told)  # type: ignore[arg-type]
    return counts


def _told_count(ref: Any, key: str) -> int | None:
    if not isinstance(ref, Mapping):
        return None
    for source in (ref, ref.get("payload")):
        if isinstance(source, Mapping):
            value = source.get(key)
            if type(value) is int and value >= 0:
                return value
    return None


CONTRIBUTION_WEIGHT_METRICS = (
    "tokens_processed",
    "accepted_tokens_or_samples",
    "examples_processed",
    "sample_count",
    "samples",
    "batch_count",
)
"""Where the Rust coordinator reads a contribution's weight, in order
(``burn_p2p_workload::standard_contribution_weight``)."""


def metric_number(metrics: Mapping[str, Any], key: str) -> float | None:
    """A metric as the coordinator's ``numeric_metric`` reads it: an integer or a float as
    f64; None for a bool, a string, a non-finite number or an absent key."""
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return wire.f64_of(value)


def contribution_weight(metrics: Mapping[str, Any]) -> float:
    """The sample weight of a candidate, as the Rust coordinator computes it: the first of
    :data:`CONTRIBUTION_WEIGHT_METRICS` that is a finite number above 0, else 1.0 (a string,
    bool or missing metric is skipped, never an error)."""
    for key in CONTRIBUTION_WEIGHT_METRICS:
        value = metric_number(metrics, key)
        if value is not None and value > 0:
            return value
    return 1.0


def train_window_metrics(client: WorkerClient, model_id: str, batches: Sequence[Any]) -> dict:
    """``train_window`` metrics plus :func:`batch_counts` (the coordinator's counts win)."""
    metrics = dict(client.train_window(model_id, batches))
    metrics.update(batch_counts(batches))
    return metrics


def evaluate_metrics(client: WorkerClient, model_id: str, split: Any) -> dict:
    """``evaluate`` metrics, or ``{"python_error": text}`` when the worker refuses.

    Only :class:`RemoteError` is absorbed; protocol violations, timeouts and
    a dead worker still raise.
    """
    try:
        return client.evaluate(model_id, split)
    except RemoteError as exc:
        return {"python_error": exc.message}


def apply_patch_outcome(client: WorkerClient, patch: Mapping[str, Any]) -> str | dict:
    """``apply_patch``'s outcome, or ``{"Rejected": text}`` when the worker refuses."""
    try:
        return client.apply_patch(patch)
    except RemoteError as exc:
        return {"Rejected": exc.message}


def export_checked(
    client: WorkerClient,
    model_id: str,
    path: str | os.PathLike,
    model_schema_hash: str,
    state_dict_filter: Mapping[str, Any] | None = None,
) -> dict:
    """Export a pack, then read its manifest back and return it.

    Raises :class:`ProtocolViolation` (method ``export_parameter_pack``, field
    ``manifest.model_schema_hash`` or ``manifest``) when the manifest is
    missing, unreadable, or carries another ``model_schema_hash``.
    """
    method = "export_parameter_pack"
    client.export_parameter_pack(model_id, path, model_schema_hash, state_dict_filter)
    manifest_path = Path(path, MANIFEST_NAME)
    try:
        manifest = wire.decode_value(manifest_path.read_bytes())
    except (OSError, DecodeError) as exc:
        raise ProtocolViolation(
            f"{method}: the worker acked but {manifest_path} is not a readable JSON manifest ({exc})",
            method,
            "manifest",
        ) from None
    if not isinstance(manifest, dict):
        raise ProtocolViolation(
            f"{method}: {manifest_path} holds {type(manifest).__name__}, expected a JSON object",
            method,
            "manifest",
        )
    found = manifest.get("model_schema_hash")
    if found != model_schema_hash:
        raise ProtocolViolation(
            f"{method}: manifest.model_schema_hash is {found!r} but the coordinator configured "
            f"{model_schema_hash!r}; the pack at {path} would be rejected",
            method,
            "manifest.model_schema_hash",
        )
    return manifest


def check_diloco_plan(plan: Mapping[str, Any]) -> None:
    """Refuse a DiLoCo deployment whose plan transports nothing.

    Raises :class:`PlanRefused` when the plan selects zero parameters and the
    workload has no custom pack hooks (its own export/import may carry state
    the generic layout cannot see).
    """
    if plan.get("uses_custom_parameter_pack_hooks"):
        return
    if plan.get("parameter_count", 0) == 0 or not plan.get("included_keys"):
        excluded = plan.get("excluded_float_keys") or []
        hint = (
            f"; the filter excluded every float entry ({len(excluded)}), e.g. {excluded[:3]}"
            if excluded
            else "; the model state has no float tensors"
        )
        raise PlanRefused(
            "parameter_pack_plan: the plan selects zero parameters and the workload has no "
            f"custom parameter pack hooks, so DiLoCo would train nothing{hint}"
        )


def plan_or_none(
    client: WorkerClient, device: str, state_dict_filter: Mapping[str, Any] | None = None
) -> dict | None:
    """``parameter_pack_plan``, or None when the worker does not know the method
    (the seed worker predates it).  Any other refusal raises :class:`RemoteError`."""
    try:
        return client.parameter_pack_plan(device, state_dict_filter)
    except RemoteError as exc:
        if "unknown method" in exc.message.lower():
            return None
        raise


__all__ = [
    "CONTRIBUTION_WEIGHT_METRICS",
    "apply_patch_outcome",
    "batch_counts",
    "check_diloco_plan",
    "contribution_weight",
    "evaluate_metrics",
    "export_checked",
    "metric_number",
    "plan_or_none",
    "train_window_metrics",
]
