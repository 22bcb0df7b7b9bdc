"""The streamed DiLoCo outer step (fakecoord.sim.outer): hand-computed values, the network's
arithmetic (Fp16 overflows to inf, Mean multiplies by 1/k, the median sorts in IEEE total
order, plain SGD), the beyond-the-network optimizer's numerical contract against float64 over
several steps, packs on disk, and the fault specs.  (The golden vectors made by the upstream
Rust code are checked in tests/network/.)"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakecoord import packs
from fakecoord.errors import FaultSpecError, NetworkStepError, OuterError, PolicyError
from fakecoord.network.aggregation import CoordinateMedian, Mean
from fakecoord.network.codecs import round_to_fp16
from fakecoord.sim.faults import FaultPlan, parse_fault
from fakecoord.sim.outer import OuterSGD, OuterStats, outer_step_arrays, outer_step_packs

from .network import reference as scalar

EPS = 2.0**-24  # float32 unit roundoff
AGGS = {"mean": "Mean", "median": "CoordinateMedian"}
CODECS = {"fp32": "Fp32", "fp16": "Fp16"}


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def policy(agg: str = "mean", codec: str = "fp32", lr_micros: int = 1_000_000) -> dict:
    return {
        "codec": CODECS[codec],
        "aggregation_policy": AGGS[agg],
        "outer_optimizer_policy": {"Sgd": {"learning_rate_micros": lr_micros}},
    }


def step(base, locals_, velocity=None, lr=1.0, momentum=0.0, nesterov=False, agg="mean", codec="fp32"):  # fmt: skip
    opt = OuterSGD(lr, momentum, nesterov)
    return outer_step_arrays(
        base, locals_, policy(agg, codec), velocity=velocity, optimizer=opt,
        beyond_network=not opt.plain,
    )  # fmt: skip


def mean(rows: np.ndarray, out: np.ndarray) -> None:
    Mean({}).combine(rows, out)


def median(rows: np.ndarray, out: np.ndarray) -> None:
    CoordinateMedian({}).combine(rows, out)


# ---------------------------------------------------------------------------
# By hand


def test_lr_1_without_momentum_steps_by_the_mean_pseudo_gradient() -> None:
    base = f32(1.0, 1.0)
    new_base, velocity = step(base, [f32(0.0, 1.0), f32(0.5, 2.0)])
    assert velocity is None  # the network keeps no momentum
    np.testing.assert_array_equal(new_base, f32(0.25, 1.5))  # base - mean(base - local)


def test_the_default_policy_is_the_networks() -> None:
    # Fp16, Mean, SGD lr 1.0: 70000 overflows fp16 to inf and reaches the base
    new_base, velocity = outer_step_arrays(f32(0.0, 1.0), [f32(-70000.0, 0.0)])
    assert velocity is None and new_base[0] == -np.inf and new_base[1] == 0.0


def test_mean_and_median_by_hand() -> None:
    grads = np.stack([f32(1.0, 10.0, -1.0), f32(2.0, 0.0, -1.0), f32(6.0, 2.0, 5.0)])
    out = np.empty(3, dtype=np.float32)
    mean(grads.copy(), out)
    np.testing.assert_allclose(out, f32(3.0, 4.0, 1.0))
    median(grads.copy(), out)
    np.testing.assert_array_equal(out, f32(2.0, 2.0, -1.0))
    median(np.stack([f32(1.0), f32(2.0), f32(10.0), f32(4.0)]), out[:1])
    assert out[0] == 3.0  # an even count: the midpoint of the middle pair


def test_the_mean_multiplies_by_the_rounded_reciprocal() -> None:
    # Changed from the old division by k: the network computes sum * (1.0f32 / k).
    grads = np.stack([f32(0.1), f32(0.4), f32(0.4)])
    out = np.empty(1, dtype=np.float32)
    mean(grads.copy(), out)
    s = np.float32(np.float32(np.float32(0.1) + np.float32(0.4)) + np.float32(0.4))
    assert out[0] == s * (np.float32(1) / np.float32(3)) != s / np.float32(3)


def test_median_resists_one_outlier_where_the_mean_does_not() -> None:
    base = f32(0.0)
    locals_ = [f32(-1.0), f32(-1.0), f32(-1000.0)]
    assert step(base, locals_, agg="median")[0][0] == -1.0
    assert step(base, locals_, agg="mean")[0][0] == pytest.approx(-334.0)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 15, 16, 17, 24])
def test_the_median_matches_numpy_and_orders_nan_as_the_network(rows: int) -> None:
    grads = np.random.default_rng(rows).standard_normal((rows, 999)).astype(np.float32)
    out = np.empty(999, dtype=np.float32)
    median(grads.copy(), out)
    np.testing.assert_allclose(out, np.median(grads, axis=0), rtol=1e-6, atol=1e-7)
    # Changed: NaN no longer simply propagates: f32::total_cmp sorts +NaN after +inf (and
    # -NaN before -inf), so the median is taken in that order (the scalar reference's).
    grads[rows // 2, 7] = np.nan
    median(grads.copy(), out)
    want = scalar.aggregate("CoordinateMedian", [[float(v)] for v in grads[:, 7]])
    assert [out[7]] == want or (np.isnan(out[7]) and np.isnan(want[0]))
    assert not np.isnan(out[7]) or rows <= 2


def test_heavy_ball_and_nesterov_two_steps_by_hand_beyond_the_network() -> None:
    base, v = step(f32(1.0), [f32(0.9)], lr=0.7, momentum=0.9)  # g = 0.1
    assert v[0] == pytest.approx(0.1) and base[0] == pytest.approx(0.93)
    base, v = step(base, [base - f32(0.2)], v, lr=0.7, momentum=0.9)  # v = 0.29
    assert v[0] == pytest.approx(0.29) and base[0] == pytest.approx(0.727, abs=1e-6)
    base, v = step(f32(1.0), [f32(0.9)], lr=0.7, momentum=0.9, nesterov=True)
    assert v[0] == pytest.approx(0.1) and base[0] == pytest.approx(0.867)  # step 0.19
    base, v = step(base, [base - f32(0.2)], v, lr=0.7, momentum=0.9, nesterov=True)
    assert v[0] == pytest.approx(0.29) and base[0] == pytest.approx(0.5443, abs=1e-6)


def test_momentum_without_the_opt_in_is_the_networks_refusal() -> None:
    with pytest.raises(PolicyError, match="requires a workload-specific implementation"):
        outer_step_arrays(f32(1.0), [f32(0.9)], policy(), optimizer=OuterSGD(0.7, 0.9, True))


def fp16_probe_values() -> np.ndarray:
    rng = np.random.default_rng(0)
    scales = (1e-9, 1e-7, 1e-6, 1e-5, 1e-3, 1.0, 100.0, 1e4, 1e5)
    normal = [rng.standard_normal(20_000).astype(np.float32) * s for s in scales]
    bits = rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    halves = rng.integers(0, 2**16, 50_000, dtype=np.uint64).astype(np.uint16).view(np.float16)
    halves = halves[np.isfinite(halves)].astype(np.float32)
    midpoints = (halves[:-1] + halves[1:]) / 2  # exact ties between half-precision values
    edges = f32(0.0, -0.0, 65504, 65519, 65520, -65520, np.inf, -np.inf, 2**-14, 2**-24,
                2**-25, 3 * 2**-25, -3 * 2**-25, -(2**-26))  # fmt: skip
    return np.concatenate([*normal, bits[np.isfinite(bits)], halves, midpoints, edges])


def test_the_fp16_codec_is_numpys_ieee_half_round_trip_overflowing_to_inf() -> None:
    # Changed: the network's half crate overflows to +-inf where the old codec saturated.
    values = fp16_probe_values()
    with np.errstate(all="ignore"):
        expected = values.astype(np.float16).astype(np.float32)
    decoded = round_to_fp16(values.copy())
    np.testing.assert_array_equal(decoded.view(np.uint32), expected.view(np.uint32))
    assert round_to_fp16(f32(70000.0))[0] == np.inf
    assert round_to_fp16(f32(65519.0))[0] == 65504.0


# ---------------------------------------------------------------------------
# The numerical contract against float64 (the network's plain SGD, and beyond it)


def reference(base, locals_, velocity, opt: OuterSGD, agg: str, codec: str):
    """The outer step in float64 on the same float32 inputs; the fp16 codec rounds the
    float32 pseudo-gradient as the transport does (a property of the wire, not an error)."""
    b64 = base.astype(np.float64)
    if codec == "fp16":
        grads = [round_to_fp16(base - local).astype(np.float64) for local in locals_]
    else:
        grads = [b64 - local.astype(np.float64) for local in locals_]
    stack = np.stack(grads)
    g = stack.mean(axis=0) if agg == "mean" else np.median(stack, axis=0)
    v_old = np.zeros_like(b64) if velocity is None else velocity.astype(np.float64)
    m = opt.momentum if opt.momentum > 0 else 0.0
    v = m * v_old + g
    update = m * v + g if opt.nesterov else v
    return b64 - opt.lr * update, v, np.abs(stack).max(axis=0), v_old


def contract_bounds(base, k, agg, opt, g_max, v_old, v_new, g):
    """Per-coordinate error bounds of one step (doubled for slack): the mean's sum of k
    values, the rounded reciprocal and the product: (k + 2) eps G."""
    m = opt.momentum
    err_g = ((k + 2) if agg == "mean" else 2) * EPS * g_max
    err_v = 2 * EPS * (m * np.abs(v_old) + np.abs(g)) + err_g
    err_base = (
        EPS * np.abs(base)
        + 3 * EPS * opt.lr * (m * np.abs(v_new) + np.abs(g))
        + opt.lr * (1 + m) * (err_g + err_v)
    )
    return 2 * err_v, 2 * err_base


CASES = list(
    itertools.product(
        ("mean", "median"), ("fp32", "fp16"), ((0.9, True), (0.9, False), (0.0, False)), (1, 2, 3, 4, 8)
    )
)  # fmt: skip


@pytest.mark.parametrize(("agg", "codec", "momentum", "peers"), CASES)
def test_several_steps_stay_within_the_contract_of_float64(agg, codec, momentum, peers) -> None:
    rng = np.random.default_rng([peers, len(agg), len(codec), int(momentum[1])])
    n = 5000
    opt = OuterSGD(lr=0.7, momentum=momentum[0], nesterov=momentum[1])
    base = rng.standard_normal(n).astype(np.float32)
    velocity = None
    trajectory = base.astype(np.float64)
    ref_velocity = None
    drift_bound = np.zeros(n)
    for _ in range(5):
        # Pseudo-gradients of mixed scales, some near fp16's subnormal range.
        scale = 10.0 ** rng.uniform(-6, -1, n)
        locals_ = [(base - scale * rng.standard_normal(n)).astype(np.float32) for _ in range(peers)]
        ref_base, ref_v, g_max, v_old = reference(base, locals_, velocity, opt, agg, codec)
        new_base, new_velocity = outer_step_arrays(
            base, locals_, policy(agg, codec, 700_000), velocity=velocity,
            optimizer=opt, beyond_network=True, chunk=1024,
        )  # fmt: skip
        if new_velocity is None:
            new_velocity = np.array(ref_v, dtype=np.float32)  # plain SGD keeps none
        g = ref_v - (opt.momentum * v_old if opt.momentum > 0 else 0.0)
        bound_v, bound_base = contract_bounds(base, peers, agg, opt, g_max, v_old, ref_v, g)
        assert np.all(np.abs(new_velocity - ref_v) <= bound_v)
        assert np.all(np.abs(new_base - ref_base) <= bound_base)
        # The whole trajectory, in float64 from the start, drifts by at most the bounds' sum
        # plus what the momentum carries of earlier errors (and, with fp16, one half-precision
        # quantum per step where a drifted base rounds a pseudo-gradient the other way).
        traj_base, ref_velocity, _, _ = reference(
            trajectory.astype(np.float32), locals_, ref_velocity, opt, agg, codec
        )
        drift_bound = drift_bound * (1 + opt.lr * 2) + bound_base
        if codec == "fp16":  # a drifted base can round a pseudo-gradient to the next half value
            drift_bound += opt.lr * (1 + opt.momentum) * 2.0**-10 * g_max
        trajectory = traj_base
        base, velocity = new_base, (new_velocity if opt.keeps_momentum else None)
    assert np.all(np.abs(base - trajectory) <= drift_bound + 1e-6 * np.abs(trajectory))


def test_plain_sgd_with_the_networks_lr_is_the_network_update() -> None:
    # lr 0.7 from micros: (700000 as f64 / 1e6) as f32, then base - lr * aggregate unfused
    base, local = f32(1.0, -3.0), f32(0.25, -2.0)
    new, _ = outer_step_arrays(base, [local], policy("mean", "fp32", 700_000))
    lr = np.float32(700_000 / 1e6)
    np.testing.assert_array_equal(new, base - lr * (base - local))


def test_packs_on_disk_give_bit_identical_results_to_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n = 10_007
    base = rng.standard_normal(n).astype(np.float32)
    locals_ = [(base - 1e-3 * rng.standard_normal(n)).astype(np.float32) for _ in range(3)]
    velocity = (1e-3 * rng.standard_normal(n)).astype(np.float32)

    def pack(name: str, values: np.ndarray) -> Path:
        return packs.write_pack(tmp_path / name, values, layout_hash="h", model_schema_hash="s")

    opt = OuterSGD(0.7, 0.9, True)
    for agg, codec in (("mean", "fp32"), ("median", "fp16")):
        stats = outer_step_packs(
            pack(f"base-{agg}", base), [pack(f"l{i}-{agg}", v) for i, v in enumerate(locals_)],
            tmp_path / f"nb-{agg}", policy(agg, codec), velocity=pack(f"v-{agg}", velocity),
            new_velocity=tmp_path / f"nv-{agg}", optimizer=opt, beyond_network=True, chunk=1000,
        )  # fmt: skip
        want_base, want_velocity = outer_step_arrays(
            base, locals_, policy(agg, codec), velocity=velocity, optimizer=opt,
            beyond_network=True,
        )  # fmt: skip
        got = packs.open_pack(tmp_path / f"nb-{agg}")
        assert got.layout_hash == "h" and got.manifest.model_schema_hash == "s"
        np.testing.assert_array_equal(got.values, want_base)
        np.testing.assert_array_equal(packs.open_pack(tmp_path / f"nv-{agg}").values, want_velocity)
        assert stats.contributors == 3 and stats.pseudo_gradient_norm > 0
        assert stats.encoded_bytes == (n * (4 if codec == "fp32" else 2),) * 3
        assert stats.update_norm == pytest.approx(
            float(np.linalg.norm(want_base.astype(np.float64) - base)), rel=1e-3
        )


def test_a_custom_aggregator_gets_the_decoded_rows(tmp_path: Path) -> None:
    seen = []

    def first_row(gradients: np.ndarray, out: np.ndarray) -> None:
        seen.append(gradients.shape)
        out[:] = gradients[0]

    new_base, _ = outer_step_arrays(
        f32(1.0, 1.0), [f32(0.5, 0.0), f32(0.0, 0.0)], policy(), aggregator=first_row
    )
    np.testing.assert_array_equal(new_base, f32(0.5, 0.0))
    assert seen == [(2, 2)]


def test_a_non_finite_contributor_reaches_the_base_as_the_network_computes_it(
    tmp_path: Path,
) -> None:
    # Changed: the network checks no finiteness, so the step is computed and the stats say
    # where the NaN came from (the simulation then stops the run).
    base = np.ones(100, dtype=np.float32)
    bad = base.copy()
    bad[57] = np.nan
    paths = [
        packs.write_pack(tmp_path / name, values, layout_hash="h", model_schema_hash="s")
        for name, values in (("base", base), ("ok", base * 0.5), ("bad", bad))
    ]
    for agg in ("mean", "median"):
        stats = outer_step_packs(paths[0], paths[1:], tmp_path / f"new-{agg}", policy(agg))
        new = np.asarray(packs.open_pack(tmp_path / f"new-{agg}").values)
        assert stats.non_finite == int(np.count_nonzero(~np.isfinite(new)))
        assert stats.non_finite_sources == (1,)
        assert np.isnan(new[57]) and stats.non_finite == 1  # (0.5 + NaN) * 0.5 for the median
        assert stats.figures()["update_norm"] is None  # JSON has no NaN: the report says null
    huge = packs.write_pack(
        tmp_path / "huge", np.full(100, -1e20, np.float32), layout_hash="h", model_schema_hash="s"
    )
    stats = outer_step_packs(paths[0], [huge], tmp_path / "h", policy("mean", "fp32"))
    # the update norm (1e21 in float64) is finite: float32 dots would have overflowed
    assert stats.update_norm == pytest.approx(1e21, rel=1e-6) and stats.non_finite == 0
    with pytest.raises(NetworkStepError, match="QSGD payload norm must be finite") as info:
        outer_step_packs(
            paths[0], [paths[1], huge], tmp_path / "q",
            {"codec": {"Qsgd": {"bits": 8, "stochastic": False}}},
        )  # fmt: skip
    assert info.value.peer == 1 and not (tmp_path / "q").exists()


def test_norms_are_float64_and_a_report_never_holds_a_non_finite_figure(tmp_path: Path) -> None:
    # Issue 16 item 4: weights near 3e18 made the float32 dot of the update overflow to
    # inf, and the checkpoint's JSON write (allow_nan=False) raised.
    import json

    base = packs.write_pack(
        tmp_path / "base", np.full(1000, 3e18, np.float32), layout_hash="h", model_schema_hash="s"
    )
    local = packs.write_pack(
        tmp_path / "l", np.zeros(1000, np.float32), layout_hash="h", model_schema_hash="s"
    )
    stats = outer_step_packs(base, [local], tmp_path / "new", policy("mean", "fp32"))
    assert stats.non_finite == 0
    assert stats.update_norm == pytest.approx(3e18 * 1000**0.5, rel=1e-6)
    json.dumps(stats.figures(), allow_nan=False)
    broken = OuterStats(1, float("nan"), float("inf"), 0.0)
    figures = broken.figures()
    assert figures["pseudo_gradient_norm"] is None and figures["update_norm"] is None
    json.dumps(figures, allow_nan=False)


@given(
    st.lists(
        st.lists(st.floats(-1e3, 1e3, width=32), min_size=3, max_size=3), min_size=1, max_size=9
    )
)
def test_the_median_lies_within_each_coordinates_range(rows: list[list[float]]) -> None:
    grads = np.array(rows, dtype=np.float32)
    out = np.empty(3, dtype=np.float32)
    median(grads.copy(), out)
    assert np.all(out >= grads.min(axis=0)) and np.all(out <= grads.max(axis=0))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: step(f32(1.0), []), NetworkStepError, "cannot average zero pseudo-gradients"),
        (lambda: step(f32(1.0), [f32(1.0, 2.0)]), OuterError, r"local\[0\]: expected 1 values"),
        (lambda: outer_step_arrays(f32(1.0), [f32(1.0)], {"codec": "Int8"}), PolicyError, "unknown variant"),
        (lambda: OuterSGD(lr=-1.0), OuterError, "outer lr"),
        (lambda: OuterSGD(momentum=1.0), OuterError, "outer momentum"),
        (
            lambda: step(f32(1.0), [f32(1.0)], f32(1.0, 2.0), momentum=0.5),
            OuterError,
            "outer momentum: expected 1",
        ),
    ],
)  # fmt: skip
def test_invalid_input_raises_naming_it(call, error, match: str) -> None:
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------
# Fault specs


def test_fault_specs_parse_and_plan() -> None:
    crash, hang = parse_fault("crash@1:2"), parse_fault(" hang@0:3 ")
    assert (crash.kind, crash.peer, crash.first, crash.spec) == ("crash", 1, 2, "crash@1:2")
    slow, drop = parse_fault("slow@1:2-3=2.5"), parse_fault("drop@*=0.5")
    assert (slow.peer, slow.first, slow.last, slow.value) == (1, 2, 3, 2.5)
    assert (drop.peer, drop.first, drop.last, drop.value) == (None, None, None, 0.5)
    plan = FaultPlan([crash, hang, slow, drop], peers=2, rounds=3, seed=4)
    assert plan.event(2, 1) == crash and plan.event(3, 0) == hang and plan.event(2, 0) is None
    assert plan.slowdown(3, 1) == slow and plan.slowdown(1, 1) is None


def test_dropout_is_seeded_and_has_the_given_rate() -> None:
    plan = FaultPlan([parse_fault("drop@*=0.3")], peers=4, rounds=500, seed=7)
    draws = [plan.dropped(r, p) is not None for r in range(1, 501) for p in range(4)]
    again = FaultPlan([parse_fault("drop@*=0.3")], peers=4, rounds=500, seed=7)
    assert draws == [again.dropped(r, p) is not None for r in range(1, 501) for p in range(4)]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    other = FaultPlan([parse_fault("drop@*=0.3")], peers=4, rounds=500, seed=8)
    assert draws != [other.dropped(r, p) is not None for r in range(1, 501) for p in range(4)]


@pytest.mark.parametrize(
    ("spec", "peers", "rounds", "match"),
    [
        ("crash", 2, 2, "KIND@PEER:ROUND"),
        ("melt@0:1", 2, 2, "unknown kind 'melt'"),
        ("crash@0:0", 2, 2, "rounds count from 1"),
        ("crash@2:1", 2, 2, "peer 2 does not exist"),
        ("crash@0:3", 2, 2, "after the last round"),
        ("crash@*:1", 2, 2, "crash takes KIND@PEER:ROUND"),
        ("slow@0=1", 2, 2, "above 1"),
        ("drop@0=1.5", 2, 2, r"in \(0, 1\]"),
        ("slow@0:2-1=2", 2, 2, "FIRST-LAST"),
        ("slow@0", 2, 2, "KIND@PEER"),
    ],
)
def test_bad_fault_specs_are_refused(spec: str, peers: int, rounds: int, match: str) -> None:
    with pytest.raises(FaultSpecError, match=match):
        FaultPlan([parse_fault(spec)], peers, rounds, seed=0)


def test_overlapping_faults_are_refused() -> None:
    with pytest.raises(FaultSpecError, match="overlaps crash@0:1"):
        FaultPlan([parse_fault("crash@0:1"), parse_fault("hang@0:1")], 1, 1, 0)
    with pytest.raises(FaultSpecError, match="overlaps"):
        FaultPlan([parse_fault("slow@*=2"), parse_fault("slow@1:2=3")], 2, 3, 0)
    FaultPlan([parse_fault("slow@0=2"), parse_fault("slow@1=3"), parse_fault("crash@0:1")], 2, 2, 0)
