"""The simulation's pack helpers, on :mod:`fakecoord.packs` (numpy, no torch, no worker).

Reading copies the values into memory and refuses NaN/Inf (a diverged
inner loop); writing produces the manifest the Rust coordinator writes and
publishes the pack atomically.  Errors raise :class:`PackIOError`.
"""

from __future__ import annotations

import os

import numpy as np

from . import packs
from .errors import PackError

PackIOError = PackError
"""The name the simulation used before :mod:`fakecoord.packs` existed."""


def read_pack(path: str | os.PathLike) -> tuple[dict, np.ndarray]:
    """``(manifest, float32 values)`` of the pack at ``path``; raises :class:`PackIOError`."""
    pack = packs.open_pack(path, in_memory=True)
    if not np.all(np.isfinite(pack.values)):
        raise PackIOError(
            f"parameter pack {os.fspath(path)!r} holds NaN or infinite values "
            "(the inner loop diverged?)"
        )
    return dict(pack.manifest.raw), pack.values


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
    values = np.asarray(values)
    if values.ndim != 1 or values.shape[0] != like.get("parameter_count"):
        raise PackIOError(
            f"write_pack {os.fspath(path)!r}: {values.shape} values do not match parameter_count "
            f"{like.get('parameter_count')!r}"
        )
    packs.write_pack(
        path,
        values,
        layout_hash=like["layout_hash"],
        model_schema_hash=like["model_schema_hash"],
    )


__all__ = ["PackIOError", "check_compatible", "read_pack", "write_pack"]
