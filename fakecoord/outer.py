"""DiLoCo's outer step as the coordinator runs it (PROTOCOL.md §6): pure numpy.

A peer's pseudo-gradient is ``base - local``.  Pseudo-gradients go through a
transport codec (``fp32``: exact; ``fp16``: rounded to IEEE half precision,
saturating at +-65504 instead of overflowing to infinity), are aggregated
coordinate-wise (``mean`` or ``median``), and an outer SGD step with
(optionally Nesterov) momentum updates the base::

    v = momentum * v + g
    step = momentum * v + g   if nesterov else   v
    base = base - lr * step

Every function takes and returns flat ``float32`` arrays and never touches
the disk.  Invalid input raises :class:`OuterError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import FakecoordError

AGGREGATES = ("mean", "median")
CODECS = ("fp32", "fp16")
FP16_MAX = float(np.finfo(np.float16).max)


class OuterError(FakecoordError):
    """Bad input to the outer step: mismatched shapes, non-finite values, unknown names."""


def _as_vector(name: str, values: np.ndarray, size: int | None = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise OuterError(f"{name}: expected a flat vector, got shape {array.shape}")
    if size is not None and array.shape[0] != size:
        raise OuterError(f"{name}: expected {size} values, got {array.shape[0]}")
    if not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise OuterError(f"{name}: value {bad} is {array[bad]}; pseudo-gradients must be finite")
    return array.astype(np.float32, copy=False)


def pseudo_gradient(base: np.ndarray, local: np.ndarray) -> np.ndarray:
    """``base - local`` in float32; raises :class:`OuterError` on shape mismatch or NaN/inf."""
    base = _as_vector("base", base)
    local = _as_vector("local", local, base.shape[0])
    return base - local


def transport(values: np.ndarray, codec: str) -> np.ndarray:
    """What the receiver decodes after ``values`` went through ``codec``.

    ``fp16`` rounds to nearest half-precision value and saturates at
    +-65504.  Raises :class:`OuterError` for an unknown codec.
    """
    values = _as_vector("pseudo_gradient", values)
    if codec == "fp32":
        return values.copy()
    if codec == "fp16":
        clipped = np.clip(values, -FP16_MAX, FP16_MAX)
        return clipped.astype(np.float16).astype(np.float32)
    raise OuterError(f"codec: expected one of {', '.join(CODECS)}, got {codec!r}")


def aggregate(gradients: Sequence[np.ndarray], method: str) -> np.ndarray:
    """Coordinate-wise ``mean`` or ``median`` of equally long pseudo-gradients.

    The mean accumulates in float64; the median of an even count is the mean
    of the two middle values.  Raises :class:`OuterError` for no gradients,
    mismatched lengths or an unknown method.
    """
    if method not in AGGREGATES:
        raise OuterError(f"aggregate: expected one of {', '.join(AGGREGATES)}, got {method!r}")
    if not gradients:
        raise OuterError("aggregate: needs at least one pseudo-gradient")
    first = _as_vector("pseudo_gradient[0]", gradients[0])
    rest = [
        _as_vector(f"pseudo_gradient[{i}]", g, first.shape[0])
        for i, g in enumerate(gradients[1:], start=1)
    ]
    stack = np.stack([first, *rest]).astype(np.float64)
    combined = stack.mean(axis=0) if method == "mean" else np.median(stack, axis=0)
    return combined.astype(np.float32)


@dataclass(frozen=True)
class OuterSGD:
    """SGD with momentum on the base parameters; DiLoCo's defaults (lr 0.7, Nesterov 0.9)."""

    lr: float = 0.7
    momentum: float = 0.9
    nesterov: bool = True

    def __post_init__(self) -> None:
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise OuterError(f"outer lr: expected a positive finite number, got {self.lr!r}")
        if not (np.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise OuterError(f"outer momentum: expected a number in [0, 1), got {self.momentum!r}")

    def step(
        self, base: np.ndarray, gradient: np.ndarray, velocity: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(new_base, new_velocity)``; ``velocity=None`` means zeros (first step).

        Raises :class:`OuterError` on mismatched lengths or non-finite input.
        """
        base = _as_vector("base", base)
        gradient = _as_vector("aggregated pseudo_gradient", gradient, base.shape[0])
        if velocity is None:
            velocity = np.zeros_like(base)
        velocity = _as_vector("outer momentum buffer", velocity, base.shape[0])
        momentum = np.float32(self.momentum)
        new_velocity = momentum * velocity + gradient
        update = momentum * new_velocity + gradient if self.nesterov else new_velocity
        new_base = base - np.float32(self.lr) * update
        return new_base.astype(np.float32), new_velocity.astype(np.float32)


def outer_round(
    base: np.ndarray,
    locals_: Sequence[np.ndarray],
    velocity: np.ndarray | None,
    optimizer: OuterSGD,
    method: str = "mean",
    codec: str = "fp32",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One full outer step from the peers' local parameters.

    Returns ``(new_base, new_velocity, aggregated_gradient)``.  Raises
    :class:`OuterError` (also when ``locals_`` is empty: the caller decides
    what a round without contributors means).
    """
    gradients = [transport(pseudo_gradient(base, local), codec) for local in locals_]
    combined = aggregate(gradients, method)
    new_base, new_velocity = optimizer.step(base, combined, velocity)
    return new_base, new_velocity, combined


__all__ = [
    "AGGREGATES",
    "CODECS",
    "OuterError",
    "OuterSGD",
    "aggregate",
    "outer_round",
    "pseudo_gradient",
    "transport",
]
