//! The worker loop: take a task, run its samples, publish the results, and only then ack.
//!
//! Invariant: a task is acked only after its results are confirmed by the broker, so a worker
//! that dies at any point loses nothing (the task is redelivered; finished steps come back from
//! the step cache and finished samples are skipped through the done set).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cai_common::broker::{Broker, Delivery, Queue};
use cai_common::envelope::{self, ResultBatch, Task};
use cai_common::result::{Outcome, SampleResult};
use cai_common::sample::Sample;
use cai_common::signing::JobKeys;
use cai_common::telemetry::trace_context;
use futures::StreamExt;
use futures::stream::{self, FuturesUnordered};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::pipeline::{Interrupted, JobContext, JobFatal};

/// How one worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Samples of one task run at once.
    pub sample_concurrency: usize,
    /// Tasks worked on at once (the broker prefetch is this plus one).
    pub tasks_in_flight: usize,
    /// How the job's tasks are checked before they run.
    pub signatures: TaskSignatures,
}

/// How a worker checks a job's tasks: each must be signed with one of `keys` for the job and
/// its spec's `fingerprint`; without keys nothing is checked.
#[derive(Clone, Debug, Default)]
pub struct TaskSignatures {
    /// The worker's job keys.
    pub keys: JobKeys,
    /// The fingerprint of the job's spec, from its (verified) registry entry.
    pub fingerprint: String,
}

impl WorkerOptions {
    /// Tasks to work on at once for `concurrency` samples in flight in tasks of `task_size`:
    /// enough to fill the model's slots, plus one, so the slots do not idle while a task waits
    /// for its slowest sample (the model's own `max_concurrency` still bounds the calls).
    /// BENCHMARKS.md, target 2, has the model-bound rates this buys.
    pub fn tasks_for(concurrency: usize, task_size: usize) -> usize {
        concurrency.div_ceil(task_size.max(1)) + 1
    }
}

/// How long a sample's lease lasts without renewal; the holder renews it every third of this,
/// so a killed worker's samples are free again within this time.
const LEASE_TTL: Duration = Duration::from_secs(15);

/// A lease token for one run of one sample: this process's name and a number never used
/// before in it. A process can be handed the same sample twice at once (its old task and the
/// copy a coordinator taking over republished), so a token per process would let both copies
/// hold the lease together and pay for every step twice; a token per run makes the second copy
/// wait, then find the steps in the step cache (or the sample done).
fn lease_token() -> String {
    static PROCESS: OnceLock<String> = OnceLock::new();
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let process = PROCESS.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{}-{nanos}", std::process::id())
    });
    format!("{process}-{}", RUNS.fetch_add(1, Ordering::Relaxed))
}

/// Runs the samples of a task that are not done yet, `concurrency` at a time. An interrupted
/// sample interrupts the task: it is not complete and must be run again.
pub async fn run_task(
    ctx: &JobContext,
    task: Task,
    concurrency: usize,
) -> Result<ResultBatch, Interrupted> {
    let keys: Vec<_> = task.samples.iter().map(|s| s.key).collect();
    let done = ctx.state.done(&ctx.spec.name, &keys).await?;
    let (done, todo): (Vec<_>, Vec<_>) = task
        .samples
        .into_iter()
        .zip(done)
        .partition(|(_, done)| *done);
    let mut skipped: Vec<_> = done.into_iter().map(|(sample, _)| sample.key).collect();
    let outcomes: Vec<_> = stream::iter(todo.into_iter().map(|(sample, _)| async move {
        let span = tracing::debug_span!(
            "sample",
            job = %ctx.spec.name,
            key = %sample.key,
            id = %sample.id,
        );
        let result = run_leased(ctx, &sample).instrument(span).await;
        (sample.key, result)
    }))
    .buffer_unordered(concurrency.max(1))
    .collect()
    .await;
    let mut results = Vec::with_capacity(outcomes.len());
    for (key, outcome) in outcomes {
        match outcome? {
            Some(result) => results.push(result),
            None => skipped.push(key),
        }
    }
    Ok(ResultBatch {
        task_id: task.task_id,
        results,
        skipped,
    })
}

