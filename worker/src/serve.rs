//! A stateless worker of a distributed run: serves every active job it finds in the state
//! store, picks up new jobs within a poll interval, drops jobs that are no longer active,
//! heartbeats, and drains on shutdown.
//!
//! Invariant: a job that fails fatally on this worker (bad API key, unknown model) is reported
//! to the state store and not served again by this worker while its registry entry stays the
//! same, so the coordinator can stop the job instead of the corpus burning through failures. A
//! job registered again with another entry (the job file fixed and run again) is tried again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cai_common::broker::Broker;
use cai_common::descriptor::{JobDescriptor, MAX_ENTRY_BYTES, format_version_of};
use cai_common::envelope::FORMAT_VERSION;
use cai_common::signing::JobKeys;
use cai_common::state::StateStore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::consume::{self, TaskSignatures, WorkerOptions};
use crate::model::Models;
use crate::model::key_policy::KeyPolicy;
use crate::pipeline::JobContext;

/// How a worker process runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// This worker's id in heartbeats.
    pub worker_id: String,
    /// Samples in flight per job; `None`: as many as the job's busiest model takes
    /// (`max_concurrency`, its `max_concurrency_limit` for `"auto"`, or two batches' worth in
    /// batch mode).
    pub concurrency: Option<usize>,
    /// How often the active jobs are looked up.
    pub poll_interval: Duration,
    /// How long a heartbeat lives; one is sent every third of it.
    pub heartbeat_ttl: Duration,
    /// After shutdown, how long tasks in flight may take to finish; the rest go back to the queue.
    pub grace: Duration,
    /// Which API-key variables jobs may have this worker read, and where each may be sent.
    pub keys: KeyPolicy,
    /// The job keys jobs and tasks must be signed with; none: nothing is checked.
    pub job_keys: JobKeys,
}

/// Runs until `shutdown` fires, then drains within the grace period.
pub async fn serve(
    broker: Arc<dyn Broker>,
    state: Arc<dyn StateStore>,
    options: ServeOptions,
    shutdown: CancellationToken,
) {
    let mut serving: HashMap<String, Serving> = HashMap::new();
    // Jobs given up on this worker, with the registry entry each was given up on.
    let mut given_up: HashMap<String, String> = HashMap::new();
    let mut consumers: JoinSet<(String, Result<(), String>)> = JoinSet::new();
    let started = Instant::now();
    let mut poll = tokio::time::interval(options.poll_interval);
    let mut beat = tokio::time::interval(options.heartbeat_ttl / 3);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = beat.tick() => {
                let jobs: Vec<&String> = serving.keys().collect();
                let info = serde_json::json!({
                    "jobs": jobs,
                    "pid": std::process::id(),
                    "up_s": started.elapsed().as_secs(),
                });
                if let Err(error) = state.heartbeat(&options.worker_id, &info.to_string(), options.heartbeat_ttl).await {
                    tracing::warn!(%error, "heartbeat failed");
                }
            }
            _ = poll.tick() => {
                let active = match state.active_jobs().await {
                    Ok(active) => active,
                    Err(error) => {
                        tracing::warn!(%error, "cannot list active jobs; retrying");
                        continue;
                    }
                };
                serving.retain(|job, serving| {
                    let keep = active.contains(job);
                    if !keep {
                        tracing::info!(job, "job no longer active; stopping");
                        serving.token.cancel();
                    }
                    keep
                });
                for job in active {
                    if serving.contains_key(&job) {
                        continue;
                    }
                    let entry = match state.get_job(&job).await {
                        Ok(Some((json, _))) => json,
                        Ok(None) => {
                            tracing::warn!(job, "job is active but not registered yet; retrying");
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(job, %error, "cannot read this job's spec yet; retrying");
                            continue;
                        }
                    };
                    if given_up.get(&job).is_some_and(|gave_up| *gave_up == entry) {
                        continue;
                    }
                    if given_up.remove(&job).is_some() {
                        tracing::info!(job, "job registered again with another spec; trying it again");
                    }
                    match start_job(&job, &entry, &broker, &state, &options, &shutdown) {
                        Ok((token, consumer)) => {
                            tracing::info!(job, "serving job");
                            serving.insert(job.clone(), Serving { token, entry });
                            consumers.spawn(async move { (job, consumer.await) });
                        }
                        Err(StartError::Unreadable(error)) => {
                            // Written by a newer coordinator: another worker may serve it.
                            tracing::error!(job, %error, "cannot read this job's spec; not serving it");
                            given_up.insert(job, entry);
                        }
                        Err(StartError::Fatal(error)) => {
                            tracing::error!(job, %error, "cannot serve job");
                            report_fatal(&state, &job, &error).await;
                            given_up.insert(job, entry);
                        }
                    }
                }
            }
            Some(joined) = consumers.join_next(), if !consumers.is_empty() => {
                let Ok((job, outcome)) = joined else { continue };
                let served = serving.remove(&job);
                if let Err(error) = outcome {
                    tracing::error!(job, %error, "job failed fatally on this worker");
                    report_fatal(&state, &job, &error).await;
                    if let Some(served) = served {
                        given_up.insert(job, served.entry);
                    }
                }
            }
        }
    }
    tracing::info!(grace = ?options.grace, "draining: finishing tasks in flight");
    for served in serving.values() {
        served.token.cancel();
    }
    let drained = tokio::time::timeout(options.grace, async {
        while consumers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("grace period over; unfinished tasks go back to the queue");
        consumers.abort_all();
    }
}

