"""The network's ``DiLoCoPolicy``, in its serde JSON shape (docs/protocol.md §6).

Written from upstream ``crates/burn_p2p_core/src/schema/diloco.rs``: the
policy an experiment revision carries, its parts (``GradientCodec``,
``DiLoCoAggregationPolicy`` with ``SignMajorityTieBreak``,
``OuterOptimizerPolicy``, ``DiLoCoTopologyPolicy``, ``DiLoCoRejoinPolicy``),
their defaults (``Default`` impls and ``#[serde(default)]`` fields) and
``DiLoCoPolicy::validate`` with the network's error texts.

Parsing (:meth:`DiLoCoPolicy.from_json`, :meth:`DiLoCoPolicy.from_text`)
goes through :mod:`fakecoord.schema`, so it reads JSON as serde does:
externally tagged enums (``"Fp16"``, ``{"BlockwiseInt8": {"block_size":
4}}``), integers range-checked as u8/u16/u32/u64 and never taken from
floats, unknown fields ignored (no struct here denies them), a duplicated
field refused (when read from text).  One convenience beyond serde, on by
default (``strict=False``): a field serde *requires* (``num_inner_steps``,
``target_group_size``, ``minimum_group_size``, the two timeouts,
``checkpoint_interval_rounds``, the rejoin policy's two fields and the SGD
``learning_rate_micros``) may be left out and takes the network's default.
What :meth:`DiLoCoPolicy.to_json` writes is always complete, as serde
serializes it (``None`` options left out), so it is what a revision would
carry.

Checks: :meth:`DiLoCoPolicy.validate` is ``DiLoCoPolicy::validate``
(deploy-time); :meth:`DiLoCoPolicy.refusal` is what a Python workload then
meets every round (the LowRank codec fails to encode; an outer optimizer
beyond plain SGD fails in the default ``apply_aggregated_outer_update``).
Both raise :class:`~fakecoord.errors.PolicyError` naming the field path.
The codec and aggregation variants come from the registries in
:mod:`.codecs` and :mod:`.aggregation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .. import schema, wire
from ..errors import DecodeError, PolicyError
from . import aggregation as aggregations
from . import codecs
from .codecs import U16, U32

U64 = schema.U64
TOPOLOGY_MODES = ("DeterministicRendezvous", "GossipNeighborhood", "RelayAssisted")
MICROS = 1_000_000


# ---------------------------------------------------------------------------
# Parts


def _params(entry: Any, value: Any) -> tuple[tuple[str, Any], ...]:
    if isinstance(value, str):
        return ()
    ((_, body),) = value.items()
    return tuple((f.name, body[f.name]) for f in entry.fields)


@dataclass(frozen=True)
class GradientCodec:
    """``GradientCodec``: a variant of :data:`~fakecoord.network.codecs.CODECS` and its fields."""

    tag: str = "Fp16"
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def entry(self) -> codecs.CodecEntry:
        return codecs.BY_TAG[self.tag]

    def __getitem__(self, name: str) -> Any:
        return dict(self.params)[name]

    def make(self) -> codecs.Codec:
        """The codec's arithmetic (:class:`~fakecoord.network.codecs.Codec`)."""
        return self.entry.make(dict(self.params))

    def to_json(self) -> Any:
        return self.entry.serde_json(dict(self.params))

    @classmethod
    def from_json(cls, value: Any, path: str = "codec") -> GradientCodec:
        decoded = _decode(CODEC_TYPE, value, path)
        tag = decoded if isinstance(decoded, str) else next(iter(decoded))
        return cls(tag, _params(codecs.BY_TAG[tag], decoded))

    @classmethod
    def shorthand(cls, name: str, **overrides: Any) -> GradientCodec:
        """The codec ``--codec NAME`` stands for (its registry shorthand, with overrides)."""
        entry = codecs.BY_NAME[name]
        params = {**entry.shorthand, **overrides}
        return cls(entry.tag, tuple((f.name, params[f.name]) for f in entry.fields))

    def describe(self) -> str:
        """``BlockwiseInt8(block_size=4)``, ``Fp16``."""
        if not self.params:
            return self.tag
        return f"{self.tag}(" + ", ".join(f"{k}={_text(v)}" for k, v in self.params) + ")"

    def check(self, path: str = "policy.codec") -> None:
        found = self.entry.check(dict(self.params))
        if found is not None:
            raise PolicyError(wire.join(wire.join(path, self.tag), found[0]), found[1])


