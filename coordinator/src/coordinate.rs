//! The coordinator of a run: streams the corpus, skips what the ledger says is done, publishes the
//! rest as tasks with a bounded number outstanding, and collects results into the ledger.
//!
//! Invariants: at most `max_outstanding` tasks are published and not yet collected (flat memory
//! and queue depth for any corpus size); a result is acked only after its rows are committed and
//! its samples marked done; every corpus line is counted exactly once, as done, failed, rejected
//! or duplicate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use backon::{ExponentialBuilder, Retryable};
use cai_common::broker::{Acker, Broker, Queue};
use cai_common::envelope::{self, ResultBatch, Task};
use cai_common::job::Turns;
use cai_common::result::Usage;
use cai_common::sample::{Sample, SampleKey};
use cai_common::state::StateStore;
use cai_common::telemetry::metrics::{JobLabels, metrics};
use cai_common::telemetry::trace_context;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::corpus::{self, CorpusItem};
use crate::ledger::{Ledger, RejectedRow, Status};
use crate::plan::Plan;
use crate::progress::{Counts, Event, Progress};

/// Most task publishes awaiting the broker's confirm at once.
const PUBLISHES_IN_FLIGHT: usize = 8;

/// How the coordinator paces a run.
#[derive(Clone, Debug)]
pub struct CoordinatorOptions {
    /// Samples per task.
    pub task_size: usize,
    /// Most tasks published and not yet collected.
    pub max_outstanding: usize,
    /// Results staged before a commit is forced.
    pub commit_every: usize,
    /// Longest wait before staged results are committed.
    pub commit_interval: Duration,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        Self {
            task_size: 16,
            max_outstanding: 64,
            commit_every: 512,
            commit_interval: Duration::from_millis(100),
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Where every line went.
    pub counts: Counts,
    /// Tokens and calls of every sample in the output directory.
    pub usage: Usage,
    /// Tokens and calls of the samples collected in this run.
    pub run_usage: Usage,
    /// Whether every line of the corpus is accounted for.
    pub complete: bool,
    /// Wall time of this run.
    pub elapsed: Duration,
}

/// Tasks published and not yet collected.
struct Outstanding {
    /// `cai_tasks_outstanding` of the job.
    gauge: Gauge,
    permits: Semaphore,
    tasks: Mutex<HashMap<u64, Vec<SampleKey>>>,
    next_id: AtomicU64,
    publishing_done: AtomicBool,
}

impl Outstanding {
    fn settle(&self, task_id: u64) {
        if self
            .tasks
            .lock()
            .expect("outstanding lock")
            .remove(&task_id)
            .is_some()
        {
            self.gauge.dec();
            self.permits.add_permits(1);
        }
    }

