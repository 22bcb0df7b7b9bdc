//! Writes the DiLoCo golden vectors (tests/golden/diloco/vectors.json, format
//! `burn-p2p-diloco-golden/1`, see tests/golden/diloco/README.md) by running upstream
//! burn_p2p's own code, compiled from a mirror by build.rs:
//!
//! - `DiLoCoWorkload::build_pseudo_gradient` (default method): `base - local` per peer;
//! - `encode_values` / `decode_values` (codec.rs): the wire bytes and what the aggregate sees;
//! - `aggregate_pseudo_gradients` (codec.rs);
//! - `DiLoCoWorkload::apply_aggregated_outer_update` (default method, the one a Python workload
//!   gets): plain SGD or the refusal.
//!
//! Usage: `diloco_golden OUTPUT.json`.

mod cases;
mod shim;
mod upstream;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;

use sha2::{Digest, Sha256};

use shim::{
    ContentId, DiLoCoAggregationPolicy, FlattenedTensorPack, GradientCodec, OuterOptimizerPolicy,
    P2pWorkload, StateBlob, TrainError,
};
use upstream::workload::{DiLoCoInnerLoopReport, DiLoCoWorkload};
use upstream::{codec, schema};

/// Outputs with more values than this are written as `{"n", "sha256"}`.
const MAX_INLINE_VALUES: usize = 4096;

/// A workload that overrides nothing: the DiLoCo defaults a Python workload runs with.
struct DefaultWorkload;

impl P2pWorkload for DefaultWorkload {
    type Model = ();
    type Device = ();
    type Batch = ();
}

impl DiLoCoWorkload for DefaultWorkload {
    fn export_parameter_pack(&self, _model: &()) -> anyhow::Result<FlattenedTensorPack> {
        unreachable!("the generator never exports a model")
    }

    fn import_parameter_pack(
        &self,
        _device: &(),
        _pack: &FlattenedTensorPack,
    ) -> anyhow::Result<()> {
        unreachable!("the generator never imports a model")
    }

    fn run_inner_steps(
        &self,
        _model: &(),
        _batches: &[()],
        _num_inner_steps: u32,
        _inner_optimizer_state: Option<&StateBlob>,
    ) -> Result<DiLoCoInnerLoopReport, TrainError> {
        unreachable!("the generator never trains")
    }
}

/// One input vector, as the format spells it.
#[derive(Clone, Debug)]
pub enum Values {
    /// Written as `{"f32le": hex}`.
    Inline(Vec<f32>),
    /// Written as `{"gen": {...}}`; see [`gen_values`].
    Gen { seed: u64, n: usize, scale: f32 },
}

impl Values {
    fn materialize(&self) -> Vec<f32> {
        match self {
            Values::Inline(values) => values.clone(),
            Values::Gen { seed, n, scale } => gen_values(*seed, *n, *scale),
        }
    }

    fn to_json(&self) -> String {
        match self {
            Values::Inline(values) => format!("{{\"f32le\":\"{}\"}}", f32le_hex(values)),
            Values::Gen { seed, n, scale } => format!(
                "{{\"gen\":{{\"seed\":{seed},\"n\":{n},\"scale\":{}}}}}",
                f32_json_number(*scale)
            ),
        }
    }
}

/// The format's generated input: value i is `(u * 2 - 1) * scale` with
/// `u = (splitmix64(seed + i) >> 40) / 2^24`, all in f32, splitmix64 being upstream's.
pub fn gen_values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let x = codec::golden_splitmix64(seed.wrapping_add(i));
            let u = ((x >> 40) as f32) / 16_777_216.0_f32;
            (u * 2.0_f32 - 1.0_f32) * scale
        })
        .collect()
}

/// A JSON number whose float64 reading is exactly `value` (so its float32 reading is too).
fn f32_json_number(value: f32) -> String {
    assert!(value.is_finite(), "gen scale must be finite");
    let wide = f64::from(value);
    let text = format!("{wide:?}");
    assert_eq!(
        text.parse::<f64>().ok(),
        Some(wide),
        "{text} does not read back"
    );
    text
}

fn f32le_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

