"""Legal but unusual workloads: the controls that every check must pass (exit 0).

Each one is correct and differs from the example workload in one way a real
model may: tied weights, several modules, half-precision parameters,
BatchNorm with its integer buffer, a module with extra state, only the
required hooks, an opaque state behind custom pack and artifact hooks, an
inner optimizer whose state is carried between rounds.  A check that fails
one of them is a false alarm.  ``make_control({"control": NAME})``.
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
from typing import Any

import torch
from torch import nn

from conformance.example_workload import FEATURES, ExampleWorkload, torch_device

from .bases import CustomPacks


class SharedWeights(ExampleWorkload):
    """One Linear used twice (ALBERT-style sharing): two state-dict names, one tensor."""

    def init_model(self, device: str) -> dict:
        torch.manual_seed(self.seed)
        shared = nn.Linear(FEATURES, FEATURES)
        model = nn.Sequential(shared, nn.Tanh(), shared, nn.Tanh(), nn.Linear(FEATURES, 1))
        return {"model": model.to(torch_device(device))}


class _Modules(dict):
    """``{"modules": {...}}`` whose ``["model"]`` is a view chaining them (same tensors)."""

    def __getitem__(self, key: str) -> Any:
        if key == "model" and not dict.__contains__(self, "model"):
            modules = dict.__getitem__(self, "modules")
            return nn.Sequential(modules["body"], modules["head"])
        return dict.__getitem__(self, key)


class MultiModule(ExampleWorkload):
    """A ``{"modules": {"body": ..., "head": ...}}`` state."""

    def init_model(self, device: str) -> dict:
        torch.manual_seed(self.seed)
        body = nn.Sequential(nn.Linear(FEATURES, self.hidden), nn.Tanh())
        head = nn.Linear(self.hidden, 1)
        target = torch_device(device)
        return _Modules(modules={"body": body.to(target), "head": head.to(target)})


class _Cast(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


class HalfParameters(ExampleWorkload):
    """A bfloat16 layer and a float16 layer (trained and merged in their own dtypes)."""

    def init_model(self, device: str) -> dict:
        torch.manual_seed(self.seed)
        model = nn.Sequential(
            _Cast(torch.bfloat16),
            nn.Linear(FEATURES, self.hidden).to(torch.bfloat16),
            nn.Tanh(),
            _Cast(torch.float16),
            nn.Linear(self.hidden, 1).to(torch.float16),
            _Cast(torch.float32),
        )
        return {"model": model.to(torch_device(device))}


class BatchNormBuffers(ExampleWorkload):
    """BatchNorm: float running statistics and the int64 num_batches_tracked buffer;
    evaluation in eval mode (no statistics update)."""

    def init_model(self, device: str) -> dict:
        torch.manual_seed(self.seed)
        model = nn.Sequential(
            nn.Linear(FEATURES, self.hidden),
            nn.BatchNorm1d(self.hidden),
            nn.Tanh(),
            nn.Linear(self.hidden, 1),
        )
        return {"model": model.to(torch_device(device))}

    def evaluate(self, state: dict, split: Any) -> dict:
        model = state["model"]
        model.eval()
        try:
            return super().evaluate(state, split)
        finally:
            model.train()


class _Versioned(nn.Linear):
    """A Linear with extra state (``get_extra_state``): a non-tensor state-dict entry."""

    def get_extra_state(self) -> Any:
        return {"version": 3}

    def set_extra_state(self, state: Any) -> None:
        if state != {"version": 3}:
            raise ValueError(f"unknown extra state {state!r}")


def _blend_tensors(target: dict, weighted: list[tuple[float, dict]]) -> None:
    """The example's blend over float tensors only (extra state is not a tensor)."""
    sources = [(w, s["model"].state_dict()) for w, s in weighted]
    with torch.no_grad():
        for key, tensor in target["model"].state_dict().items():
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                tensor.copy_(sum(w * sd[key] for w, sd in sources))


class ExtraState(ExampleWorkload):
    """A module with ``get_extra_state``: a non-tensor entry in its state_dict."""

    def init_model(self, device: str) -> dict:
        torch.manual_seed(self.seed)
        first = _Versioned(FEATURES, self.hidden)
        model = nn.Sequential(first, nn.Tanh(), nn.Linear(self.hidden, 1))
        return {"model": model.to(torch_device(device))}

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict | None:
        from conformance.example_workload import quality

        weights = [float(c["sample_weight"]) * quality(c, policy) for c in candidates]
        total = sum(weights)
        if not candidates or total <= 0:
            return None
        merged = copy.deepcopy(base)
        pairs = [(w / total, c["model"]) for w, c in zip(weights, candidates, strict=True)]
        _blend_tensors(merged, pairs)
        return merged

    def apply_single_root_ema(self, base: dict, merged: dict, policy: Any) -> None:
        d = self.root_ema_decay
        _blend_tensors(merged, [(d, base), (1.0 - d, merged)])

    def reconcile_canonical_model(self, local: dict, canonical: dict, strategy: Any) -> None:
        if strategy == "Replace":
            return
        w = float(strategy["RootEma"]["canonical_weight"])
        _blend_tensors(canonical, [(w, canonical), (1.0 - w, local)])