@dataclass(frozen=True)
class DiLoCoAggregationPolicy:
    """``DiLoCoAggregationPolicy``: a variant of :data:`~fakecoord.network.aggregation.AGGREGATIONS`."""

    tag: str = "Mean"
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def entry(self) -> aggregations.AggregationEntry:
        return aggregations.BY_TAG[self.tag]

    def __getitem__(self, name: str) -> Any:
        return dict(self.params)[name]

    def make(self) -> aggregations.Aggregation:
        return self.entry.make(dict(self.params))

    def to_json(self) -> Any:
        return self.entry.serde_json(dict(self.params))

    @classmethod
    def from_json(cls, value: Any, path: str = "aggregation_policy") -> DiLoCoAggregationPolicy:
        decoded = _decode(AGGREGATION_TYPE, value, path)
        tag = decoded if isinstance(decoded, str) else next(iter(decoded))
        return cls(tag, _params(aggregations.BY_TAG[tag], decoded))

    @classmethod
    def shorthand(cls, name: str, **overrides: Any) -> DiLoCoAggregationPolicy:
        entry = aggregations.BY_NAME[name]
        params = {**entry.shorthand, **overrides}
        return cls(entry.tag, tuple((f.name, params[f.name]) for f in entry.fields))

    def minimum_agreement(self) -> np.float32:
        """``minimum_agreement()``: the clamped fraction (0 for Mean and CoordinateMedian)."""
        if self.tag != "SignMajority":
            return np.float32(0.0)
        return aggregations.minimum_agreement(self["minimum_agreement_micros"])

    def describe(self) -> str:
        if not self.params:
            return self.tag
        return f"{self.tag}(" + ", ".join(f"{k}={_text(v)}" for k, v in self.params) + ")"

    def check(self, path: str = "policy.aggregation_policy") -> None:
        found = self.entry.check(dict(self.params))
        if found is not None:
            raise PolicyError(wire.join(wire.join(path, self.tag), found[0]), found[1])


