"""DiLoCo's outer step (docs/protocol.md §6), streamed over parameter packs in float32 chunks.

A peer's pseudo-gradient is ``base - local``.  Pseudo-gradients go through a
transport codec (``fp32``: exact; ``fp16``: rounded to IEEE half precision,
saturating at +-65504 instead of overflowing to infinity), are aggregated
coordinate-wise (``mean``, ``median`` or any :data:`Aggregator`), and an
outer SGD step with (optionally Nesterov) momentum updates the base::

    v = momentum * v + g
    step = momentum * v + g   if nesterov else   v
    base = base - lr * step

:func:`outer_step_packs` reads the base, the outer momentum and the peers'
packs a chunk at a time (``pread`` into a few buffers of ``chunk`` values)
and writes the new base and momentum packs sequentially, so the
coordinator's memory stays at ``(6 + rows) * chunk * 4`` bytes whatever the
model size (``rows`` is 0 for the built-in mean, the number of contributors
otherwise).  :func:`outer_step_arrays` runs the same kernel on in-memory
arrays.

Numerical contract (float32 arithmetic, ``eps = 2**-24``; per coordinate,
against a float64 evaluation of the formulas above on the same float32
inputs, with ``G = max_i |g_i|``, ``k`` contributors):

- ``g_i = base - local_i`` is rounded once (exact when ``local_i`` is within
  a factor 2 of ``base``, Sterbenz); ``fp16`` then rounds it to the nearest
  half-precision value (saturating), exactly as ``np.float16`` does;
- ``mean``: differences first, then a sequential float32 sum and one
  division: error at most ``(k + 1) * eps * G`` (summing the locals first
  would cancel catastrophically for small pseudo-gradients);
- ``median``: a selection, exact for odd ``k``; for even ``k`` the midpoint
  of the two middle values, rounded once;
- the momentum update, the Nesterov step and the base update are three
  fused-free float32 operations each: ``v`` within ``2 * eps * (m|v| + |g|)``
  plus the aggregate's error, the base within
  ``eps * |base| + 3 * eps * lr * (m|v| + |g|) + lr * (1 + m) * err(g)``.

tests/test_outer.py checks these bounds against float64 over several steps.
Non-finite values in any input raise :class:`OuterError` naming the pack
(``source`` is the contributor's index, ``None`` for the base or momentum);
nothing is written then.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import OuterError, PackError
from ..packs import F32, PackReader, pack_stream_writer

CODECS = ("fp32", "fp16")
FP16_MAX = float(np.finfo(np.float16).max)
DEFAULT_CHUNK = 1 << 18
"""Values per chunk: 1 MiB per buffer, small enough to stay in cache, large enough that
numpy's per-call overhead vanishes."""

Aggregator = Callable[[np.ndarray, np.ndarray], None]
"""``aggregator(gradients, out)``: ``gradients`` is a C-contiguous float32 array of shape
``(contributors, n)`` (one decoded pseudo-gradient chunk per row, which the aggregator may
overwrite); write the aggregate of each column into ``out`` (float32, shape ``(n,)``)."""


def mean(gradients: np.ndarray, out: np.ndarray) -> None:
    """Coordinate-wise mean (the real coordinator's default)."""
    np.sum(gradients, axis=0, out=out)
    np.divide(out, np.float32(gradients.shape[0]), out=out)


def median(gradients: np.ndarray, out: np.ndarray) -> None:
    """Coordinate-wise median; for an even count the midpoint of the two middle values.

    Up to :data:`NETWORK_ROWS` rows it sorts with a compare-exchange network of
    contiguous ``np.minimum`` / ``np.maximum`` passes (NaN propagates), about
    10x faster than ``np.median`` along the strided axis; beyond, ``np.median``.
    """
    k = gradients.shape[0]
    if k > NETWORK_ROWS:
        np.median(gradients, axis=0, overwrite_input=True, out=out)
        return
    rows = list(gradients)
    spare = out
    for sweep in range(k):  # odd-even transposition sort: k sweeps sort any input
        for i in range(sweep % 2, k - 1, 2):
            np.minimum(rows[i], rows[i + 1], out=spare)
            np.maximum(rows[i], rows[i + 1], out=rows[i + 1])
            rows[i], spare = spare, rows[i]
    middle = k // 2
    if k % 2:
        if rows[middle] is not out:
            np.copyto(out, rows[middle])
    else:
        np.add(rows[middle - 1], rows[middle], out=out)
        np.multiply(out, np.float32(0.5), out=out)


