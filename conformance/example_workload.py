"""A minimal complete workload that passes every conformance check.

Run the suite on it with ``python -m conformance --factory
conformance.example_workload:make_workload``; docs/workload-authors.md walks
through it.  It regresses ``y = sum(x)`` with a tiny MLP and reads training
data from the suite's generated ``micro_epoch`` refs (a real workload reads
its shards instead).  Parameter packs and artifacts need no hooks here: the
worker moves ``{"model": module}`` states through its generic torch layout.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

FEATURES = 4


class ExampleWorkload:
    workload_name = "conformance-example"

    def __init__(self, config: dict | None) -> None:
        config = dict(config or {})
        self.seed = int(config.get("seed", 0))
        self.hidden = int(config.get("hidden", 8))
        self.lr = float(config.get("lr", 0.05))
        self.root_ema_decay = float(config.get("root_ema_decay", 0.5))

    # -- what the worker asks first --------------------------------------------

    def runtime_device(self) -> str:
        return "python-torch-cpu"

    def capability_probe(self) -> dict:
        # target_window_seconds is an integer: the coordinator decodes it as u64.
        return {
            "preferred_backends": ["cpu"],
            "work_units_per_second": 100.0,
            "target_window_seconds": 10,
        }

    def init_model(self, device: str) -> dict:
        # Seeded, so every call builds the same architecture and values.
        torch.manual_seed(self.seed)
        model = nn.Sequential(
            nn.Linear(FEATURES, self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1)
        )
        # The network sends our own runtime_device ("python-torch-cpu") as the device.
        return {"model": model.to(torch_device(device))}

    # -- data ------------------------------------------------------------------

    def batch(self, ref: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets for one BatchRef; raises ValueError for refs it cannot read."""
        payload = ref.get("payload") if ref.get("kind") == "micro_epoch" else None
        if not isinstance(payload, dict) or "seed" not in payload:
            raise ValueError(f"cannot read batch ref of kind {ref.get('kind')!r}")
        return generated(int(payload["seed"]), int(payload.get("examples", 16)))

    def _steps(self, model: nn.Module, batches: list, steps: int) -> float:
        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr)
        loss = torch.zeros(())
        for i in range(steps):
            x, y = self.batch(batches[i % len(batches)])
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
        return loss.item()

    # -- training and evaluation -------------------------------------------------

    def train_window(self, state: dict, batches: list) -> dict:
        loss = self._steps(state["model"], batches, len(batches))
        return {"loss": loss, "steps": len(batches)}

    def evaluate(self, state: dict, split: Any) -> dict:
        name = split["Custom"] if isinstance(split, dict) else split
        x, y = generated(sum(map(ord, name)), 64)  # a fixed, different set per split name
        with torch.no_grad():
            loss = nn.functional.mse_loss(state["model"](x), y)
        return {"loss": float(loss), "split": name}

    def run_inner_loop(self, state: dict, job: dict) -> dict:
        steps = job["num_inner_steps"]
        loss = self._steps(state["model"], job["batches"], steps) if steps else 0.0
        # No output pack written here: the worker exports the updated state.
        return {"steps_completed": steps, "metrics": {"loss": loss}}

    def apply_patch(self, patch: dict) -> Any:
        values = patch.get("values", {})
        if set(values) - {"learning_rate"}:
            return {"Rejected": f"unsupported keys {sorted(set(values) - {'learning_rate'})}"}
        if "learning_rate" in values:
            self.lr = float(values["learning_rate"])
        return "Applied"

    # -- merging -------------------------------------------------------------------

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict | None:
        weights = [float(c["sample_weight"]) * quality(c, policy) for c in candidates]
        total = sum(weights)
        if not candidates or total <= 0:
            return None
        merged = copy.deepcopy(base)  # a new state: base and candidates stay untouched
        _blend(merged, [(w / total, c["model"]) for w, c in zip(weights, candidates, strict=True)])
        return merged

    def apply_single_root_ema(self, base: dict, merged: dict, policy: Any) -> None:
        d = self.root_ema_decay
        _blend(merged, [(d, base), (1.0 - d, merged)])

    def reconcile_canonical_model(self, local: dict, canonical: dict, strategy: Any) -> None:
        if strategy == "Replace":
            return  # the canonical state stays as it is
        w = float(strategy["RootEma"]["canonical_weight"])
        _blend(canonical, [(w, canonical), (1.0 - w, local)])


def quality(candidate: dict, policy: Any) -> float:
    """The factor the coordinator's reference merge puts on ``sample_weight`` for ``policy``."""
    if policy == "WeightedMean":
        return 1.0
    q = float(candidate["quality_weight"])
    if policy == "NormClippedWeightedMean":
        return min(max(q, 0.0), 1.0)
    return q  # TrimmedMean, Ema, QualityWeightedEma, Custom


def torch_device(name: str) -> torch.device:
    """The torch device for a device string: the network sends the workload's own
    ``runtime_device()`` (``"python-torch-cpu"``) to init_model and imports."""
    return torch.device(name.removeprefix("python-torch-"))


def generated(seed: int, examples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded batch of the regression task ``y = sum(x)``."""
    x = torch.randn(examples, FEATURES, generator=torch.Generator().manual_seed(seed))
    return x, x.sum(dim=1, keepdim=True)


def _blend(target: dict, weighted: list[tuple[float, dict]]) -> None:
    """Set every float tensor of ``target`` to the weighted sum of the sources' (in place)."""
    sources = [(w, s["model"].state_dict()) for w, s in weighted]
    with torch.no_grad():
        for key, tensor in target["model"].state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(sum(w * sd[key] for w, sd in sources))


def make_workload(config: dict | None) -> ExampleWorkload:
    """The factory: ``--factory conformance.example_workload:make_workload``."""
    return ExampleWorkload(config)
