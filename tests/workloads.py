"""Small workloads for the worker's own tests (importable as ``tests.workloads``)."""

from __future__ import annotations

import json
import os

import torch
from torch import nn


class TinyWorkload:
    """A complete, well-behaved workload over a small MLP with a BatchNorm."""

    workload_name = "tiny"

    def __init__(self, config: dict) -> None:
        self.config = config or {}
        self.hidden = int(self.config.get("hidden", 8))
        self.seed = int(self.config.get("seed", 0))

    def runtime_device(self) -> str:
        return "python-torch-cpu"

    def capability_probe(self) -> dict:
        return {
            "preferred_backends": ["cpu"],
            "work_units_per_second": 10.0,
            "target_window_seconds": 1,
        }

    def init_model(self, device: str) -> dict:
        torch.manual_seed(self.seed)
        model = nn.Sequential(
            nn.Linear(4, self.hidden),
            nn.BatchNorm1d(self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, 1),
        )
        return {"model": model.to("cpu"), "optimizer": None}

    def _data(self, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(n, 4, generator=g)
        return x, x.sum(dim=1, keepdim=True)

    def train_window(self, state: dict, batches: list) -> dict:
        model = state["model"]
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        x, y = self._data()
        loss = None
        for _ in batches:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
        return {"loss": loss.item() if loss is not None else 0.0, "steps": len(batches)}

    def evaluate(self, state: dict, split) -> dict:
        model = state["model"]
        model.eval()
        with torch.no_grad():
            x, y = self._data()
            loss = nn.functional.mse_loss(model(x), y)
        model.train()
        return {"loss": loss, "split": json.dumps(split)}

    def apply_patch(self, patch: dict):
        return "Applied" if patch.get("class") == "Hot" else "RequiresRestart"

    def run_inner_loop(self, state: dict, job: dict) -> dict:
        metrics = self.train_window(state, [None] * job["num_inner_steps"])
        path = job.get("inner_optimizer_state_path")
        if path:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "w") as f:
                f.write("{}")
        return {
            "steps_completed": job["num_inner_steps"],
            "metrics": metrics,
            "inner_optimizer_state_path": path,
            "inner_optimizer_state_encoding": "json" if path else None,
        }

    def _mix(self, pairs) -> dict:
        out = self.init_model("cpu")
        sd = out["model"].state_dict()
        for key, value in sd.items():
            if value.is_floating_point():
                value.copy_(sum(w * s["model"].state_dict()[key] for w, s in pairs))
        return out

    def merge_candidate_models(self, base, candidates, policy):
        if not candidates:
            return None
        total = sum(c["sample_weight"] for c in candidates) or 1.0
        return self._mix([(c["sample_weight"] / total, c["model"]) for c in candidates])

    def apply_single_root_ema(self, base, merged, policy):
        return self._mix([(0.5, base), (0.5, merged)])

    def reconcile_canonical_model(self, local, canonical, strategy):
        if strategy == "Replace":
            return None
        w = strategy["RootEma"]["canonical_weight"]
        return self._mix([(w, canonical), (1 - w, local)])


def make_tiny(config: dict) -> TinyWorkload:
    return TinyWorkload(config)


class Misbehaving(TinyWorkload):
    """Hooks that raise or return what the protocol cannot carry, chosen by config."""

    def train_window(self, state, batches):
        mode = self.config.get("mode")
        if mode == "system_exit":
            raise SystemExit(3)
        if mode == "keyboard_interrupt":
            raise KeyboardInterrupt
        if mode == "nan":
            return {"loss": float("nan")}
        if mode == "list":
            return {"loss": [1.0]}
        if mode == "numpy":
            import numpy as np

            return {"loss": np.float32(0.5), "n": np.int64(3), "t": torch.tensor(2.5)}
        return super().train_window(state, batches)


def make_misbehaving(config: dict) -> Misbehaving:
    return Misbehaving(config)


def make_raising(config: dict):
    raise RuntimeError("factory refuses to build")
