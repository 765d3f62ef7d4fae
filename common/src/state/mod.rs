//! The shared-state seam: which samples are done, the step cache that lets a sample
//! redelivered after a crash resume at the step where it stopped, and what distributed runs
//! share besides: the job registry (workers learn a job's spec from it), the active jobs,
//! progress counters and worker heartbeats. Redis implements it for distributed runs; an
//! in-memory map does for embedded runs.
//!
//! Invariant: the done set only grows through [`StateStore::mark_done`], called after the
//! samples' rows are durable, so "done" here never claims more than the output holds (it may
//! claim less: the output directory is the ledger and can re-seed it with
//! [`StateStore::reset_done`]).

pub mod batch_log;
pub mod embedded;
pub mod redis;
pub mod step_log;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::sample::SampleKey;

/// A state-store failure, typed by what to do next ([`crate::service_error::FailureKind`]).
pub type StateError = crate::service_error::ServiceError;

/// Shared progress state of jobs.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// For each key, whether the sample is already done (or failed) for good.
    async fn done(&self, job: &str, keys: &[SampleKey]) -> Result<Vec<bool>, StateError>;
    /// Records samples as done; called only after their rows are durable.
    async fn mark_done(&self, job: &str, keys: &[SampleKey]) -> Result<(), StateError>;
    /// A cached model-call result for (sample, step).
    async fn step_get(
        &self,
        job: &str,
        key: &SampleKey,
        step: &str,
    ) -> Result<Option<Vec<u8>>, StateError>;
    /// Caches a model-call result for (sample, step).
    async fn step_put(
        &self,
        job: &str,
        key: &SampleKey,
        step: &str,
        value: Vec<u8>,
    ) -> Result<(), StateError>;
    /// Drops the cached steps of samples that are done (their results are durable).
    async fn step_forget(&self, job: &str, keys: &[SampleKey]) -> Result<(), StateError>;

    /// Records a batch submitted to a provider's Batch API (which batch, which calls it holds),
    /// before anything waits on it, so that a process meeting one of those calls again (after a
    /// restart, or on another worker) waits for that batch instead of paying for the call
    /// again. Replaces the record of the same `id`.
    async fn batch_put(&self, job: &str, id: &str, record: Vec<u8>) -> Result<(), StateError>;
    /// Every batch record of the job, as `(id, record)`.
    async fn batch_records(&self, job: &str) -> Result<Vec<(String, Vec<u8>)>, StateError>;
    /// Forgets a batch record, once every call it held was consumed.
    async fn batch_remove(&self, job: &str, id: &str) -> Result<(), StateError>;

    /// Takes (or, for its holder, renews) the lease on running a sample for `ttl`: true when
    /// `holder` now holds it. Two workers handed the same sample (a task redelivered while its
    /// first copy still runs, or republished by a coordinator taking over) do not run it at the
    /// same time: the second waits, then finds every step in the step cache.
    async fn lease(
        &self,
        job: &str,
        key: &SampleKey,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StateError>;
    /// Gives a lease back, if `holder` still holds it.
    async fn release(&self, job: &str, key: &SampleKey, holder: &str) -> Result<(), StateError>;

    /// Registers a job: its spec (JSON) and fingerprint, replacing what was there.
    async fn put_job(
        &self,
        job: &str,
        spec_json: &str,
        fingerprint: &str,
    ) -> Result<(), StateError>;
    /// A registered job's `(spec_json, fingerprint)`.
    async fn get_job(&self, job: &str) -> Result<Option<(String, String)>, StateError>;
    /// Names of the jobs workers should serve, sorted.
    async fn active_jobs(&self) -> Result<Vec<String>, StateError>;
    /// Adds a job to the active jobs, or removes it.
    async fn set_active(&self, job: &str, active: bool) -> Result<(), StateError>;
    /// Adds each delta to the named progress counter of the job (missing counters start at 0).
    async fn add_counters(&self, job: &str, deltas: &[(&str, i64)]) -> Result<(), StateError>;
    /// All progress counters of the job.
    async fn counters(&self, job: &str) -> Result<BTreeMap<String, i64>, StateError>;
    /// Records that a worker is alive, with its info (JSON), for `ttl` from now.
    async fn heartbeat(
        &self,
        worker_id: &str,
        info_json: &str,
        ttl: Duration,
    ) -> Result<(), StateError>;
    /// `(worker_id, info_json)` of the workers whose last heartbeat has not expired, by id.
    async fn workers(&self) -> Result<Vec<(String, String)>, StateError>;
    /// How many samples of the job are done.
    async fn done_count(&self, job: &str) -> Result<u64, StateError>;
    /// Replaces the job's done set with exactly `keys` (re-seeding it from the ledger).
    async fn reset_done(&self, job: &str, keys: &[SampleKey]) -> Result<(), StateError>;
    /// Records why the job cannot go on (a worker found its API key refused, its model unknown),
    /// so the coordinator stops it; the first message recorded is kept.
    async fn set_fatal(&self, job: &str, message: &str) -> Result<(), StateError>;
    /// The job's fatal error, if one was recorded.
    async fn fatal(&self, job: &str) -> Result<Option<String>, StateError>;
    /// Forgets the job's fatal error (a new run of the job starts clean).
    async fn clear_fatal(&self, job: &str) -> Result<(), StateError>;
    /// Forgets everything about the job: registry entry, active flag, done set, counters,
    /// fatal error, step cache and batch records.
    async fn clear_job(&self, job: &str) -> Result<(), StateError>;
    /// Whether the store answers now (for a readiness probe).
    async fn ready(&self) -> bool;
}

/// Connects to the state store `url` names, choosing the implementation by its scheme:
/// `redis://` or `rediss://` (Redis), `memory:` (a fresh in-process store, for one process).
pub async fn connect(url: &str) -> Result<std::sync::Arc<dyn StateStore>, StateError> {
    connect_with_tls(url, &crate::tls::TlsFiles::default()).await
}

/// Connects as [`connect`] does, with `tls` for a `rediss://` URL.
pub async fn connect_with_tls(
    url: &str,
    tls: &crate::tls::TlsFiles,
) -> Result<std::sync::Arc<dyn StateStore>, StateError> {
    match url.split_once(':').map(|(scheme, _)| scheme) {
        Some("redis" | "rediss") => Ok(std::sync::Arc::new(
            redis::RedisState::connect_with_tls(url, tls).await?,
        )),
        Some("memory") => Ok(std::sync::Arc::new(embedded::EmbeddedState::default())),
        _ => Err(crate::service_error::Service::State.failed(
            crate::service_error::Failure::BadUrl,
            format!(
                "{}: not a state store URL: redis://, rediss:// (Redis) or memory: (in-process)",
                crate::broker::secret_url::SecretUrl::new(url)
            ),
        )),
    }
}