    fn is_empty(&self) -> bool {
        self.tasks.lock().expect("outstanding lock").is_empty()
    }
}

/// Runs the coordinator on the opened output directory `ledger` until every line is accounted
/// for, or `shutdown` fires and the collector has drained what `producers_stopped` says can
/// still arrive.
#[allow(clippy::too_many_arguments)]
pub async fn coordinate(
    plan: &Plan,
    ledger: Ledger,
    broker: Arc<dyn Broker>,
    state: Arc<dyn StateStore>,
    options: &CoordinatorOptions,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
    producers_stopped: CancellationToken,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let spec = plan.spec().clone();
    let ledger = Arc::new(Mutex::new(ledger));
    let gauge = metrics()
        .tasks_outstanding
        .get_or_create(&JobLabels {
            cai_job: spec.name.clone(),
        })
        .clone();
    gauge.set(0);
    let outstanding = Arc::new(Outstanding {
        gauge,
        permits: Semaphore::new(options.max_outstanding.max(1)),
        tasks: Mutex::new(HashMap::new()),
        // Task ids must not repeat across runs: results of a previous coordinator's tasks may
        // still arrive and must not free this run's slots.
        next_id: AtomicU64::new(run_id_base()),
        publishing_done: AtomicBool::new(false),
    });

    let reader = corpus::open(&spec).context("opening the corpus")?;
    let total_path = spec.input.path.clone();
    let limit = spec.input.limit;
    let totals = progress.clone();
    // With one sample per human turn the items outnumber the lines: no total, so no false ETA.
    if spec.input.turns == Turns::Whole {
        tokio::task::spawn_blocking(move || {
            if let Ok(lines) = corpus::count_lines(&total_path) {
                totals.set_total(limit.map_or(lines, |limit| lines.min(limit)));
            }
        });
    }
    let (items_tx, mut items_rx) = tokio::sync::mpsc::channel::<CorpusItem>(4096);
    let reading = tokio::task::spawn_blocking(move || {
        for item in reader {
            if items_tx.blocking_send(item).is_err() {
                break;
            }
        }
    });

    let publisher = {
        let broker = broker.clone();
        let ledger = ledger.clone();
        let outstanding = outstanding.clone();
        let progress = progress.clone();
        let shutdown = shutdown.clone();
        let job = spec.name.clone();
        let task_size = options.task_size.max(1);
        async move {
            let mut batch: Vec<Sample> = Vec::with_capacity(task_size);
            // Publishes waiting for their confirm: the next tasks go out meanwhile, so the
            // publish rate is not one task per confirm round trip.
            let mut publishing = FuturesUnordered::new();
            loop {
                let item = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    Some(published) = publishing.next(), if !publishing.is_empty() => {
                        published?;
                        continue;
                    }
                    item = items_rx.recv(), if publishing.len() < PUBLISHES_IN_FLIGHT => item,
                };
                let Some(item) = item else {
                    let last = std::mem::take(&mut batch);
                    publishing.push(publish(
                        &job,
                        broker.as_ref(),
                        &outstanding,
                        &shutdown,
                        last,
                    ));
                    break;
                };
                progress.record(Event::LineRead);
                match item {
                    CorpusItem::Rejected(rejection) => {
                        ledger
                            .lock()
                            .expect("ledger lock")
                            .stage_rejected(&RejectedRow {
                                line: rejection.line,
                                field: rejection.field,
                                reason: rejection.reason,
                            })?;
                        progress.record(Event::Rejected);
                    }
                    CorpusItem::Duplicate { .. } => progress.record(Event::Duplicate),
                    CorpusItem::Sample(sample) => {
                        let status = ledger.lock().expect("ledger lock").status(&sample.key);
                        match status {
                            Some(Status::Done) => progress.record(Event::Done),
                            Some(Status::Failed) => progress.record(Event::Failed),
                            None => {
                                batch.push(sample);
                                if batch.len() >= task_size {
                                    let full = std::mem::replace(
                                        &mut batch,
                                        Vec::with_capacity(task_size),
                                    );
                                    publishing.push(publish(
                                        &job,
                                        broker.as_ref(),
                                        &outstanding,
                                        &shutdown,
                                        full,
                                    ));
                                }
                            }
                        }
                    }
                }
            }
            while let Some(published) = publishing.next().await {
                published?;
            }
            outstanding.publishing_done.store(true, Ordering::SeqCst);
            anyhow::Ok(())
        }
    };

    let collector = collect(
        &spec.name,
        broker.clone(),
        state,
        ledger.clone(),
        outstanding.clone(),
        progress.clone(),
        options,
        shutdown.clone(),
        producers_stopped,
    );
    let (published, collected) = tokio::join!(publisher, collector);
    published?;
    collected?;
    drop(reading);

    let counts = progress.counts();
    let ledger = ledger.lock().expect("ledger lock");
    let complete =
        !shutdown.is_cancelled() && outstanding.is_empty() && counts.settled() == counts.lines_read;
    Ok(Summary {
        counts,
        usage: ledger.usage(),
        run_usage: progress.usage(),
        complete,
        elapsed: started.elapsed(),
    })
}

/// The first task id of this run: the start time in nanoseconds, far above the ids any earlier
/// run of the job can have reached.
fn run_id_base() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.as_nanos() as u64)
}

