//! Distributed mode, coordinator side: the same coordinator as embedded mode, on RabbitMQ and
//! Redis. On start it takes the job over: registers it for workers, makes the state store's done
//! set equal to the ledger's (re-seeding it if Redis lost it), replaces the queued tasks with the
//! samples that are not done, and marks the job active. While running it mirrors progress into
//! the state store and stops the job if a worker reports a fatal error. When every sample is
//! accounted for it retires the job: workers stop serving it once it is not active. The (empty)
//! queues and the dead-letter queue are left for the operator to inspect.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cai_common::broker::{Broker, Queue};
use cai_common::descriptor::{JobDescriptor, format_version_of};
use cai_common::envelope::{self, FORMAT_VERSION};
use cai_common::sample::SampleKey;
use cai_common::service_error::through_outage;
use cai_common::services::connect_waiting;
use cai_common::signing::JobKey;
use cai_common::state::StateStore;
use cai_common::tls::TlsFiles;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::coordinate::{CoordinatorOptions, Run, Stop, Summary};
use crate::error::RunError;
use crate::ledger::{self, Ledger};
use crate::observe;
use crate::plan::Plan;
use crate::progress::Progress;

/// Where the broker and the state store are.
#[derive(Clone, Debug)]
pub struct Services {
    /// The broker's URL (`amqp://…`: RabbitMQ; [`cai_common::broker::connect`] has the schemes).
    pub broker: String,
    /// The state store's URL (`redis://…`: Redis; [`cai_common::state::connect`] has the schemes).
    pub state: String,
    /// The private CA and client certificate for `amqps://` and `rediss://`.
    pub tls: TlsFiles,
    /// How long a host name that does not resolve is waited for at start.
    pub connect_timeout: Duration,
}

/// The broker and the state store of a distributed run, both answering.
pub struct Connected {
    broker: Arc<dyn Broker>,
    state: Arc<dyn StateStore>,
}

/// Connects to the services before anything of the run is written, so that a setup no wait
/// mends (a certificate, credentials, a URL) stops the command with the output directory
/// untouched. Services that are away are waited for, as in the middle of a run, and a signal
/// ends that wait at once.
pub async fn connect(
    services: &Services,
    shutdown: &CancellationToken,
) -> Result<Connected, RunError> {
    let connecting = connect_waiting(
        &services.broker,
        &services.state,
        &services.tls,
        services.connect_timeout,
        &|_| {},
    );
    tokio::select! {
        connected = connecting => {
            let (broker, state) = connected?;
            Ok(Connected { broker, state })
        }
        () = shutdown.cancelled() => Err(RunError::Interrupted),
    }
}

/// Runs the coordinator of a distributed job on `connected` services until it is complete or
/// `shutdown` fires.
pub async fn run(
    plan: &Plan,
    connected: Connected,
    options: &CoordinatorOptions,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
) -> Result<Summary, RunError> {
    let job = plan.spec().name.clone();
    let Connected { broker, state } = connected;
    // A signal stops the take-over's waits at once: nothing has been published yet.
    let ledger = tokio::select! {
        ledger = take_over(plan, broker.as_ref(), state.as_ref(), options.job_key.as_ref()) => ledger?,
        () = shutdown.cancelled() => return Err(RunError::Interrupted),
    };

    let stop = shutdown.child_token();
    let watcher = watch_job(
        plan.clone(),
        state.clone(),
        options.job_key.clone(),
        stop.clone(),
    );
    let mirror_stop = CancellationToken::new();
    let mirror = mirror_progress(
        job.clone(),
        state.clone(),
        progress.clone(),
        mirror_stop.clone(),
    );
    // Remote workers keep running after a coordinator stops: whatever they publish later is
    // collected by the next run, so there is nothing to wait for once the queue is quiet.
    let producers_stopped = CancellationToken::new();
    producers_stopped.cancel();
    let queues = observe::watch_queues(
        job.clone(),
        broker.clone(),
        Duration::from_secs(2),
        mirror_stop.clone(),
    );
    let run = Run {
        plan,
        broker,
        state: state.clone(),
        options,
        progress: progress.clone(),
    };
    let outcome = run
        .coordinate(
            ledger,
            Stop {
                shutdown: stop.clone(),
                producers_stopped,
            },
        )
        .await;
    mirror_stop.cancel();
    let _ = mirror.await;
    let _ = queues.await;
    watcher.abort();
    let fatal = through_outage("reading the job's fatal error", None, || state.fatal(&job)).await;
    if let Ok(Some(message)) = fatal {
        retire(state.as_ref(), &job).await?;
        return Err(RunError::JobFatal { job, message });
    }
    let summary = outcome?;
    if summary.complete {
        retire(state.as_ref(), &job).await?;
    }
    Ok(summary)
}

