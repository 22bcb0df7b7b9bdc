"""The built-in demo workload of ``python -m fakecoord run`` (factory ``fakecoord.demo:make_workload``).

A small MLP regressing a fixed random "teacher" function of 16 inputs
(see :func:`fakecoord.sim.shards.write_demo_dataset`).  It runs inside the
worker process and needs only torch and the standard library.  Every hook of
docs/protocol.md §4 is implemented:

- training data arrives as ``cached_microshard_group`` refs read from the
  shard files; one ref is one optimizer step.  A ref carrying
  ``"fault_inject": "error"`` makes the step raise (the simulator's
  ``--fault error@P:R``);
- ``run_inner_loop`` runs AdamW and carries its state as the network does
  (docs/protocol.md §6): it loads the state from ``inner_optimizer_state_path``
  when the job names one (null on a peer's first round), writes the new state
  to a file it chooses (beside ``output_parameter_pack_path``) and returns that
  path (``torch.save``, loaded with ``weights_only=True``: nothing is
  unpickled);
- ``runtime_device`` is ``"python-torch-cpu"``; every hook taking a device
  maps that string (``python-torch-X`` -> ``torch.device("X")``) and also
  takes a plain torch device name;
- ``evaluate`` serves ``Train``, ``Validation``, ``Test`` and any
  ``{"Custom": NAME}``: the ``NAME.json`` shard in ``data_dir`` when there is
  one, else the validation shard (a peer may be asked for any custom name);
- the merge hooks weigh candidates by ``sample_weight`` times the policy's
  quality factor, as the Rust reference merge does (docs/protocol.md §7); weights
  summing to at most ``f64::EPSILON`` merge into a copy of the base, as
  ``merge_weighted_mean_modules`` (``burn_p2p_engine``) does.

Config keys (all optional): ``data_dir`` (needed by ``evaluate``), ``seed``
(0), ``hidden`` (64), ``inner_lr`` (3e-3; also set by a Hot patch of ``learning_rate`` or
``inner_lr``), ``weight_decay`` (0.01),
``grad_clip`` (1.0), ``root_ema_decay`` (0.25), ``threads`` (1).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import staged_file
from .sim.shards import FAULT_KEY, REF_KIND, ShardError, read_header, read_ref, read_rows

OPTIMIZER_ENCODING = "fakecoord-demo-adamw-v1"
LR_PATCH_KEYS = ("learning_rate", "inner_lr")
"""Patch keys that set the inner learning rate (``learning_rate`` is the usual name)."""
QUALITY_POLICIES = ("TrimmedMean", "Ema", "QualityWeightedEma")


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``.

    Hand-written because constructing any ``torch.optim`` optimizer imports
    ``torch._dynamo``: about 2 s of CPU in every worker, more than the whole
    demo's training.  Its state is plain tensors (``state_dict``), so it is
    saved with ``torch.save`` and read back with ``weights_only=True``.
    """

    def __init__(
        self,
        params: Any,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.steps = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        correction1 = 1.0 - beta1**self.steps
        root_correction2 = math.sqrt(1.0 - beta2**self.steps)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            if p.grad is None:
                continue
            p.mul_(1.0 - self.lr * self.weight_decay)
            m.lerp_(p.grad, 1.0 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
            denom = (v.sqrt() / root_correction2).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / correction1)

    def state_dict(self) -> dict:
        return {
            "format": OPTIMIZER_ENCODING,
            "steps": self.steps,
            "exp_avg": [t.detach().cpu() for t in self.exp_avg],
            "exp_avg_sq": [t.detach().cpu() for t in self.exp_avg_sq],
        }

    def load_state_dict(self, state: Any) -> None:
        """Raises ``ValueError`` unless ``state`` came from an optimizer over the same shapes."""
        if not isinstance(state, dict) or state.get("format") != OPTIMIZER_ENCODING:
            raise ValueError(f"inner optimizer state: expected format {OPTIMIZER_ENCODING!r}")
        shapes = [tuple(p.shape) for p in self.params]
        for key in ("exp_avg", "exp_avg_sq"):
            tensors = state.get(key)
            if not isinstance(tensors, list) or [tuple(t.shape) for t in tensors] != shapes:
                raise ValueError(
                    f"inner optimizer state: {key} does not match the model's parameters"
                )
        if type(state.get("steps")) is not int or state["steps"] < 0:
            raise ValueError("inner optimizer state: steps must be a non-negative integer")
        self.steps = state["steps"]
        for ours, theirs in (
            (self.exp_avg, state["exp_avg"]),
            (self.exp_avg_sq, state["exp_avg_sq"]),
        ):
            for target, source in zip(ours, theirs, strict=True):
                target.copy_(source)


class InjectedFault(RuntimeError):
    """Raised on a batch ref marked by the simulator's ``--fault error@PEER:ROUND``."""


class DemoWorkload:
    """See the module docstring."""

    workload_name = "fakecoord-demo"

    def __init__(self, config: dict | None) -> None:
        config = dict(config or {})
        self.data_dir = Path(config["data_dir"]) if config.get("data_dir") else None
        self.seed = int(config.get("seed", 0))
        self.hidden = int(config.get("hidden", 64))
        self.inner_lr = float(config.get("inner_lr", 3e-3))
        self.weight_decay = float(config.get("weight_decay", 0.01))
        self.grad_clip = float(config.get("grad_clip", 1.0))
        self.root_ema_decay = float(config.get("root_ema_decay", 0.25))
        if not 0.0 <= self.root_ema_decay <= 1.0:
            raise ValueError(f"root_ema_decay must be in [0, 1], got {self.root_ema_decay}")
        # The simulation passes its per-worker thread cap (one by default when peers
        # outnumber cores), which also fixes every float operation's order.
        torch.set_num_threads(int(config.get("threads", 1)))
        self._headers: dict = {}
        self._features: int | None = None

    # -- metadata ----------------------------------------------------------

    def runtime_device(self) -> str:
        return RUNTIME_DEVICE_PREFIX + "cpu"

    def capability_probe(self) -> dict:
        return {
            "preferred_backends": ["cpu"],
            "work_units_per_second": 2000.0,
            "target_window_seconds": 1,
        }

    # -- model ---------------------------------------------------------------

    def _build(self, features: int = 16) -> nn.Module:
        return nn.Sequential(
            nn.Linear(features, self.hidden),
            nn.GELU(),
            nn.Linear(self.hidden, self.hidden),
            nn.GELU(),
            nn.Linear(self.hidden, 1),
        )

    def init_model(self, device: str) -> dict:
        torch.manual_seed(self.seed)
        return {"model": self._build().to(_device(device))}

    # -- data ------------------------------------------------------------------

    def _tensors(self, data: bytearray, width: int, device: torch.device) -> tuple:
        rows = torch.frombuffer(data, dtype=torch.float32).reshape(-1, width).to(device)
        return rows[:, :-1], rows[:, -1:]

    def _batch(self, ref: Any, device: torch.device) -> tuple:
        if isinstance(ref, dict) and ref.get(FAULT_KEY) == "error":
            raise InjectedFault(
                "fault injected by the coordinator (a batch ref carried fault_inject=error)"
            )
        data, width = read_ref(ref, self._headers)
        return self._tensors(data, width, device)

    def _split_file(self, split: Any) -> Path:
        if self.data_dir is None:
            raise ValueError(
                "evaluate: the demo workload needs config['data_dir'] (the directory of its shards)"
            )
        if split == "Train":
            return self.data_dir / "train-0000.f32"
        if split in ("Validation", "Test"):
            return self.data_dir / f"{split.lower()}.f32"
        if isinstance(split, dict) and isinstance(split.get("Custom"), str):
            name = split["Custom"]
            if not name or "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"evaluate: custom split name {name!r} must be a plain file stem")
            path = self.data_dir / f"{name}.f32"
            return path if path.with_suffix(".json").exists() else self._split_file("Validation")
        raise ValueError(f"evaluate: unknown split {split!r}")

    # -- training ----------------------------------------------------------------

    def _optimizer(self, model: nn.Module) -> AdamW:
        return AdamW(model.parameters(), lr=self.inner_lr, weight_decay=self.weight_decay)

    def _train(self, model: nn.Module, optimizer: Any, batches: list, steps: int) -> dict:
        if steps and not batches:
            raise ValueError(f"{steps} steps were requested but no batch refs were given")
        device = next(model.parameters()).device
        model.train()
        losses = []
        examples = 0
        for step in range(steps):
            x, y = self._batch(batches[step % len(batches)], device)
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if self.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            examples += int(x.shape[0])
        if losses and not all(math.isfinite(v) for v in losses):
            raise FloatingPointError(f"the training loss diverged: {losses[-1]}")
        return {
            "loss": sum(losses) / len(losses) if losses else 0.0,
            "first_loss": losses[0] if losses else 0.0,
            "last_loss": losses[-1] if losses else 0.0,
            "steps": len(losses),
            "examples": examples,
        }

    def train_window(self, state: dict, batches: list) -> dict:
        model = state["model"]
        return self._train(model, self._optimizer(model), batches, len(batches))

    def run_inner_loop(self, state: dict, job: dict) -> dict:
        model = state["model"]
        optimizer = self._optimizer(model)
        given = job.get("inner_optimizer_state_path")
        if given is not None:
            optimizer.load_state_dict(torch.load(given, map_location="cpu", weights_only=True))
        steps = int(job["num_inner_steps"])
        metrics = self._train(model, optimizer, list(job["batches"]), steps)
        # The job names no output location for the state: the workload picks one and returns
        # it; the coordinator reads it right after the call (lib.rs run_worker_inner_loop).
        output = Path(job["output_parameter_pack_path"])
        saved = output.with_name(output.name + ".inner-optimizer.pt")
        _save_atomically(optimizer.state_dict(), saved)
        return {
            "steps_completed": metrics["steps"],
            "metrics": metrics,
            "inner_optimizer_state_path": str(saved),
            "inner_optimizer_state_encoding": OPTIMIZER_ENCODING,
        }

    def evaluate(self, state: dict, split: Any) -> dict:
        model = state["model"]
        device = next(model.parameters()).device
        header = read_header(self._split_file(split))
        x, y = self._tensors(read_rows(header, 0, header.rows), header.width, device)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            loss = float(nn.functional.mse_loss(model(x), y))
        model.train(was_training)
        return {"loss": loss, "examples": header.rows}

    def apply_patch(self, patch: dict) -> Any:
        # PatchValues arrive untagged (a learning rate is a bare JSON number).
        values = patch.get("values") or {}
        unknown = sorted(set(values) - set(LR_PATCH_KEYS))
        if unknown:
            return {"Rejected": f"the demo workload only patches its learning rate, not {unknown}"}
        if patch.get("class") != "Hot":
            return "RequiresRestart"
        for key in LR_PATCH_KEYS:
            lr = values.get(key, self.inner_lr)
            if type(lr) not in (int, float) or not math.isfinite(lr) or not lr > 0:
                return {"Rejected": f"{key} must be a positive number, got {lr!r}"}
        for key in LR_PATCH_KEYS:
            if key in values:
                self.inner_lr = float(values[key])
        return "Applied"

    # -- merging -------------------------------------------------------------------

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict | None:
        if not candidates:
            return None
        weights = _policy_weights(candidates, policy)
        if weights is None:
            return {"model": self._like(base)}
        flats = [_flat(c["model"]) for c in candidates]
        base_flat = _flat(base)
        if policy == "TrimmedMean" and len(flats) >= 3:
            # Coordinate-wise: drop each coordinate's lowest and highest value.
            ordered = torch.stack(flats).sort(dim=0).values
            merged = ordered[1:-1].mean(dim=0)
        elif policy == "NormClippedWeightedMean":
            deltas = [f - base_flat for f in flats]
            norms = torch.stack([d.norm() for d in deltas])
            limit = float(norms.median())
            clipped = [
                d * min(1.0, limit / max(float(n), 1e-12))
                for d, n in zip(deltas, norms, strict=True)
            ]
            merged = base_flat + sum(w * d for w, d in zip(weights, clipped, strict=True))
        else:
            merged = sum(w * f for w, f in zip(weights, flats, strict=True))
        out = {"model": self._like(base)}
        _assign(out, merged)
        return out

    def apply_single_root_ema(self, base: dict, merged: dict, policy: Any) -> None:
        if policy in ("Ema", "QualityWeightedEma"):
            decay = self.root_ema_decay
            _assign(merged, decay * _flat(base) + (1.0 - decay) * _flat(merged))
        return None

    def reconcile_canonical_model(self, local: dict, canonical: dict, strategy: Any) -> None:
        if strategy == "Replace":
            return None
        weight = float(strategy["RootEma"]["canonical_weight"])
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"RootEma canonical_weight must be in [0, 1], got {weight}")
        _assign(canonical, weight * _flat(canonical) + (1.0 - weight) * _flat(local))
        return None

    def _like(self, state: dict) -> nn.Module:
        model = state["model"]
        clone = self._build(model[0].in_features).to(next(model.parameters()).device)
        clone.load_state_dict(model.state_dict())
        return clone


