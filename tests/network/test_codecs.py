"""fakecoord.network codecs, aggregations and network_step against hand-computed cases and
against a slow scalar reference written from the Rust (tests/network/reference.py)."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakecoord.errors import NetworkStepError, OuterError, PolicyError
from fakecoord.network import codecs
from fakecoord.network.aggregation import AGGREGATIONS, minimum_agreement
from fakecoord.network.codecs import round_half_away, round_to_fp16, u64_to_f32
from fakecoord.network.policy import DiLoCoAggregationPolicy, GradientCodec, OuterOptimizerPolicy
from fakecoord.network.step import network_step, network_step_detail, run_step

from . import reference as ref

F32 = np.float32


def a(*values) -> np.ndarray:
    return np.array(values, dtype=F32)


def b(arr) -> bytes:
    return np.asarray(arr, dtype=F32).tobytes()


def from_bits(*bits_) -> np.ndarray:
    return np.array(bits_, dtype=np.uint32).view(F32)


# ---------------------------------------------------------------------------
# Rust float semantics


def test_round_half_away_from_zero_unlike_numpy():
    x = a(0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, -0.49999997, 8388607.5, 1e30, np.inf, -np.inf)
    assert round_half_away(x).tolist() == [
        1,
        2,
        3,
        -1,
        -3,
        0,
        0,
        8388608,
        float(F32(1e30)),
        np.inf,
        -np.inf,
    ]
    assert np.rint(a(0.5, 2.5)).tolist() == [0, 2]  # what the old code would have done
    assert np.isnan(round_half_away(a(np.nan))[0])


def test_u64_as_f32_rounds_once():
    # 2**53 + 2**29 + 1 rounds up as u64 -> f32 directly, but via f64 it first becomes
    # 2**53 + 2**29 (a tie) and then rounds to even: 2**53.
    v = 2**53 + 2**29 + 1
    assert u64_to_f32(v) == np.float32(2**53 + 2**30)
    assert np.float32(float(v)) == np.float32(2**53)
    assert u64_to_f32(2**64 - 1) == np.float32(2.0**64)
    assert minimum_agreement(2**64 - 1) == 1.0
    assert minimum_agreement(500_000) == np.float32(0.5)


# ---------------------------------------------------------------------------
# Fp16: the half crate's conversion


FP16_EDGES = [
    0.0, -0.0, 65504.0, 65519.996, 65520.0, -65520.0, 1e10, np.inf, -np.inf,
    2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001, -(2.0**-26), 2.0**-14, 2.0**-14 - 2.0**-25,
    1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 3.4028235e38, 1e-45,
]  # fmt: skip


def test_fp16_matches_the_half_crate_bit_for_bit_on_edges():
    values = np.array(FP16_EDGES, dtype=F32)
    encoded = GradientCodec("Fp16").make().encode(values)
    want = b"".join(struct.pack("<H", ref.f32_to_f16(float(v))) for v in values)
    assert encoded == want
    assert round_to_fp16(values.copy())[4] == np.inf  # 65520 overflows (no saturation)
    assert round_to_fp16(values.copy())[3] == 65504.0


def test_fp16_nans_as_half_makes_them():
    # signalling NaN: quiet bit set, payload's top bits kept, sign kept
    x = from_bits(0x7F800001, 0xFF800001, 0x7FC00001, 0x7FA5A000, 0xFFFFFFFF)
    enc = GradientCodec("Fp16").make().encode(x)
    halves = [h for (h,) in struct.iter_unpack("<H", enc)]
    assert halves == [0x7E00, 0xFE00, 0x7E00, 0x7E00 | (0x25A000 >> 13), 0xFFFF]
    t = round_to_fp16(x.copy()).view(np.uint32)
    dec = GradientCodec("Fp16").make().decode(enc, 5).view(np.uint32)
    assert t.tolist() == dec.tolist()
    assert dec.tolist() == [0x7FC00000, 0xFFC00000, 0x7FC00000, 0x7FC00000 | 0x25A000, 0xFFFFE000]


def test_fp16_all_float32_exponents_against_the_half_reference():
    rng = np.random.default_rng(1)
    mant = rng.integers(0, 1 << 23, 4096, dtype=np.uint32)
    exps = np.repeat(np.arange(90, 160, dtype=np.uint32), 64)[:4096]
    sign = rng.integers(0, 2, 4096, dtype=np.uint32) << np.uint32(31)
    x = (sign | (exps << np.uint32(23)) | mant).view(F32)
    enc = GradientCodec("Fp16").make().encode(x)
    want = b"".join(struct.pack("<H", ref.f32_to_f16(float(v))) for v in x)
    assert enc == want


# ---------------------------------------------------------------------------
# BlockwiseInt8


def test_int8_hand_case():
    # block [1, -2, 0.5, 127]: max 127 -> scale 1.0; q = round(x): 1, -2, 1 (0.5 away), 127
    codec = GradientCodec("BlockwiseInt8", (("block_size", 4),)).make()
    enc = codec.encode(a(1, -2, 0.5, 127, 1e-9, -1e-9))
    assert enc[:6] == struct.pack("<Hf", 4, 1.0)
    assert list(enc[6:10]) == [1, 0xFE, 1, 127]
    # tiny block: max <= EPSILON -> scale 0, all zeros
    assert enc[10:] == struct.pack("<Hf", 2, 0.0) + b"\0\0"
    assert codec.decode(enc, 6).tolist() == [1, -2, 1, 127, 0, 0]
    assert codec.encoded_size(6) == len(enc) == 6 + 2 * 6


def test_int8_nan_is_ignored_by_the_max_and_becomes_zero():
    codec = GradientCodec("BlockwiseInt8", (("block_size", 3),)).make()
    enc = codec.encode(a(np.nan, 2.54, -1.27))
    _, scale = struct.unpack_from("<Hf", enc)
    assert scale == np.float32(2.54) / np.float32(127)
    assert enc[6] == 0  # NaN as i8 -> 0


def test_int8_block_length_wraps_at_65536_and_fails_to_decode():
    n = 65536 + 10
    codec = GradientCodec("BlockwiseInt8", (("block_size", 65536),)).make()
    x = np.linspace(-1, 1, n, dtype=F32)
    enc = codec.encode(x)
    assert struct.unpack_from("<H", enc)[0] == 0  # 65536 as u16
    with pytest.raises(NetworkStepError) as info:
        codec.decode(enc, n)
    try:
        ref.decode({"BlockwiseInt8": {"block_size": 65536}}, enc, n)
    except ref.RefError as exc:
        assert (info.value.stage, info.value.reason) == (exc.stage, exc.message)
    else:  # pragma: no cover
        raise AssertionError("the reference decoded it")
    # below 65536 (or a short pack) it is fine
    assert codec.decode(codec.encode(x[:65535]), 65535).shape == (65535,)


# ---------------------------------------------------------------------------
# Qsgd


def test_qsgd_norm_is_a_sequential_float32_sum():
    # pairwise and sequential float32 sums differ here; the network's is sequential
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(5000) * 10).astype(F32)
    seq = F32(-0.0)
    for v in x:
        seq = F32(seq + F32(v * v))
    assert np.sum(x * x, dtype=F32) != seq  # numpy's pairwise sum
    enc = GradientCodec("Qsgd", (("bits", 8), ("stochastic", False))).make().encode(x)
    assert enc[:4] == np.sqrt(seq).astype("<f4").tobytes()


def test_qsgd_refuses_a_non_finite_norm_and_bits_out_of_range():
    codec = GradientCodec("Qsgd", (("bits", 4), ("stochastic", True))).make()
    with pytest.raises(NetworkStepError, match="QSGD payload norm must be finite") as info:
        codec.encode(a(1e20, 1e20))  # finite values, the f32 sum of squares overflows
    assert info.value.stage == "encode"
    with pytest.raises(NetworkStepError, match=r"QSGD bits must be in 1\.\.=15, got 16"):
        GradientCodec("Qsgd", (("bits", 16), ("stochastic", False))).make().encode(a(1))
    # bits 9..15 pass the codec (only policy validation refuses them)
    GradientCodec("Qsgd", (("bits", 15), ("stochastic", False))).make().encode(a(1, 2))


def test_qsgd_unit_matches_the_scalar_splitmix():
    x = a(0.25, -3.5, 1e-30, 7.0)
    idx = np.arange(1000, 1004, dtype=np.uint64)
    got = codecs.qsgd_unit(idx, x, 5)
    want = [ref.qsgd_unit(1000 + i, float(v), 5) for i, v in enumerate(x)]
    assert got.tolist() == want


# ---------------------------------------------------------------------------
# SignSgd


def test_sign_packing():
    codec = GradientCodec("SignSgd", (("error_feedback", True),)).make()
    enc = codec.encode(a(1, -1, 0, -0.0, np.nan, 2))
    assert enc == bytes([0b00_00_10_01, 0b01_00])
    assert codec.decode(enc, 6).tolist() == [1, -1, 0, 0, 0, 1]
    with pytest.raises(NetworkStepError, match="padding bits"):
        codec.decode(bytes([0, 0b1000_0000]), 6)
    with pytest.raises(NetworkStepError, match="reserved sign code"):
        codec.decode(bytes([3, 0]), 6)


# ---------------------------------------------------------------------------
# Aggregations


def test_mean_multiplies_by_the_reciprocal_and_starts_from_plus_zero():
    rows = np.array([[0.1, -0.0], [0.4, -0.0], [0.4, -0.0]], dtype=F32)
    out = DiLoCoAggregationPolicy("Mean").make().combine(rows.copy(), np.empty(2, F32))
    s = F32(F32(F32(0.1) + F32(0.4)) + F32(0.4))
    assert out[0] == s * (F32(1) / F32(3))
    assert s * (F32(1) / F32(3)) != s / F32(3)  # the old division gave another ulp
    assert out.view(np.uint32)[1] == 0  # +0, not -0


def test_median_uses_total_order():
    rows = np.array([[-0.0, 1.0], [0.0, np.nan], [-0.0, -np.inf]], dtype=F32)
    out = DiLoCoAggregationPolicy("CoordinateMedian").make().combine(rows.copy(), np.empty(2, F32))
    assert out.view(np.uint32)[0] == 0x80000000  # -0, -0, +0 -> -0
    assert out[1] == 1.0  # -inf < 1 < NaN
    even = np.array([[-0.0], [0.0]], dtype=F32)
    assert (
        DiLoCoAggregationPolicy("CoordinateMedian").make().combine(even, np.empty(1, F32))[0] == 0
    )


@pytest.mark.parametrize(
    ("tie", "micros", "column", "want"),
    [
        ("Zero", 0, [1, -1], 0.0),
        ("Positive", 0, [1, -1], 1.0),
        ("Negative", 0, [1, -1], -1.0),
        ("Positive", 0, [1, -1, 0, 0], 0.0),  # zero ties the max: zero wins
        ("Zero", 0, [1, 1, -1], 1.0),
        ("Zero", 700_000, [1, 1, -1], 0.0),  # 2/3 < 0.7
        ("Zero", 666_667, [1, 1, -1], 0.0),
        ("Zero", 666_666, [1, 1, -1], 1.0),
        ("Zero", 0, [np.nan, np.nan, 1], 0.0),  # NaN votes zero
    ],
)
def test_sign_majority(tie, micros, column, want):
    agg = DiLoCoAggregationPolicy(
        "SignMajority", (("minimum_agreement_micros", micros), ("tie_break", tie))
    ).make()
    rows = np.array(column, dtype=F32).reshape(-1, 1)
    assert agg.combine(rows, np.empty(1, F32))[0] == want


# ---------------------------------------------------------------------------
# network_step


def test_network_step_default_policy_by_hand():
    base = a(1.0, 2.0, -0.0)
    locals_ = [a(0.5, 2.0, 0.0), a(0.0, 1.0, -0.0)]
    new, agg = network_step(base, locals_, {})
    # fp16 is exact here; mean (0.5 + 1) / 2, (0 + 1) / 2, (-0 + -0) -> +0
    assert agg.tolist() == [0.75, 0.5, 0.0]
    assert new.tolist() == [0.25, 1.5, 0.0]


def test_network_step_refusals():
    base, locals_ = a(1, 2), [a(0, 0)]
    with pytest.raises(PolicyError) as info:
        network_step(base, locals_, {"codec": {"LowRank": {"rank": 2}}})
    assert info.value.stage == "encode"
    with pytest.raises(PolicyError) as info:
        network_step(base, locals_, {"outer_optimizer_policy": {"Sgd": {"nesterov": True}}})
    assert info.value.stage == "outer" and "workload-specific" in info.value.reason
    with pytest.raises(PolicyError) as info:
        network_step(base, locals_, {"codec": {"Qsgd": {"bits": 9, "stochastic": False}}})
    assert info.value.stage is None
    with pytest.raises(NetworkStepError, match="cannot average zero") as info2:
        network_step(base, [], {})
    assert info2.value.stage == "aggregate"


def test_fp16_overflow_reaches_the_new_base_unchecked():
    new, agg = network_step(a(0.0), [a(-70000.0)], {"codec": "Fp16"})
    assert agg[0] == np.inf and new[0] == -np.inf


# ---------------------------------------------------------------------------
# Against the scalar reference


QUIET_NAN = from_bits(0x7FC00000, 0xFFC12000)


def _values() -> st.SearchStrategy[float]:
    edges = [0.0, -0.0, 65504.0, 65520.0, -65520.0, 2.0**-24, 2.0**-25, 1e-40, 1.1920929e-07,
             0.5, 1.5, 2.5, -2.5, 1e20, -1e20, np.inf]  # fmt: skip
    return st.one_of(
        st.floats(width=32, allow_nan=False, allow_infinity=False),
        st.floats(-4, 4, width=32),
        st.sampled_from(edges),
        st.sampled_from([float(v) for v in QUIET_NAN]),
    )


CODEC_JSON = st.one_of(
    st.just("Fp32"),
    st.just("Fp16"),
    st.builds(lambda s: {"BlockwiseInt8": {"block_size": s}}, st.integers(1, 9)),
    st.builds(
        lambda bits, s: {"Qsgd": {"bits": bits, "stochastic": s}}, st.integers(1, 16), st.booleans()
    ),
    st.builds(lambda e: {"SignSgd": {"error_feedback": e}}, st.booleans()),
)
AGG_JSON = st.one_of(
    st.just("Mean"),
    st.just("CoordinateMedian"),
    st.builds(
        lambda m, t: {"SignMajority": {"minimum_agreement_micros": m, "tie_break": t}},
        st.sampled_from([0, 1, 333_333, 500_000, 500_001, 666_667, 1_000_000, 2**64 - 1]),
        st.sampled_from(["Zero", "Positive", "Negative"]),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 24),
    k=st.integers(1, 6),
    data=st.data(),
    codec=CODEC_JSON,
    agg=AGG_JSON,
    lr=st.sampled_from([1, 700_000, 1_000_000, 1_234_567, 2**64 - 1]),
)
def test_matches_the_scalar_reference(n, k, data, codec, agg, lr):
    scale = data.draw(st.sampled_from([1.0, 1e-3, 1e-30]))
    base = np.array(data.draw(st.lists(_values(), min_size=n, max_size=n)), dtype=F32)
    with np.errstate(all="ignore"):
        locals_ = [
            base
            - np.array(data.draw(st.lists(_values(), min_size=n, max_size=n)), dtype=F32)
            * F32(scale)
            for _ in range(k)
        ]
    try:
        want = ref.step(
            codec, agg, lr, [float(v) for v in base], [[float(v) for v in loc] for loc in locals_]
        )
    except ref.RefError as exc:
        with pytest.raises(NetworkStepError) as info:
            run_step(
                base, locals_, GradientCodec.from_json(codec),
                DiLoCoAggregationPolicy.from_json(agg), OuterOptimizerPolicy(lr),
            )  # fmt: skip
        assert (info.value.stage, info.value.reason) == (exc.stage, exc.message)
        return
    got = run_step(
        base, locals_, GradientCodec.from_json(codec),
        DiLoCoAggregationPolicy.from_json(agg), OuterOptimizerPolicy(lr),
    )  # fmt: skip
    grads, encoded, decoded, aggregate, new = want
    assert [nb(g) for g in got.pseudo_gradients] == [nb(g) for g in grads]
    if not any(np.isnan(g).any() for g in got.pseudo_gradients):
        assert got.encoded == encoded
    assert [nb(d) for d in got.decoded] == [nb(d) for d in decoded]
    assert nb(got.aggregate) == nb(aggregate)
    assert nb(got.new_base) == nb(new)


def nb(values) -> bytes:
    """The float32 bytes with every NaN made one NaN: which payload survives when two NaNs
    meet is the hardware's first operand, and compilers may swap the operands of a
    commutative + or * (LLVM does), so no implementation can promise it."""
    arr = np.array(values, dtype=F32)
    arr[np.isnan(arr)] = np.nan
    return arr.tobytes()


@pytest.mark.parametrize("entry", codecs.CODECS, ids=lambda e: e.tag)
def test_every_codec_has_a_size_formula_that_matches_its_bytes(entry):
    if entry.refusal is not None:
        return
    codec = GradientCodec.shorthand(entry.name).make()
    for n in (0, 1, 5, 300, 1001):
        assert len(codec.encode(np.linspace(-1, 1, n, dtype=F32))) == codec.encoded_size(n)


def test_every_aggregation_is_in_the_reference():
    # the registry and the reference know the same variants
    assert {e.tag for e in AGGREGATIONS} == {"Mean", "CoordinateMedian", "SignMajority"}
    assert math.isfinite(network_step_detail(a(1), [a(0)], {}).new_base[0])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 40), data=st.data(), codec=CODEC_JSON, chunk=st.integers(1, 13))
def test_the_streamed_transport_is_decode_of_encode(n, data, codec, chunk):
    """What the streamed step uses (encode and decode fused, chunk by chunk) is bit for bit
    the network's decode(encode(values))."""
    scale = data.draw(st.sampled_from([1.0, 1e-3, 1e-30, 1e30]))
    with np.errstate(all="ignore"):
        g = np.array(data.draw(st.lists(_values(), min_size=n, max_size=n)), dtype=F32) * F32(scale)
    c = GradientCodec.from_json(codec).make()
    try:
        want = c.decode(c.encode(g), n)
    except NetworkStepError as exc:
        with pytest.raises(NetworkStepError) as info:
            s = c.stream(n)
            s.observe(g, 0)
            s.end_first_pass()
            s.transport(g.copy(), 0)
        assert info.value.reason == exc.reason
        return
    s = c.stream(n)
    size = max(s.alignment, chunk // s.alignment * s.alignment)
    if s.first_pass:
        for a in range(0, n, size):
            s.observe(g[a : a + size], a)
        s.end_first_pass()
    got = np.concatenate(
        [s.transport(g[a : a + size].copy(), a) for a in range(0, n, size)] or [g[:0]]
    )
    assert got.tobytes() == want.tobytes()
    parts = b"".join(s.encode_chunk(g[a : a + size], a) for a in range(0, n, size))
    assert parts == c.encode(g) or (n == 0 and s.first_pass)


def test_network_step_refuses_arrays_that_are_not_flat_float32():
    with pytest.raises(OuterError, match="expected a 1-D float32 array"):
        network_step(np.ones(3), [a(1, 2, 3)], {})
    with pytest.raises(OuterError, match=r"locals_\[0\]"):
        network_step(a(1, 2), [np.ones((2, 1), np.float32)], {})
    with pytest.raises(NetworkStepError, match="incompatible") as info:
        network_step(a(1, 2), [a(1, 2, 3)], {})
    assert info.value.stage == "pseudo_gradient"