NETWORK_ROWS = 16


AGGREGATORS: dict[str, Aggregator] = {"mean": mean, "median": median}


def resolve_aggregator(spec: str | Aggregator) -> tuple[str, Aggregator]:
    """``(name, function)`` for a built-in name or a callable; raises :class:`OuterError`."""
    if callable(spec):
        return getattr(spec, "__name__", type(spec).__name__), spec
    if spec not in AGGREGATORS:
        raise OuterError(f"aggregate: expected one of {', '.join(AGGREGATORS)}, got {spec!r}")
    return spec, AGGREGATORS[spec]


def transport(values: np.ndarray, codec: str) -> np.ndarray:
    """What the receiver decodes after float32 ``values`` went through ``codec`` (a new array).

    Raises :class:`OuterError` for an unknown codec.
    """
    if codec not in CODECS:
        raise OuterError(f"codec: expected one of {', '.join(CODECS)}, got {codec!r}")
    out = np.array(values, dtype=F32, copy=True).reshape(-1)
    if codec == "fp16":
        _Fp16(out.shape[0]).encode(out)
    return out


class _Fp16:
    """Round float32 values in place to the nearest float16 value, saturating at +-65504.

    Bit-identical to a float32 -> float16 -> float32 round trip through numpy
    (round to nearest, ties to even, subnormals and signed zeros included),
    but about 10x faster: numpy converts to float16 one value at a time.
    """

    def __init__(self, size: int) -> None:
        self.sign = np.empty(size, dtype=np.uint32)
        self.magic = np.empty(size, dtype=np.uint32)

    def encode(self, values: np.ndarray) -> None:
        n = values.shape[0]
        sign, magic = self.sign[:n], self.magic[:n]
        np.clip(values, -FP16_MAX, FP16_MAX, out=values)
        bits = values.view(np.uint32)
        # For |x| in [2**e, 2**(e+1)) half precision's quantum is 2**(e-10) (2**-24
        # below 2**-14), the float32 quantum of magic = +-2**(e+13): x + magic - magic
        # rounds x to it, ties to even.
        np.bitwise_and(bits, np.uint32(0x80000000), out=sign)
        np.bitwise_and(bits, np.uint32(0x7F800000), out=magic)
        # (np.clip with two bounds is vectorized; np.maximum with a scalar is not)
        np.clip(magic, np.uint32((127 - 14) << 23), np.uint32(0x7F800000), out=magic)
        np.add(magic, np.uint32(13 << 23), out=magic)
        np.bitwise_or(magic, sign, out=magic)
        np.add(values, magic.view(F32), out=values)
        np.subtract(values, magic.view(F32), out=values)
        np.bitwise_or(bits, sign, out=bits)  # -x that rounds to zero stays -0.0


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

    @property
    def keeps_momentum(self) -> bool:
        """False when the momentum buffer cannot matter (momentum 0): it is then not stored."""
        return self.momentum > 0


@dataclass(frozen=True)
class OuterStats:
    """What one outer step did: its norms (float64 sums of float32 chunk dots) and time."""

    contributors: int
    pseudo_gradient_norm: float
    update_norm: float
    seconds: float


