//! Minimal stand-ins for the burn_p2p types that the extracted upstream files name but whose
//! full definitions pull in the rest of burn_p2p_core (content ids, canonical hashing, clocks).
//!
//! Only the members the extracted code touches exist here, with upstream's semantics:
//! `FlattenedTensorPack::{new, parameter_count, is_compatible_with}` (same model schema hash,
//! same layout hash, same length), `ContentId::{new, as_str}`, `StateBlob::try_new`. The policy
//! enums are NOT shimmed: they are upstream's own definitions, extracted from
//! `crates/burn_p2p_core/src/schema/diloco.rs` (see build.rs), so their serde shapes are
//! upstream's.

pub use crate::schema::{
    DiLoCoAggregationPolicy, GradientCodec, OuterOptimizerPolicy, SignMajorityTieBreak,
};

/// Stand-in for burn_p2p_core's content identifier (a string newtype).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentId(String);

impl ContentId {
    /// Creates an identifier from a string.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Returns the string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Stand-in for burn_p2p_core's flattened parameter pack.
#[derive(Clone, Debug, PartialEq)]
pub struct FlattenedTensorPack {
    /// Model schema hash used to verify compatibility.
    pub model_schema_hash: ContentId,
    /// Layout hash for the flattened parameter order.
    pub layout_hash: ContentId,
    /// Flattened values.
    pub values: Vec<f32>,
}

impl FlattenedTensorPack {
    /// Creates a pack.
    pub fn new(model_schema_hash: ContentId, layout_hash: ContentId, values: Vec<f32>) -> Self {
        Self {
            model_schema_hash,
            layout_hash,
            values,
        }
    }

    /// Number of flattened parameters.
    pub fn parameter_count(&self) -> usize {
        self.values.len()
    }

    /// Same rule as upstream: equal schema hash, equal layout hash, equal length.
    pub fn is_compatible_with(&self, other: &Self) -> bool {
        self.model_schema_hash == other.model_schema_hash
            && self.layout_hash == other.layout_hash
            && self.values.len() == other.values.len()
    }
}

/// Error type of [`StateBlob::try_new`] (upstream's is a schema/hashing error that cannot
/// happen for the `"{}"` blob the default outer optimizer state uses).
#[derive(Debug, thiserror::Error)]
#[error("state blob error")]
pub struct SchemaError;

/// Stand-in for burn_p2p_core's opaque state blob (no content id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateBlob {
    /// Encoding label.
    pub encoding: String,
    /// Serialized bytes.
    pub bytes: Vec<u8>,
}

impl StateBlob {
    /// Creates a blob.
    pub fn try_new(
        encoding: impl Into<String>,
        bytes: impl Into<Vec<u8>>,
    ) -> Result<Self, SchemaError> {
        Ok(Self {
            encoding: encoding.into(),
            bytes: bytes.into(),
        })
    }
}

/// Stand-in for burn_p2p_core's metric value (only named by a struct field).
#[derive(Clone, Debug, PartialEq)]
pub struct MetricValue;

/// Stand-in for burn_p2p_workload's training error (only named by a trait signature).
#[derive(Debug)]
pub struct TrainError;

/// Stand-in for burn_p2p_workload's base workload trait: only the associated types that
/// `DiLoCoWorkload` names.
pub trait P2pWorkload {
    /// Runtime model.
    type Model;
    /// Runtime device.
    type Device;
    /// One training batch.
    type Batch;
}
