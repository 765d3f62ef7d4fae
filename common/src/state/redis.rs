//! The Redis [`StateStore`] of distributed runs: job registry, active jobs, done set, progress
//! counters, worker heartbeats and the step cache, shared by the coordinator and every worker.
//!
//! # Keys
//! Everything of a job lives under `cai:<job>:` so [`StateStore::clear_job`] can find it:
//!
//! | key | type | what |
//! |---|---|---|
//! | `cai:<job>:job` | hash | `spec` (JSON) and `fingerprint` |
//! | `cai:<job>:done` | set | the 16 raw bytes of each done sample key |
//! | `cai:<job>:progress` | hash | counter name → value |
//! | `cai:<job>:steps:<hexkey>` | hash | step name → cached model-call result, with a TTL |
//! | `cai:<job>:fatal` | string | the first job-fatal error a worker reported |
//!
//! and, shared by all jobs, `cai:_jobs:active` (set of job names), `cai:_workers` (set of
//! worker ids) and `cai:_workers:<id>` (the worker's info, expiring). The global keys carry an
//! `_`, which job names (`[a-z0-9-]`) cannot, so no job's prefix covers them.
//!
//! # Step cache layout
//! One hash per sample rather than one string per (sample, step): forgetting a done sample's
//! steps is one `UNLINK` of its hash with no index to keep, nothing accumulates when a step
//! name changes, and the hash's TTL (renewed at every step written, [`DEFAULT_STEP_TTL`]
//! unless set with [`RedisState::with_step_ttl`]) removes the steps of a sample that never
//! finished. The steps of one sample are only useful together, so they share one expiry.
//!
//! # Invariants
//! - Batches go in one pipeline (one round trip), in commands of at most [`CHUNK`] arguments;
//!   nothing loops one round trip per key.
//! - A command that meets a broken connection is sent once more (the connection manager
//!   reconnects meanwhile), except counter increments, which are not idempotent.
//! - No error carries the password of the URL.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Pipeline, RedisError};
use tracing::debug;

use super::{StateError, StateStore};
use crate::broker::secret_url::SecretUrl;
use crate::sample::SampleKey;

/// How long a cached step lives after the last step of its sample was written.
pub const DEFAULT_STEP_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most keys or members in one command of a pipeline.
const CHUNK: usize = 10_000;
/// Longest wait for the answer to one pipeline (a million-key batch included).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Set of active job names.
const ACTIVE_JOBS: &str = "cai:_jobs:active";
/// Set of the ids of workers that sent a heartbeat (pruned of expired ones when listed).
const WORKERS: &str = "cai:_workers";

/// Whether a command may be sent again after its connection broke.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Running it twice has the effect of running it once.
    Idempotent,
    /// Running it twice could count twice.
    Never,
}

/// Shared state in Redis; clones share one multiplexed, self-reconnecting connection.
#[derive(Clone)]
pub struct RedisState {
    connection: ConnectionManager,
    url: SecretUrl,
    step_ttl: Duration,
}

impl RedisState {
    /// Connects to `url` (`redis://[:password@]host:port[/db]`; the DB number selects the
    /// database). Fails if Redis does not answer.
    pub async fn connect(url: &str) -> Result<Self, StateError> {
        let url = SecretUrl::new(url);
        let error = |context: &str, error: RedisError| {
            StateError(format!("{context} {url}: {}", url.scrub(error)))
        };
        let client = redis::Client::open(url.raw()).map_err(|e| error("invalid Redis URL", e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| error("connecting to", e))?;
        Ok(Self {
            connection,
            url,
            step_ttl: DEFAULT_STEP_TTL,
        })
    }

    /// Whether Redis answers a `PING` within a second, for a readiness probe.
    pub async fn ping(&self) -> bool {
        let mut connection = self.connection.clone();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut connection);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(_))
        )
    }

    /// Sets how long cached steps live (at least a second).
    pub fn with_step_ttl(mut self, ttl: Duration) -> Self {
        self.step_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Sends a pipeline and parses its replies, once more if the connection broke.
    async fn query<T: FromRedisValue>(
        &self,
        what: &str,
        pipeline: &Pipeline,
        retry: Retry,
    ) -> Result<T, StateError> {
        let mut connection = self.connection.clone();
        let result = match pipeline.query_async(&mut connection).await {
            Err(error) if retry == Retry::Idempotent && is_broken(&error) => {
                debug!(what, error = %self.url.scrub(&error), "Redis connection broken; sending again");
                pipeline.query_async(&mut connection).await
            }
            result => result,
        };
        result.map_err(|error| {
            StateError(format!("{what} at {}: {}", self.url, self.url.scrub(error)))
        })
    }
}