/// Runs a sample under its lease, so no other worker runs it at the same time. Waits while
/// another holder has it; returns `None` if the sample is done meanwhile.
async fn run_leased(
    ctx: &JobContext,
    sample: &Sample,
) -> Result<Option<SampleResult>, Interrupted> {
    let (state, job) = (&ctx.state, ctx.spec.name.as_str());
    let token = lease_token();
    let holder = token.as_str();
    while !state.lease(job, &sample.key, holder, LEASE_TTL).await? {
        if state.done(job, &[sample.key]).await?[0] {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let renew = async {
        loop {
            tokio::time::sleep(LEASE_TTL / 3).await;
            match state.lease(job, &sample.key, holder, LEASE_TTL).await {
                // The outage itself is logged where the sample waits for the state store.
                Err(error) if error.is_unavailable() => {
                    tracing::debug!(job, %error, "cannot renew a sample lease");
                }
                Err(error) => tracing::warn!(job, %error, "cannot renew a sample lease"),
                Ok(_) => {}
            }
        }
    };
    let result = tokio::select! {
        result = ctx.run_sample(sample) => result,
        () = renew => unreachable!("renewal never ends"),
    };
    if let Err(error) = state.release(job, &sample.key, holder).await {
        tracing::warn!(job, %error, "cannot release a sample lease; it expires by itself");
    }
    match result {
        Ok(result) => Ok(Some(result)),
        Err(Interrupted::AlreadyDone) => Ok(None),
        Err(other) => Err(other),
    }
}

/// Consumes the job's task queue until `shutdown` fires or the queue ends. Returns an error
/// only for a job-fatal condition (the caller stops the job).
pub async fn work(
    ctx: Arc<JobContext>,
    broker: Arc<dyn Broker>,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> Result<(), JobFatal> {
    let job = ctx.spec.name.clone();
    let prefetch = u16::try_from(options.tasks_in_flight + 1).unwrap_or(u16::MAX);
    let deliveries = broker
        .consume(&job, Queue::Tasks, prefetch)
        .await
        .map_err(|e| JobFatal(e.to_string()))?;
    futures::pin_mut!(deliveries);
    let limit = options.tasks_in_flight.max(1);
    let mut in_flight = FuturesUnordered::new();
    let mut taking = true;
    let mut outage = OutageBackoff::default();
    while taking || !in_flight.is_empty() {
        let paused = outage.paused();
        tokio::select! {
            Some(handled) = in_flight.next(), if !in_flight.is_empty() => match handled? {
                Handled::Settled => outage.reset(),
                Handled::Outage(message) => {
                    ctx.metrics.record_pause();
                    let wait = outage.pause();
                    tracing::warn!(job, %message, ?wait, "a model endpoint or the state store is unreachable; pausing, the task went back to the queue");
                }
            },
            delivery = deliveries.next(), if taking && !paused && in_flight.len() < limit => match delivery {
                Some(delivery) => in_flight.push(handle(&ctx, broker.as_ref(), &options, delivery)),
                None => taking = false,
            },
            () = outage.resumed(), if taking && paused => tracing::info!(job, "probing with the next task"),
            () = shutdown.cancelled(), if taking => taking = false,
        }
    }
    Ok(())
}

/// What became of a delivery.
enum Handled {
    /// Acked, dead-lettered, or requeued because results could not be confirmed.
    Settled,
    /// Requeued because a model endpoint or the state store is unreachable.
    Outage(String),
}

/// The pause after an outage (of a model endpoint or the state store): doubling from 1 s up to 30 s while tasks keep finding
/// the endpoint down; the first task taken after a pause is the probe.
#[derive(Default)]
struct OutageBackoff {
    until: Option<tokio::time::Instant>,
    next: Option<Duration>,
}

impl OutageBackoff {
    fn paused(&self) -> bool {
        self.until
            .is_some_and(|until| until > tokio::time::Instant::now())
    }

    fn pause(&mut self) -> Duration {
        let wait = self.next.unwrap_or(Duration::from_secs(1));
        self.next = Some((wait * 2).min(Duration::from_secs(30)));
        self.until = Some(tokio::time::Instant::now() + wait);
        wait
    }

    fn reset(&mut self) {
        self.until = None;
        self.next = None;
    }

    async fn resumed(&self) {
        if let Some(until) = self.until {
            tokio::time::sleep_until(until).await;
        }
    }
}

async fn handle(
    ctx: &JobContext,
    broker: &dyn Broker,
    options: &WorkerOptions,
    delivery: Delivery,
) -> Result<Handled, JobFatal> {
    let job = &ctx.spec.name;
    let settle = |result: Result<(), cai_common::broker::BrokerError>| {
        result
            .map(|()| Handled::Settled)
            .map_err(|e| JobFatal(e.to_string()))
    };
    if delivery.payload.len() > envelope::MAX_MESSAGE_BYTES {
        let reason = format!(
            "a task of {} bytes is over the limit of {} bytes",
            delivery.payload.len(),
            envelope::MAX_MESSAGE_BYTES
        );
        tracing::warn!(job, reason, "dead-lettering a task that is too large");
        return settle(delivery.acker.dead_letter(&reason).await);
    }
    let signatures = &options.signatures;
    let verified = signatures
        .keys
        .verify_task(job, &signatures.fingerprint, &delivery.payload);
    let message = match verified {
        Ok(message) => message,
        Err(error) => {
            // Nobody should run it: it is dead-lettered, and the job stops with the reason.
            let reason = format!("job {job:?}: refused a task: {error}");
            tracing::warn!(job, %error, "refusing a task that is not signed with this worker's job key");
            let _ = delivery.acker.dead_letter(&reason).await;
            return Err(JobFatal(reason));
        }
    };
    let task: Task = match envelope::decode(message, job) {
        Ok(task) => task,
        Err(error) => {
            tracing::warn!(job, %error, "dead-lettering a task that cannot be decoded");
            return settle(delivery.acker.dead_letter(&error.to_string()).await);
        }
    };
    let _in_flight = InFlight::start(ctx.metrics.tasks_in_flight());
    let span = tracing::info_span!("task", job = %job, task_id = task.task_id, samples = task.samples.len());
    if let Some(parent) = &task.trace_context {
        trace_context::set_parent(&span, parent);
    }
    let batch = match run_task(ctx, task, options.sample_concurrency)
        .instrument(span)
        .await
    {
        Ok(batch) => batch,
        Err(Interrupted::Outage(message)) => {
            settle(delivery.acker.requeue().await)?;
            return Ok(Handled::Outage(message));
        }
        Err(Interrupted::AlreadyDone) => {
            unreachable!("run_leased reports a done sample as skipped")
        }
        Err(Interrupted::Fatal(fatal)) => {
            let _ = delivery.acker.requeue().await;
            return Err(fatal);
        }
    };
    let payload = envelope::encode(job, &batch);
    if let Err(error) = broker.publish(job, Queue::Results, payload).await {
        tracing::warn!(job, %error, "results not confirmed; the task goes back to the queue");
        return settle(delivery.acker.requeue().await);
    }
    for result in &batch.results {
        ctx.metrics
            .record_sample(matches!(result.outcome, Outcome::Done { .. }));
    }
    settle(delivery.acker.ack().await)
}

/// Counts a task in `cai_tasks_in_flight` for as long as it lives.
struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl InFlight {
    fn start(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