/// Tells workers to stop serving the job, waiting for a state store that is away.
async fn retire(state: &dyn StateStore, job: &str) -> anyhow::Result<()> {
    through_outage("retiring the job", None, || state.set_active(job, false)).await?;
    Ok(())
}

/// Makes the broker and the state store agree with the ledger before anything is published,
/// and returns the ledger, opened once for the whole run.
async fn take_over(
    plan: &Plan,
    broker: &dyn Broker,
    state: &dyn StateStore,
    key: Option<&JobKey>,
) -> Result<Ledger, RunError> {
    let job = &plan.spec().name;
    // Opening the ledger repairs what a crash of the previous coordinator left.
    let ledger = Ledger::open(plan.job.output_dir()).context("opening the output directory")?;
    // A service that is away at the start is waited for, as in the middle of a run.
    let registered =
        through_outage("reading the job registry", None, || state.get_job(job)).await?;
    if let Some(version) = registered
        .as_ref()
        .and_then(|(json, _)| format_version_of(json))
        .filter(|version| *version > FORMAT_VERSION)
    {
        return Err(RunError::Refused(format!(
            "job {job:?} was registered by a newer cai (message format version {version}; this \
             build writes {FORMAT_VERSION}): run it with that version"
        )));
    }
    for queue in [Queue::Tasks, Queue::Results] {
        refuse_newer_messages(job, broker, queue).await?;
    }
    if let Some((_, fingerprint)) = registered {
        if fingerprint != plan.fingerprint {
            tracing::warn!(
                job,
                "the state store held another spec of this job; replacing it"
            );
            through_outage("clearing the job", None, || state.clear_job(job)).await?;
        }
    }
    through_outage("clearing the job's fatal error", None, || {
        state.clear_fatal(job)
    })
    .await?;
    let purged = through_outage("purging the task queue", None, || {
        broker.purge(job, Queue::Tasks)
    })
    .await?;
    if purged > 0 {
        tracing::info!(
            job,
            purged,
            "replaced the tasks left in the queue by a previous run"
        );
    }
    register(plan, state, &ledger.committed_keys(), key).await?;
    Ok(ledger)
}

/// Refuses the job if the first ready message of `queue` is of a newer format version than
/// this build's: a newer coordinator or newer workers ran it, and taking it over would purge
/// their tasks or dead-letter their results. The message is put back.
async fn refuse_newer_messages(
    job: &str,
    broker: &dyn Broker,
    queue: Queue,
) -> Result<(), RunError> {
    if through_outage("reading a queue's depth", None, || broker.depth(job, queue)).await? == 0 {
        return Ok(());
    }
    let mut messages = broker.consume(job, queue, 1).await?;
    let first = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
    let Ok(Some(delivery)) = first else {
        return Ok(());
    };
    let version = envelope::version_of(&delivery.payload);
    delivery.acker.requeue().await?;
    match version {
        Some(version) if version > FORMAT_VERSION => Err(RunError::Refused(format!(
            "the {queue:?} queue of job {job:?} holds messages of format version {version}, \
             newer than this build's {FORMAT_VERSION}: run the job with the cai that wrote them"
        ))),
        _ => Ok(()),
    }
}

