"""Reading the DiLoCo golden vectors (tests/golden/diloco/vectors.json; its README gives the
format): inputs, expected outputs and comparisons, shared by the golden tests."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

VECTORS = Path(__file__).resolve().parent.parent / "golden" / "diloco" / "vectors.json"
FORMAT = "burn-p2p-diloco-golden/1"
F32 = np.dtype("<f4")


@cache
def load() -> dict[str, Any]:
    data = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert data["format"] == FORMAT
    return data


def cases() -> list[dict[str, Any]]:
    return load()["cases"]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def values(spec: dict[str, Any]) -> np.ndarray:
    """An input VALUES: ``f32le`` hex, or ``gen`` (splitmix64 in float32)."""
    if "f32le" in spec:
        return np.frombuffer(bytes.fromhex(spec["f32le"]), dtype=F32).copy()
    g = spec["gen"]
    seed, n, scale = int(g["seed"]), int(g["n"]), np.float32(g["scale"])
    with np.errstate(over="ignore"):
        x = _splitmix64(np.uint64(seed) + np.arange(n, dtype=np.uint64))
    u = (x >> np.uint64(40)).astype(np.float32) / np.float32(16777216.0)
    return ((u * np.float32(2.0) - np.float32(1.0)) * scale).astype(F32)


def same(got: np.ndarray, want: dict[str, Any]) -> bool:
    """A VALUES_OUT compared bit for bit (NaN payloads included)."""
    data = np.ascontiguousarray(got, dtype=F32).tobytes()
    if "f32le" in want:
        return data.hex() == want["f32le"]
    return len(data) == 4 * want["n"] and hashlib.sha256(data).hexdigest() == want["sha256"]


def describe_diff(got: np.ndarray, want: dict[str, Any]) -> str:
    if "f32le" not in want:
        return f"{got.shape[0]} values, sha256 differs"
    w = np.frombuffer(bytes.fromhex(want["f32le"]), dtype=F32)
    if w.shape != got.shape:
        return f"{got.shape[0]} values, expected {w.shape[0]}"
    gb, wb = got.astype(F32).view(np.uint32), w.view(np.uint32)
    bad = np.nonzero(gb != wb)[0]
    i = int(bad[0])
    return f"{bad.size} values differ, first at {i}: got {got[i]!r} ({gb[i]:#010x}), want {w[i]!r} ({wb[i]:#010x})"