class RequiredHooksOnly:
    """Only the hooks docs/protocol.md §4 requires (no workload_name, apply_patch,
    run_inner_loop, custom packs or artifact hooks)."""

    def __init__(self, config: dict | None) -> None:
        inner = ExampleWorkload(config)
        for hook in (
            "runtime_device", "capability_probe", "init_model", "train_window", "evaluate",
            "merge_candidate_models", "apply_single_root_ema", "reconcile_canonical_model",
        ):  # fmt: skip
            setattr(self, hook, getattr(inner, hook))


class _Box:
    """An opaque state: no module the generic layout can walk."""

    def __init__(self, model: nn.Module) -> None:
        self.net = model


class OpaqueState(CustomPacks, ExampleWorkload):
    """An opaque state object behind custom pack hooks and artifact hooks."""

    def init_model(self, device: str) -> Any:
        return _Box(super().init_model(device)["model"])

    @staticmethod
    def _view(state: Any) -> dict:
        return {"model": state.net}

    def _entries(self, state: Any, state_dict_filter: dict | None) -> list:
        return super()._entries(self._view(state), state_dict_filter)

    def train_window(self, state: Any, batches: list) -> dict:
        return super().train_window(self._view(state), batches)

    def evaluate(self, state: Any, split: Any) -> dict:
        return super().evaluate(self._view(state), split)

    def run_inner_loop(self, state: Any, job: dict) -> dict:
        return super().run_inner_loop(self._view(state), job)

    def merge_candidate_models(self, base: Any, candidates: list, policy: Any) -> Any:
        views = [{**c, "model": self._view(c["model"])} for c in candidates]
        merged = super().merge_candidate_models(self._view(base), views, policy)
        return None if merged is None else _Box(merged["model"])

    def apply_single_root_ema(self, base: Any, merged: Any, policy: Any) -> None:
        super().apply_single_root_ema(self._view(base), self._view(merged), policy)

    def reconcile_canonical_model(self, local: Any, canonical: Any, strategy: Any) -> None:
        super().reconcile_canonical_model(self._view(local), self._view(canonical), strategy)

    def materialize_model_artifact_path(self, state: Any, path: str) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous() for k, v in state.net.state_dict().items()}
        save_file(tensors, path)

    def load_model_artifact_path(self, state: Any, path: str) -> None:
        from safetensors.torch import load_file

        state.net.load_state_dict(load_file(path))


class ProperInnerState(ExampleWorkload):
    """AdamW in the inner loop, its state saved to a file of its own choosing every
    round and loaded from the path the job carries (null on a first round)."""

    def run_inner_loop(self, state: dict, job: dict) -> dict:
        model = state["model"]
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr)
        given = job.get("inner_optimizer_state_path")
        if given is not None:
            with open(given, "rb") as handle:
                optimizer.load_state_dict(torch.load(io.BytesIO(handle.read())))
        loss = torch.zeros(())
        for i in range(job["num_inner_steps"]):
            x, y = self.batch(job["batches"][i % len(job["batches"])])
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
        buffer = io.BytesIO()
        torch.save(optimizer.state_dict(), buffer)
        handle, path = tempfile.mkstemp(prefix="inner-state-", suffix=".pt")
        with os.fdopen(handle, "wb") as out:
            out.write(buffer.getvalue())
        return {
            "steps_completed": job["num_inner_steps"],
            "metrics": {"loss": float(loss)},
            "inner_optimizer_state_path": path,
            "inner_optimizer_state_encoding": "application/x-torch-optimizer-state",
        }


CONTROLS: dict[str, Any] = {
    "shared_weights": SharedWeights,
    "multi_module": MultiModule,
    "half_parameters": HalfParameters,
    "batchnorm_buffers": BatchNormBuffers,
    "extra_state": ExtraState,
    "required_hooks_only": RequiredHooksOnly,
    "opaque_state": OpaqueState,
    "proper_inner_state": ProperInnerState,
}


def make_control(config: dict) -> Any:
    """``{"control": NAME}`` from :data:`CONTROLS`."""
    return CONTROLS[config["control"]](config)


__all__ = ["CONTROLS", "make_control"]