fn f32le_hex(values: &[f32]) -> String {
    hex::encode(f32le_bytes(values))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn values_out_json(values: &[f32]) -> String {
    if values.len() <= MAX_INLINE_VALUES {
        format!("{{\"f32le\":\"{}\"}}", f32le_hex(values))
    } else {
        format!(
            "{{\"n\":{},\"sha256\":\"{}\"}}",
            values.len(),
            sha256_hex(&f32le_bytes(values))
        )
    }
}

/// One network step of one group.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub codec: GradientCodec,
    pub aggregation: DiLoCoAggregationPolicy,
    pub outer: OuterOptimizerPolicy,
    pub base: Values,
    pub locals: Vec<Values>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Encode,
    Decode,
    Aggregate,
    Outer,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Encode => "encode",
            Stage::Decode => "decode",
            Stage::Aggregate => "aggregate",
            Stage::Outer => "outer",
        }
    }
}

#[derive(Debug, Default)]
struct Outcome {
    pseudo_gradients: Vec<Vec<f32>>,
    encoded: Option<Vec<Vec<u8>>>,
    decoded: Option<Vec<Vec<f32>>>,
    aggregate: Option<Vec<f32>>,
    new_base: Option<Vec<f32>>,
    error: Option<(Stage, String)>,
}

fn pack(values: Vec<f32>) -> FlattenedTensorPack {
    FlattenedTensorPack::new(
        ContentId::new("golden-model-schema"),
        ContentId::new("golden-layout"),
        values,
    )
}

/// The error's Display text: anyhow's top-level message (`format!("{err}")`).
fn message(err: &anyhow::Error) -> String {
    let text = format!("{err}");
    assert_eq!(
        text,
        format!("{err:#}"),
        "error with a context chain: {err:#}"
    );
    text
}

/// Runs one step stage by stage: every peer's encode, then every peer's decode (group
/// order), then the aggregate, then the outer update. Outputs of a stage exist only when the
/// stage succeeded for every peer.
fn run(case: &Case) -> Outcome {
    let workload = DefaultWorkload;
    let base = pack(case.base.materialize());
    let mut outcome = Outcome::default();
    for local in &case.locals {
        let local = pack(local.materialize());
        let gradient = workload
            .build_pseudo_gradient(&base, &local)
            .expect("base and locals have one length");
        outcome.pseudo_gradients.push(gradient.values);
    }
    let n = base.parameter_count();

    let mut encoded = Vec::new();
    for gradient in &outcome.pseudo_gradients {
        match codec::golden_encode(&case.codec, gradient) {
            Ok(bytes) => encoded.push(bytes),
            Err(err) => {
                outcome.error = Some((Stage::Encode, message(&err)));
                return outcome;
            }
        }
    }
    let mut decoded = Vec::new();
    for bytes in &encoded {
        match codec::golden_decode(&case.codec, bytes, n) {
            Ok(values) => decoded.push(values),
            Err(err) => {
                outcome.encoded = Some(encoded);
                outcome.error = Some((Stage::Decode, message(&err)));
                return outcome;
            }
        }
    }
    outcome.encoded = Some(encoded);
    let packs = decoded.iter().cloned().map(pack).collect::<Vec<_>>();
    outcome.decoded = Some(decoded);
    let aggregate = match codec::aggregate_pseudo_gradients(&case.aggregation, &packs) {
        Ok(aggregate) => aggregate,
        Err(err) => {
            outcome.error = Some((Stage::Aggregate, message(&err)));
            return outcome;
        }
    };
    outcome.aggregate = Some(aggregate.values.clone());
    let state = workload
        .initialize_outer_optimizer_state(&(), &case.outer)
        .expect("default outer state");
    match workload.apply_aggregated_outer_update(&base, &aggregate, &state, &case.outer) {
        Ok((new_base, _state)) => outcome.new_base = Some(new_base.values),
        Err(err) => outcome.error = Some((Stage::Outer, message(&err))),
    }
    outcome
}

/// The first error when each peer encodes and decodes in turn, as upstream's
/// `encode_pseudo_gradient` does; used to check that the stage-wise order of [`run`] names
/// the same first error for every recorded case.
fn first_error_interleaved(case: &Case, pseudo_gradients: &[Vec<f32>]) -> Option<(Stage, String)> {
    let n = pseudo_gradients.first().map_or(0, Vec::len);
    for gradient in pseudo_gradients {
        let bytes = match codec::golden_encode(&case.codec, gradient) {
            Ok(bytes) => bytes,
            Err(err) => return Some((Stage::Encode, message(&err))),
        };
        if let Err(err) = codec::golden_decode(&case.codec, &bytes, n) {
            return Some((Stage::Decode, message(&err)));
        }
    }
    None
}