/// Watches the job in the state store: stops the run when a worker records a fatal error, and
/// registers the job again (done set re-seeded from the ledger) if the state store lost it.
fn watch_job(
    plan: Plan,
    state: Arc<dyn StateStore>,
    key: Option<JobKey>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let job = plan.spec().name.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            if let Ok(Some(message)) = state.fatal(&job).await {
                tracing::error!(
                    job,
                    message,
                    "a worker reported a fatal error; stopping the job"
                );
                stop.cancel();
                return;
            }
            let registered = state.get_job(&job).await;
            if matches!(registered, Ok(None)) {
                tracing::warn!(job, "the state store lost the job; registering it again");
                let registered = match ledger::committed_keys(plan.job.output_dir()) {
                    Ok(done) => register(&plan, state.as_ref(), &done, key.as_ref()).await,
                    Err(error) => Err(error.into()),
                };
                if let Err(error) = registered {
                    tracing::warn!(job, %error, "registering the job again failed; retrying");
                }
            }
        }
    })
}

/// Registers the job for workers with `done` (the ledger's committed keys) as its done set,
/// and marks it active.
/// With a job key the entry is signed, so workers holding the key accept it.
async fn register(
    plan: &Plan,
    state: &dyn StateStore,
    done: &[SampleKey],
    key: Option<&JobKey>,
) -> anyhow::Result<()> {
    let job = &plan.spec().name;
    let descriptor = JobDescriptor {
        spec: plan.spec().clone(),
        constitution: (*plan.constitution).clone(),
        fingerprint: plan.fingerprint.clone(),
        format_version: envelope::FORMAT_VERSION,
    };
    let json = descriptor.to_json();
    let json = match key {
        Some(key) => key.sign_entry(job, &json),
        None => json,
    };
    through_outage("seeding the done set", None, || state.reset_done(job, done)).await?;
    through_outage("registering the job", None, || {
        state.put_job(job, &json, &plan.fingerprint)
    })
    .await?;
    through_outage("activating the job", None, || state.set_active(job, true)).await?;
    Ok(())
}

/// Mirrors the coordinator's counters into the state store every second, for `cai status`,
/// and once more when `stop` fires. The counters are reset first: they describe this run.
fn mirror_progress(
    job: String,
    state: Arc<dyn StateStore>,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut published: Vec<(&'static str, i64)> = match state.counters(&job).await {
            Ok(previous) => snapshot(&progress)
                .into_iter()
                .map(|(name, _)| (name, previous.get(name).copied().unwrap_or(0)))
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                () = stop.cancelled() => true,
            };
            publish_counts(&job, state.as_ref(), &progress, &mut published).await;
            if stopping {
                return;
            }
        }
    })
}

/// The counters `cai status` reads, as (name, value) pairs.
fn snapshot(progress: &Progress) -> Vec<(&'static str, i64)> {
    let counts = progress.counts();
    let usage = progress.usage();
    [
        ("lines_read", counts.lines_read),
        ("done", counts.done),
        ("failed", counts.failed),
        ("rejected", counts.rejected),
        ("duplicates", counts.duplicates),
        ("model_calls", usage.calls),
        ("batch_calls", usage.batch_calls),
        ("tokens_in", usage.tokens_in),
        ("tokens_out", usage.tokens_out),
        ("cost_micro_usd", usage.cost_micro_usd),
    ]
    .into_iter()
    .map(|(name, value)| (name, value as i64))
    .collect()
}

/// Adds what changed since `published` to the state store's counters.
async fn publish_counts(
    job: &str,
    state: &dyn StateStore,
    progress: &Progress,
    published: &mut Vec<(&'static str, i64)>,
) {
    let now = snapshot(progress);
    let deltas: Vec<(&str, i64)> = now
        .iter()
        .map(|(name, value)| {
            let before = published
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, v)| *v);
            (*name, value - before)
        })
        .filter(|(_, delta)| *delta != 0)
        .collect();
    if deltas.is_empty() {
        return;
    }
    match state.add_counters(job, &deltas).await {
        Ok(()) => *published = now,
        // Retried every second: an outage is logged once, by the parts that wait for it.
        Err(error) => tracing::debug!(job, %error, "cannot update the progress counters"),
    }
}
