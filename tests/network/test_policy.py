"""fakecoord.network.policy: DiLoCoPolicy in the network's serde shape, defaults and refusals."""

from __future__ import annotations

import json

import pytest

from fakecoord.errors import CallerError, PolicyError
from fakecoord.network import codecs
from fakecoord.network.aggregation import AGGREGATIONS
from fakecoord.network.policy import (
    DiLoCoAggregationPolicy,
    DiLoCoPolicy,
    GradientCodec,
    OuterOptimizerPolicy,
)

DEFAULT_JSON = {
    "num_inner_steps": 32,
    "target_group_size": 4,
    "minimum_group_size": 1,
    "matchmaking_timeout_ms": 5000,
    "aggregation_timeout_ms": 15000,
    "checkpoint_interval_rounds": 8,
    "codec": "Fp16",
    "aggregation_policy": "Mean",
    "topology_policy": {
        "mode": "DeterministicRendezvous",
        "fanout": 8,
        "prefer_low_latency": True,
        "allow_relay": True,
    },
    "rejoin_policy": {"max_fast_forward_round_lag": 4, "require_checkpoint_hash_match": True},
    "outer_optimizer_policy": {"Sgd": {"learning_rate_micros": 1000000, "nesterov": False}},
    "require_signed_peer_payloads": False,
}


def test_default_is_the_networks_and_serializes_as_serde_does():
    p = DiLoCoPolicy.default()
    assert p.to_json() == DEFAULT_JSON
    assert list(p.to_json()) == list(DEFAULT_JSON)  # the Rust field order
    assert DiLoCoPolicy.from_json(DEFAULT_JSON, strict=True) == p
    p.check()


def test_absent_required_fields_take_the_defaults_unless_strict():
    assert DiLoCoPolicy.from_json({}) == DiLoCoPolicy.default()
    with pytest.raises(PolicyError, match=r"policy\.num_inner_steps: expected an integer"):
        DiLoCoPolicy.from_json({}, strict=True)
    partial = {"rejoin_policy": {}, "outer_optimizer_policy": {"Sgd": {}}}
    assert DiLoCoPolicy.from_json(partial) == DiLoCoPolicy.default()
    strict = dict(DEFAULT_JSON, outer_optimizer_policy={"Sgd": {}})
    with pytest.raises(PolicyError, match="learning_rate_micros"):
        DiLoCoPolicy.from_json(strict, strict=True)


@pytest.mark.parametrize(
    ("codec", "expected"),
    [
        ("Fp32", GradientCodec("Fp32")),
        ({"Fp32": None}, GradientCodec("Fp32")),
        (
            {"BlockwiseInt8": {"block_size": 4}},
            GradientCodec("BlockwiseInt8", (("block_size", 4),)),
        ),
        (
            {"Qsgd": {"bits": 4, "stochastic": True}},
            GradientCodec("Qsgd", (("bits", 4), ("stochastic", True))),
        ),
        (
            {"SignSgd": {"error_feedback": False}},
            GradientCodec("SignSgd", (("error_feedback", False),)),
        ),
        ({"LowRank": {"rank": 2}}, GradientCodec("LowRank", (("rank", 2),))),
    ],
)
def test_codecs_round_trip(codec, expected):
    got = GradientCodec.from_json(codec)
    assert got == expected
    assert GradientCodec.from_json(got.to_json()) == got


@pytest.mark.parametrize(
    ("codec", "path", "fragment"),
    [
        ({"Qsgd": {"bits": 256, "stochastic": True}}, "codec.Qsgd.bits", "0..=255"),
        ({"Qsgd": {"bits": 4}}, "codec.Qsgd.stochastic", "a boolean"),
        ({"BlockwiseInt8": {"block_size": -1}}, "codec.BlockwiseInt8.block_size", "0..=4294967295"),
        ({"BlockwiseInt8": {"block_size": 4.0}}, "codec.BlockwiseInt8.block_size", "got 4.0"),
        ({"LowRank": {"rank": 65536}}, "codec.LowRank.rank", "0..=65535"),
        ("BlockwiseInt8", "codec", "carries a value"),
        ("fp16", "codec", "unknown variant"),
        ({"Fp32": None, "Fp16": None}, "codec", "single key"),
    ],
)
def test_codec_refusals_name_the_path(codec, path, fragment):
    with pytest.raises(PolicyError) as info:
        GradientCodec.from_json(codec)
    assert info.value.field == path
    assert fragment in str(info.value)
    assert isinstance(info.value, CallerError)


