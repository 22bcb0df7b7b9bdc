"""One group's DiLoCo step, byte for byte the network's (docs/protocol.md §6).

:func:`network_step` runs what the network runs for one group, in its
order: each peer's pseudo-gradient ``base - local`` (upstream
``build_pseudo_gradient``), its encoding and decoding
(``encode_pseudo_gradient``), the aggregation of the decoded values
(``aggregate_pseudo_gradients``) and the default outer update
``base - (lr as f32) * aggregate`` (``apply_aggregated_outer_update``).
It raises where the network fails: :class:`~fakecoord.errors.PolicyError`
for a policy it refuses (validation, LowRank at encoding, an outer
optimizer beyond plain SGD at the outer step) and
:class:`~fakecoord.errors.NetworkStepError` for a step the data makes fail
(a QSGD norm that is not finite, a wrapped block length that does not
decode, no contributors).  :func:`run_step` gives every intermediate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import NetworkStepError, OuterError, PolicyError
from .codecs import F32
from .policy import DiLoCoAggregationPolicy, DiLoCoPolicy, GradientCodec, OuterOptimizerPolicy


@dataclass(frozen=True)
class StepDetail:
    """Everything one step computed (each list in group order)."""

    pseudo_gradients: list[np.ndarray]
    encoded: list[bytes]
    decoded: list[np.ndarray]
    aggregate: np.ndarray
    new_base: np.ndarray

    @property
    def encoded_sizes(self) -> list[int]:
        """Bytes each peer puts on the wire (``total_encoded_bytes``)."""
        return [len(e) for e in self.encoded]

    @property
    def encoded_sha256(self) -> list[str]:
        return [hashlib.sha256(e).hexdigest() for e in self.encoded]


def _vector(name: str, values: Any, n: int | None = None) -> np.ndarray:
    """A 1-D float32 array (refused otherwise: :class:`OuterError`); a length other than the
    base's is the network's incompatible-packs error."""
    array = np.asarray(values)
    if array.ndim != 1 or array.dtype.kind != "f" or array.dtype.itemsize != 4:
        raise OuterError(
            f"{name}: expected a 1-D float32 array, got {array.dtype} of shape {array.shape}"
        )
    if n is not None and array.shape[0] != n:
        raise NetworkStepError(
            "pseudo_gradient",
            f"DiLoCo pseudo-gradient packs are incompatible: base count={n}, "
            f"{name} count={array.shape[0]}",
        )
    return np.ascontiguousarray(array, dtype=F32)


def outer_update(
    base: np.ndarray, aggregate: np.ndarray, outer: OuterOptimizerPolicy, path: str = "policy"
) -> np.ndarray:
    """The default ``apply_aggregated_outer_update``: ``base - (lr as f32) * aggregate``;
    raises :class:`PolicyError` (stage ``outer``) beyond plain SGD, as the network does."""
    if not outer.plain_sgd:
        raise PolicyError(f"{path}.outer_optimizer_policy", outer.refusal_reason(), "outer")
    with np.errstate(over="ignore", invalid="ignore"):
        return base - outer.learning_rate_f32() * aggregate


def run_step(
    base: Any,
    locals_: Sequence[Any],
    codec: GradientCodec,
    aggregation: DiLoCoAggregationPolicy,
    outer: OuterOptimizerPolicy,
) -> StepDetail:
    """The stages without the policy's deploy-time validation (what the network's code does
    with whatever policy it is given); raises :class:`NetworkStepError` / :class:`PolicyError`
    with ``stage`` set."""
    base = _vector("base", base)
    n = base.shape[0]
    locals_ = [_vector(f"locals_[{i}]", v, n) for i, v in enumerate(locals_)]
    with np.errstate(over="ignore", invalid="ignore"):
        gradients = [base - local for local in locals_]
    if codec.entry.refusal is not None:
        if gradients:
            raise PolicyError("policy.codec", codec.entry.refusal, "encode")
    impl = codec.make()
    encoded: list[bytes] = []
    decoded: list[np.ndarray] = []
    for i, g in enumerate(gradients):  # per peer: encode, then decode (encode_pseudo_gradient)
        try:
            data = impl.encode(g)
            encoded.append(data)
            decoded.append(impl.decode(data, n))
        except NetworkStepError as exc:
            raise NetworkStepError(exc.stage, exc.reason, i) from None
    agg = aggregation.make()
    agg.check_count(len(decoded))
    rows = np.stack(decoded) if decoded else np.empty((0, n), dtype=F32)
    aggregate = agg.combine(rows, np.empty(n, dtype=F32))
    new_base = outer_update(base, aggregate, outer)
    return StepDetail(gradients, encoded, decoded, aggregate, new_base)


def network_step_detail(base: Any, locals_: Sequence[Any], policy: Any) -> StepDetail:
    """:func:`network_step` with every intermediate (pseudo-gradients, encoded bytes, decoded
    values); ``policy`` is validated first (``DiLoCoPolicy::validate``)."""
    p = DiLoCoPolicy.coerce(policy)
    p.validate()
    return run_step(base, locals_, p.codec, p.aggregation_policy, p.outer_optimizer_policy)


def network_step(base: Any, locals_: Sequence[Any], policy: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(new_base, aggregate)``: the network's bytes for one group.

    ``base`` and each of ``locals_`` (in group order) are 1-D float32 arrays
    of one length; ``policy`` a :class:`DiLoCoPolicy`, its serde JSON value
    or JSON text (absent required fields take the network's defaults).
    Raises :class:`PolicyError` where the network refuses the policy and
    :class:`NetworkStepError` where its step fails, with the network's reason
    (:class:`~fakecoord.errors.OuterError` for arrays that are not 1-D float32).
    """
    detail = network_step_detail(base, locals_, policy)
    return detail.new_base, detail.aggregate


def encoded_sizes(policy: Any, n: int, k: int = 1) -> list[int]:
    """The bytes each of ``k`` peers puts on the wire for ``n`` values under ``policy``."""
    p = DiLoCoPolicy.coerce(policy)
    return [p.codec.make().encoded_size(n)] * k


__all__ = [
    "StepDetail",
    "encoded_sizes",
    "network_step",
    "network_step_detail",
    "outer_update",
    "run_step",
]
