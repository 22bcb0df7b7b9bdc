"""DiLoCo's outer step as the network computes it, streamed over parameter packs in chunks.

The arithmetic is :mod:`fakecoord.network`'s (docs/protocol.md §6, upstream
``codec.rs`` and the default ``apply_aggregated_outer_update``): each
contributor's pseudo-gradient ``base - local`` goes through the policy's
codec (encoded and decoded), the decoded values are aggregated in group order
by the policy's aggregation, and the new base is ``base - (lr as f32) *
aggregate``.  :func:`outer_step_packs` gives the same bytes as
:func:`fakecoord.network.network_step` on the same values
(tests/network/test_outer_streamed.py checks it on the golden vectors with
chunks that split blocks).

Streaming: the base and every contributor's pack are read a chunk at a time
(``pread`` into a few buffers of ``chunk`` values) and the new base is
written sequentially, so the coordinator's memory is ``O((k + c) * chunk)``
whatever the model size (``k`` contributors; ``c`` a few buffers of codec
temporaries).  A chunk is a whole number of BlockwiseInt8 blocks; QSGD first
reads every pack once for its norm (a sequential float32 sum, as the network
computes it).  One case is not streamed: a BlockwiseInt8 block of 65536
values or more, whose length the network writes as a wrapped u16; the
network then decodes the bytes as they are (almost always failing), and so
does this, on the whole pack.

As the network, nothing checks finiteness: a non-finite value (an fp16
overflow, a diverged peer) reaches the new base as the network computes it.
:class:`OuterStats` counts the non-finite values of the new base and names
the contributors whose pseudo-gradients held some, so the caller can stop
(the simulation stops the run: the network would have published that base).
Steps the network itself fails (a QSGD norm that is not finite, an
undecodable block) raise :class:`~fakecoord.errors.NetworkStepError` with
the network's reason and the contributor; a policy it refuses raises
:class:`~fakecoord.errors.PolicyError`.  Norms are float64 sums over the
float32 values (a non-finite norm is reported as it is).

**Beyond the network** (``beyond_network=True`` only): an outer optimizer
with momentum, Nesterov or weight decay (the DiLoCo paper's setting), which
the network refuses for Python workloads, runs as::

    g = aggregate + wd * base
    v = momentum * v + g
    step = momentum * v + g   if nesterov else   v
    base = base - lr * step

in float32 operations, with the momentum buffer ``v`` kept as a pack.  A
custom :data:`Aggregator` (a callable) is also the simulation's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import NetworkStepError, OuterError, PackError, PolicyError
from ..network.codecs import CodecStream
from ..network.policy import DiLoCoPolicy, OuterOptimizerPolicy
from ..packs import F32, PackReader, pack_stream_writer

DEFAULT_CHUNK = 1 << 18
"""Values per chunk: 1 MiB per buffer, small enough to stay in cache, large enough that
numpy's per-call overhead vanishes."""

Aggregator = Callable[[np.ndarray, np.ndarray], None]
"""A custom aggregation (beyond the network): ``aggregator(gradients, out)`` with
``gradients`` a C-contiguous float32 ``(contributors, n)`` array of decoded pseudo-gradient
chunks (may be overwritten); write each column's aggregate into ``out``."""