def test_sign_majority_fields_default_and_unknown_fields_are_ignored():
    agg = DiLoCoAggregationPolicy.from_json({"SignMajority": {"extra": 1}})
    assert agg.to_json() == {"SignMajority": {"minimum_agreement_micros": 0, "tie_break": "Zero"}}
    with pytest.raises(PolicyError, match="tie_break"):
        DiLoCoAggregationPolicy.from_json({"SignMajority": {"tie_break": "Up"}})
    p = DiLoCoPolicy.from_json({"unknown": [1, 2], "codec": "Fp32"})
    assert p.codec == GradientCodec("Fp32")


def test_text_is_read_as_serde_json_reads_it():
    with pytest.raises(PolicyError, match="duplicate field `codec`"):
        DiLoCoPolicy.from_text('{"codec": "Fp32", "codec": "Fp16"}')
    with pytest.raises(PolicyError, match="standard JSON"):
        DiLoCoPolicy.from_text('{"num_inner_steps": NaN}')
    text = json.dumps({"codec": {"Qsgd": {"bits": 8, "stochastic": False}}})
    assert DiLoCoPolicy.from_text(text).codec["bits"] == 8


@pytest.mark.parametrize(
    ("change", "path", "reason"),
    [
        (
            {"num_inner_steps": 0},
            "policy.num_inner_steps",
            "DiLoCo num_inner_steps must be greater than zero",
        ),
        (
            {"target_group_size": 0},
            "policy.target_group_size",
            "DiLoCo target_group_size must be greater than zero",
        ),
        (
            {"minimum_group_size": 0},
            "policy.minimum_group_size",
            "DiLoCo minimum_group_size must be greater than zero",
        ),
        (
            {"minimum_group_size": 5},
            "policy.minimum_group_size",
            "DiLoCo minimum_group_size (5) cannot exceed target_group_size (4)",
        ),
        (
            {"matchmaking_timeout_ms": 0},
            "policy.matchmaking_timeout_ms",
            "DiLoCo matchmaking_timeout_ms must be greater than zero",
        ),
        (
            {"aggregation_timeout_ms": 0},
            "policy.aggregation_timeout_ms",
            "DiLoCo aggregation_timeout_ms must be greater than zero",
        ),
        (
            {"checkpoint_interval_rounds": 0},
            "policy.checkpoint_interval_rounds",
            "DiLoCo checkpoint_interval_rounds must be greater than zero",
        ),
        (
            {"topology_policy": {"fanout": 0}},
            "policy.topology_policy.fanout",
            "DiLoCo topology_policy.fanout must be greater than zero",
        ),
        (
            {"codec": {"BlockwiseInt8": {"block_size": 0}}},
            "policy.codec.BlockwiseInt8.block_size",
            "DiLoCo blockwise int8 codec block_size must be greater than zero",
        ),
        (
            {"codec": {"Qsgd": {"bits": 0, "stochastic": False}}},
            "policy.codec.Qsgd.bits",
            "DiLoCo QSGD codec bits must be between 1 and 8, got 0",
        ),
        (
            {"codec": {"Qsgd": {"bits": 9, "stochastic": False}}},
            "policy.codec.Qsgd.bits",
            "DiLoCo QSGD codec bits must be between 1 and 8, got 9",
        ),
        (
            {"codec": {"LowRank": {"rank": 0}}},
            "policy.codec.LowRank.rank",
            "DiLoCo low-rank codec rank must be greater than zero",
        ),
        (
            {"aggregation_policy": {"SignMajority": {"minimum_agreement_micros": 1000001}}},
            "policy.aggregation_policy.SignMajority.minimum_agreement_micros",
            "DiLoCo sign-majority minimum_agreement_micros must be <= 1000000, got 1000001",
        ),
        (
            {"outer_optimizer_policy": {"Sgd": {"learning_rate_micros": 0}}},
            "policy.outer_optimizer_policy.Sgd.learning_rate_micros",
            "DiLoCo outer optimizer learning_rate_micros must be greater than zero",
        ),
        (
            {
                "outer_optimizer_policy": {
                    "Sgd": {"learning_rate_micros": 1, "momentum_micros": 1000001}
                }
            },
            "policy.outer_optimizer_policy.Sgd.momentum_micros",
            "DiLoCo outer optimizer momentum_micros must be <= 1000000, got 1000001",
        ),
        (
            {
                "outer_optimizer_policy": {
                    "Sgd": {"learning_rate_micros": 1, "weight_decay_micros": 2000000}
                }
            },
            "policy.outer_optimizer_policy.Sgd.weight_decay_micros",
            "DiLoCo outer optimizer weight_decay_micros must be <= 1000000, got 2000000",
        ),
    ],
)
def test_validate_gives_the_networks_reasons(change, path, reason):
    p = DiLoCoPolicy.from_json(change)
    with pytest.raises(PolicyError) as info:
        p.validate()
    assert (info.value.field, info.value.reason, info.value.stage) == (path, reason, None)


