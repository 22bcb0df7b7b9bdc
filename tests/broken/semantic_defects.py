"""Defects in what the network relies on beyond the shapes (docs/protocol.md §7), and
legal but suspicious behaviour (the WARN tier): one each.

Each FAIL subject decodes fine and would still break in the network; each
WARN subject is legal and the suite must say what looks wrong without failing.
"""

from __future__ import annotations

import random
from typing import Any

# -- FAIL: training and evaluation ----------------------------------------------------


class SilentNoOpTraining:
    """train_window never touches the model but returns plausible metrics."""

    def train_window(self, state: dict, batches: list) -> dict:
        return {"loss": 0.25, "steps": len(batches)}


class ClaimsNoWork:
    """train_window trains but reports zero steps (the coordinator weighs work by it)."""

    def train_window(self, state: dict, batches: list) -> dict:
        return {**super().train_window(state, batches), "steps": 0}


class EvaluateTrains:
    """evaluate takes an optimizer step on the evaluation data."""

    def evaluate(self, state: dict, split: Any) -> dict:
        import torch

        from conformance.example_workload import generated

        x, y = generated(7, 16)
        optimizer = torch.optim.SGD(state["model"].parameters(), lr=0.1)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(state["model"](x), y).backward()
        optimizer.step()
        return super().evaluate(state, split)


# -- FAIL: merging ----------------------------------------------------------------


class MergeQualityEverywhere:
    """Like the upstream MNIST example: every policy multiplies by quality_weight
    (WeightedMean must ignore it)."""

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict | None:
        return super().merge_candidate_models(base, candidates, "QualityWeightedEma")


class MergeIgnoresQuality:
    """Every policy weighs by sample_weight alone (QualityWeightedEma must not)."""

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict | None:
        return super().merge_candidate_models(base, candidates, "WeightedMean")


class MergeFloat64:
    """The merged model comes back in float64: its layout hash is not the peers'."""

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict | None:
        merged = super().merge_candidate_models(base, candidates, policy)
        if merged is not None:
            merged["model"] = merged["model"].double()
        return merged


# -- FAIL: capability, layout, handles -----------------------------------------------------


class TinyThroughput:
    """0.4 work units/s with a 2 s window: below one work unit, never placed."""

    def capability_probe(self) -> dict:
        return {
            **super().capability_probe(),
            "work_units_per_second": 0.4,
            "target_window_seconds": 2,
        }


class RandomWidth:
    """init_model draws its hidden width at random (unseeded) on every call."""

    def init_model(self, device: str) -> dict:
        self.hidden = random.SystemRandom().choice([5, 6, 7, 8])
        return super().init_model(device)


class SharedState:
    """init_model hands out one cached state: every handle aliases the same model."""

    def init_model(self, device: str) -> dict:
        if not hasattr(self, "_shared"):
            self._shared = super().init_model(device)
        return self._shared


# -- WARN: legal but suspicious -------------------------------------------------------------


class PatchExpectsTaggedFloat:
    """Like the upstream MNIST example: apply_patch wants {"Float": x}, so every real
    (untagged) learning-rate patch is rejected."""

    def apply_patch(self, patch: dict) -> Any:
        value = patch.get("values", {}).get("learning_rate")
        if value is None:
            return {"Rejected": "missing learning_rate patch"}
        if not isinstance(value, dict) or "Float" not in value:
            return {"Rejected": "learning_rate patch must be a float"}
        self.lr = float(value["Float"])
        return "Applied"


class EmaNoop:
    """apply_single_root_ema leaves the merged model as it is."""

    def apply_single_root_ema(self, base: dict, merged: dict, policy: Any) -> None:
        return None


class UnseededInit:
    """init_model's values come from an unseeded generator (the layout is stable)."""

    def init_model(self, device: str) -> dict:
        import torch

        state = super().init_model(device)
        noise = torch.Generator().manual_seed(random.SystemRandom().randrange(2**31))
        with torch.no_grad():
            for parameter in state["model"].parameters():
                parameter.add_(torch.randn(parameter.shape, generator=noise) * 0.01)
        return state


class InnerLoopIgnoresBatches:
    """run_inner_loop trains on a fixed batch of its own, whatever job["batches"] says."""

    def run_inner_loop(self, state: dict, job: dict) -> dict:
        from conformance.options import generated_batches

        fixed = generated_batches(1, seed=42)
        return super().run_inner_loop(state, {**job, "batches": fixed})


class ReportsBatchCount:
    """train_window reports batch_count, which the coordinator overwrites."""

    def train_window(self, state: dict, batches: list) -> dict:
        return {**super().train_window(state, batches), "batch_count": len(batches)}


class EvaluateIgnoresSplit:
    """evaluate scores every split on the same data."""

    def evaluate(self, state: dict, split: Any) -> dict:
        metrics = super().evaluate(state, "Validation")
        return {k: v for k, v in metrics.items() if k != "split"}


class MergeRefusesTrimmedMean:
    """merge_candidate_models raises for TrimmedMean."""

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict | None:
        if policy == "TrimmedMean":
            raise ValueError("TrimmedMean is not supported")
        return super().merge_candidate_models(base, candidates, policy)
