"""Parameter values seen from outside the worker: packs read and written with
numpy, crafted values, and an independent recomputation of the layout hash.

Nothing here imports ``worker``: the checks compare the worker's answers with
code that does not share its bugs.  numpy and torch are imported on use.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PackProblem, ShapeError
from .shapes import PACK_FORMAT, manifest

MANIFEST_NAME = "manifest.json"
VALUES_NAME = "values.f32le"
LAYOUT_PREFIX = "torch-layout-"


@dataclass
class Pack:
    """A pack read from disk: its manifest and its values as float32."""

    path: Path
    manifest: dict
    values: Any  # numpy float32 array

    @property
    def layout_hash(self) -> str:
        return self.manifest["layout_hash"]

    @property
    def parameter_count(self) -> int:
        return self.manifest["parameter_count"]

    @property
    def bits(self) -> Any:
        """The values as uint32 bit patterns (compare these for bit-identity)."""
        return self.values.view("<u4")


def read_pack(path: str | os.PathLike) -> Pack:
    """Read and validate the pack at ``path``; raises :class:`PackProblem`."""
    import numpy as np

    root = Path(path)
    where = f"pack {str(root)!r}"
    try:
        raw = (root / MANIFEST_NAME).read_bytes()
    except OSError as exc:
        raise PackProblem(f"{where}: no readable {MANIFEST_NAME} ({exc.strerror})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PackProblem(f"{where}: {MANIFEST_NAME} is not UTF-8 JSON ({exc})") from None
    try:
        manifest(data, MANIFEST_NAME)
    except ShapeError as exc:
        raise PackProblem(f"{where}: {exc}") from None
    values_path = root / data["values_f32_le"]
    try:
        info = os.lstat(values_path)
    except OSError as exc:
        raise PackProblem(
            f"{where}: values file {data['values_f32_le']!r} is missing ({exc.strerror})"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise PackProblem(f"{where}: values file {data['values_f32_le']!r} is not a plain file")
    expected = data["parameter_count"] * 4
    if info.st_size != expected:
        raise PackProblem(
            f"{where}: values file holds {info.st_size} bytes but parameter_count "
            f"{data['parameter_count']} needs {expected}"
        )
    values = np.fromfile(values_path, dtype="<f4").astype(np.float32, copy=False)
    return Pack(root, data, values)


def write_pack(
    path: str | os.PathLike,
    values: Any,
    layout_hash: str,
    model_schema_hash: str,
    *,
    parameter_count: int | None = None,
    fmt: str = PACK_FORMAT,
    values_name: str = VALUES_NAME,
) -> Path:
    """Write a pack (values first, manifest last).  The keyword arguments let
    checks write deliberately inconsistent packs."""
    import numpy as np

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(values, dtype="<f4")
    target = root / values_name
    target.parent.mkdir(parents=True, exist_ok=True)
    array.tofile(target)
    count = int(array.size) if parameter_count is None else parameter_count
    text = {
        "format": fmt,
        "model_schema_hash": model_schema_hash,
        "layout_hash": layout_hash,
        "parameter_count": count,
        "values_f32_le": values_name,
    }
    (root / MANIFEST_NAME).write_text(json.dumps(text, indent=2), encoding="utf-8")
    return root


def same_bits(a: Any, b: Any) -> bool:
    return a.shape == b.shape and bool((a.view("<u4") == b.view("<u4")).all())


def describe_difference(got: Any, expected: Any, tolerance: Any = None) -> str:
    """``"7 of 41 values differ (first at index 3: 0.25 instead of 0.5)"``."""
    import numpy as np

    if got.shape != expected.shape:
        return f"{got.size} values instead of {expected.size}"
    if tolerance is None:
        bad = got.view("<u4") != expected.view("<u4")
    else:
        bad = ~(np.abs(got.astype(np.float64) - expected.astype(np.float64)) <= tolerance)
    count = int(bad.sum())
    if not count:
        return "no difference"
    i = int(np.argmax(bad))
    return (
        f"{count} of {got.size} values differ (first at index {i}: "
        f"{float(got[i])!r} instead of {float(expected[i])!r})"
    )


def tolerance(reference: Any, low_precision: bool) -> Any:
    """Per-value tolerance for results a workload computes in its own dtype."""
    import numpy as np

    rel, abs_ = (1e-2, 1e-3) if low_precision else (1e-5, 1e-6)
    return abs_ + rel * np.abs(reference.astype(np.float64))


def perturbed(values: Any, seed: int, scale: float = 0.05) -> Any:
    """``values`` plus seeded Gaussian noise: a model that no ``init_model`` gives."""
    import numpy as np

    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(values.size).astype(np.float32) * np.float32(scale)
    return (values.astype(np.float32) + noise).astype(np.float32)


# Values that stress a cast: signed zero, subnormals, extremes of each format.
_F32_SPECIALS = (-0.0, 1e-45, -1.4e-45, 1.1754944e-38, 3.4028235e38, -3.4028235e38, 1.0, -2.5)
_F16_SPECIALS = (-0.0, 5.9604645e-08, -6.1035156e-05, 65504.0, -65504.0, 1.0009766, 0.33325195)
_BF16_BITS = (0x80000000, 0x00010000, 0x00800000, 0x7F7F0000, 0xFF7F0000, 0x3F810000)


def exact_values(spans: list[tuple[int, str]] | None, count: int, seed: int) -> Any:
    """Seeded values that each span's dtype represents exactly.

    ``spans`` is ``[(numel, dtype), ...]`` in layout order (from the local
    layout); without it every value is exact in float32, float16 and
    bfloat16 at once (at most 8 significant bits, within float16's range).
    The first values of each span are the format's special values.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    if spans is None or sum(n for n, _ in spans) != count:
        spans = [(count, "common")]
    parts = []
    for numel, dtype in spans:
        if dtype in ("torch.float16", "torch.half"):
            part = rng.standard_normal(numel).astype(np.float16).astype(np.float32)
            specials = np.array(_F16_SPECIALS, dtype=np.float16).astype(np.float32)
        elif dtype == "torch.bfloat16":
            bits = rng.standard_normal(numel).astype(np.float32).view("<u4") & np.uint32(0xFFFF0000)
            part = bits.view(np.float32)
            specials = np.array(_BF16_BITS, dtype="<u4").view(np.float32)
        elif dtype in ("torch.float32", "torch.float", "torch.float64", "torch.double"):
            part = rng.standard_normal(numel).astype(np.float32)
            specials = np.array(_F32_SPECIALS, dtype=np.float32)
        else:
            mantissa = rng.integers(-255, 256, numel).astype(np.float32)
            exponent = rng.integers(-14, 8, numel).astype(np.float32)
            part = (mantissa / np.float32(128) * np.exp2(exponent)).astype(np.float32)
            specials = np.array((-0.0, 2.0**-21, 255.0, -1.0), dtype=np.float32)
        k = min(numel, specials.size)
        part = np.array(part, dtype=np.float32)
        part[:k] = specials[:k]
        parts.append(part)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


# ---------------------------------------------------------------------------
# Independent layout recomputation (PROTOCOL.md §3)


@dataclass
class LocalLayout:
    """The generic layout of a state, computed in the conformance process."""

    entries: list[dict] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [e["name"] for e in self.entries]

    @property
    def parameter_count(self) -> int:
        return sum(e["numel"] for e in self.entries)

    @property
    def hash(self) -> str:
        text = json.dumps(self.entries, sort_keys=True, separators=(",", ":"))
        return LAYOUT_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def spans(self) -> list[tuple[int, str]]:
        return [(e["numel"], e["dtype"]) for e in self.entries]

    def offsets(self) -> dict[str, tuple[int, int]]:
        out, start = {}, 0
        for e in self.entries:
            out[e["name"]] = (start, start + e["numel"])
            start += e["numel"]
        return out


def selects(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """The Filter rule: kept when some include glob matches (or there are none) and no exclude glob."""
    if include and not any(fnmatch.fnmatchcase(name, g) for g in include):
        return False
    return not any(fnmatch.fnmatchcase(name, g) for g in exclude)


class LayoutUnavailable(Exception):
    """The state is not one of the generic layout's shapes."""


def named_modules(state: Any) -> list[tuple[str, Any]]:
    """``[(name, module)]`` in walk order: a module, ``{"model": m}`` or ``{"modules": {...}}``."""
    import torch

    if isinstance(state, torch.nn.Module):
        return [("", state)]
    if isinstance(state, dict) and isinstance(state.get("model"), torch.nn.Module):
        return [("", state["model"])]
    if isinstance(state, dict) and isinstance(state.get("modules"), dict) and state["modules"]:
        modules = state["modules"]
        if all(isinstance(k, str) and isinstance(v, torch.nn.Module) for k, v in modules.items()):
            return [(name, modules[name]) for name in sorted(modules)]
    raise LayoutUnavailable(
        f"init_model returned a {type(state).__name__}, not a torch.nn.Module, "
        "{'model': module} or {'modules': {...}}"
    )


def local_layout(
    state: Any, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> LocalLayout:
    """The layout of ``state`` under a filter; raises :class:`LayoutUnavailable`."""
    import torch

    layout = LocalLayout()
    for module_name, module in named_modules(state):
        tensors = module.state_dict()
        for key in sorted(tensors):
            name = f"{module_name}.{key}" if module_name else key
            tensor = tensors[key]
            if not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()):
                layout.ignored.append(name)
            elif not selects(name, include, exclude):
                layout.excluded.append(name)
            else:
                layout.entries.append(
                    {
                        "name": name,
                        "shape": list(tensor.shape),
                        "dtype": str(tensor.dtype),
                        "numel": tensor.numel(),
                    }
                )
    return layout


__all__ = [
    "LocalLayout",
    "LayoutUnavailable",
    "Pack",
    "describe_difference",
    "exact_values",
    "local_layout",
    "perturbed",
    "read_pack",
    "same_bits",
    "selects",
    "tolerance",
    "write_pack",
]
