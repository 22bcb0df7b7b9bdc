"""The benchmarks' workload: a model of exactly N float32 parameters, trivial hooks.

``bench.workloads:make_workload`` with ``{"params": N}`` builds a few large
tensors (``tensors`` 2-D blocks of width 1024 plus a 1-D tail) summing to N,
each filled with its own constant (cheap, and every page is touched, as a real
``init_model`` does), and an int64 buffer the pack layout ignores.  Its hooks do no work, so RPC benchmarks measure the
worker, not the workload.  Importing this module imports torch, as a real
workload does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

WIDTH = 1024


def tensor_shapes(params: int, tensors: int = 4) -> list[tuple[int, ...]]:
    """Shapes whose element counts sum to exactly ``params``.

    Raises ``ValueError`` unless ``params >= 1`` and ``tensors >= 1``.
    """
    if params < 1 or tensors < 1:
        raise ValueError(f"params and tensors must be positive, got {params} and {tensors}")
    rows = params // tensors // WIDTH
    shapes: list[tuple[int, ...]] = [(rows, WIDTH)] * tensors if rows else []
    rest = params - rows * WIDTH * len(shapes)
    if rest:
        shapes.append((rest,))
    return shapes


class ParamsModel(nn.Module):
    """``len(tensor_shapes(params, tensors))`` float32 parameters and one int64 buffer."""

    def __init__(self, params: int, tensors: int = 4, seed: int = 0) -> None:
        super().__init__()
        # Constant fills through numpy keep construction cheap and off torch's
        # thread pool (whose barriers stall when other processes hold the
        # cores): imports are measured net of init_model, and a cheap, steady
        # init_model keeps that difference precise.
        blocks = []
        for i, shape in enumerate(tensor_shapes(params, tensors)):
            data = torch.empty(shape)
            data.numpy().fill(seed + (i + 1) / 64)
            blocks.append(nn.Parameter(data))
        self.blocks = nn.ParameterList(blocks)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))


class BenchWorkload:
    """Config: ``params`` (default 1000), ``tensors`` (default 4), ``seed`` (default 0),
    ``reuse_model`` (default false: when true, ``init_model`` builds the model once
    and returns that same state on every call, so an ``import_parameter_pack``
    RPC costs the import alone, net of ``init_model``)."""

    workload_name = "bench"

    def __init__(self, config: dict | None) -> None:
        config = config or {}
        self.params = int(config.get("params", 1000))
        self.tensors = int(config.get("tensors", 4))
        self.seed = int(config.get("seed", 0))
        self.reuse_model = bool(config.get("reuse_model", False))
        self._model: dict | None = None

    def runtime_device(self) -> str:
        return "python-torch-cpu"

    def capability_probe(self) -> dict:
        return {
            "preferred_backends": ["cpu"],
            "work_units_per_second": 1.0,
            "target_window_seconds": 1,
        }

    def init_model(self, device: str) -> dict:
        if self._model is not None:
            return self._model
        state = {"model": ParamsModel(self.params, self.tensors, self.seed)}
        if self.reuse_model:
            self._model = state
        return state

    def train_window(self, state: Any, batches: list) -> dict:
        return {"batches": len(batches)}

    def evaluate(self, state: Any, split: Any) -> dict:
        return {"loss": 0.0}

    def merge_candidate_models(self, base: Any, candidates: list, policy: Any) -> None:
        return None

    def apply_single_root_ema(self, base: Any, merged: Any, policy: Any) -> None:
        return None

    def reconcile_canonical_model(self, local: Any, canonical: Any, strategy: Any) -> None:
        return None


def make_workload(config: dict | None) -> BenchWorkload:
    return BenchWorkload(config)


class InnerLoopBenchWorkload(BenchWorkload):
    """:class:`BenchWorkload` with a ``run_inner_loop`` that shifts every parameter by a small
    constant taken from the first batch ref's ``payload["delta"]`` (default 1e-3): each peer's
    pack differs, at the cost of one pass over the parameters."""

    workload_name = "bench-inner-loop"

    def run_inner_loop(self, state: Any, job: dict) -> dict:
        batches = job.get("batches") or [{}]
        delta = float((batches[0].get("payload") or {}).get("delta", 1e-3))
        with torch.no_grad():
            for block in state["model"].blocks:
                block.add_(delta)
        steps = int(job["num_inner_steps"])
        return {"steps_completed": steps, "metrics": {"loss": delta}}


def make_inner_loop_workload(config: dict | None) -> InnerLoopBenchWorkload:
    return InnerLoopBenchWorkload(config)


class MLPWorkload(InnerLoopBenchWorkload):
    """An MLP of about ``params`` parameters (config; default 5e6) trained by ``torch.optim``:
    what a user's workload looks like to the fork server (``torch.optim`` imports
    ``torch._dynamo`` the first time, seconds of CPU per fresh process).  Each inner step is
    one SGD step on a random batch of 16 seeded by the ref's ``payload["delta"]``."""

    workload_name = "bench-mlp"

    def init_model(self, device: str) -> dict:
        torch.manual_seed(self.seed)
        width = 64
        hidden = max(8, int((self.params / 2) ** 0.5))
        model = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, width),
        )  # fmt: skip
        return {"model": model}

    def run_inner_loop(self, state: Any, job: dict) -> dict:
        model = state["model"]
        batches = job.get("batches") or [{}]
        delta = float((batches[0].get("payload") or {}).get("delta", 1e-3))
        generator = torch.Generator().manual_seed(int(delta * 1e6))
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        steps = int(job["num_inner_steps"])
        loss = torch.zeros(())
        for _ in range(steps):
            x = torch.randn(16, 64, generator=generator)
            loss = (model(x) - x).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return {"steps_completed": steps, "metrics": {"loss": float(loss)}}


def make_mlp_workload(config: dict | None) -> MLPWorkload:
    return MLPWorkload(config)
