//! The golden cases: input families (base + nine peers' locals) and the policy matrix.
//!
//! Every case uses the first k locals of its family. Families are fixed by this file alone
//! (their pseudo-random parts come from upstream's splitmix64 with constant seeds).

use crate::shim::{
    DiLoCoAggregationPolicy, GradientCodec, OuterOptimizerPolicy, SignMajorityTieBreak,
};
use crate::upstream::codec::golden_splitmix64;
use crate::{Case, Values, validation_refusal};

/// Peers per family: cases take the first k of them.
const PEERS: usize = 9;

/// One family of inputs: a base and [`PEERS`] locals of the same length.
struct Family {
    name: &'static str,
    base: Vec<f32>,
    locals: Vec<Vec<f32>>,
}

impl Family {
    /// Locals from per-peer pseudo-gradient targets: `local = base - target` in f32. With a
    /// base of +0 the pseudo-gradient `base - local` is the target exactly (a -0 target gives
    /// +0).
    fn from_targets(name: &'static str, base: Vec<f32>, targets: Vec<Vec<f32>>) -> Self {
        let locals = targets
            .iter()
            .map(|target| base.iter().zip(target).map(|(b, t)| b - t).collect())
            .collect();
        Self::new(name, base, locals)
    }

    fn new(name: &'static str, base: Vec<f32>, locals: Vec<Vec<f32>>) -> Self {
        assert_eq!(locals.len(), PEERS, "{name}: peers");
        for local in &locals {
            assert_eq!(local.len(), base.len(), "{name}: lengths");
        }
        Self { name, base, locals }
    }
}