type Consumer = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A job this worker serves, with the registry entry it was started from (kept as the entry
/// given up on if the job fails fatally here: it is tried again only once its entry changes).
struct Serving {
    /// Stops serving it.
    token: CancellationToken,
    /// The registry entry (descriptor JSON) the job was started from.
    entry: String,
}

/// Why a job could not be started on this worker.
enum StartError {
    /// The registry entry does not decode (a newer format): this worker skips the job, newer
    /// workers can serve it, so the job itself is not stopped.
    Unreadable(String),
    /// The job cannot run anywhere (its API key variable is missing, say): stop it.
    Fatal(String),
}

/// Builds a job's context from its registry entry `json` and starts consuming its tasks.
fn start_job(
    job: &str,
    json: &str,
    broker: &Arc<dyn Broker>,
    state: &Arc<dyn StateStore>,
    options: &ServeOptions,
    shutdown: &CancellationToken,
) -> Result<(CancellationToken, Consumer), StartError> {
    if json.len() > MAX_ENTRY_BYTES {
        return Err(StartError::Unreadable(format!(
            "job {job:?}: its registry entry has {} bytes, over the limit of {MAX_ENTRY_BYTES}",
            json.len()
        )));
    }
    if let Err(error) = options.job_keys.verify_entry(job, json) {
        return Err(StartError::Fatal(format!(
            "job {job:?} refused by a worker: its registry entry {error}"
        )));
    }
    if let Some(version) = format_version_of(json).filter(|v| *v != FORMAT_VERSION) {
        return Err(StartError::Unreadable(format!(
            "job {job:?} is registered with message format version {version}; this worker (cai \
             {}) speaks version {FORMAT_VERSION}, so it leaves the job to workers that do",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let descriptor = JobDescriptor::from_json(json).map_err(|e| {
        StartError::Unreadable(format!("job {job:?}: unreadable registry entry: {e}"))
    })?;
    let models = Models::build_allowed(&descriptor.spec.models, &options.keys)
        .map_err(|e| StartError::Fatal(e.to_string()))?;
    let concurrency = options
        .concurrency
        .unwrap_or_else(|| descriptor.spec.samples_in_flight());
    let fingerprint = descriptor.fingerprint.clone();
    let ctx = Arc::new(JobContext::new(
        Arc::new(descriptor.spec),
        Arc::new(descriptor.constitution),
        models,
        state.clone(),
    ));
    let worker_options = WorkerOptions {
        sample_concurrency: concurrency,
        // The coordinator's default task size; a worker does not know the job's.
        tasks_in_flight: WorkerOptions::tasks_for(concurrency, 16),
        signatures: TaskSignatures {
            keys: options.job_keys.clone(),
            fingerprint,
        },
    };
    let token = shutdown.child_token();
    let consumer = consume::work(ctx, broker.clone(), worker_options, token.clone());
    Ok((
        token,
        Box::pin(async move { consumer.await.map_err(|e| e.to_string()) }),
    ))
}

async fn report_fatal(state: &Arc<dyn StateStore>, job: &str, error: &str) {
    if let Err(e) = state.set_fatal(job, error).await {
        tracing::warn!(job, error = %e, "cannot record the job's fatal error");
    }
}