@dataclass(frozen=True)
class OuterOptimizerPolicy:
    """``OuterOptimizerPolicy::Sgd`` (the only variant): rates in millionths."""

    learning_rate_micros: int = MICROS
    momentum_micros: int | None = None
    nesterov: bool = False
    weight_decay_micros: int | None = None

    def learning_rate(self) -> float:
        """``learning_rate()``: ``micros as f64 / 1e6``."""
        return float(self.learning_rate_micros) / 1_000_000.0

    def learning_rate_f32(self) -> np.float32:
        """``learning_rate() as f32``: what the outer update multiplies by."""
        return np.float32(self.learning_rate())

    def momentum(self) -> float | None:
        m = self.momentum_micros
        return None if m is None else float(m) / 1_000_000.0

    def weight_decay(self) -> float | None:
        w = self.weight_decay_micros
        return None if w is None else float(w) / 1_000_000.0

    @property
    def plain_sgd(self) -> bool:
        """What the network runs for a Python workload: no momentum, Nesterov or weight decay
        (a ``Some(0)`` counts as set)."""
        return (
            self.momentum_micros is None and not self.nesterov and self.weight_decay_micros is None
        )

    def to_json(self) -> Any:
        body: dict[str, Any] = {"learning_rate_micros": self.learning_rate_micros}
        if self.momentum_micros is not None:
            body["momentum_micros"] = self.momentum_micros
        body["nesterov"] = self.nesterov
        if self.weight_decay_micros is not None:
            body["weight_decay_micros"] = self.weight_decay_micros
        return {"Sgd": body}

    @classmethod
    def from_json(
        cls, value: Any, path: str = "outer_optimizer_policy", *, strict: bool = False
    ) -> OuterOptimizerPolicy:
        decoded = _decode(OUTER_TYPES[strict], value, path)
        body = decoded["Sgd"]
        return cls(
            body["learning_rate_micros"],
            body.get("momentum_micros"),
            body["nesterov"],
            body.get("weight_decay_micros"),
        )

    def debug(self) -> str:
        """Rust's ``{:?}`` of the policy (in the network's refusal text)."""

        def opt(v: int | None) -> str:
            return "None" if v is None else f"Some({v})"

        return (
            f"Sgd {{ learning_rate_micros: {self.learning_rate_micros}, "
            f"momentum_micros: {opt(self.momentum_micros)}, "
            f"nesterov: {'true' if self.nesterov else 'false'}, "
            f"weight_decay_micros: {opt(self.weight_decay_micros)} }}"
        )

    def refusal_reason(self) -> str:
        """The default ``apply_aggregated_outer_update``'s error for this policy."""
        return f"DiLoCo outer optimizer policy {self.debug()} requires a workload-specific implementation"

    def describe(self) -> str:
        text = f"SGD lr {self.learning_rate():g}"
        if self.momentum_micros is not None:
            text += f" momentum {self.momentum():g}"
        if self.nesterov:
            text += " nesterov"
        if self.weight_decay_micros is not None:
            text += f" weight decay {self.weight_decay():g}"
        return text

    def check(self, path: str = "policy.outer_optimizer_policy") -> None:
        where = wire.join(path, "Sgd")
        if self.learning_rate_micros == 0:
            raise PolicyError(
                wire.join(where, "learning_rate_micros"),
                "DiLoCo outer optimizer learning_rate_micros must be greater than zero",
            )
        if self.momentum_micros is not None and self.momentum_micros > MICROS:
            raise PolicyError(
                wire.join(where, "momentum_micros"),
                f"DiLoCo outer optimizer momentum_micros must be <= 1000000, got {self.momentum_micros}",
            )
        if self.weight_decay_micros is not None and self.weight_decay_micros > MICROS:
            raise PolicyError(
                wire.join(where, "weight_decay_micros"),
                "DiLoCo outer optimizer weight_decay_micros must be <= 1000000, "
                f"got {self.weight_decay_micros}",
            )


@dataclass(frozen=True)
class DiLoCoTopologyPolicy:
    """``DiLoCoTopologyPolicy`` (carried, not simulated: one machine has one topology)."""

    mode: str = "DeterministicRendezvous"
    fanout: int = 8
    prefer_low_latency: bool = True
    allow_relay: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "fanout": self.fanout,
            "prefer_low_latency": self.prefer_low_latency,
            "allow_relay": self.allow_relay,
        }


@dataclass(frozen=True)
class DiLoCoRejoinPolicy:
    """``DiLoCoRejoinPolicy`` (carried, not simulated)."""

    max_fast_forward_round_lag: int = 4
    require_checkpoint_hash_match: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "max_fast_forward_round_lag": self.max_fast_forward_round_lag,
            "require_checkpoint_hash_match": self.require_checkpoint_hash_match,
        }