/// Deterministic source of test values (upstream's splitmix64 over a counter).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        golden_splitmix64(self.0)
    }

    /// Uniform in [0, 1), 24 bits.
    fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32) / 16_777_216.0
    }

    /// Uniform in [-1, 1).
    fn sym(&mut self) -> f32 {
        self.unit() * 2.0 - 1.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn bits(value: u32) -> f32 {
    f32::from_bits(value)
}

fn pow2(exponent: i32) -> f32 {
    2.0_f32.powi(exponent)
}

const EPS: f32 = f32::EPSILON;

fn next_up(value: f32) -> f32 {
    assert!(value > 0.0 && value.is_finite());
    f32::from_bits(value.to_bits() + 1)
}

/// Ordinary values: random base in [-2, 2), pseudo-gradients at several scales, plus a few
/// coordinates with ties, signed zeros, an fp16 halfway value and mixed magnitudes.
fn ordinary() -> Family {
    let n = 25;
    let mut rng = Rng(0x0bd1_0c0a);
    let mut base: Vec<f32> = (0..n).map(|_| rng.sym() * 2.0).collect();
    base[15] = -0.0;
    base[17] = 0.0;
    let mut locals = Vec::new();
    for p in 0..PEERS {
        let mut local = Vec::with_capacity(n);
        for (i, &b) in base.iter().enumerate() {
            let target = match i {
                0..=11 => rng.sym() * 10.0_f32.powi(-((i % 4) as i32)),
                12 => 0.3,
                13 => {
                    if p % 2 == 0 {
                        0.25
                    } else {
                        -0.25
                    }
                }
                16 => (p as f32 - 4.0) * 0.125,
                17 => 1.0 + pow2(-11),
                18 => {
                    if p % 2 == 0 {
                        1e-3
                    } else {
                        2.0
                    }
                }
                _ => rng.sym() * 10.0_f32.powi(-((p % 3) as i32)),
            };
            local.push(match i {
                14 => b,   // pseudo-gradient +0
                15 => 0.0, // -0 - +0: pseudo-gradient -0
                _ => b - target,
            });
        }
        locals.push(local);
    }
    Family::new("ordinary", base, locals)
}

/// Sign patterns for the sign-majority aggregation: base -0 everywhere, so a local of +0
/// gives a pseudo-gradient of -0, a local of -0 gives +0 and a local of -t gives t.
fn signs() -> Family {
    const PATTERNS: &[&str] = &[
        "+++++++++",
        "---------",
        "000000000",
        "zzzzzzzzz",
        "+-+-+-+-+",
        "-+-+-+-+-",
        "+-0+-0+-0",
        "0+-0+-0+-",
        "+0+0+0+0+",
        "-0-0-0-0-",
        "++++-----",
        "--+++++++",
        "++--00+-0",
        "+-z+-z0z0",
        "0z+-+-+-z",
        "+--++---+",
        "-++--+++-",
        "00+-+-+-+",
        "+++---000",
        "z+-0z+-0z",
        "-+0-+0-+0",
    ];
    let n = 28;
    let mut rng = Rng(0x5167_0001);
    let mut columns: Vec<Vec<u8>> = PATTERNS.iter().map(|p| p.bytes().collect()).collect();
    while columns.len() < n {
        columns.push((0..PEERS).map(|_| b"++--0z"[rng.below(6)]).collect());
    }
    let base = vec![-0.0_f32; n];
    let mut locals: Vec<Vec<f32>> = (0..PEERS).map(|_| Vec::with_capacity(n)).collect();
    for column in &columns {
        for (p, local) in locals.iter_mut().enumerate() {
            let magnitude = if rng.unit() < 0.2 {
                1e-3
            } else {
                0.5 + rng.unit() * 1.5
            };
            local.push(match column[p] {
                b'+' => -magnitude,
                b'-' => magnitude,
                b'0' => -0.0,
                b'z' => 0.0,
                other => unreachable!("pattern {other}"),
            });
        }
    }
    Family::new("signs", base, locals)
}

/// Columns of signed zeros (and a few tiny or ordinary values among them).
fn zeros() -> Family {
    let base = vec![
        0.0, -0.0, -0.0, -0.0, 1.5, -0.0, 0.0, -0.0, -0.0, -0.0, -0.0, 3.0, -0.0, -0.0, 0.0, -1.0,
    ];
    let locals = (0..PEERS)
        .map(|p| {
            let odd = p % 2 == 1;
            vec![
                0.0,
                0.0,
                if odd { -0.0 } else { 0.0 },
                if odd { 0.0 } else { -0.0 },
                1.5,
                if p < 3 { 0.0 } else { -0.0 },
                -0.0,
                -0.0,
                match p % 3 {
                    0 => 0.0,
                    1 => -bits(1),
                    _ => bits(1),
                },
                if p % 3 == 1 { 0.0 } else { bits(1) },
                if p == 4 {
                    -2.0
                } else if odd {
                    0.0
                } else {
                    -0.0
                },
                if p % 4 == 3 { 2.5 } else { 3.0 },
                if odd { 0.0 } else { -0.5 },
                if p == 8 { 7.0 } else { 0.0 },
                if odd { -0.0 } else { 0.0 },
                if p == 2 { -0.99999994 } else { -1.0 },
            ]
        })
        .collect();
    Family::new("zeros", base, locals)
}

/// Pseudo-gradients on (and just off) fp16 rounding midpoints, normal and subnormal, and at
/// the top of the fp16 range. Base +0, so the pseudo-gradients are these values exactly.
fn fp16_halfway() -> Family {
    let values = [
        1.0 + pow2(-11),
        1.0 + 3.0 * pow2(-11),
        1.0 + pow2(-11) + pow2(-23),
        1.0 + pow2(-11) - pow2(-23),
        2049.0,
        2051.0,
        2050.0,
        4098.0,
        4102.0,
        pow2(-25),
        3.0 * pow2(-25),
        5.0 * pow2(-25),
        pow2(-24),
        pow2(-24) + pow2(-30),
        1023.5 * pow2(-24),
        pow2(-14),
        pow2(-14) + pow2(-25),
        65504.0,
        bits(0x477f_efff), // 65519.996: the largest f32 that fp16 rounds to 65504
        65520.0,           // fp16 rounds to +inf
        65488.0,
        0.5 + pow2(-12),
        0.5 + 3.0 * pow2(-12),
        1000.25,
        1000.75,
        0.1,
        1.0 / 3.0,
        2.0 / 3.0,
        1e-5,
        std::f32::consts::PI,
        1.0,
        pow2(-26),
    ];
    let n = values.len();
    let targets = (0..PEERS)
        .map(|p| {
            (0..n)
                .map(|i| {
                    if (p + i) % 4 == 3 {
                        -values[i]
                    } else {
                        values[i]
                    }
                })
                .collect()
        })
        .collect();
    Family::from_targets("fp16-halfway", vec![0.0; n], targets)
}

/// Magnitudes that overflow fp16 (to ±inf) or sit just below its limit; none overflows a
/// QSGD norm.
fn fp16_overflow() -> Family {
    let values = [
        65504.0,
        bits(0x477f_efff),
        65520.0,
        65536.0,
        1e5,
        7e4,
        65472.0,
        3e4,
        1e6,
        65519.0,
        65521.0,
        131_072.0,
        2e5,
        6.5e4,
        65505.0,
        1e5,
    ];
    let n = values.len();
    let targets = (0..PEERS)
        .map(|p| {
            (0..n)
                .map(|i| {
                    let negative = match i {
                        0..=3 => false,
                        4..=7 => p % 2 == 1,
                        8..=11 => p % 3 == 2,
                        _ => true,
                    };
                    if negative { -values[i] } else { values[i] }
                })
                .collect()
        })
        .collect();
    Family::from_targets("fp16-overflow", vec![0.0; n], targets)
}

/// Everything at most 1e-9 in magnitude: blockwise scales of 0 and a QSGD norm at most
/// f32::EPSILON.
fn tiny() -> Family {
    let values = [
        bits(1),
        -bits(1),
        bits(2),
        1e-40,
        -1e-40,
        bits(0x007f_ffff),
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1e-10,
        -1e-10,
        5e-10,
        1e-9,
        -1e-9,
        3e-10,
        0.0,
        -7e-10,
        2e-38,
        1e-30,
        -1e-20,
        1e-12,
        4e-10,
        -2e-10,
        6e-10,
        1e-15,
    ];
    let n = values.len();
    let targets = (0..PEERS)
        .map(|p| {
            (0..n)
                .map(|i| {
                    let value = values[(i + p) % n];
                    if p % 2 == 1 { -value } else { value }
                })
                .collect()
        })
        .collect();
    Family::from_targets("tiny", vec![0.0; n], targets)
}

/// Blocks whose largest magnitude sits at, just above or below f32::EPSILON (the blockwise
/// zero-scale threshold).
fn tiny_blocks() -> Family {
    let values = [
        EPS,
        EPS / 2.0,
        -EPS / 4.0,
        next_up(EPS),
        1e-8,
        -1e-8,
        -EPS,
        1e-40,
        0.0,
        f32::MIN_POSITIVE,
        -EPS,
        5e-8,
        -next_up(EPS),
        EPS,
        1e-7,
        1.2e-7,
        -1.1e-7,
        3e-8,
        bits(EPS.to_bits() - 1),
        -bits(EPS.to_bits() - 1),
        2e-8,
        2.0 * EPS,
        -EPS,
        EPS / 3.0,
    ];
    let n = values.len();
    let targets = (0..PEERS)
        .map(|p| {
            let factor = match p % 3 {
                0 => 1.0,
                1 => 0.5,
                _ => -1.0,
            };
            values.iter().map(|value| value * factor).collect()
        })
        .collect();
    Family::from_targets("tiny-blocks", vec![0.0; n], targets)
}

/// QSGD norms exactly at f32::EPSILON and just above (the zero-level threshold).
fn qsgd_norm_edge() -> Family {
    let h = EPS / 2.0;
    let targets = vec![
        vec![EPS, 0.0, 0.0, 0.0],
        vec![next_up(EPS), 0.0, 0.0, 0.0],
        vec![h, h, h, h],
        vec![-EPS, 0.0, -0.0, 0.0],
        vec![next_up(h), h, h, -h],
        vec![EPS * 0.6, EPS * 0.8, 0.0, 0.0],
        vec![1e-8, -1e-8, 1e-8, 1e-40],
        vec![next_up(EPS), -next_up(EPS), 0.0, 1e-9],
        vec![bits(EPS.to_bits() - 1), 0.0, 0.0, bits(1)],
    ];
    Family::from_targets("qsgd-norm-edge", vec![0.0; 4], targets)
}

/// Large magnitudes: peer 0 stays within what a QSGD norm can square (<= 1e18); the other
/// peers carry 1e20, 3e38 (a Mean sum overflows) and similar.
fn large() -> Family {
    let low = [
        1e18,
        -1e18,
        5e17,
        1.0,
        2.0,
        -3.0,
        1e15,
        7e17,
        1.0,
        1e10,
        -1e15,
        1e16,
        123_456_790.0,
        1e-3,
        -8e17,
        2e17,
    ];
    let high = [
        3e38,
        -1e20,
        1e20,
        f32::MAX / 4.0,
        1e30,
        -1e25,
        pow2(100),
        -2e20,
        8e37,
        -8e37,
        1e19,
        -1e19,
        1.5e20,
        1e21,
        -3e38,
        9e37,
    ];
    let n = low.len();
    let targets = (0..PEERS)
        .map(|p| {
            (0..n)
                .map(|i| {
                    if p == 0 {
                        low[i]
                    } else if i == 0 || (i + p) % 2 == 0 {
                        high[i]
                    } else {
                        low[i]
                    }
                })
                .collect()
        })
        .collect();
    Family::from_targets("large", vec![0.0; n], targets)
}

/// NaN (several payloads, quiet and signalling, both signs) and ±inf in the locals of peers
/// 1 and up; peer 0 is finite.
fn nonfinite() -> Family {
    let base = vec![
        1.0, -2.0, 0.5, 0.0, 3.0, 1.0, -1.0, 0.25, 0.0, 2.0, -0.0, 1e-3,
    ];
    let special = [
        bits(0x7fc0_0000),
        bits(0xffc0_0000),
        bits(0x7f80_0001),
        bits(0x7fc1_2345),
        f32::INFINITY,
        f32::NEG_INFINITY,
        bits(0xffd0_0001),
        f32::INFINITY,
        f32::NEG_INFINITY,
        1.0,
        bits(0x7fa0_0000),
        -5.0,
    ];
    let locals = (0..PEERS)
        .map(|p| {
            base.iter()
                .enumerate()
                .map(|(i, b)| {
                    if p == 0 || (i + p) % 3 == 0 {
                        b - 0.125 * i as f32
                    } else {
                        special[i]
                    }
                })
                .collect()
        })
        .collect();
    Family::new("nonfinite", base, locals)
}

/// A base that already holds inf and NaN (a previous round overflowed): inf - inf and the
/// base's NaN payload reach every peer's pseudo-gradient.
fn nonfinite_base() -> Family {
    let base = vec![
        f32::INFINITY,
        f32::NEG_INFINITY,
        bits(0x7fc0_0abc),
        1.0,
        f32::INFINITY,
        bits(0xffc0_0000),
        -0.0,
        65504.0,
    ];
    let locals = (0..PEERS)
        .map(|p| {
            let pf = p as f32;
            vec![
                f32::INFINITY,
                1.0 + pf,
                0.5,
                if p % 2 == 0 { f32::INFINITY } else { 0.5 },
                2.0 - pf,
                bits(0x7fc0_0001),
                0.0,
                -65504.0 + pf,
            ]
        })
        .collect();
    Family::new("nonfinite-base", base, locals)
}

fn sgd(learning_rate_micros: u64) -> OuterOptimizerPolicy {
    OuterOptimizerPolicy::Sgd {
        learning_rate_micros,
        momentum_micros: None,
        nesterov: false,
        weight_decay_micros: None,
    }
}

fn codec_name(codec: &GradientCodec) -> String {
    match codec {
        GradientCodec::Fp32 => "fp32".into(),
        GradientCodec::Fp16 => "fp16".into(),
        GradientCodec::BlockwiseInt8 { block_size } => format!("int8-b{block_size}"),
        GradientCodec::Qsgd { bits, stochastic } => {
            format!("qsgd{bits}-{}", if *stochastic { "stoch" } else { "det" })
        }
        GradientCodec::LowRank { rank } => format!("lowrank{rank}"),
        GradientCodec::SignSgd { error_feedback } => {
            if *error_feedback {
                "signsgd-ef".into()
            } else {
                "signsgd".into()
            }
        }
    }
}

fn aggregation_name(aggregation: &DiLoCoAggregationPolicy) -> String {
    match aggregation {
        DiLoCoAggregationPolicy::Mean => "mean".into(),
        DiLoCoAggregationPolicy::CoordinateMedian => "median".into(),
        DiLoCoAggregationPolicy::SignMajority {
            minimum_agreement_micros,
            tie_break,
        } => format!(
            "signmaj-{minimum_agreement_micros}-{}",
            match tie_break {
                SignMajorityTieBreak::Zero => "zero",
                SignMajorityTieBreak::Positive => "positive",
                SignMajorityTieBreak::Negative => "negative",
            }
        ),
    }
}

/// `1000000` → `1.0`, `700000` → `0.7`, `1` → `0.000001`.
fn micros_name(micros: u64) -> String {
    let fraction = format!("{:06}", micros % 1_000_000);
    let fraction = fraction.trim_end_matches('0');
    format!(
        "{}.{}",
        micros / 1_000_000,
        if fraction.is_empty() { "0" } else { fraction }
    )
}

fn outer_name(outer: &OuterOptimizerPolicy) -> String {
    let OuterOptimizerPolicy::Sgd {
        learning_rate_micros,
        momentum_micros,
        nesterov,
        weight_decay_micros,
    } = outer;
    let mut name = format!("lr{}", micros_name(*learning_rate_micros));
    if let Some(momentum) = momentum_micros {
        name.push_str(&format!("-momentum{}", micros_name(*momentum)));
    }
    if *nesterov {
        name.push_str("-nesterov");
    }
    if let Some(decay) = weight_decay_micros {
        name.push_str(&format!("-wd{}", micros_name(*decay)));
    }
    name
}

fn signmaj(
    minimum_agreement_micros: u64,
    tie_break: SignMajorityTieBreak,
) -> DiLoCoAggregationPolicy {
    DiLoCoAggregationPolicy::SignMajority {
        minimum_agreement_micros,
        tie_break,
    }
}

/// The codecs that compute (every one the codec accepts, QSGD bits 9 and 15 included).
fn computing_codecs() -> Vec<GradientCodec> {
    let mut codecs = vec![GradientCodec::Fp32, GradientCodec::Fp16];
    for block_size in [1, 3, 64, 65536] {
        codecs.push(GradientCodec::BlockwiseInt8 { block_size });
    }
    for bits in [1, 2, 4, 8, 9, 15] {
        for stochastic in [false, true] {
            codecs.push(GradientCodec::Qsgd { bits, stochastic });
        }
    }
    for error_feedback in [false, true] {
        codecs.push(GradientCodec::SignSgd { error_feedback });
    }
    codecs
}

/// A smaller codec set for the edge families.
fn edge_codecs() -> Vec<GradientCodec> {
    let mut codecs = vec![GradientCodec::Fp32, GradientCodec::Fp16];
    for block_size in [1, 3, 64] {
        codecs.push(GradientCodec::BlockwiseInt8 { block_size });
    }
    for bits in [1, 4, 8] {
        for stochastic in [false, true] {
            codecs.push(GradientCodec::Qsgd { bits, stochastic });
        }
    }
    codecs.push(GradientCodec::Qsgd {
        bits: 15,
        stochastic: true,
    });
    for error_feedback in [false, true] {
        codecs.push(GradientCodec::SignSgd { error_feedback });
    }
    codecs
}

/// Codecs the codec itself refuses (encode error).
fn refused_codecs() -> Vec<GradientCodec> {
    vec![
        GradientCodec::LowRank { rank: 2 },
        GradientCodec::LowRank { rank: 0 },
        GradientCodec::Qsgd {
            bits: 0,
            stochastic: false,
        },
        GradientCodec::Qsgd {
            bits: 16,
            stochastic: true,
        },
        GradientCodec::BlockwiseInt8 { block_size: 0 },
    ]
}

fn all_sign_majorities() -> Vec<DiLoCoAggregationPolicy> {
    let mut policies = Vec::new();
    for micros in [0, 500_000, 666_667, 1_000_000] {
        for tie_break in [
            SignMajorityTieBreak::Zero,
            SignMajorityTieBreak::Positive,
            SignMajorityTieBreak::Negative,
        ] {
            policies.push(signmaj(micros, tie_break));
        }
    }
    policies
}

struct Builder {
    cases: Vec<Case>,
}

impl Builder {
    fn push(
        &mut self,
        family: &Family,
        codec: &GradientCodec,
        aggregation: &DiLoCoAggregationPolicy,
        k: usize,
        outer: &OuterOptimizerPolicy,
    ) {
        let base = Values::Inline(family.base.clone());
        let locals = family.locals[..k]
            .iter()
            .map(|local| Values::Inline(local.clone()))
            .collect();
        self.push_values(family.name, codec, aggregation, outer, base, locals);
    }

    fn push_values(
        &mut self,
        family_name: &str,
        codec: &GradientCodec,
        aggregation: &DiLoCoAggregationPolicy,
        outer: &OuterOptimizerPolicy,
        base: Values,
        locals: Vec<Values>,
    ) {
        let mut name = format!(
            "{}/{}/k{}/{}/{}",
            codec_name(codec),
            aggregation_name(aggregation),
            locals.len(),
            outer_name(outer),
            family_name
        );
        if validation_refusal(codec, aggregation, outer).is_some() {
            name.push_str("/validate-refuses");
        }
        self.cases.push(Case {
            name,
            codec: codec.clone(),
            aggregation: aggregation.clone(),
            outer: outer.clone(),
            base,
            locals,
        });
    }
}

/// Every case, in file order.
pub fn all_cases() -> Vec<Case> {
    let mut builder = Builder { cases: Vec::new() };
    let lr1 = sgd(1_000_000);
    let mean = DiLoCoAggregationPolicy::Mean;
    let median = DiLoCoAggregationPolicy::CoordinateMedian;
    let basic = [
        mean.clone(),
        median.clone(),
        signmaj(0, SignMajorityTieBreak::Zero),
    ];

    // A. Every computing codec × Mean / CoordinateMedian / SignMajority × k = 1..9.
    let ordinary = ordinary();
    for codec in computing_codecs() {
        for aggregation in &basic {
            for k in 1..=PEERS {
                builder.push(&ordinary, &codec, aggregation, k, &lr1);
            }
        }
    }
    for codec in refused_codecs() {
        for k in [1, 3] {
            builder.push(&ordinary, &codec, &mean, k, &lr1);
        }
    }

    // B. Every SignMajority threshold × tie break × k on sign patterns.
    let signs = signs();
    for codec in [
        GradientCodec::Fp32,
        GradientCodec::SignSgd {
            error_feedback: false,
        },
    ] {
        for aggregation in all_sign_majorities() {
            for k in 1..=PEERS {
                builder.push(&signs, &codec, &aggregation, k, &lr1);
            }
        }
    }
    // 666666 lets 4 of 6 votes (0.6666667_f32) through where 666667 does not.
    for codec in [
        GradientCodec::Fp32,
        GradientCodec::SignSgd {
            error_feedback: false,
        },
    ] {
        for k in 1..=PEERS {
            builder.push(
                &signs,
                &codec,
                &signmaj(666_666, SignMajorityTieBreak::Zero),
                k,
                &lr1,
            );
        }
    }
    for codec in [
        GradientCodec::Qsgd {
            bits: 1,
            stochastic: false,
        },
        GradientCodec::BlockwiseInt8 { block_size: 3 },
        GradientCodec::Fp16,
    ] {
        for aggregation in all_sign_majorities() {
            for k in [3, 6] {
                builder.push(&signs, &codec, &aggregation, k, &lr1);
            }
        }
    }
    for codec in [
        GradientCodec::Fp32,
        GradientCodec::SignSgd {
            error_feedback: true,
        },
    ] {
        for aggregation in [&mean, &median] {
            for k in 1..=PEERS {
                builder.push(&signs, &codec, aggregation, k, &lr1);
            }
        }
    }

    // C. Edge families.
    let edge_families = [
        zeros(),
        fp16_halfway(),
        fp16_overflow(),
        tiny(),
        tiny_blocks(),
        qsgd_norm_edge(),
        large(),
        nonfinite(),
        nonfinite_base(),
    ];
    let positive_half = signmaj(500_000, SignMajorityTieBreak::Positive);
    for family in &edge_families {
        for codec in edge_codecs() {
            for aggregation in [&mean, &median] {
                for k in [1, 2, 3, 9] {
                    builder.push(family, &codec, aggregation, k, &lr1);
                }
            }
            builder.push(family, &codec, &positive_half, 5, &lr1);
        }
    }

    // D. Learning rates.
    let learning_rates = [700_000, 1, 123_457, 3_000_000, 999_999];
    for codec in [
        GradientCodec::Fp32,
        GradientCodec::Fp16,
        GradientCodec::BlockwiseInt8 { block_size: 3 },
        GradientCodec::Qsgd {
            bits: 4,
            stochastic: true,
        },
        GradientCodec::SignSgd {
            error_feedback: false,
        },
    ] {
        for k in [1, 3, 4, 7] {
            for lr in learning_rates {
                builder.push(&ordinary, &codec, &mean, k, &sgd(lr));
            }
        }
    }
    for family in [&edge_families[1], &edge_families[6], &edge_families[8]] {
        for codec in [GradientCodec::Fp32, GradientCodec::Fp16] {
            for lr in learning_rates {
                builder.push(family, &codec, &mean, 3, &sgd(lr));
            }
        }
    }

    // E. Outer policies the default outer update refuses (and two that validate refuses).
    let refused_outers = [
        (700_000, Some(0), false, None),
        (1_000_000, Some(0), false, None),
        (1_000_000, None, true, None),
        (1_000_000, None, false, Some(0)),
        (700_000, Some(900_000), true, None),
        (700_000, Some(900_000), true, Some(100_000)),
        (1_000_000, Some(1_500_000), false, None),
        (0, None, false, None),
    ];
    for (lr, momentum, nesterov, decay) in refused_outers {
        let outer = OuterOptimizerPolicy::Sgd {
            learning_rate_micros: lr,
            momentum_micros: momentum,
            nesterov,
            weight_decay_micros: decay,
        };
        for codec in [
            GradientCodec::Fp16,
            GradientCodec::Fp32,
            GradientCodec::SignSgd {
                error_feedback: false,
            },
        ] {
            for k in [1, 3] {
                builder.push(&ordinary, &codec, &mean, k, &outer);
            }
        }
        // The encode error comes first.
        builder.push(
            &edge_families[7],
            &GradientCodec::Qsgd {
                bits: 4,
                stochastic: false,
            },
            &mean,
            2,
            &outer,
        );
    }

    // F. Long generated packs: block sizes around 65536, QSGD norms of long sums.
    long_cases(&mut builder, &lr1, &mean, &median);
    builder.cases
}

fn gen_group(seed: u64, n: usize, scale: f32, k: usize) -> (Values, Vec<Values>) {
    let base = Values::Gen { seed, n, scale };
    let locals = (0..k as u64)
        .map(|p| Values::Gen {
            seed: seed.wrapping_mul(1000).wrapping_add(p + 1),
            n,
            scale,
        })
        .collect();
    (base, locals)
}

fn long_cases(
    builder: &mut Builder,
    lr1: &OuterOptimizerPolicy,
    mean: &DiLoCoAggregationPolicy,
    median: &DiLoCoAggregationPolicy,
) {
    let mut push = |label: String,
                    codec: GradientCodec,
                    aggregation: &DiLoCoAggregationPolicy,
                    seed: u64,
                    n: usize,
                    scale: f32,
                    k: usize| {
        let (base, locals) = gen_group(seed, n, scale, k);
        builder.push_values(&label, &codec, aggregation, lr1, base, locals);
    };
    for n in [65535, 65536, 65537, 140_000] {
        for block_size in [65535, 65536, 65537] {
            push(
                format!("gen-n{n}"),
                GradientCodec::BlockwiseInt8 { block_size },
                mean,
                11,
                n,
                1.0,
                2,
            );
        }
    }
    for block_size in [64, 1000, 131_072] {
        push(
            "gen-n70001".into(),
            GradientCodec::BlockwiseInt8 { block_size },
            mean,
            12,
            70_001,
            1.0,
            3,
        );
    }
    for bits in [1, 4, 8, 15] {
        for stochastic in [false, true] {
            push(
                "gen-n140000".into(),
                GradientCodec::Qsgd { bits, stochastic },
                mean,
                13,
                140_000,
                1.0,
                2,
            );
        }
    }
    // QSGD norm: a sequential f32 sum of 140000 squares, around f32::MAX.
    for (exponent, mantissa) in [(54, 1.0), (55, 1.0), (55, 1.5), (55, 1.75), (56, 1.0)] {
        let scale = mantissa * pow2(exponent);
        push(
            format!("gen-n140000-scale2^{exponent}x{mantissa}"),
            GradientCodec::Qsgd {
                bits: 8,
                stochastic: false,
            },
            mean,
            14,
            140_000,
            scale,
            1,
        );
    }
    for codec in [GradientCodec::Fp32, GradientCodec::Fp16] {
        for aggregation in [mean, median] {
            push(
                "gen-n70001".into(),
                codec.clone(),
                aggregation,
                15,
                70_001,
                1.0,
                4,
            );
        }
    }
    push(
        "gen-n70001-scale70000".into(),
        GradientCodec::Fp16,
        mean,
        16,
        70_001,
        70_000.0,
        3,
    );
    for (codec, aggregation) in [
        (
            GradientCodec::SignSgd {
                error_feedback: false,
            },
            signmaj(500_000, SignMajorityTieBreak::Positive),
        ),
        (
            GradientCodec::SignSgd {
                error_feedback: true,
            },
            DiLoCoAggregationPolicy::Mean,
        ),
        (
            GradientCodec::Qsgd {
                bits: 2,
                stochastic: true,
            },
            signmaj(666_667, SignMajorityTieBreak::Negative),
        ),
    ] {
        push("gen-n70001".into(), codec, &aggregation, 17, 70_001, 1.0, 5);
    }
}
