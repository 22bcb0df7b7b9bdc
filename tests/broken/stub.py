"""A torch-free workload for the worker-level checks (framing, validation, handles)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any


class StubWorkload:
    """Correct, minimal, no torch: states are small lists of floats moved by
    custom pack hooks.  Passes the framing, errors.* (but bad_files) and
    release checks with an intact worker."""

    workload_name = "conformance-stub"

    def __init__(self, config: dict | None) -> None:
        self.config = dict(config or {})

    def runtime_device(self) -> str:
        return "python-cpu"

    def capability_probe(self) -> dict:
        return {
            "preferred_backends": ["cpu"],
            "work_units_per_second": 1.0,
            "target_window_seconds": 1,
        }

    def init_model(self, device: str) -> dict:
        return {"values": [0.0, 1.0, 2.0, 3.0]}

    def train_window(self, state: dict, batches: list) -> dict:
        return {"batches": len(batches)}

    def evaluate(self, state: dict, split: Any) -> dict:
        return {"total": sum(state["values"])}

    def export_parameter_pack_path(self, state: dict, path: str, model_schema_hash: str) -> None:
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        (root / "values.f32le").write_bytes(struct.pack("<4f", *state["values"]))
        manifest = {
            "format": "burn-p2p-python-flattened-parameter-pack-v1",
            "model_schema_hash": model_schema_hash,
            "layout_hash": "stub-layout-4",
            "parameter_count": 4,
            "values_f32_le": "values.f32le",
        }
        (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")

    def import_parameter_pack_path(self, device: str, path: str) -> dict:
        manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("layout_hash") != "stub-layout-4":
            raise ValueError(f"layout {manifest.get('layout_hash')!r} is not stub-layout-4")
        return {"values": list(struct.unpack("<4f", (Path(path) / "values.f32le").read_bytes()))}

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict | None:
        return None

    def apply_single_root_ema(self, base: dict, merged: dict, policy: Any) -> None:
        return None

    def reconcile_canonical_model(self, local: dict, canonical: dict, strategy: Any) -> None:
        return None


def make_stub(config: dict | None) -> StubWorkload:
    return StubWorkload(config)
