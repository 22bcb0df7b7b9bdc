"""Correct extensions of the example workload: the bases some defects are composed over."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def _selected(name: str, state_dict_filter: dict | None) -> bool:
    import fnmatch

    f = state_dict_filter or {}
    include, exclude = f.get("include_globs") or [], f.get("exclude_globs") or []
    if include and not any(fnmatch.fnmatchcase(name, g) for g in include):
        return False
    return not any(fnmatch.fnmatchcase(name, g) for g in exclude)


class CustomPacks:
    """Correct custom pack hooks: the standard pack format with a layout hash of
    our own ("custom-..."), validated on import."""

    def _entries(self, state: dict, state_dict_filter: dict | None) -> list:
        tensors = state["model"].state_dict()
        return [
            (k, tensors[k])
            for k in sorted(tensors)
            if tensors[k].is_floating_point() and _selected(k, state_dict_filter)
        ]

    def _layout(self, entries: list) -> str:
        text = json.dumps([[k, list(t.shape), str(t.dtype)] for k, t in entries])
        return "custom-" + hashlib.sha256(text.encode()).hexdigest()

    def export_parameter_pack_path(
        self, state: dict, path: str, model_schema_hash: str, state_dict_filter: dict | None = None
    ) -> None:
        import torch

        entries = self._entries(state, state_dict_filter)
        flat = [t.detach().reshape(-1).to(torch.float32) for _, t in entries]
        values = torch.cat(flat) if flat else torch.zeros(0)
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        (root / "values.f32le").write_bytes(values.numpy().astype("<f4").tobytes())
        manifest = {
            "format": "burn-p2p-python-flattened-parameter-pack-v1",
            "model_schema_hash": self._schema_hash(model_schema_hash),
            "layout_hash": self._layout(entries),
            "parameter_count": int(values.numel()),
            "values_f32_le": "values.f32le",
        }
        (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")

    def _schema_hash(self, requested: str) -> str:
        return requested

    def _read_values(self, path: str, state: dict, state_dict_filter: dict | None) -> tuple:
        import torch

        root = Path(path)
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        entries = self._entries(state, state_dict_filter)
        if manifest.get("format") != "burn-p2p-python-flattened-parameter-pack-v1":
            raise ValueError(f"unknown pack format {manifest.get('format')!r}")
        if manifest.get("values_f32_le") != "values.f32le":
            raise ValueError(
                f"values file must be values.f32le, got {manifest.get('values_f32_le')!r}"
            )
        if manifest.get("layout_hash") != self._layout(entries):
            raise ValueError(f"layout {manifest.get('layout_hash')!r} is not this model's")
        data = (root / "values.f32le").read_bytes()
        count = sum(t.numel() for _, t in entries)
        if len(data) != 4 * count or manifest.get("parameter_count") != count:
            raise ValueError(f"the pack must hold {count} values")
        return entries, torch.frombuffer(bytearray(data), dtype=torch.float32)

    def import_parameter_pack_path(
        self, device: str, path: str, state_dict_filter: dict | None = None
    ) -> dict:
        import torch

        state = self.init_model(device)
        entries, values = self._read_values(path, state, state_dict_filter)
        start = 0
        with torch.no_grad():
            for _, tensor in self._imported(entries):
                n = tensor.numel()
                tensor.copy_(self._cast(values[start : start + n]).view(tensor.shape))
                start += n
        return state

    def _imported(self, entries: list) -> list:
        return entries

    def _cast(self, values: Any) -> Any:
        return values


class MixedPrecision:
    """A model that also carries float16 and bfloat16 buffers (correct)."""

    def init_model(self, device: str) -> dict:
        import torch

        state = super().init_model(device)
        state["model"].register_buffer("half_scale", torch.linspace(-2, 2, 6).to(torch.float16))
        state["model"].register_buffer("bf16_scale", torch.linspace(-3, 3, 6).to(torch.bfloat16))
        return state


class ShardsOnly:
    """Not broken but limited: trains only on cached_microshard_group refs (one
    seeded batch per ordinal), so the suite's generated micro_epoch refs are refused."""

    def batch(self, ref: dict) -> tuple:
        from conformance.example_workload import generated

        if ref.get("kind") != "cached_microshard_group":
            raise ValueError(
                f"only cached_microshard_group refs are readable, got {ref.get('kind')!r}"
            )
        return generated(int(ref["ordinals"][0]), 16)


class ZeroSteps(ShardsOnly):
    """Like the upstream MNIST example: refs it cannot read give zero steps, not an error.

    train_window does nothing and says so (``train_steps: 0``); run_inner_loop
    raises when it could make no step.  Not broken, but limited: with generated
    refs every training check must SKIP with the hint to pass ``--batches``.
    """

    def _readable(self, batches: list) -> list:
        return [ref for ref in batches if ref.get("kind") == "cached_microshard_group"]

    def train_window(self, state: dict, batches: list) -> dict:
        readable = self._readable(batches)
        loss = self._steps(state["model"], readable, len(readable)) if readable else 0.0
        return {"loss": loss, "train_steps": len(readable), "examples": 16 * len(readable)}

    def run_inner_loop(self, state: dict, job: dict) -> dict:
        if not self._readable(job["batches"]):
            raise ValueError("training batches did not produce any optimizer steps")
        return super().run_inner_loop(state, job)
