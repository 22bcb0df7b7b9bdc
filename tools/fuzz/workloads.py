"""The workloads the fuzzed worker serves: total, O(1) hooks (never the subject)."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn


class QuickWorkload:
    """Torch-free and O(1) per call: for the framing and raw-bytes properties."""

    workload_name = "fuzz-quick"

    def runtime_device(self) -> str:
        return "python-cpu"

    def capability_probe(self) -> dict:
        return {"preferred_backends": [], "work_units_per_second": 1.0, "target_window_seconds": 1}

    def init_model(self, device: str) -> dict:
        return {"device": device}

    def train_window(self, state: Any, batches: list) -> dict:
        return {"batches": len(batches)}

    def evaluate(self, state: Any, split: Any) -> dict:
        return {"ok": True}

    def merge_candidate_models(self, base: Any, candidates: list, policy: Any) -> None:
        return None

    def apply_single_root_ema(self, base: Any, merged: Any, policy: Any) -> None:
        return None

    def reconcile_canonical_model(self, local: Any, canonical: Any, strategy: Any) -> None:
        return None


class FuzzNet(nn.Module):
    """Float32 parameters, float buffers, an int buffer (ignored by packs) and a bfloat16 buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        self.register_buffer("scale", torch.ones(3, dtype=torch.bfloat16))


def make_model(offset: float = 0.0) -> FuzzNet:
    """A FuzzNet with deterministic values (no global RNG): ``offset`` tells models apart."""
    model = FuzzNet()
    with torch.no_grad():
        for i, value in enumerate(model.state_dict().values()):
            if value.is_floating_point():
                ramp = torch.arange(value.numel(), dtype=torch.float32) * 0.25 + offset + i
                value.copy_(ramp.reshape(value.shape))
    return model


class TorchWorkload(QuickWorkload):
    """Generic packs and artifacts (no custom I/O hooks); every hook is O(1) and total.

    ``evaluate`` with ``{"Custom": text}`` raises an error quoting ``text``, as a
    careless workload would: the worker must still answer a bounded, escaped error.
    """

    workload_name = "fuzz-torch"

    def runtime_device(self) -> str:
        return "python-torch-cpu"

    def init_model(self, device: str) -> dict:
        return {"model": make_model(), "optimizer": None}

    def evaluate(self, state: Any, split: Any) -> dict:
        if isinstance(split, dict) and isinstance(split.get("Custom"), str):
            raise ValueError(f"unknown split {split['Custom']}")
        return {"split": json.dumps(split)[:40]}

    def apply_patch(self, patch: dict) -> str:
        return "Applied"

    def run_inner_loop(self, state: Any, job: dict) -> dict:
        return {"steps_completed": job["num_inner_steps"], "metrics": {"ok": True}}

    def merge_candidate_models(self, base: Any, candidates: list, policy: Any) -> Any:
        return self.init_model("cpu") if candidates else None
