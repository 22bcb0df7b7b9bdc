"""DiLoCo's outer step (fakecoord.outer) against hand-computed values, and the fault specs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakecoord.outer import (
    OuterError,
    OuterSGD,
    aggregate,
    outer_round,
    pseudo_gradient,
    transport,
)
from fakecoord.sim_faults import Fault, FaultSpecError, fault_plan, parse_fault


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_pseudo_gradient_is_base_minus_local() -> None:
    np.testing.assert_array_equal(pseudo_gradient(f32(1.0, 2.0), f32(0.5, 3.0)), f32(0.5, -1.0))


def test_mean_and_median_by_hand() -> None:
    grads = [f32(1.0, 10.0, -1.0), f32(2.0, 0.0, -1.0), f32(6.0, 2.0, 5.0)]
    np.testing.assert_allclose(aggregate(grads, "mean"), f32(3.0, 4.0, 1.0))
    np.testing.assert_array_equal(aggregate(grads, "median"), f32(2.0, 2.0, -1.0))


def test_median_of_an_even_count_averages_the_middle_pair() -> None:
    grads = [f32(1.0), f32(2.0), f32(10.0), f32(4.0)]
    np.testing.assert_array_equal(aggregate(grads, "median"), f32(3.0))


def test_median_resists_one_outlier_where_the_mean_does_not() -> None:
    grads = [f32(1.0), f32(1.0), f32(1000.0)]
    assert aggregate(grads, "median")[0] == 1.0
    assert aggregate(grads, "mean")[0] == pytest.approx(334.0)


def test_fp16_codec_rounds_to_half_precision_and_saturates() -> None:
    values = f32(1.0, 0.1, 1e-8, 70000.0, -70000.0)
    decoded = transport(values, "fp16")
    assert decoded.dtype == np.float32
    assert decoded[0] == 1.0
    assert decoded[1] == np.float32(np.float16(0.1)) != np.float32(0.1)
    assert decoded[2] == 0.0  # below half precision's smallest subnormal
    assert decoded[3] == 65504.0 and decoded[4] == -65504.0  # saturated, not inf
    np.testing.assert_array_equal(transport(values, "fp32"), values)


def test_sgd_without_momentum_is_a_plain_step() -> None:
    base, velocity = OuterSGD(lr=0.5, momentum=0.0, nesterov=False).step(f32(1.0), f32(0.2), None)
    assert base[0] == pytest.approx(0.9) and velocity[0] == pytest.approx(0.2)


def test_heavy_ball_momentum_two_steps_by_hand() -> None:
    sgd = OuterSGD(lr=0.7, momentum=0.9, nesterov=False)
    base, v = sgd.step(f32(1.0), f32(0.1), None)
    # v1 = 0.1; base = 1 - 0.7 * 0.1
    assert v[0] == pytest.approx(0.1) and base[0] == pytest.approx(0.93)
    base, v = sgd.step(base, f32(0.2), v)
    # v2 = 0.9 * 0.1 + 0.2 = 0.29; base = 0.93 - 0.7 * 0.29
    assert v[0] == pytest.approx(0.29) and base[0] == pytest.approx(0.727, abs=1e-6)


def test_nesterov_momentum_two_steps_by_hand() -> None:
    sgd = OuterSGD(lr=0.7, momentum=0.9, nesterov=True)
    base, v = sgd.step(f32(1.0), f32(0.1), None)
    # v1 = 0.1; step = 0.9 * 0.1 + 0.1 = 0.19; base = 1 - 0.7 * 0.19
    assert v[0] == pytest.approx(0.1) and base[0] == pytest.approx(0.867)
    base, v = sgd.step(base, f32(0.2), v)
    # v2 = 0.29; step = 0.9 * 0.29 + 0.2 = 0.461; base = 0.867 - 0.7 * 0.461
    assert v[0] == pytest.approx(0.29) and base[0] == pytest.approx(0.5443, abs=1e-6)


def test_outer_round_combines_codec_aggregate_and_step() -> None:
    base = f32(1.0, 1.0)
    locals_ = [f32(0.0, 1.0), f32(0.5, 2.0)]
    new_base, velocity, gradient = outer_round(
        base, locals_, None, OuterSGD(lr=1.0, momentum=0.0, nesterov=False), "mean", "fp32"
    )
    np.testing.assert_allclose(gradient, f32(0.75, -0.5))
    np.testing.assert_allclose(new_base, f32(0.25, 1.5))
    np.testing.assert_allclose(velocity, gradient)


def test_one_peer_with_lr_1_and_no_momentum_lands_on_its_local_model() -> None:
    base, local = f32(0.3, -2.0, 5.0), f32(1.0, 1.0, 1.0)
    new_base, _, _ = outer_round(base, [local], None, OuterSGD(1.0, 0.0, False))
    np.testing.assert_allclose(new_base, local)


@given(
    st.lists(
        st.lists(st.floats(-1e3, 1e3, width=32), min_size=3, max_size=3), min_size=1, max_size=6
    )
)
def test_the_median_lies_within_each_coordinates_range(rows: list[list[float]]) -> None:
    grads = [np.array(r, dtype=np.float32) for r in rows]
    median = aggregate(grads, "median")
    stack = np.stack(grads)
    assert np.all(median >= stack.min(axis=0) - 1e-3) and np.all(median <= stack.max(axis=0) + 1e-3)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: aggregate([], "mean"), "at least one"),
        (lambda: aggregate([f32(1.0)], "trimmed"), "mean, median"),
        (
            lambda: aggregate([f32(1.0), f32(1.0, 2.0)], "mean"),
            r"pseudo_gradient\[1\]: expected 1 values",
        ),
        (lambda: transport(f32(1.0), "int8"), "fp32, fp16"),
        (lambda: pseudo_gradient(f32(1.0), f32(np.nan)), "local: value 0 is nan"),
        (lambda: OuterSGD(lr=0.0), "outer lr"),
        (lambda: OuterSGD(momentum=1.0), "outer momentum"),
        (lambda: OuterSGD().step(f32(1.0), f32(1.0), f32(1.0, 2.0)), "momentum buffer"),
    ],
)
def test_invalid_input_raises_outer_error_naming_it(call, match: str) -> None:
    with pytest.raises(OuterError, match=match):
        call()


def test_fault_specs_parse_and_plan() -> None:
    faults = [parse_fault("crash@1:2"), parse_fault(" hang@0:3 "), parse_fault("error@1:3")]
    assert faults[0] == Fault(round=2, peer=1, kind="crash") and faults[0].spec == "crash@1:2"
    plan = fault_plan(faults, peers=2, rounds=3)
    assert plan == {2: {1: faults[0]}, 3: {0: faults[1], 1: faults[2]}}


@pytest.mark.parametrize(
    ("spec", "peers", "rounds", "match"),
    [
        ("crash", 2, 2, "KIND@PEER:ROUND"),
        ("melt@0:1", 2, 2, "unknown kind 'melt'"),
        ("crash@0:0", 2, 2, "rounds count from 1"),
        ("crash@2:1", 2, 2, "peer 2 does not exist"),
        ("crash@0:3", 2, 2, "after the last round"),
    ],
)
def test_bad_fault_specs_are_refused(spec: str, peers: int, rounds: int, match: str) -> None:
    with pytest.raises(FaultSpecError, match=match):
        fault_plan([parse_fault(spec)], peers, rounds)


def test_two_faults_on_one_peer_in_one_round_are_refused() -> None:
    with pytest.raises(FaultSpecError, match="already has crash@0:1"):
        fault_plan([parse_fault("crash@0:1"), parse_fault("hang@0:1")], 1, 1)
