"""Workload defects the first version of the suite already caught: one defect each."""

from __future__ import annotations

import sys
from typing import Any


class NanMetric:
    """train_window reports loss=NaN, which JSON cannot carry."""

    def train_window(self, state: dict, batches: list) -> dict:
        return {**super().train_window(state, batches), "loss": float("nan")}


class ListMetric:
    """train_window reports a list metric (MetricValue is a scalar)."""

    def train_window(self, state: dict, batches: list) -> dict:
        metrics = super().train_window(state, batches)
        return {**metrics, "losses": [metrics["loss"]]}


class FloatWindow:
    """capability_probe reports target_window_seconds as a float (Rust decodes u64)."""

    def capability_probe(self) -> dict:
        return {**super().capability_probe(), "target_window_seconds": 2.5}


class InitReturnsNone:
    """init_model builds the model but forgets to return it."""

    def init_model(self, device: str) -> None:
        super().init_model(device)


class EvaluateStrSplit:
    """evaluate assumes the split is a string and breaks on {"Custom": name}."""

    def evaluate(self, state: dict, split: Any) -> dict:
        return super().evaluate(state, split + "")


class EvaluateSystemExit:
    """evaluate calls sys.exit() (a hook raising SystemExit)."""

    def evaluate(self, state: dict, split: Any) -> dict:
        sys.exit(3)


class BadPatchOutcome:
    """apply_patch answers "applied" (the variant is "Applied")."""

    def apply_patch(self, patch: dict) -> Any:
        return "applied"


class UnstableLayout:
    """init_model's hidden width changes from one call to the next."""

    calls = 0

    def init_model(self, device: str) -> dict:
        type(self).calls += 1
        self.hidden = 8 + type(self).calls % 2
        return super().init_model(device)


class LoadIgnoresFile:
    """load_model_artifact_path accepts the artifact and never reads it."""

    def load_model_artifact_path(self, state: dict, path: str) -> None:
        return None


class MergeReturnsBase:
    """merge_candidate_models returns the base instead of merging."""

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict:
        return base


class MergeSums:
    """merge_candidate_models forgets to normalise: a weighted sum, not a mean."""

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict:
        from conformance.example_workload import _blend

        merged = self.init_model("cpu")
        _blend(merged, [(float(c["sample_weight"]), c["model"]) for c in candidates])
        return merged


class MergeMutatesBase:
    """merge_candidate_models also writes the merged values into the base."""

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict:
        from conformance.example_workload import _blend

        merged = super().merge_candidate_models(base, candidates, policy)
        _blend(base, [(1.0, merged)])
        return merged


class EmaExtrapolates:
    """apply_single_root_ema overshoots: merged + 0.5 * (merged - base)."""

    def apply_single_root_ema(self, base: dict, merged: dict, policy: Any) -> None:
        from conformance.example_workload import _blend

        _blend(merged, [(1.5, merged), (-0.5, base)])


class ReplaceKeepsLocal:
    """reconcile "Replace" copies the local model over the canonical one."""

    def reconcile_canonical_model(self, local: dict, canonical: dict, strategy: Any) -> None:
        from conformance.example_workload import _blend

        if strategy == "Replace":
            _blend(canonical, [(1.0, local)])
            return None
        return super().reconcile_canonical_model(local, canonical, strategy)


class RootEmaInverted:
    """RootEma uses canonical_weight as the weight of the local model."""

    def reconcile_canonical_model(self, local: dict, canonical: dict, strategy: Any) -> None:
        if isinstance(strategy, dict):
            w = strategy["RootEma"]["canonical_weight"]
            strategy = {"RootEma": {"canonical_weight": 1.0 - w}}
        return super().reconcile_canonical_model(local, canonical, strategy)


class InnerLoopMiscounts:
    """run_inner_loop runs and reports one step fewer than asked."""

    def run_inner_loop(self, state: dict, job: dict) -> dict:
        job = {**job, "num_inner_steps": max(job["num_inner_steps"] - 1, 0)}
        return super().run_inner_loop(state, job)


class InnerLoopDoesNothing:
    """run_inner_loop reports the steps but never trains."""

    def run_inner_loop(self, state: dict, job: dict) -> dict:
        return {"steps_completed": job["num_inner_steps"], "metrics": {"loss": 0.0}}


class LossyImport:
    """Custom import goes through bfloat16 (loses float32 precision)."""

    def _cast(self, values: Any) -> Any:
        import torch

        return values.to(torch.bfloat16).to(torch.float32)


class ImportDropsLast:
    """Custom import has an off-by-one: the last tensor keeps its initial values."""

    def _imported(self, entries: list) -> list:
        return entries[:-1]


class WrongSchemaHash:
    """Custom export writes a fixed model_schema_hash instead of the requested one."""

    def _schema_hash(self, requested: str) -> str:
        return "schema-v1"


class ImportSwallowsErrors:
    """Custom import returns a fresh model when the pack cannot be read."""

    def import_parameter_pack_path(
        self, device: str, path: str, state_dict_filter: dict | None = None
    ) -> dict:
        try:
            return super().import_parameter_pack_path(device, path, state_dict_filter)
        except (OSError, ValueError):
            return self.init_model(device)


class MergeWidens:
    """The merge result has a wider hidden layer (another parameter count)."""

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict | None:
        import torch

        merged = super().merge_candidate_models(base, candidates, policy)
        if merged is None:
            return None
        model = merged["model"]
        with torch.no_grad():
            wide = torch.nn.Linear(model[0].in_features, model[0].out_features + 1)
            wide.weight[:-1].copy_(model[0].weight)
            wide.bias[:-1].copy_(model[0].bias)
            last = torch.nn.Linear(wide.out_features, 1)
            last.weight[:, :-1].copy_(model[2].weight)
            last.weight[:, -1] = 0.0
            last.bias.copy_(model[2].bias)
        return {"model": torch.nn.Sequential(wide, torch.nn.Tanh(), last)}
