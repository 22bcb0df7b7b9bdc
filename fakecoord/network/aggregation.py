"""The network's aggregations of decoded pseudo-gradients, as one registry (docs/protocol.md §6).

Each :class:`AggregationEntry` is one ``DiLoCoAggregationPolicy`` variant of
upstream ``crates/burn_p2p_core/src/schema/diloco.rs``: serde tag and
fields, validation, CLI shorthand, docs line, and its arithmetic written
from upstream ``crates/burn_p2p/src/diloco/codec.rs``
(``aggregate_pseudo_gradients``).  Adding an aggregation is one entry plus
its tests.

Arithmetic over ``k`` rows in group order (bit for bit the network's):

- ``Mean``: a float32 sum from +0.0 in group order (a column of -0 gives
  +0), then multiplied by ``1.0f32 / k`` (not divided by ``k``);
- ``CoordinateMedian``: sorted by IEEE total order (``f32::total_cmp``:
  -NaN < -inf < ... < -0 < +0 < ... < +inf < +NaN); odd ``k`` the middle
  value, even ``k`` ``(a + b) * 0.5``;
- ``SignMajority``: per coordinate, votes for > 0, < 0 and the rest (0 and
  NaN); zero wins when it ties the largest count; a +/- tie goes to
  ``tie_break``; a non-zero result whose share ``votes as f32 / k as f32``
  is below ``(micros as f32 / 1e6).clamp(0, 1)`` becomes 0.

Every aggregation works on ``rows`` (a ``(k, n)`` float32 array it may
overwrite) into ``out``; ``Mean`` can also accumulate one row at a time
(:attr:`Aggregation.incremental`), so the streamed step keeps one buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import schema
from ..errors import NetworkStepError
from .codecs import F32, u64_to_f32, variant_json

Params = Mapping[str, Any]
TIE_BREAKS = ("Zero", "Positive", "Negative")
"""``SignMajorityTieBreak`` variants, in the Rust order (``Zero`` is the default)."""
TIE_BREAK = schema.Enum("SignMajorityTieBreak", tuple(schema.Variant(t) for t in TIE_BREAKS))


class Aggregation:
    """One aggregation with its parameters."""

    incremental = False
    empty_message = "cannot aggregate zero pseudo-gradients"

    def __init__(self, params: Params) -> None:
        self.params = dict(params)

    def check_count(self, k: int) -> None:
        if k == 0:
            raise NetworkStepError("aggregate", self.empty_message)

    def combine(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The aggregate of ``rows`` (``(k, n)``, float32, may be overwritten) into ``out``."""
        raise NotImplementedError

    # incremental form (when ``incremental``)
    def start(self, out: np.ndarray) -> None:
        raise NotImplementedError

    def add(self, out: np.ndarray, row: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self, out: np.ndarray, k: int) -> None:
        raise NotImplementedError


