//! The Redis [`StateStore`] of distributed runs: job registry, active jobs, done set, progress
//! counters, worker heartbeats and the step cache, shared by the coordinator and every worker.
//!
//! # Keys
//! Every key starts with a prefix, `cai` unless the URL's `prefix` parameter names another
//! (`redis://host:6379/0?prefix=team-a`): teams or test runs sharing one Redis each see only
//! their own jobs and workers. Below, `cai` stands for the prefix. Everything of a job lives under
//! `cai:<job>:` so [`StateStore::clear_job`] can find it:
//!
//! | key | type | what |
//! |---|---|---|
//! | `cai:<job>:job` | hash | `spec` (JSON) and `fingerprint` |
//! | `cai:<job>:done` | set | the 16 raw bytes of each done sample key |
//! | `cai:<job>:progress` | hash | counter name → value |
//! | `cai:<job>:steps:<hexkey>` | hash | step name → cached model-call result, with a TTL |
//! | `cai:<job>:fatal` | string | the first job-fatal error a worker reported |
//! | `cai:<job>:batches` | hash | batch record id → record of a provider batch, with a TTL |
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
use redis::{ClientTlsConfig, FromRedisValue, Pipeline, RedisError, TlsCertificates};
use tracing::debug;

use super::{StateError, StateStore};
use crate::broker::secret_url::SecretUrl;
use crate::sample::SampleKey;
use crate::service_error::{Failure, Service, is_broken};
use crate::tls::TlsFiles;
use keys::{Keys, prefix_pattern, split_prefix};

mod keys;

pub use keys::DEFAULT_PREFIX;

/// How long a cached step lives after the last step of its sample was written.
pub const DEFAULT_STEP_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most keys or members in one command of a pipeline.
const CHUNK: usize = 10_000;
/// Longest wait for the answer to one pipeline (a million-key batch included).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    keys: Keys,
    step_ttl: Duration,
}

impl RedisState {
    /// Connects to `url` (`redis://[:password@]host:port[/db][?prefix=name]`; the DB number
    /// selects the database, the prefix the keys' namespace). Fails if Redis does not answer.
    pub async fn connect(url: &str) -> Result<Self, StateError> {
        Self::connect_with_tls(url, &TlsFiles::default()).await
    }

    /// Connects as [`Self::connect`] does, with `tls` for a `rediss://` URL: a private CA and a
    /// client certificate (see [`crate::tls`]).
    pub async fn connect_with_tls(url: &str, tls: &TlsFiles) -> Result<Self, StateError> {
        let (url, prefix) = split_prefix(url).map_err(|message| {
            Service::State.failed(
                Failure::BadUrl,
                format!("invalid Redis URL {}: {message}", SecretUrl::new(url)),
            )
        })?;
        let url = SecretUrl::new(&url);
        let pem = tls
            .read()
            .map_err(|message| Service::State.failed(Failure::TlsFile, message))?;
        let client = if pem.ca.is_some() || pem.client.is_some() {
            let certificates = TlsCertificates {
                client_tls: pem.client.map(|(client_cert, client_key)| ClientTlsConfig {
                    client_cert,
                    client_key,
                }),
                root_cert: pem.ca,
            };
            redis::Client::build_with_tls(url.raw(), certificates)
        } else {
            redis::Client::open(url.raw())
        }
        .map_err(|error| {
            let message = format!("invalid Redis URL {url}: {}", url.scrub(&error));
            Service::State.failed(Failure::BadUrl, message)
        })?;
        // One attempt per connect: cai's own waits (`through_outage`, the start-up wait) decide
        // when to try again, and the client's retries (six, over 6 s) would also repeat
        // failures no retry mends, such as a refused password or certificate, before they are
        // reported.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|error| classify(&url, "connecting to Redis", error))?;
        // The connection opens without a command; the first reply is where a missing password
        // (NOAUTH), a user without permissions (NOPERM) or a client certificate the server
        // demanded (a TLS alert) shows, so it is read here rather than mid-run.
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await
            .map_err(|error| classify(&url, "connecting to Redis", error))?;
        Ok(Self {
            connection,
            url,
            keys: Keys { prefix },
            step_ttl: DEFAULT_STEP_TTL,
        })
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
        result.map_err(|error| classify(&self.url, what, error))
    }
}

