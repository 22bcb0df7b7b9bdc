//! The upstream burn_p2p sources, extracted and rewritten by build.rs into OUT_DIR.

/// Upstream's policy types (`crates/burn_p2p_core/src/schema/diloco.rs`), verbatim.
#[allow(dead_code)]
pub mod schema {
    use serde::{Deserialize, Serialize};
    use thiserror::Error;
    include!(concat!(env!("OUT_DIR"), "/upstream/schema_diloco.rs"));

    /// Upstream's codec validation (private there), for naming the cases it refuses.
    pub fn codec_validation(codec: &GradientCodec) -> Result<(), String> {
        codec.validate().map_err(|err| err.to_string())
    }

    /// Upstream's aggregation validation (private there).
    pub fn aggregation_validation(policy: &DiLoCoAggregationPolicy) -> Result<(), String> {
        policy.validate().map_err(|err| err.to_string())
    }

    /// Upstream's outer optimizer validation (private there).
    pub fn outer_validation(policy: &OuterOptimizerPolicy) -> Result<(), String> {
        policy.validate().map_err(|err| err.to_string())
    }
}

/// Upstream's `crates/burn_p2p/src/diloco/codec.rs` minus the manifest/chunk functions.
#[allow(dead_code)]
pub mod codec {
    include!(concat!(env!("OUT_DIR"), "/upstream/codec.rs"));

    /// Upstream's private `encode_values`.
    pub fn golden_encode(codec: &GradientCodec, values: &[f32]) -> anyhow::Result<Vec<u8>> {
        encode_values(codec, values)
    }

    /// Upstream's private `decode_values`.
    pub fn golden_decode(
        codec: &GradientCodec,
        bytes: &[u8],
        expected_values: usize,
    ) -> anyhow::Result<Vec<f32>> {
        decode_values(codec, bytes, expected_values)
    }

    /// Upstream's private `splitmix64` (also defines the `gen` inputs of the format).
    pub fn golden_splitmix64(value: u64) -> u64 {
        splitmix64(value)
    }
}

/// Upstream's `crates/burn_p2p_workload/src/diloco.rs` (the `DiLoCoWorkload` trait).
#[allow(dead_code)]
pub mod workload {
    include!(concat!(env!("OUT_DIR"), "/upstream/workload_diloco.rs"));
}

include!(concat!(env!("OUT_DIR"), "/upstream/upstream.rs"));