def test_validate_keeps_the_networks_order():
    # num_inner_steps is checked before the codec
    p = DiLoCoPolicy.from_json({"num_inner_steps": 0, "codec": {"LowRank": {"rank": 0}}})
    with pytest.raises(PolicyError, match="num_inner_steps"):
        p.validate()


def test_low_rank_passes_validation_and_is_refused_at_encoding():
    p = DiLoCoPolicy.from_json({"codec": {"LowRank": {"rank": 2}}})
    p.validate()
    refused = p.refusal()
    assert refused is not None and refused.stage == "encode"
    assert refused.reason == (
        "low-rank DiLoCo transport requires tensor-shape layout metadata; "
        "flattened packs cannot preserve rank semantics"
    )
    with pytest.raises(PolicyError):
        p.check(beyond_network=True)


@pytest.mark.parametrize(
    ("sgd", "debug"),
    [
        (
            {"learning_rate_micros": 700000, "momentum_micros": 0},
            "Sgd { learning_rate_micros: 700000, momentum_micros: Some(0), nesterov: false, "
            "weight_decay_micros: None }",
        ),
        (
            {"learning_rate_micros": 1, "nesterov": True},
            "Sgd { learning_rate_micros: 1, momentum_micros: None, nesterov: true, "
            "weight_decay_micros: None }",
        ),
        (
            {"learning_rate_micros": 5, "weight_decay_micros": 0},
            "Sgd { learning_rate_micros: 5, momentum_micros: None, nesterov: false, "
            "weight_decay_micros: Some(0) }",
        ),
    ],
)
def test_outer_beyond_plain_sgd_is_refused_with_the_debug_text(sgd, debug):
    p = DiLoCoPolicy.from_json({"outer_optimizer_policy": {"Sgd": sgd}})
    p.validate()
    refused = p.refusal()
    assert refused is not None and refused.stage == "outer"
    assert refused.field == "policy.outer_optimizer_policy"
    assert refused.reason == (
        f"DiLoCo outer optimizer policy {debug} requires a workload-specific implementation"
    )
    with pytest.raises(PolicyError):
        p.check()
    p.check(beyond_network=True)  # the simulation's own optimizer then


def test_outer_serializes_none_options_out_and_nesterov_always():
    o = OuterOptimizerPolicy(700000, 900000, True, None)
    assert o.to_json() == {
        "Sgd": {"learning_rate_micros": 700000, "momentum_micros": 900000, "nesterov": True}
    }
    assert OuterOptimizerPolicy.from_json(o.to_json()) == o
    assert o.learning_rate_f32() == pytest.approx(0.7)


def test_shorthands_come_from_the_registries():
    for e in codecs.CODECS:
        c = GradientCodec.shorthand(e.name)
        assert c.tag == e.tag and GradientCodec.from_json(c.to_json()) == c
    for a in AGGREGATIONS:
        agg = DiLoCoAggregationPolicy.shorthand(a.name)
        assert DiLoCoAggregationPolicy.from_json(agg.to_json()) == agg
    assert GradientCodec.shorthand("int8", block_size=8).to_json() == {
        "BlockwiseInt8": {"block_size": 8}
    }