@dataclass(frozen=True)
class DiLoCoPolicy:
    """``DiLoCoPolicy``; :meth:`default` is the network's ``Default``."""

    num_inner_steps: int = 32
    target_group_size: int = 4
    minimum_group_size: int = 1
    matchmaking_timeout_ms: int = 5_000
    aggregation_timeout_ms: int = 15_000
    checkpoint_interval_rounds: int = 8
    codec: GradientCodec = field(default_factory=GradientCodec)
    aggregation_policy: DiLoCoAggregationPolicy = field(default_factory=DiLoCoAggregationPolicy)
    topology_policy: DiLoCoTopologyPolicy = field(default_factory=DiLoCoTopologyPolicy)
    rejoin_policy: DiLoCoRejoinPolicy = field(default_factory=DiLoCoRejoinPolicy)
    outer_optimizer_policy: OuterOptimizerPolicy = field(default_factory=OuterOptimizerPolicy)
    require_signed_peer_payloads: bool = False

    @classmethod
    def default(cls) -> DiLoCoPolicy:
        return cls()

    def replace(self, **changes: Any) -> DiLoCoPolicy:
        return replace(self, **changes)

    # -- serde ------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The policy as serde serializes it (field order of the Rust struct)."""
        return {
            "num_inner_steps": self.num_inner_steps,
            "target_group_size": self.target_group_size,
            "minimum_group_size": self.minimum_group_size,
            "matchmaking_timeout_ms": self.matchmaking_timeout_ms,
            "aggregation_timeout_ms": self.aggregation_timeout_ms,
            "checkpoint_interval_rounds": self.checkpoint_interval_rounds,
            "codec": self.codec.to_json(),
            "aggregation_policy": self.aggregation_policy.to_json(),
            "topology_policy": self.topology_policy.to_json(),
            "rejoin_policy": self.rejoin_policy.to_json(),
            "outer_optimizer_policy": self.outer_optimizer_policy.to_json(),
            "require_signed_peer_payloads": self.require_signed_peer_payloads,
        }

    @classmethod
    def from_json(cls, value: Any, path: str = "policy", *, strict: bool = False) -> DiLoCoPolicy:
        """A policy from a JSON value (``serde_json::from_value``); raises :class:`PolicyError`.

        ``strict=False`` (fakecoord's convenience): required fields may be left out.
        """
        return cls._build(_decode(POLICY_TYPES[strict], value, path))

    @classmethod
    def from_text(
        cls, text: str | bytes, path: str = "policy", *, strict: bool = False
    ) -> DiLoCoPolicy:
        """A policy from JSON text (``serde_json::from_slice``); raises :class:`PolicyError`."""
        body = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        try:
            decoded = schema.decode_bytes(POLICY_TYPES[strict], body, path)
        except DecodeError as exc:
            raise PolicyError(
                exc.field or path, f"expected {exc.expected}, got {exc.got_text}"
            ) from None
        return cls._build(decoded)  # type: ignore[arg-type]

    @classmethod
    def coerce(cls, value: Any, path: str = "policy") -> DiLoCoPolicy:
        """A :class:`DiLoCoPolicy` as it is, JSON text, or a JSON value."""
        if isinstance(value, DiLoCoPolicy):
            return value
        if isinstance(value, (str, bytes)):
            return cls.from_text(value, path)
        return cls.from_json(value, path)

    @classmethod
    def _build(cls, d: Mapping[str, Any]) -> DiLoCoPolicy:
        codec = d["codec"]
        agg = d["aggregation_policy"]
        codec_tag = codec if isinstance(codec, str) else next(iter(codec))
        agg_tag = agg if isinstance(agg, str) else next(iter(agg))
        outer = d["outer_optimizer_policy"]["Sgd"]
        topo, rejoin = d["topology_policy"], d["rejoin_policy"]
        return cls(
            num_inner_steps=d["num_inner_steps"],
            target_group_size=d["target_group_size"],
            minimum_group_size=d["minimum_group_size"],
            matchmaking_timeout_ms=d["matchmaking_timeout_ms"],
            aggregation_timeout_ms=d["aggregation_timeout_ms"],
            checkpoint_interval_rounds=d["checkpoint_interval_rounds"],
            codec=GradientCodec(codec_tag, _params(codecs.BY_TAG[codec_tag], codec)),
            aggregation_policy=DiLoCoAggregationPolicy(
                agg_tag, _params(aggregations.BY_TAG[agg_tag], agg)
            ),
            topology_policy=DiLoCoTopologyPolicy(
                topo["mode"], topo["fanout"], topo["prefer_low_latency"], topo["allow_relay"]
            ),
            rejoin_policy=DiLoCoRejoinPolicy(
                rejoin["max_fast_forward_round_lag"], rejoin["require_checkpoint_hash_match"]
            ),
            outer_optimizer_policy=OuterOptimizerPolicy(
                outer["learning_rate_micros"],
                outer.get("momentum_micros"),
                outer["nesterov"],
                outer.get("weight_decay_micros"),
            ),
            require_signed_peer_payloads=d["require_signed_peer_payloads"],
        )

    # -- checks -------------------------------------------------------------------

    def validate(self, path: str = "policy") -> None:
        """``DiLoCoPolicy::validate``, in its order; raises :class:`PolicyError`."""

        def at(name: str) -> str:
            return wire.join(path, name)

        zero_checks = (
            ("num_inner_steps", self.num_inner_steps),
            ("target_group_size", self.target_group_size),
            ("minimum_group_size", self.minimum_group_size),
        )
        for name, value in zero_checks:
            if value == 0:
                raise PolicyError(at(name), f"DiLoCo {name} must be greater than zero")
        if self.minimum_group_size > self.target_group_size:
            raise PolicyError(
                at("minimum_group_size"),
                f"DiLoCo minimum_group_size ({self.minimum_group_size}) cannot exceed "
                f"target_group_size ({self.target_group_size})",
            )
        for name, value in (
            ("matchmaking_timeout_ms", self.matchmaking_timeout_ms),
            ("aggregation_timeout_ms", self.aggregation_timeout_ms),
            ("checkpoint_interval_rounds", self.checkpoint_interval_rounds),
        ):
            if value == 0:
                raise PolicyError(at(name), f"DiLoCo {name} must be greater than zero")
        if self.topology_policy.fanout == 0:
            raise PolicyError(
                at("topology_policy.fanout"),
                "DiLoCo topology_policy.fanout must be greater than zero",
            )
        self.codec.check(at("codec"))
        self.aggregation_policy.check(at("aggregation_policy"))
        self.outer_optimizer_policy.check(at("outer_optimizer_policy"))

    def refusal(self, path: str = "policy") -> PolicyError | None:
        """What makes every round fail for a Python workload (None: nothing), in the order
        the network meets it: the codec at encoding, then the outer optimizer."""
        refused = self.codec.entry.refusal
        if refused is not None:
            return PolicyError(wire.join(path, "codec"), refused, "encode")
        if not self.outer_optimizer_policy.plain_sgd:
            return PolicyError(
                wire.join(path, "outer_optimizer_policy"),
                self.outer_optimizer_policy.refusal_reason(),
                "outer",
            )
        return None

    def check(self, path: str = "policy", *, beyond_network: bool = False) -> None:
        """:meth:`validate`, then :meth:`refusal` (only the codec's with ``beyond_network``:
        the outer optimizer is then the simulation's own)."""
        self.validate(path)
        refused = self.refusal(path)
        if refused is not None and not (beyond_network and refused.stage == "outer"):
            raise refused

    def describe(self) -> str:
        """One line: codec, aggregation, outer optimizer, group sizes."""
        return (
            f"{self.codec.describe()}, {self.aggregation_policy.describe()}, "
            f"{self.outer_optimizer_policy.describe()}; {self.num_inner_steps} inner steps, "
            f"groups of {self.target_group_size} (at least {self.minimum_group_size}), "
            f"checkpoint every {self.checkpoint_interval_rounds} rounds"
        )


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---------------------------------------------------------------------------
# The serde types (strict: as serde reads them; lenient: required fields defaulted)