def make_workload(config: dict | None) -> DemoWorkload:
    """The factory: ``--factory fakecoord.demo:make_workload``."""
    return DemoWorkload(config)


RUNTIME_DEVICE_PREFIX = "python-torch-"


def _device(name: str) -> torch.device:
    """``python-torch-X`` (this workload's own ``runtime_device``, which the network sends
    back) or a torch device name -> the torch device."""
    try:
        return torch.device(name.removeprefix(RUNTIME_DEVICE_PREFIX))
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"init_model: unknown device {name!r} ({exc})") from None


def _policy_weights(candidates: list, policy: Any) -> list[float] | None:
    """Normalized candidate weights ``sample_weight * q``, with ``q`` as the Rust
    reference merge takes it (docs/protocol.md §7): 1 for WeightedMean, the quality
    weight clamped to [0, 1] for NormClippedWeightedMean, the quality weight
    for the others.  ``{"Custom": "uniform"}`` weighs every candidate alike.  None when
    the weights sum to at most ``f64::EPSILON`` (the reference then keeps the base)."""
    if policy == "WeightedMean":
        raw = [c["sample_weight"] for c in candidates]
    elif policy == "NormClippedWeightedMean":
        raw = [c["sample_weight"] * min(max(c["quality_weight"], 0.0), 1.0) for c in candidates]
    elif policy in QUALITY_POLICIES:
        raw = [c["sample_weight"] * c["quality_weight"] for c in candidates]
    elif policy == {"Custom": "uniform"}:
        raw = [1.0] * len(candidates)
    else:
        raise ValueError(f"merge policy {policy!r} is not supported (Custom: only 'uniform')")
    if any(w < 0 or not math.isfinite(w) for w in raw):
        raise ValueError(f"candidate weights must be finite and non-negative, got {raw}")
    total = sum(raw)
    if total <= sys.float_info.epsilon:
        return None
    return [w / total for w in raw]


def _float_entries(state: dict) -> list[torch.Tensor]:
    sd = state["model"].state_dict()
    return [sd[k] for k in sorted(sd) if sd[k].is_floating_point()]


def _flat(state: dict) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).to(torch.float32) for t in _float_entries(state)])


def _assign(state: dict, flat: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for tensor in _float_entries(state):
            n = tensor.numel()
            tensor.copy_(flat[offset : offset + n].reshape(tensor.shape))
            offset += n


def _save_atomically(obj: Any, path: Path) -> None:
    with staged_file(path) as f:
        torch.save(obj, f)


__all__ = ["REF_KIND", "DemoWorkload", "InjectedFault", "ShardError", "make_workload"]