fn case_json(case: &Case, outcome: &Outcome) -> String {
    let mut out = String::with_capacity(4096);
    write!(
        out,
        "{{\"name\":{},\"codec\":{},\"aggregation\":{},\"outer\":{},\"base\":{},\"locals\":[{}]",
        serde_json::to_string(&case.name).expect("name"),
        policy_json(&case.codec),
        policy_json(&case.aggregation),
        policy_json(&case.outer),
        case.base.to_json(),
        case.locals
            .iter()
            .map(Values::to_json)
            .collect::<Vec<_>>()
            .join(",")
    )
    .expect("write");
    let list = |values: &[Vec<f32>]| {
        values
            .iter()
            .map(|values| values_out_json(values))
            .collect::<Vec<_>>()
            .join(",")
    };
    write!(
        out,
        ",\"pseudo_gradients\":[{}]",
        list(&outcome.pseudo_gradients)
    )
    .expect("write");
    if let Some(encoded) = &outcome.encoded {
        let items = encoded
            .iter()
            .map(|bytes| {
                format!(
                    "{{\"len\":{},\"sha256\":\"{}\"}}",
                    bytes.len(),
                    sha256_hex(bytes)
                )
            })
            .collect::<Vec<_>>();
        write!(out, ",\"encoded\":[{}]", items.join(",")).expect("write");
    }
    if let Some(decoded) = &outcome.decoded {
        write!(out, ",\"decoded\":[{}]", list(decoded)).expect("write");
    }
    if let Some(aggregate) = &outcome.aggregate {
        write!(out, ",\"aggregate\":{}", values_out_json(aggregate)).expect("write");
    }
    if let Some(new_base) = &outcome.new_base {
        write!(out, ",\"new_base\":{}", values_out_json(new_base)).expect("write");
    }
    match &outcome.error {
        None => out.push_str(",\"error\":null}"),
        Some((stage, message)) => write!(
            out,
            ",\"error\":{{\"stage\":\"{}\",\"message\":{}}}}}",
            stage.as_str(),
            serde_json::to_string(message).expect("message")
        )
        .expect("write"),
    }
    out
}

/// An upstream policy value in its serde JSON (upstream's own derive).
fn policy_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("policy serializes")
}

/// Whether upstream's deploy-time `DiLoCoPolicy::validate` would refuse this case's policy
/// parts (the codec computes anyway; such cases carry `validate-refuses` in their name).
pub fn validation_refusal(
    codec: &GradientCodec,
    aggregation: &DiLoCoAggregationPolicy,
    outer: &OuterOptimizerPolicy,
) -> Option<String> {
    schema::codec_validation(codec)
        .and_then(|()| schema::aggregation_validation(aggregation))
        .and_then(|()| schema::outer_validation(outer))
        .err()
}

fn main() -> anyhow::Result<()> {
    let output = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: diloco_golden OUTPUT.json"))?;
    let cases = cases::all_cases();
    let mut names = BTreeSet::new();
    let mut text = String::new();
    write!(
        text,
        "{{\n\"format\":\"burn-p2p-diloco-golden/1\",\n\"upstream\":{{\"repository\":\"aberration-technology/burn_p2p\",\"commit\":\"{}\",\"files\":{}}},\n\"cases\":[\n",
        upstream::UPSTREAM_COMMIT,
        serde_json::to_string(upstream::UPSTREAM_FILES)?
    )?;
    let mut errors_by_stage = std::collections::BTreeMap::<&str, usize>::new();
    for (index, case) in cases.iter().enumerate() {
        assert!(
            names.insert(case.name.clone()),
            "duplicate case name {}",
            case.name
        );
        assert!(!case.locals.is_empty(), "{}: no locals", case.name);
        let outcome = run(case);
        let stagewise = outcome
            .error
            .clone()
            .filter(|(stage, _)| matches!(stage, Stage::Encode | Stage::Decode));
        assert_eq!(
            stagewise,
            first_error_interleaved(case, &outcome.pseudo_gradients),
            "{}: first error depends on the encode/decode order",
            case.name
        );
        if let Some((stage, _)) = &outcome.error {
            *errors_by_stage.entry(stage.as_str()).or_default() += 1;
        }
        if index > 0 {
            text.push_str(",\n");
        }
        text.push_str(&case_json(case, &outcome));
    }
    text.push_str("\n]\n}\n");
    let mut file = std::fs::File::create(&output)?;
    file.write_all(text.as_bytes())?;
    eprintln!(
        "wrote {} cases ({} bytes) to {output}; errors by stage: {errors_by_stage:?}",
        cases.len(),
        text.len()
    );
    Ok(())
}