/// Whether an error means the connection is gone (rather than a command error).
fn is_broken(error: &RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error()
}

fn job_key(job: &str, suffix: &str) -> String {
    format!("cai:{job}:{suffix}")
}

fn steps_key(job: &str, key: &SampleKey) -> String {
    format!("cai:{job}:steps:{}", key.to_hex())
}

fn worker_key(worker_id: &str) -> String {
    format!("{WORKERS}:{worker_id}")
}

/// A `SCAN MATCH` pattern matching exactly the keys that start with `prefix`.
fn prefix_pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

/// One command per chunk of `keys`, each `name key member…` with the raw key bytes as members.
fn add_chunked(pipeline: &mut Pipeline, name: &str, set: &str, keys: &[SampleKey]) {
    for chunk in keys.chunks(CHUNK) {
        let command = pipeline.cmd(name).arg(set);
        for key in chunk {
            command.arg(&key.0[..]);
        }
    }
}

/// Takes or renews a lease: `KEYS[1]` lease, `ARGV[1]` holder, `ARGV[2]` TTL in ms.
const LEASE: &str = r"
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";
/// Deletes a lease if `ARGV[1]` still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

fn lease_key(job: &str, key: &SampleKey) -> String {
    format!("cai:{job}:lease:{}", key.to_hex())
}