@dataclass(frozen=True)
class OuterSGD:
    """The outer optimizer.  ``OuterSGD(lr)`` (no momentum, Nesterov or weight decay) is the
    network's plain SGD; anything else runs only with ``beyond_network``."""

    lr: float = 1.0
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.lr) and self.lr >= 0):
            raise OuterError(f"outer lr: expected a finite number >= 0, got {self.lr!r}")
        if not (np.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise OuterError(f"outer momentum: expected a number in [0, 1), got {self.momentum!r}")
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise OuterError(
                f"outer weight decay: expected a number >= 0, got {self.weight_decay!r}"
            )

    @classmethod
    def from_policy(cls, outer: OuterOptimizerPolicy) -> OuterSGD:
        return cls(
            outer.learning_rate(),
            outer.momentum() or 0.0,
            outer.nesterov,
            outer.weight_decay() or 0.0,
        )

    @property
    def plain(self) -> bool:
        """The network's update (``base - (lr as f32) * aggregate``)."""
        return self.momentum == 0 and not self.nesterov and self.weight_decay == 0

    @property
    def keeps_momentum(self) -> bool:
        """False when the momentum buffer cannot matter (momentum 0): it is then not stored."""
        return self.momentum > 0

    def as_policy(self) -> OuterOptimizerPolicy:
        """The ``OuterOptimizerPolicy`` this stands for (rates rounded to millionths)."""
        return OuterOptimizerPolicy(
            round(self.lr * 1e6),
            round(self.momentum * 1e6) if self.momentum else None,
            self.nesterov,
            round(self.weight_decay * 1e6) if self.weight_decay else None,
        )


@dataclass(frozen=True)
class OuterStats:
    """What one outer step did."""

    contributors: int
    pseudo_gradient_norm: float
    """The aggregate's L2 norm (a float64 sum of squares of its float32 values)."""
    update_norm: float
    """The applied update's L2 norm: ``lr`` times the aggregate's (plain SGD), or of
    ``lr * step`` (beyond the network); float64."""
    seconds: float
    encoded_bytes: tuple[int, ...] = ()
    """Bytes each contributor's encoding puts on the wire (``total_encoded_bytes``)."""
    encoded_sha256: tuple[str, ...] = ()
    """The encodings' sha256 (only when asked for: it costs an encoding pass)."""
    non_finite: int = 0
    """Non-finite values in the new base (the network checks none)."""
    non_finite_sources: tuple[int, ...] = ()
    """Contributors whose decoded pseudo-gradients held non-finite values (when ``non_finite``)."""
    non_finite_inputs: tuple[int, ...] = ()
    """Contributors whose pseudo-gradients (``base - local``) already did, before the codec."""

    def figures(self) -> dict[str, Any]:
        """The report's figures: finite floats, or None for a non-finite norm (JSON has no
        NaN/Infinity; ``non_finite`` says why)."""
        return {
            "pseudo_gradient_norm": _finite_or_none(self.pseudo_gradient_norm),
            "update_norm": _finite_or_none(self.update_norm),
            "outer_step_seconds": round(self.seconds, 6),
            "encoded_bytes": list(self.encoded_bytes),
            **({"non_finite_values": self.non_finite} if self.non_finite else {}),
        }


def _finite_or_none(x: float) -> float | None:
    return x if np.isfinite(x) else None


def resolve_optimizer(
    policy: DiLoCoPolicy, optimizer: OuterSGD | None, beyond_network: bool
) -> OuterSGD:
    """The optimizer a step runs; raises the network's :class:`PolicyError` (stage ``outer``)
    for one beyond plain SGD unless ``beyond_network``."""
    if optimizer is None:
        outer = policy.outer_optimizer_policy
        if not outer.plain_sgd and not beyond_network:  # Some(0) counts as set
            raise PolicyError("policy.outer_optimizer_policy", outer.refusal_reason(), "outer")
        return OuterSGD.from_policy(outer)
    if not optimizer.plain and not beyond_network:
        reason = optimizer.as_policy().refusal_reason()
        raise PolicyError("policy.outer_optimizer_policy", reason, "outer")
    return optimizer


class _Kernel:
    """Buffers and codec streams for one step; :meth:`step` computes one chunk."""

    def __init__(
        self,
        policy: DiLoCoPolicy,
        optimizer: OuterSGD,
        aggregator: Aggregator | None,
        contributors: int,
        n: int,
        chunk: int,
    ) -> None:
        self.k, self.n = contributors, n
        self.codec = policy.codec.make()
        self.streams: list[CodecStream] = [self.codec.stream(n) for _ in range(contributors)]
        self.aggregation = policy.aggregation_policy.make()
        self.aggregation.check_count(contributors)
        self.custom = aggregator
        self.incremental = aggregator is None and self.aggregation.incremental
        self.set_optimizer(optimizer)
        s0 = self.streams[0] if self.streams else None
        align = s0.alignment if s0 is not None else 1
        self.streamable = s0 is None or s0.streamable
        self.first_pass = s0 is not None and s0.first_pass
        self.size = max(1, min(n, max(align, chunk // align * align)))
        if not self.streamable:
            self.size = max(1, n)
        self.acc, self.tmp, self.vnew = (np.empty(self.size, dtype=F32) for _ in range(3))
        self.f64 = np.empty(self.size, dtype=np.float64)
        self.rows = None if self.incremental else np.empty(contributors * self.size, dtype=F32)
        self.whole: list[np.ndarray] | None = None
        self.gradient_sq = 0.0
        self.update_sq = 0.0

    def set_optimizer(self, optimizer: OuterSGD) -> None:
        self.optimizer = optimizer
        self.lr = np.float32(optimizer.lr)
        self.m = np.float32(optimizer.momentum)
        self.wd = np.float32(optimizer.weight_decay)

    def _sq(self, values: np.ndarray) -> float:
        """The float64 sum of squares of float32 ``values`` (no BLAS: its threads only
        contend for the cores the workers use)."""
        f = self.f64[: values.shape[0]]
        np.copyto(f, values)
        np.multiply(f, f, out=f)
        return float(f.sum())

    def observe(self, i: int, g: np.ndarray, start: int) -> None:
        self.streams[i].observe(g, start)

    def end_first_pass(self) -> None:
        for i, s in enumerate(self.streams):  # in group order: the first failing peer
            try:
                s.end_first_pass()
            except NetworkStepError as exc:
                raise NetworkStepError(exc.stage, exc.reason, i) from None

    def decode_whole(self, gradients: list[np.ndarray]) -> None:
        """The unstreamable case: the network's encode and decode of whole packs."""
        self.whole = []
        for i, g in enumerate(gradients):
            try:
                self.whole.append(self.codec.decode(self.codec.encode(g), self.n))
            except NetworkStepError as exc:
                raise NetworkStepError(exc.stage, exc.reason, i) from None

    def transported(self, i: int, g: np.ndarray, start: int) -> np.ndarray:
        if self.whole is not None:
            g[:] = self.whole[i][start : start + g.shape[0]]
            return g
        return self.streams[i].transport(g, start)

    def step(
        self,
        base: np.ndarray,
        start: int,
        local: Callable[[int, np.ndarray], np.ndarray],
        velocity: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(new_base, new_velocity)`` chunks (views of internal buffers, valid until the
        next call) for a ``base`` chunk at value ``start``; ``local(i, out)`` fills ``out``
        with contributor ``i``'s chunk."""
        n, k = base.shape[0], self.k
        agg, t = self.acc[:n], self.tmp[:n]
        with np.errstate(over="ignore", invalid="ignore"):
            if self.incremental:
                self.aggregation.start(agg)
                for i in range(k):
                    local(i, t)
                    np.subtract(base, t, out=t)
                    self.aggregation.add(agg, self.transported(i, t, start))
                self.aggregation.finish(agg, k)
            else:
                assert self.rows is not None
                rows = self.rows[: k * n].reshape(k, n)
                for i in range(k):
                    row = rows[i]
                    local(i, row)
                    np.subtract(base, row, out=row)
                    decoded = self.transported(i, row, start)
                    if decoded is not row:
                        row[:] = decoded
                if self.custom is not None:
                    self.custom(rows, agg)
                else:
                    self.aggregation.combine(rows, agg)
            self._last_sq = self._sq(agg)
            self.gradient_sq += self._last_sq
            opt = self.optimizer
            v: np.ndarray | None = None
            if opt.plain:
                np.multiply(agg, self.lr, out=t)
            else:
                g = agg
                if opt.weight_decay:
                    np.multiply(base, self.wd, out=t)
                    np.add(agg, t, out=agg)
                v = self.vnew[:n]
                if velocity is None or not opt.keeps_momentum:
                    np.copyto(v, g)
                else:
                    np.multiply(velocity, self.m, out=v)
                    np.add(v, g, out=v)
                if opt.nesterov and opt.keeps_momentum:
                    np.multiply(v, self.m, out=t)
                    np.add(t, g, out=t)
                    np.multiply(t, self.lr, out=t)
                else:
                    np.multiply(v, self.lr, out=t)
            if opt.plain:  # |lr * a| = lr * |a| (up to each product's rounding): no pass
                self.update_sq += float(self.lr) ** 2 * self._last_sq
            else:
                self.update_sq += self._sq(t)
            np.subtract(base, t, out=t)
        return t, v


def _vector(name: str, values: Any, size: int | None = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise OuterError(f"{name}: expected a flat vector, got shape {array.shape}")
    if size is not None and array.shape[0] != size:
        raise OuterError(f"{name}: expected {size} values, got {array.shape[0]}")
    return np.ascontiguousarray(array, dtype=F32)


def _gradients(
    kernel: _Kernel,
    n: int,
    read_base: Callable[[int, np.ndarray], None],
    read_local: Callable[[int, int, np.ndarray], None],
):
    """``(start, contributor, pseudo-gradient chunk)`` over every chunk (a buffer reused)."""
    size = kernel.size
    base_buf, g = np.empty(size, dtype=F32), np.empty(size, dtype=F32)
    for a in range(0, n, size):
        count = min(size, n - a)
        read_base(a, base_buf[:count])
        for i in range(kernel.k):
            read_local(i, a, g[:count])
            with np.errstate(over="ignore", invalid="ignore"):
                np.subtract(base_buf[:count], g[:count], out=g[:count])
            yield a, i, g[:count]


def _prepare(kernel: _Kernel, n: int, read_base, read_local) -> None:
    """The pass before the step, where the codec needs one: QSGD's norms, or the network's
    whole-pack decoding of a wrapped BlockwiseInt8 length.  Raises NetworkStepError."""
    if not kernel.streamable:
        whole = [np.empty(n, dtype=F32) for _ in range(kernel.k)]
        for a, i, g in _gradients(kernel, n, read_base, read_local):
            whole[i][a : a + g.shape[0]] = g
        kernel.decode_whole(whole)
    elif kernel.first_pass:
        for a, i, g in _gradients(kernel, n, read_base, read_local):
            kernel.observe(i, g, a)
        kernel.end_first_pass()


def _digests(kernel: _Kernel, n: int, read_base, read_local) -> list[str]:
    """The sha256 of every contributor's encoding, computed chunk by chunk."""
    hashes = [hashlib.sha256() for _ in range(kernel.k)]
    if not kernel.streamable:
        whole = [np.empty(n, dtype=F32) for _ in range(kernel.k)]
        for a, i, g in _gradients(kernel, n, read_base, read_local):
            whole[i][a : a + g.shape[0]] = g
        for i, g in enumerate(whole):
            hashes[i].update(kernel.codec.encode(g))
    else:
        for a, i, g in _gradients(kernel, n, read_base, read_local):
            hashes[i].update(kernel.streams[i].encode_chunk(g, a))
    return [h.hexdigest() for h in hashes]


def _main(
    kernel: _Kernel,
    n: int,
    read_base: Callable[[int, np.ndarray], None],
    read_local: Callable[[int, int, np.ndarray], None],
    read_velocity: Callable[[int, np.ndarray], None] | None,
    emit: Callable[[np.ndarray, np.ndarray | None], None],
) -> int:
    """The step over every chunk; returns the count of non-finite values in the new base."""
    size = kernel.size
    base_buf, vel_buf = np.empty(size, dtype=F32), np.empty(size, dtype=F32)
    non_finite = 0
    for a in range(0, n, size):
        count = min(size, n - a)
        b = base_buf[:count]
        read_base(a, b)
        v = None
        if read_velocity is not None:
            v = vel_buf[:count]
            read_velocity(a, v)

        def local(i: int, out: np.ndarray, a: int = a) -> np.ndarray:
            read_local(i, a, out)
            return out

        nb, nv = kernel.step(b, a, local, v)
        if count and not (np.isfinite(nb.min()) and np.isfinite(nb.max())):
            non_finite += int(np.count_nonzero(~np.isfinite(nb)))
        emit(nb, nv)
    return non_finite


def _non_finite_sources(
    kernel: _Kernel, n: int, read_base, read_local
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Contributors whose pseudo-gradients hold a non-finite value: ``(after the codec,
    before it)`` (a diagnostic pass)."""
    decoded_bad: set[int] = set()
    input_bad: set[int] = set()
    for a, i, g in _gradients(kernel, n, read_base, read_local):
        if not np.all(np.isfinite(g)):
            input_bad.add(i)
        if i not in decoded_bad:
            with np.errstate(over="ignore", invalid="ignore"):
                decoded = kernel.transported(i, g, a)
            if not np.all(np.isfinite(decoded)):
                decoded_bad.add(i)
    return tuple(sorted(decoded_bad)), tuple(sorted(input_bad))


def outer_step_arrays(
    base: Any,
    locals_: Sequence[Any],
    policy: DiLoCoPolicy | Any = None,
    *,
    velocity: Any = None,
    optimizer: OuterSGD | None = None,
    beyond_network: bool = False,
    aggregator: Aggregator | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The streamed kernel on in-memory flat float32 arrays: ``(new_base, new_velocity)``
    (``new_velocity`` None without momentum).  ``policy`` None is the network's default.

    Raises :class:`OuterError` for mismatched shapes, :class:`PolicyError` /
    :class:`NetworkStepError` where the network refuses or fails.
    """
    p = DiLoCoPolicy.default() if policy is None else DiLoCoPolicy.coerce(policy)
    base = _vector("base", base)
    n = base.shape[0]
    locals_ = [_vector(f"local[{i}]", v, n) for i, v in enumerate(locals_)]
    vel = _vector("outer momentum", velocity, n) if velocity is not None else None
    try:
        kernel = _Kernel(p, OuterSGD(), aggregator, len(locals_), n, chunk)
    except NetworkStepError as exc:
        raise NetworkStepError(exc.stage, exc.reason, 0) from None

    def read_base(a: int, out: np.ndarray) -> None:
        np.copyto(out, base[a : a + out.shape[0]])

    def read_local(i: int, a: int, out: np.ndarray) -> None:
        np.copyto(out, locals_[i][a : a + out.shape[0]])

    _prepare(kernel, n, read_base, read_local)
    opt = resolve_optimizer(p, optimizer, beyond_network)
    kernel.set_optimizer(opt)
    new_base = np.empty(n, dtype=F32)
    new_velocity = np.empty(n, dtype=F32) if opt.keeps_momentum else None
    at = [0]

    def emit(nb: np.ndarray, nv: np.ndarray | None) -> None:
        a = at[0]
        new_base[a : a + nb.shape[0]] = nb
        if new_velocity is not None and nv is not None:
            new_velocity[a : a + nb.shape[0]] = nv
        at[0] += nb.shape[0]

    read_velocity = None
    if vel is not None and opt.keeps_momentum:
        v0 = vel

        def read_velocity(a: int, out: np.ndarray) -> None:
            np.copyto(out, v0[a : a + out.shape[0]])

    _main(kernel, n, read_base, read_local, read_velocity, emit)
    return new_base, new_velocity


def outer_step_packs(
    base: str | os.PathLike,
    locals_: Sequence[str | os.PathLike],
    new_base: str | os.PathLike,
    policy: DiLoCoPolicy | Any = None,
    *,
    velocity: str | os.PathLike | None = None,
    new_velocity: str | os.PathLike | None = None,
    optimizer: OuterSGD | None = None,
    beyond_network: bool = False,
    aggregator: Aggregator | None = None,
    chunk: int = DEFAULT_CHUNK,
    digests: bool = False,
) -> OuterStats:
    """Stream the outer step from packs on disk (locals in group order) to a new base pack.

    Every pack must have the base's parameter count (the caller checks
    layouts).  ``velocity`` / ``new_velocity``: the momentum packs (beyond the
    network only; None means zeros / not kept).  The new packs are published
    atomically, and only when the whole step succeeded.  ``digests``: also
    hash every contributor's encoding (an extra pass).  Raises
    :class:`OuterError` (mismatched packs, ``source`` naming the contributor),
    :class:`PolicyError`, :class:`NetworkStepError` (``peer`` naming the
    contributor) and :class:`~fakecoord.errors.PackError`.
    """
    started = time.perf_counter()
    p = DiLoCoPolicy.default() if policy is None else DiLoCoPolicy.coerce(policy)
    with contextlib.ExitStack() as stack:
        base_reader = stack.enter_context(PackReader(base))
        manifest = base_reader.manifest
        n = manifest.parameter_count
        readers = [stack.enter_context(PackReader(q)) for q in locals_]
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
        try:
            kernel = _Kernel(p, OuterSGD(), aggregator, len(readers), n, chunk)
        except NetworkStepError as exc:
            raise NetworkStepError(exc.stage, exc.reason, 0) from None
        hashes = {
            "layout_hash": manifest.layout_hash,
            "model_schema_hash": manifest.model_schema_hash,
        }

        def read_local(i: int, a: int, out: np.ndarray) -> None:
            readers[i].read_into(a, out)

        def read_base(a: int, out: np.ndarray) -> None:
            base_reader.read_into(a, out)

        # the network's order: encoding failures first, then the outer update's refusal
        _prepare(kernel, n, read_base, read_local)
        opt = resolve_optimizer(p, optimizer, beyond_network)
        kernel.set_optimizer(opt)
        sha = _digests(kernel, n, read_base, read_local) if digests else []
        base_out = stack.enter_context(pack_stream_writer(new_base, n, **hashes))
        vel_out = None
        if new_velocity is not None and opt.keeps_momentum:
            vel_out = stack.enter_context(pack_stream_writer(new_velocity, n, **hashes))

        def emit(nb: np.ndarray, nv: np.ndarray | None) -> None:
            base_out.write(nb)
            if vel_out is not None and nv is not None:
                vel_out.write(nv)

        read_velocity = None
        if momentum is not None and opt.keeps_momentum:
            mom = momentum

            def read_velocity(a: int, out: np.ndarray) -> None:
                mom.read_into(a, out)

        non_finite = _main(kernel, n, read_base, read_local, read_velocity, emit)
        sources, inputs = (
            _non_finite_sources(kernel, n, read_base, read_local) if non_finite else ((), ())
        )
    return OuterStats(
        contributors=len(readers),
        pseudo_gradient_norm=float(np.sqrt(kernel.gradient_sq)),
        update_norm=float(np.sqrt(kernel.update_sq)),
        seconds=time.perf_counter() - started,
        encoded_bytes=tuple(kernel.codec.encoded_size(n) for _ in readers),
        encoded_sha256=tuple(sha),
        non_finite=non_finite,
        non_finite_sources=sources,
        non_finite_inputs=inputs,
    )


__all__ = [
    "DEFAULT_CHUNK",
    "Aggregator",
    "OuterError",
    "OuterSGD",
    "OuterStats",
    "PackError",
    "outer_step_arrays",
    "outer_step_packs",
    "resolve_optimizer",
]
