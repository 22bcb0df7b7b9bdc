"""fakecoord.network against the golden vectors made by the upstream Rust code itself
(tests/golden/diloco/: codec.rs and the default outer update, compiled from the upstream
mirror; its README describes the cases).  Every case is checked bit for bit: pseudo-gradients,
encoded lengths and sha256, decoded values, aggregate, new base, or the error's stage and
text; policies upstream's ``DiLoCoPolicy::validate`` refuses are refused up front by
:func:`network_step`, and their arithmetic is checked through :func:`run_step`."""

from __future__ import annotations

import hashlib

import pytest

from fakecoord.errors import NetworkStepError, PolicyError
from fakecoord.network.policy import (
    DiLoCoAggregationPolicy,
    DiLoCoPolicy,
    GradientCodec,
    OuterOptimizerPolicy,
)
from fakecoord.network.step import network_step, run_step

from . import golden

CASES = golden.cases()


def test_the_vectors_cover_the_matrix():
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names)) and len(names) > 2000
    tags = {c["codec"] if isinstance(c["codec"], str) else next(iter(c["codec"])) for c in CASES}
    assert tags == {"Fp32", "Fp16", "BlockwiseInt8", "Qsgd", "SignSgd", "LowRank"}
    aggs = {
        c["aggregation"] if isinstance(c["aggregation"], str) else next(iter(c["aggregation"]))
        for c in CASES
    }
    assert aggs == {"Mean", "CoordinateMedian", "SignMajority"}
    assert {len(c["locals"]) for c in CASES} >= set(range(1, 10))
    stages = {c["error"]["stage"] for c in CASES if c["error"]}
    assert stages == {"encode", "decode", "outer"}


def _parts(case):
    return (
        GradientCodec.from_json(case["codec"]),
        DiLoCoAggregationPolicy.from_json(case["aggregation"]),
        OuterOptimizerPolicy.from_json(case["outer"], strict=True),
    )


def check_case(case) -> None:
    codec, agg, outer = _parts(case)
    base = golden.values(case["base"])
    locals_ = [golden.values(v) for v in case["locals"]]
    error = case["error"]
    if error is not None and error["stage"] != "outer":
        with pytest.raises((NetworkStepError, PolicyError)) as info:
            run_step(base, locals_, codec, agg, outer)
        assert (info.value.stage, info.value.reason) == (error["stage"], error["message"])
        if "encoded" in case:  # a decode error: the encodings are there
            plain = GradientCodec.make(codec)
            for i, (local, want) in enumerate(zip(locals_, case["encoded"], strict=True)):
                data = plain.encode(base - local)
                assert (len(data), hashlib.sha256(data).hexdigest()) == (
                    want["len"],
                    want["sha256"],
                ), f"peer {i} encoding"
        return
    if error is not None:  # the outer update refuses: everything before it is there
        with pytest.raises(PolicyError) as info:
            run_step(base, locals_, codec, agg, outer)
        assert (info.value.stage, info.value.reason) == ("outer", error["message"])
        outer = OuterOptimizerPolicy(outer.learning_rate_micros)
    detail = run_step(base, locals_, codec, agg, outer)
    for what in ("pseudo_gradients", "decoded"):
        for i, (got, want) in enumerate(zip(getattr(detail, what), case[what], strict=True)):
            assert golden.same(got, want), f"{what}[{i}]: {golden.describe_diff(got, want)}"
    got_encoded = [{"len": len(e), "sha256": hashlib.sha256(e).hexdigest()} for e in detail.encoded]
    assert got_encoded == case["encoded"]
    assert golden.same(detail.aggregate, case["aggregate"]), golden.describe_diff(
        detail.aggregate, case["aggregate"]
    )
    if error is None:
        assert golden.same(detail.new_base, case["new_base"]), golden.describe_diff(
            detail.new_base, case["new_base"]
        )


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case(case):
    check_case(case)


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c["name"].endswith("/validate-refuses")],
    ids=lambda c: c["name"],
)
def test_network_step_refuses_what_validate_refuses(case):
    policy = {
        "codec": case["codec"],
        "aggregation_policy": case["aggregation"],
        "outer_optimizer_policy": case["outer"],
    }
    base = golden.values(case["base"])
    with pytest.raises(PolicyError) as info:
        network_step(base, [golden.values(v) for v in case["locals"]], policy)
    assert info.value.stage is None  # refused before any step (DiLoCoPolicy::validate)


def test_network_step_agrees_with_run_step_on_valid_policies():
    # network_step = validate + run_step: spot-check one case of each codec
    seen = set()
    for case in CASES:
        tag = case["codec"] if isinstance(case["codec"], str) else next(iter(case["codec"]))
        if tag in seen or case["error"] or case["name"].endswith("/validate-refuses"):
            continue
        seen.add(tag)
        policy = DiLoCoPolicy.from_json(
            {
                "codec": case["codec"],
                "aggregation_policy": case["aggregation"],
                "outer_optimizer_policy": case["outer"],
            }
        )
        new, agg = network_step(
            golden.values(case["base"]), [golden.values(v) for v in case["locals"]], policy
        )
        assert golden.same(new, case["new_base"]) and golden.same(agg, case["aggregate"])
    assert seen == {"Fp32", "Fp16", "BlockwiseInt8", "Qsgd", "SignSgd"}
