"""Parameter values seen from outside the worker: crafted values and numeric helpers.

Values the suite writes into packs to learn how the worker treats them
(special values exact in each dtype, seeded perturbations), comparisons of
exported values, and :func:`write_inconsistent_pack` for the error-path
checks.  Packs themselves are read and written with :mod:`fakecoord.packs`,
the coordinator side's one copy of the format.  numpy is imported on use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fakecoord import files, packs


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


def within(got: Any, want: Any, slack: Any) -> bool:
    """Every value of ``got`` within ``slack`` of ``want``'s."""
    import numpy as np

    return bool((np.abs(got.astype(np.float64) - want.astype(np.float64)) <= slack).all())


def count_outside(values: Any, low: Any, high: Any, slack: Any) -> int:
    """How many values lie outside ``[min(low, high) - slack, max(low, high) + slack]``."""
    import numpy as np

    lo, hi = np.minimum(low, high), np.maximum(low, high)
    return int(((values < lo - slack) | (values > hi + slack)).sum())


def first_outside(values: Any, low: Any, high: Any, slack: Any) -> str:
    """``"3 of 41 values outside (first at index 2: 0.5 not in [0.1, 0.2])"``."""
    import numpy as np

    lo, hi = np.minimum(low, high), np.maximum(low, high)
    bad = (values < lo - slack) | (values > hi + slack)
    i = int(np.argmax(bad))
    return (
        f"{int(bad.sum())} of {values.size} values outside (first at index {i}: "
        f"{float(values[i])!r} not in [{float(lo[i])!r}, {float(hi[i])!r}])"
    )


def fraction_along(got: Any, start: Any, end: Any) -> float:
    """Where ``got`` lies on the line from ``start`` (0) to ``end`` (1), by projection."""
    import numpy as np

    span = end.astype(np.float64) - start.astype(np.float64)
    offset = got.astype(np.float64) - start.astype(np.float64)
    return float(np.dot(offset, span) / max(float(np.dot(span, span)), 1e-30))


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


def write_inconsistent_pack(
    path: str | os.PathLike,
    values: Any,
    *,
    layout_hash: str,
    model_schema_hash: str,
    parameter_count: int | None = None,
    fmt: str = packs.PACK_FORMAT,
    values_name: str = packs.VALUES_NAME,
) -> Path:
    """A pack whose manifest may lie, for the error-path checks (published atomically).

    The values go to ``values.f32le`` inside the pack; the manifest claims
    ``parameter_count`` (default: the real count), ``fmt`` and ``values_name``,
    which may point elsewhere (``../escaped.f32le``).  Raises ``OSError``.
    """
    import numpy as np

    array = np.ascontiguousarray(values, dtype="<f4")
    manifest = {
        "format": fmt,
        "model_schema_hash": model_schema_hash,
        "layout_hash": layout_hash,
        "parameter_count": int(array.size) if parameter_count is None else parameter_count,
        "values_f32_le": values_name,
    }
    with files.staged_directory(path) as staging:
        array.tofile(staging / packs.VALUES_NAME)
        (staging / packs.MANIFEST_NAME).write_bytes(packs.manifest_bytes(manifest))
    return Path(path)


__all__ = [
    "count_outside",
    "describe_difference",
    "exact_values",
    "first_outside",
    "fraction_along",
    "perturbed",
    "same_bits",
    "tolerance",
    "within",
    "write_inconsistent_pack",
]