class Mean(Aggregation):
    incremental = True
    empty_message = "cannot average zero pseudo-gradients"

    def combine(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        self.start(out)
        for row in rows:
            self.add(out, row)
        self.finish(out, rows.shape[0])
        return out

    def start(self, out: np.ndarray) -> None:
        out[:] = 0.0

    def add(self, out: np.ndarray, row: np.ndarray) -> None:
        with np.errstate(over="ignore", invalid="ignore"):
            np.add(out, row, out=out)

    def finish(self, out: np.ndarray, k: int) -> None:
        with np.errstate(over="ignore", invalid="ignore"):
            np.multiply(out, np.float32(1.0) / np.float32(k), out=out)


SORT_NETWORK_ROWS = 16


def total_order_keys(rows: np.ndarray) -> np.ndarray:
    """int32 keys that order float32 values as ``f32::total_cmp`` (an involution on bits)."""
    bits = rows.view(np.int32)
    return bits ^ ((bits >> np.int32(31)) & np.int32(0x7FFFFFFF))


class CoordinateMedian(Aggregation):
    def combine(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        k = rows.shape[0]
        keys = total_order_keys(rows)
        if k <= SORT_NETWORK_ROWS:
            r = list(keys)
            spare = np.empty_like(r[0]) if k > 1 else None
            for sweep in range(k):  # odd-even transposition: k sweeps sort any column
                for i in range(sweep % 2, k - 1, 2):
                    np.minimum(r[i], r[i + 1], out=spare)
                    np.maximum(r[i], r[i + 1], out=r[i + 1])
                    r[i], spare = spare, r[i]
            ordered = r
        else:
            ordered = list(np.sort(keys, axis=0))
        mid = k // 2
        if k % 2:
            out[:] = total_order_keys(ordered[mid]).view(F32)
        else:
            a = total_order_keys(ordered[mid - 1]).view(F32)
            b = total_order_keys(ordered[mid]).view(F32)
            with np.errstate(over="ignore", invalid="ignore"):
                np.add(a, b, out=out)
                np.multiply(out, np.float32(0.5), out=out)
        return out


def minimum_agreement(micros: int) -> np.float32:
    """``DiLoCoAggregationPolicy::minimum_agreement``: ``(micros as f32 / 1e6).clamp(0, 1)``."""
    value = u64_to_f32(micros) / np.float32(1_000_000.0)
    return np.float32(min(max(value, np.float32(0.0)), np.float32(1.0)))


class SignMajority(Aggregation):
    def combine(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        k = rows.shape[0]
        positive = np.count_nonzero(rows > 0, axis=0)
        negative = np.count_nonzero(rows < 0, axis=0)
        zero = k - positive - negative
        top = np.maximum(np.maximum(positive, negative), zero)
        pos_tied = (positive == top) & (positive > 0)
        neg_tied = (negative == top) & (negative > 0)
        zero_tied = (zero == top) & (zero > 0)
        tie = self.params["tie_break"]
        tie_value, tie_votes = {
            "Zero": (0.0, zero),
            "Positive": (1.0, positive),
            "Negative": (-1.0, negative),
        }[tie]
        both = pos_tied & neg_tied & ~zero_tied
        only_pos = pos_tied & ~neg_tied & ~zero_tied
        only_neg = neg_tied & ~pos_tied & ~zero_tied
        candidate = np.zeros(rows.shape[1], dtype=F32)
        votes = zero.copy()
        candidate[both] = tie_value
        votes[both] = tie_votes[both]
        candidate[only_pos] = 1.0
        votes[only_pos] = positive[only_pos]
        candidate[only_neg] = -1.0
        votes[only_neg] = negative[only_neg]
        agreement = votes.astype(F32) / np.float32(k)
        low = (candidate != 0) & (
            agreement < minimum_agreement(self.params["minimum_agreement_micros"])
        )
        candidate[low] = 0.0
        out[:] = candidate
        return out


Check = Callable[[Params], "tuple[str, str] | None"]


def _no_check(params: Params) -> tuple[str, str] | None:
    return None


def _check_agreement(params: Params) -> tuple[str, str] | None:
    micros = params["minimum_agreement_micros"]
    if micros > 1_000_000:
        return (
            "minimum_agreement_micros",
            f"DiLoCo sign-majority minimum_agreement_micros must be <= 1000000, got {micros}",
        )
    return None


@dataclass(frozen=True)
class AggregationEntry:
    """One ``DiLoCoAggregationPolicy`` variant."""

    tag: str
    name: str
    summary: str
    aggregation: type[Aggregation]
    fields: tuple[schema.Field, ...] = ()
    shorthand: Mapping[str, Any] = field(default_factory=dict)
    check: Check = _no_check

    def make(self, params: Params) -> Aggregation:
        return self.aggregation(params)

    def serde_json(self, params: Params) -> Any:
        return variant_json(self.tag, self.fields, params)


AGGREGATIONS: tuple[AggregationEntry, ...] = (
    AggregationEntry(
        "Mean", "mean", "float32 sum from +0 in group order, times 1/k (the default)", Mean
    ),
    AggregationEntry(
        "CoordinateMedian",
        "median",
        "the middle value in IEEE total order (even k: the two middle ones' mean)",
        CoordinateMedian,
    ),
    AggregationEntry(
        "SignMajority",
        "sign-majority",
        "the majority sign (-1, 0 or +1), with a tie-break and a minimum agreement",
        SignMajority,
        (
            schema.Field("minimum_agreement_micros", schema.U64, default=0),
            schema.Field("tie_break", TIE_BREAK, default="Zero"),
        ),
        {"minimum_agreement_micros": 0, "tie_break": "Zero"},
        _check_agreement,
    ),
)

BY_TAG = {e.tag: e for e in AGGREGATIONS}
BY_NAME = {e.name: e for e in AGGREGATIONS}
AGGREGATION_NAMES = tuple(e.name for e in AGGREGATIONS)


__all__ = [
    "AGGREGATIONS",
    "AGGREGATION_NAMES",
    "BY_NAME",
    "BY_TAG",
    "TIE_BREAKS",
    "Aggregation",
    "AggregationEntry",
    "minimum_agreement",
    "total_order_keys",
]