/// Publishes one task, waiting for a free slot first (the back-pressure point). After
/// `shutdown` nothing more is published: the samples stay unpublished for the next run.
async fn publish(
    job: &str,
    broker: &dyn Broker,
    outstanding: &Outstanding,
    shutdown: &CancellationToken,
    samples: Vec<Sample>,
) -> anyhow::Result<()> {
    if samples.is_empty() {
        return Ok(());
    }
    tokio::select! {
        permit = outstanding.permits.acquire() => permit.expect("the semaphore is never closed").forget(),
        () = shutdown.cancelled() => return Ok(()),
    }
    let task_id = outstanding.next_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("publish_task", job, task_id, samples = samples.len());
    let keys = samples.iter().map(|s| s.key).collect();
    outstanding
        .tasks
        .lock()
        .expect("outstanding lock")
        .insert(task_id, keys);
    outstanding.gauge.inc();
    let payload = envelope::encode(
        job,
        &Task {
            task_id,
            samples,
            trace_context: trace_context::traceparent(&span),
        },
    );
    (|| broker.publish(job, Queue::Tasks, payload.clone()))
        .retry(
            ExponentialBuilder::default()
                .with_jitter()
                .with_max_times(10),
        )
        .notify(
            |error, wait| tracing::warn!(job, %error, ?wait, "publishing a task failed; retrying"),
        )
        .instrument(span)
        .await
        .with_context(|| format!("publishing task {task_id}"))
}

/// Collects result batches into the ledger with group commit: stage rows, commit (durable),
/// mark the samples done in the state store, then ack the results and free their tasks' slots.
/// Ends when the corpus is published and nothing is outstanding, or, after `shutdown`, once
/// `producers_stopped` has fired and the results queue has been quiet for two commit intervals.
#[allow(clippy::too_many_arguments)]
async fn collect(
    job: &str,
    broker: Arc<dyn Broker>,
    state: Arc<dyn StateStore>,
    ledger: Arc<Mutex<Ledger>>,
    outstanding: Arc<Outstanding>,
    progress: Arc<Progress>,
    options: &CoordinatorOptions,
    shutdown: CancellationToken,
    producers_stopped: CancellationToken,
) -> anyhow::Result<()> {
    let prefetch = u16::try_from(options.commit_every.max(1)).unwrap_or(u16::MAX);
    let mut deliveries = broker.consume(job, Queue::Results, prefetch).await?;
    let mut tick = tokio::time::interval(options.commit_interval);
    let mut acks: Vec<Box<dyn Acker>> = Vec::new();
    let mut settled_tasks: Vec<u64> = Vec::new();
    let mut quiet_ticks = 0u32;
    loop {
        let finished = outstanding.publishing_done.load(Ordering::SeqCst) && outstanding.is_empty();
        let draining = shutdown.is_cancelled() && producers_stopped.is_cancelled();
        if acks.is_empty() && (finished || (draining && quiet_ticks >= 2)) {
            break;
        }
        tokio::select! {
            biased;
            delivery = deliveries.next() => {
                let Some(delivery) = delivery else { break };
                quiet_ticks = 0;
                match envelope::decode::<ResultBatch>(&delivery.payload, job) {
                    Ok(batch) => {
                        let mut guard = ledger.lock().expect("ledger lock");
                        for result in &batch.results {
                            let status = guard.stage_result(result)?;
                            match status {
                                Some(Status::Done) => progress.record(Event::Done),
                                Some(Status::Failed) => progress.record(Event::Failed),
                                None => continue,
                            }
                            progress.record_usage(&result.usage);
                        }
                        drop(guard);
                        settled_tasks.push(batch.task_id);
                        acks.push(delivery.acker);
                    }
                    Err(error) => {
                        tracing::warn!(job, %error, "dead-lettering a result that cannot be decoded");
                        delivery.acker.dead_letter(&error.to_string()).await?;
                    }
                }
                if acks.len() < options.commit_every {
                    continue;
                }
            }
            // Group commit: once no result is ready, commit what is staged now rather than
            // at the next tick (the outstanding tasks may all be waiting on this commit).
            () = std::future::ready(()), if !acks.is_empty() => {}
            _ = tick.tick() => quiet_ticks += 1,
        }
        let committed = ledger.lock().expect("ledger lock").commit()?;
        if !committed.is_empty() {
            state.mark_done(job, &committed).await?;
            state.step_forget(job, &committed).await?;
        }
        for acker in acks.drain(..) {
            acker.ack().await?;
        }
        for task_id in settled_tasks.drain(..) {
            outstanding.settle(task_id);
        }
    }
    ledger.lock().expect("ledger lock").commit()?;
    Ok(())
}