class _Kernel:
    """Chunk buffers for one step; :meth:`step` is the whole outer step on one chunk."""

    def __init__(
        self,
        optimizer: OuterSGD,
        aggregator: str | Aggregator,
        codec: str,
        contributors: int,
        chunk: int,
    ) -> None:
        if codec not in CODECS:
            raise OuterError(f"codec: expected one of {', '.join(CODECS)}, got {codec!r}")
        if contributors < 1:
            raise OuterError("outer step: needs at least one contributor")
        self.name, self.aggregate = resolve_aggregator(aggregator)
        self.fast_mean = self.aggregate is mean
        self.optimizer, self.codec, self.k = optimizer, codec, contributors
        self.lr = np.float32(optimizer.lr)
        self.m = np.float32(optimizer.momentum)
        self.acc, self.tmp, self.vnew = (np.empty(chunk, dtype=F32) for _ in range(3))
        self.fp16 = _Fp16(chunk) if codec == "fp16" else None
        self.rows = None if self.fast_mean else np.empty(contributors * chunk, dtype=F32)
        self.gradient_sq = 0.0
        self.update_sq = 0.0

    def step(
        self,
        base: np.ndarray,
        local: Callable[[int, np.ndarray | None], np.ndarray],
        velocity: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(new_base, new_velocity)`` chunks (views of internal buffers, valid until the
        next call) for a ``base`` chunk; ``local(i, row)`` gives contributor ``i``'s chunk,
        filling ``row`` when one is given."""
        n, k = base.shape[0], self.k
        g, t = self.acc[:n], self.tmp[:n]
        encode = self.fp16.encode if self.fp16 is not None else None
        if self.fast_mean:
            for i in range(k):
                target = g if i == 0 else t
                np.subtract(base, local(i, None), out=target)
                if encode is not None:
                    encode(target)
                if i:
                    np.add(g, t, out=g)
            np.divide(g, np.float32(k), out=g)
        else:
            assert self.rows is not None
            rows = self.rows[: k * n].reshape(k, n)
            for i in range(k):
                np.subtract(base, local(i, rows[i]), out=rows[i])
                if encode is not None:
                    encode(rows[i])
            self.aggregate(rows, g)
        gradient_sq = float(np.dot(g, g))
        if not np.isfinite(gradient_sq):
            self._find_non_finite(base, local, velocity)
        self.gradient_sq += gradient_sq
        v = self.vnew[:n]
        if velocity is None or not self.optimizer.keeps_momentum:
            np.copyto(v, g)
        else:
            np.multiply(velocity, self.m, out=v)
            np.add(v, g, out=v)
        if self.optimizer.nesterov and self.optimizer.keeps_momentum:
            np.multiply(v, self.m, out=t)
            np.add(t, g, out=t)
            np.multiply(t, self.lr, out=t)
        else:
            np.multiply(v, self.lr, out=t)
        self.update_sq += float(np.dot(t, t))
        np.subtract(base, t, out=t)
        return t, v

    def _find_non_finite(self, base, local, velocity) -> None:
        if not np.all(np.isfinite(base)):
            raise OuterError("the base pack holds NaN or infinite values")
        if velocity is not None and not np.all(np.isfinite(velocity)):
            raise OuterError("the outer momentum pack holds NaN or infinite values")
        scratch = np.empty(base.shape[0], dtype=F32)
        for i in range(self.k):
            if not np.all(np.isfinite(local(i, scratch))):
                raise OuterError(
                    f"contributor {i}'s pack holds NaN or infinite values "
                    "(its inner loop diverged?)",
                    source=i,
                )
        raise OuterError(
            f"the {self.name} aggregate of finite pseudo-gradients is not finite "
            "(float32 overflow, or the aggregator returned NaN)"
        )


def outer_step_arrays(
    base: np.ndarray,
    locals_: Sequence[np.ndarray],
    velocity: np.ndarray | None,
    optimizer: OuterSGD,
    aggregator: str | Aggregator = "mean",
    codec: str = "fp32",
    *,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """The outer step on in-memory flat float32 arrays: ``(new_base, new_velocity)``.

    ``velocity=None`` means zeros (the first step).  Raises :class:`OuterError`
    for mismatched lengths, no contributors, unknown names or non-finite input.
    """
    base = _vector("base", base)
    n = base.shape[0]
    locals_ = [_vector(f"local[{i}]", v, n) for i, v in enumerate(locals_)]
    if velocity is not None:
        velocity = _vector("outer momentum", velocity, n)
    kernel = _Kernel(optimizer, aggregator, codec, len(locals_), min(chunk, max(n, 1)))
    new_base, new_velocity = np.empty(n, dtype=F32), np.empty(n, dtype=F32)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)

        def local(i: int, row: np.ndarray | None, a: int = a, b: int = b) -> np.ndarray:
            return locals_[i][a:b]

        nb, nv = kernel.step(base[a:b], local, None if velocity is None else velocity[a:b])
        new_base[a:b], new_velocity[a:b] = nb, nv
    return new_base, new_velocity


def outer_step_packs(
    base: str | os.PathLike,
    locals_: Sequence[str | os.PathLike],
    velocity: str | os.PathLike | None,
    new_base: str | os.PathLike,
    new_velocity: str | os.PathLike | None,
    optimizer: OuterSGD,
    aggregator: str | Aggregator = "mean",
    codec: str = "fp32",
    *,
    chunk: int = DEFAULT_CHUNK,
) -> OuterStats:
    """Stream the outer step from packs on disk to new packs at ``new_base`` / ``new_velocity``.

    Every pack must have the base's parameter count (the caller checks layouts).
    ``velocity=None`` means zeros; ``new_velocity=None`` (or momentum 0) writes
    no momentum pack.  The new packs are published atomically, and only when
    the whole step succeeded.  Raises :class:`OuterError` for bad input (with
    ``source`` set when one contributor's pack is to blame) and
    :class:`~fakecoord.errors.PackError` for unreadable or unwritable packs.
    """
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        base_reader = stack.enter_context(PackReader(base))
        manifest = base_reader.manifest
        n = manifest.parameter_count
        readers = [stack.enter_context(PackReader(p)) for p in locals_]
        for i, reader in enumerate(readers):
            if reader.parameter_count != n:
                raise OuterError(
                    f"contributor {i}'s pack holds {reader.parameter_count} values, the base {n}",
                    source=i,
                )
        momentum = stack.enter_context(PackReader(velocity)) if velocity is not None else None
        if momentum is not None and momentum.parameter_count != n:
            raise OuterError(
                f"the outer momentum pack holds {momentum.parameter_count} values, not {n}"
            )
        size = max(1, min(chunk, n))
        kernel = _Kernel(optimizer, aggregator, codec, len(readers), size)
        base_buf, local_buf, vel_buf = (np.empty(size, dtype=F32) for _ in range(3))
        hashes = {
            "layout_hash": manifest.layout_hash,
            "model_schema_hash": manifest.model_schema_hash,
        }
        base_out = stack.enter_context(pack_stream_writer(new_base, n, **hashes))
        vel_out = None
        if new_velocity is not None and optimizer.keeps_momentum:
            vel_out = stack.enter_context(pack_stream_writer(new_velocity, n, **hashes))
        for a in range(0, n, size):
            count = min(size, n - a)
            base_c = base_buf[:count]
            base_reader.read_into(a, base_c)

            def local(i: int, row: np.ndarray | None, a: int = a, count: int = count) -> np.ndarray:
                target = local_buf[:count] if row is None else row
                readers[i].read_into(a, target)
                return target

            vel_c = None
            if momentum is not None:
                vel_c = vel_buf[:count]
                momentum.read_into(a, vel_c)
            nb, nv = kernel.step(base_c, local, vel_c)
            base_out.write(nb)
            if vel_out is not None:
                vel_out.write(nv)
    return OuterStats(
        contributors=len(readers),
        pseudo_gradient_norm=float(np.sqrt(kernel.gradient_sq)),
        update_norm=float(np.sqrt(kernel.update_sq)),
        seconds=time.perf_counter() - started,
    )


def _vector(name: str, values: np.ndarray, size: int | None = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise OuterError(f"{name}: expected a flat vector, got shape {array.shape}")
    if size is not None and array.shape[0] != size:
        raise OuterError(f"{name}: expected {size} values, got {array.shape[0]}")
    return np.ascontiguousarray(array, dtype=F32)


__all__ = [
    "AGGREGATORS",
    "CODECS",
    "DEFAULT_CHUNK",
    "Aggregator",
    "OuterError",
    "OuterSGD",
    "OuterStats",
    "PackError",
    "mean",
    "median",
    "outer_step_arrays",
    "outer_step_packs",
    "resolve_aggregator",
    "transport",
]
