"""Coordinator-side parameter pack I/O (PROTOCOL.md §3) with numpy, without torch.

Reading validates through :class:`worker.packs.OpenPack` (format, plain file
inside the pack, exact length); writing produces the same manifest the Rust
coordinator writes and makes the pack appear atomically (a staging directory
renamed into place).  Errors raise :class:`PackIOError`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from worker.errors import PackError
from worker.packs import MANIFEST_NAME, PACK_FORMAT, VALUES_NAME, OpenPack

from .errors import FakecoordError


class PackIOError(FakecoordError):
    """A pack the coordinator reads is invalid or inconsistent, or cannot be written."""


def read_pack(path: str | os.PathLike) -> tuple[dict, np.ndarray]:
    """``(manifest, float32 values)`` of the pack at ``path``; raises :class:`PackIOError`."""
    try:
        with OpenPack(path) as pack:
            data = pack.values.read()
            manifest = dict(pack.manifest.raw)
    except PackError as exc:
        raise PackIOError(f"reading parameter pack {os.fspath(path)!r}: {exc}") from None
    values = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise PackIOError(
            f"parameter pack {os.fspath(path)!r} holds NaN or infinite values (the inner loop diverged?)"
        )
    return manifest, values


def check_compatible(path: str | os.PathLike, manifest: dict, reference: dict) -> None:
    """Raise :class:`PackIOError` unless ``manifest`` has ``reference``'s layout and schema."""
    for key in ("layout_hash", "parameter_count", "model_schema_hash"):
        if manifest.get(key) != reference.get(key):
            raise PackIOError(
                f"parameter pack {os.fspath(path)!r}: {key} is {manifest.get(key)!r}, "
                f"but the base pack has {reference.get(key)!r}"
            )


def write_pack(path: str | os.PathLike, like: dict, values: np.ndarray) -> None:
    """Write ``values`` as a pack at ``path`` (which must not exist) with ``like``'s
    schema and layout hash; raises :class:`PackIOError`."""
    target = Path(path)
    values = np.ascontiguousarray(values, dtype="<f4")
    if values.ndim != 1 or values.shape[0] != like.get("parameter_count"):
        raise PackIOError(
            f"write_pack {str(target)!r}: {values.shape} values do not match parameter_count "
            f"{like.get('parameter_count')!r}"
        )
    manifest = {
        "format": PACK_FORMAT,
        "model_schema_hash": like["model_schema_hash"],
        "layout_hash": like["layout_hash"],
        "parameter_count": int(values.shape[0]),
        "values_f32_le": VALUES_NAME,
    }
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            with open(staging / VALUES_NAME, "wb") as f:
                f.write(values.tobytes())
            (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            os.rename(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    except OSError as exc:
        raise PackIOError(f"cannot write parameter pack {str(target)!r}: {exc}") from exc


__all__ = ["PackIOError", "check_compatible", "read_pack", "write_pack"]