def _decode(t: schema.Type, value: Any, path: str) -> Any:
    try:
        return schema.decode(t, value, path)
    except DecodeError as exc:
        raise PolicyError(
            exc.field or path, f"expected {exc.expected}, got {exc.got_text}"
        ) from None


def _required(name: str, t: schema.Type, default: Any, strict: bool) -> schema.Field:
    return schema.Field(name, t) if strict else schema.Field(name, t, default=default)


def _variants(entries: Any) -> tuple[schema.Variant, ...]:
    return tuple(
        schema.Variant(e.tag, schema.Struct(e.tag, e.fields) if e.fields else None) for e in entries
    )


CODEC_TYPE = schema.Enum("GradientCodec", _variants(codecs.CODECS))
AGGREGATION_TYPE = schema.Enum("DiLoCoAggregationPolicy", _variants(aggregations.AGGREGATIONS))
TOPOLOGY_TYPE = schema.Struct(
    "DiLoCoTopologyPolicy",
    (
        schema.Field(
            "mode",
            schema.Enum("DiLoCoTopologyMode", tuple(schema.Variant(m) for m in TOPOLOGY_MODES)),
            default="DeterministicRendezvous",
        ),
        schema.Field("fanout", U16, default=8),
        schema.Field("prefer_low_latency", schema.BOOL, default=True),
        schema.Field("allow_relay", schema.BOOL, default=True),
    ),
)
_DEFAULT = DiLoCoPolicy()