#[async_trait]
impl StateStore for RedisState {
    async fn lease(
        &self,
        job: &str,
        key: &SampleKey,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let mut connection = self.connection.clone();
        let taken: i64 = redis::Script::new(LEASE)
            .key(lease_key(job, key))
            .arg(holder)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut connection)
            .await
            .map_err(|error| {
                StateError(format!("lease at {}: {}", self.url, self.url.scrub(error)))
            })?;
        Ok(taken == 1)
    }

    async fn release(&self, job: &str, key: &SampleKey, holder: &str) -> Result<(), StateError> {
        let mut connection = self.connection.clone();
        let _: i64 = redis::Script::new(RELEASE)
            .key(lease_key(job, key))
            .arg(holder)
            .invoke_async(&mut connection)
            .await
            .map_err(|error| {
                StateError(format!(
                    "release at {}: {}",
                    self.url,
                    self.url.scrub(error)
                ))
            })?;
        Ok(())
    }

    async fn done(&self, job: &str, keys: &[SampleKey]) -> Result<Vec<bool>, StateError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipeline = redis::pipe();
        add_chunked(&mut pipeline, "SMISMEMBER", &job_key(job, "done"), keys);
        let chunks: Vec<Vec<bool>> = self.query("done", &pipeline, Retry::Idempotent).await?;
        Ok(chunks.into_iter().flatten().collect())
    }

    async fn mark_done(&self, job: &str, keys: &[SampleKey]) -> Result<(), StateError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        add_chunked(&mut pipeline, "SADD", &job_key(job, "done"), keys);
        self.query("mark done", &pipeline, Retry::Idempotent).await
    }

    async fn step_get(
        &self,
        job: &str,
        key: &SampleKey,
        step: &str,
    ) -> Result<Option<Vec<u8>>, StateError> {
        let mut pipeline = redis::pipe();
        pipeline.hget(steps_key(job, key), step);
        let (value,): (Option<Vec<u8>>,) =
            self.query("step get", &pipeline, Retry::Idempotent).await?;
        Ok(value)
    }

    async fn step_put(
        &self,
        job: &str,
        key: &SampleKey,
        step: &str,
        value: Vec<u8>,
    ) -> Result<(), StateError> {
        let hash = steps_key(job, key);
        let mut pipeline = redis::pipe();
        pipeline
            .atomic()
            .hset(&hash, step, value)
            .pexpire(&hash, self.step_ttl.as_millis() as i64);
        self.query("step put", &pipeline, Retry::Idempotent).await
    }

    async fn step_forget(&self, job: &str, keys: &[SampleKey]) -> Result<(), StateError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        for chunk in keys.chunks(CHUNK) {
            let hashes: Vec<String> = chunk.iter().map(|key| steps_key(job, key)).collect();
            pipeline.unlink(hashes);
        }
        self.query("step forget", &pipeline, Retry::Idempotent)
            .await
    }

    async fn put_job(
        &self,
        job: &str,
        spec_json: &str,
        fingerprint: &str,
    ) -> Result<(), StateError> {
        let mut pipeline = redis::pipe();
        pipeline.hset_multiple(
            job_key(job, "job"),
            &[("spec", spec_json), ("fingerprint", fingerprint)],
        );
        self.query("put job", &pipeline, Retry::Idempotent).await
    }

    async fn get_job(&self, job: &str) -> Result<Option<(String, String)>, StateError> {
        let mut pipeline = redis::pipe();
        pipeline.hmget(job_key(job, "job"), &["spec", "fingerprint"]);
        let ((spec, fingerprint),): ((Option<String>, Option<String>),) =
            self.query("get job", &pipeline, Retry::Idempotent).await?;
        Ok(spec.zip(fingerprint))
    }

    async fn set_fatal(&self, job: &str, message: &str) -> Result<(), StateError> {
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SET")
            .arg(job_key(job, "fatal"))
            .arg(message)
            .arg("NX")
            .ignore();
        self.query("set fatal", &pipeline, Retry::Idempotent).await
    }

    async fn fatal(&self, job: &str) -> Result<Option<String>, StateError> {
        let mut pipeline = redis::pipe();
        pipeline.get(job_key(job, "fatal"));
        let (message,): (Option<String>,) =
            self.query("fatal", &pipeline, Retry::Idempotent).await?;
        Ok(message)
    }

    async fn clear_fatal(&self, job: &str) -> Result<(), StateError> {
        let mut pipeline = redis::pipe();
        pipeline.del(job_key(job, "fatal")).ignore();
        self.query("clear fatal", &pipeline, Retry::Idempotent)
            .await
    }

    async fn active_jobs(&self) -> Result<Vec<String>, StateError> {
        let mut pipeline = redis::pipe();
        pipeline.smembers(ACTIVE_JOBS);
        let (mut jobs,): (Vec<String>,) = self
            .query("active jobs", &pipeline, Retry::Idempotent)
            .await?;
        jobs.sort();
        Ok(jobs)
    }

    async fn set_active(&self, job: &str, active: bool) -> Result<(), StateError> {
        let mut pipeline = redis::pipe();
        if active {
            pipeline.sadd(ACTIVE_JOBS, job);
        } else {
            pipeline.srem(ACTIVE_JOBS, job);
        }
        self.query("set active", &pipeline, Retry::Idempotent).await
    }

    /// Not sent again after a broken connection: the increments may have been applied.
    async fn add_counters(&self, job: &str, deltas: &[(&str, i64)]) -> Result<(), StateError> {
        if deltas.is_empty() {
            return Ok(());
        }
        let progress = job_key(job, "progress");
        let mut pipeline = redis::pipe();
        for (name, delta) in deltas {
            pipeline.hincr(&progress, *name, *delta);
        }
        self.query("add counters", &pipeline, Retry::Never).await
    }

    async fn counters(&self, job: &str) -> Result<BTreeMap<String, i64>, StateError> {
        let mut pipeline = redis::pipe();
        pipeline.hgetall(job_key(job, "progress"));
        let (counters,): (BTreeMap<String, i64>,) =
            self.query("counters", &pipeline, Retry::Idempotent).await?;
        Ok(counters)
    }

    async fn heartbeat(
        &self,
        worker_id: &str,
        info_json: &str,
        ttl: Duration,
    ) -> Result<(), StateError> {
        let mut pipeline = redis::pipe();
        pipeline
            .atomic()
            .cmd("SET")
            .arg(worker_key(worker_id))
            .arg(info_json)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .sadd(WORKERS, worker_id);
        self.query("heartbeat", &pipeline, Retry::Idempotent).await
    }

    /// Lists live workers and drops the ids of expired ones from the index. A worker whose
    /// heartbeat lands between the read and the pruning is listed again at its next one.
    async fn workers(&self) -> Result<Vec<(String, String)>, StateError> {
        let mut pipeline = redis::pipe();
        pipeline.smembers(WORKERS);
        let (mut ids,): (Vec<String>,) =
            self.query("workers", &pipeline, Retry::Idempotent).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let mut pipeline = redis::pipe();
        pipeline.mget(ids.iter().map(|id| worker_key(id)).collect::<Vec<_>>());
        let (infos,): (Vec<Option<String>>,) =
            self.query("workers", &pipeline, Retry::Idempotent).await?;
        let (live, expired): (Vec<_>, Vec<_>) = ids
            .into_iter()
            .zip(infos)
            .partition(|(_, info)| info.is_some());
        if !expired.is_empty() {
            let mut pipeline = redis::pipe();
            let expired: Vec<String> = expired.into_iter().map(|(id, _)| id).collect();
            pipeline.srem(WORKERS, expired);
            self.query::<()>("workers", &pipeline, Retry::Idempotent)
                .await?;
        }
        Ok(live
            .into_iter()
            .filter_map(|(id, info)| Some((id, info?)))
            .collect())
    }

    async fn done_count(&self, job: &str) -> Result<u64, StateError> {
        let mut pipeline = redis::pipe();
        pipeline.scard(job_key(job, "done"));
        let (count,): (u64,) = self
            .query("done count", &pipeline, Retry::Idempotent)
            .await?;
        Ok(count)
    }

    /// Builds the new set beside the old one and swaps it in with one `RENAME`, so readers
    /// never see a half-filled done set.
    async fn reset_done(&self, job: &str, keys: &[SampleKey]) -> Result<(), StateError> {
        let done = job_key(job, "done");
        let next = job_key(job, "done:next");
        let mut pipeline = redis::pipe();
        pipeline.del(&next);
        if keys.is_empty() {
            pipeline.del(&done);
        } else {
            add_chunked(&mut pipeline, "SADD", &next, keys);
            pipeline.rename(&next, &done);
        }
        self.query("reset done", &pipeline, Retry::Idempotent).await
    }

    async fn clear_job(&self, job: &str) -> Result<(), StateError> {
        let pattern = prefix_pattern(&job_key(job, ""));
        let mut cursor = 0_u64;
        loop {
            let mut pipeline = redis::pipe();
            pipeline
                .cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(CHUNK);
            let ((next, keys),): ((u64, Vec<String>),) = self
                .query("clear job", &pipeline, Retry::Idempotent)
                .await?;
            if !keys.is_empty() {
                let mut pipeline = redis::pipe();
                pipeline.unlink(keys);
                self.query::<()>("clear job", &pipeline, Retry::Idempotent)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        self.set_active(job, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_pattern;

    #[test]
    fn scan_patterns_escape_glob_characters() {
        assert_eq!(prefix_pattern("cai:job-1:"), "cai:job-1:*");
        assert_eq!(
            prefix_pattern("cai:a*b?[c]\\:"),
            "cai:a\\*b\\?\\[c\\]\\\\:*"
        );
    }
}