/// A Redis error as a [`StateError`] of the kind the one classification gives it.
fn classify(url: &SecretUrl, what: &str, error: RedisError) -> StateError {
    let message = format!("{what} at {url}: {}", url.scrub(&error));
    Service::State.failed(Failure::Redis(&error), message)
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
            .key(self.keys.lease(job, key))
            .arg(holder)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut connection)
            .await
            .map_err(|error| classify(&self.url, "lease", error))?;
        Ok(taken == 1)
    }

    async fn release(&self, job: &str, key: &SampleKey, holder: &str) -> Result<(), StateError> {
        let mut connection = self.connection.clone();
        let _: i64 = redis::Script::new(RELEASE)
            .key(self.keys.lease(job, key))
            .arg(holder)
            .invoke_async(&mut connection)
            .await
            .map_err(|error| classify(&self.url, "release", error))?;
        Ok(())
    }

    async fn done(&self, job: &str, keys: &[SampleKey]) -> Result<Vec<bool>, StateError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipeline = redis::pipe();
        add_chunked(
            &mut pipeline,
            "SMISMEMBER",
            &self.keys.job(job, "done"),
            keys,
        );
        let chunks: Vec<Vec<bool>> = self.query("done", &pipeline, Retry::Idempotent).await?;
        Ok(chunks.into_iter().flatten().collect())
    }

    async fn mark_done(&self, job: &str, keys: &[SampleKey]) -> Result<(), StateError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        add_chunked(&mut pipeline, "SADD", &self.keys.job(job, "done"), keys);
        self.query("mark done", &pipeline, Retry::Idempotent).await
    }

    async fn step_get(
        &self,
        job: &str,
        key: &SampleKey,
        step: &str,
    ) -> Result<Option<Vec<u8>>, StateError> {
        let mut pipeline = redis::pipe();
        pipeline.hget(self.keys.steps(job, key), step);
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
        let hash = self.keys.steps(job, key);
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
            let hashes: Vec<String> = chunk.iter().map(|key| self.keys.steps(job, key)).collect();
            pipeline.unlink(hashes);
        }
        self.query("step forget", &pipeline, Retry::Idempotent)
            .await
    }

    /// The records share one hash whose TTL (the step cache's) is renewed at every write.
    async fn batch_put(&self, job: &str, id: &str, record: Vec<u8>) -> Result<(), StateError> {
        let hash = self.keys.job(job, "batches");
        let mut pipeline = redis::pipe();
        pipeline
            .atomic()
            .hset(&hash, id, record)
            .pexpire(&hash, self.step_ttl.as_millis() as i64);
        self.query("batch put", &pipeline, Retry::Idempotent).await
    }

    async fn batch_records(&self, job: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let mut pipeline = redis::pipe();
        pipeline.hgetall(self.keys.job(job, "batches"));
        let (records,): (Vec<(String, Vec<u8>)>,) = self
            .query("batch records", &pipeline, Retry::Idempotent)
            .await?;
        Ok(records)
    }

    async fn batch_remove(&self, job: &str, id: &str) -> Result<(), StateError> {
        let mut pipeline = redis::pipe();
        pipeline.hdel(self.keys.job(job, "batches"), id).ignore();
        self.query("batch remove", &pipeline, Retry::Idempotent)
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
            self.keys.job(job, "job"),
            &[("spec", spec_json), ("fingerprint", fingerprint)],
        );
        self.query("put job", &pipeline, Retry::Idempotent).await
    }

    async fn get_job(&self, job: &str) -> Result<Option<(String, String)>, StateError> {
        let mut pipeline = redis::pipe();
        pipeline.hmget(self.keys.job(job, "job"), &["spec", "fingerprint"]);
        let ((spec, fingerprint),): ((Option<String>, Option<String>),) =
            self.query("get job", &pipeline, Retry::Idempotent).await?;
        Ok(spec.zip(fingerprint))
    }

    async fn set_fatal(&self, job: &str, message: &str) -> Result<(), StateError> {
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SET")
            .arg(self.keys.job(job, "fatal"))
            .arg(message)
            .arg("NX")
            .ignore();
        self.query("set fatal", &pipeline, Retry::Idempotent).await
    }

    async fn fatal(&self, job: &str) -> Result<Option<String>, StateError> {
        let mut pipeline = redis::pipe();
        pipeline.get(self.keys.job(job, "fatal"));
        let (message,): (Option<String>,) =
            self.query("fatal", &pipeline, Retry::Idempotent).await?;
        Ok(message)
    }

    async fn clear_fatal(&self, job: &str) -> Result<(), StateError> {
        let mut pipeline = redis::pipe();
        pipeline.del(self.keys.job(job, "fatal")).ignore();
        self.query("clear fatal", &pipeline, Retry::Idempotent)
            .await
    }

    async fn active_jobs(&self) -> Result<Vec<String>, StateError> {
        let mut pipeline = redis::pipe();
        pipeline.smembers(self.keys.active_jobs());
        let (mut jobs,): (Vec<String>,) = self
            .query("active jobs", &pipeline, Retry::Idempotent)
            .await?;
        jobs.sort();
        Ok(jobs)
    }

    async fn set_active(&self, job: &str, active: bool) -> Result<(), StateError> {
        let mut pipeline = redis::pipe();
        if active {
            pipeline.sadd(self.keys.active_jobs(), job);
        } else {
            pipeline.srem(self.keys.active_jobs(), job);
        }
        self.query("set active", &pipeline, Retry::Idempotent).await
    }

    /// Not sent again after a broken connection: the increments may have been applied.
    async fn add_counters(&self, job: &str, deltas: &[(&str, i64)]) -> Result<(), StateError> {
        if deltas.is_empty() {
            return Ok(());
        }
        let progress = self.keys.job(job, "progress");
        let mut pipeline = redis::pipe();
        for (name, delta) in deltas {
            pipeline.hincr(&progress, *name, *delta);
        }
        self.query("add counters", &pipeline, Retry::Never).await
    }

    async fn counters(&self, job: &str) -> Result<BTreeMap<String, i64>, StateError> {
        let mut pipeline = redis::pipe();
        pipeline.hgetall(self.keys.job(job, "progress"));
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
            .arg(self.keys.worker(worker_id))
            .arg(info_json)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .sadd(self.keys.workers(), worker_id);
        self.query("heartbeat", &pipeline, Retry::Idempotent).await
    }

    /// Lists live workers and drops the ids of expired ones from the index. A worker whose
    /// heartbeat lands between the read and the pruning is listed again at its next one.
    async fn workers(&self) -> Result<Vec<(String, String)>, StateError> {
        let mut pipeline = redis::pipe();
        pipeline.smembers(self.keys.workers());
        let (mut ids,): (Vec<String>,) =
            self.query("workers", &pipeline, Retry::Idempotent).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let mut pipeline = redis::pipe();
        pipeline.mget(
            ids.iter()
                .map(|id| self.keys.worker(id))
                .collect::<Vec<_>>(),
        );
        let (infos,): (Vec<Option<String>>,) =
            self.query("workers", &pipeline, Retry::Idempotent).await?;
        let (live, expired): (Vec<_>, Vec<_>) = ids
            .into_iter()
            .zip(infos)
            .partition(|(_, info)| info.is_some());
        if !expired.is_empty() {
            let mut pipeline = redis::pipe();
            let expired: Vec<String> = expired.into_iter().map(|(id, _)| id).collect();
            pipeline.srem(self.keys.workers(), expired);
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
        pipeline.scard(self.keys.job(job, "done"));
        let (count,): (u64,) = self
            .query("done count", &pipeline, Retry::Idempotent)
            .await?;
        Ok(count)
    }

    /// Builds the new set beside the old one and swaps it in with one `RENAME`, so readers
    /// never see a half-filled done set.
    async fn reset_done(&self, job: &str, keys: &[SampleKey]) -> Result<(), StateError> {
        let done = self.keys.job(job, "done");
        let next = self.keys.job(job, "done:next");
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
        let pattern = prefix_pattern(&self.keys.job(job, ""));
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

    /// Whether Redis answers a `PING` within a second.
    async fn ready(&self) -> bool {
        let mut connection = self.connection.clone();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut connection);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{DEFAULT_PREFIX, prefix_pattern, split_prefix};

    #[test]
    fn the_prefix_parameter_is_split_off_the_url() {
        let split = |url: &str| split_prefix(url).unwrap();
        assert_eq!(
            split("redis://127.0.0.1:6379/2"),
            ("redis://127.0.0.1:6379/2".into(), DEFAULT_PREFIX.into())
        );
        assert_eq!(
            split("redis://:pw@h:6379/0?prefix=team-a"),
            ("redis://:pw@h:6379/0".into(), "team-a".into())
        );
        assert_eq!(
            split("redis://h/0?protocol=resp3&prefix=t.1&x=y"),
            ("redis://h/0?protocol=resp3&x=y".into(), "t.1".into())
        );
        assert!(split_prefix("redis://h/0?prefix=a*b").is_err());
        assert!(split_prefix("redis://h/0?prefix=").is_err());
    }

    #[test]
    fn scan_patterns_escape_glob_characters() {
        assert_eq!(prefix_pattern("cai:job-1:"), "cai:job-1:*");
        assert_eq!(
            prefix_pattern("cai:a*b?[c]\\:"),
            "cai:a\\*b\\?\\[c\\]\\\\:*"
        );
    }
}
