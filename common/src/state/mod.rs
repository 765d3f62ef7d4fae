//! The shared-state seam: which samples are done, and the step cache that lets a sample
//! redelivered after a crash resume at the step where it stopped. Redis implements it for
//! distributed runs; an in-memory map does for embedded runs.

pub mod embedded;

use async_trait::async_trait;

use crate::sample::SampleKey;

/// A state-store failure.
#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StateError(pub String);

/// Shared progress state of jobs.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// For each key, whether the sample is already done (or failed) for good.
    async fn done(&self, job: &str, keys: &[SampleKey]) -> Result<Vec<bool>, StateError>;
    /// Records samples as done; called only after their rows are durable.
    async fn mark_done(&self, job: &str, keys: &[SampleKey]) -> Result<(), StateError>;
    /// A cached model-call result for (sample, step).
    async fn step_get(&self, job: &str, key: &SampleKey, step: &str) -> Result<Option<Vec<u8>>, StateError>;
    /// Caches a model-call result for (sample, step).
    async fn step_put(&self, job: &str, key: &SampleKey, step: &str, value: Vec<u8>) -> Result<(), StateError>;
    /// Drops the cached steps of samples that are done (their results are durable).
    async fn step_forget(&self, job: &str, keys: &[SampleKey]) -> Result<(), StateError>;
}