def _outer_type(strict: bool) -> schema.Enum:
    sgd = schema.Struct(
        "Sgd",
        (
            _required("learning_rate_micros", U64, MICROS, strict),
            schema.Field("momentum_micros", schema.Option(U64), default=None),
            schema.Field("nesterov", schema.BOOL, default=False),
            schema.Field("weight_decay_micros", schema.Option(U64), default=None),
        ),
    )
    return schema.Enum("OuterOptimizerPolicy", (schema.Variant("Sgd", sgd),))


def _policy_type(strict: bool) -> schema.Struct:
    d = _DEFAULT
    rejoin = schema.Struct(
        "DiLoCoRejoinPolicy",
        (
            _required("max_fast_forward_round_lag", U32, 4, strict),
            _required("require_checkpoint_hash_match", schema.BOOL, True, strict),
        ),
    )
    return schema.Struct(
        "DiLoCoPolicy",
        (
            _required("num_inner_steps", U32, d.num_inner_steps, strict),
            _required("target_group_size", U16, d.target_group_size, strict),
            _required("minimum_group_size", U16, d.minimum_group_size, strict),
            _required("matchmaking_timeout_ms", U32, d.matchmaking_timeout_ms, strict),
            _required("aggregation_timeout_ms", U32, d.aggregation_timeout_ms, strict),
            _required("checkpoint_interval_rounds", U32, d.checkpoint_interval_rounds, strict),
            schema.Field("codec", CODEC_TYPE, default=d.codec.to_json()),
            schema.Field(
                "aggregation_policy", AGGREGATION_TYPE, default=d.aggregation_policy.to_json()
            ),
            schema.Field("topology_policy", TOPOLOGY_TYPE, default=d.topology_policy.to_json()),
            schema.Field("rejoin_policy", rejoin, default=d.rejoin_policy.to_json()),
            schema.Field(
                "outer_optimizer_policy",
                _outer_type(strict),
                default=d.outer_optimizer_policy.to_json(),
            ),
            schema.Field("require_signed_peer_payloads", schema.BOOL, default=False),
        ),
    )


OUTER_TYPES = {True: _outer_type(True), False: _outer_type(False)}
POLICY_TYPES = {True: _policy_type(True), False: _policy_type(False)}
POLICY_TYPE = POLICY_TYPES[True]
"""``DiLoCoPolicy`` exactly as serde reads it."""


__all__ = [
    "AGGREGATION_TYPE",
    "CODEC_TYPE",
    "POLICY_TYPE",
    "DiLoCoAggregationPolicy",
    "DiLoCoPolicy",
    "DiLoCoRejoinPolicy",
    "DiLoCoTopologyPolicy",
    "GradientCodec",
    "OuterOptimizerPolicy",
]
