//! Embedded mode: the whole job in this process. The same coordinator and the same worker loop
//! as a distributed run, joined by the in-process broker and state; the output directory is
//! the ledger, so a re-run resumes.

use std::sync::Arc;

use anyhow::Context as _;
use cai_common::broker::Broker;
use cai_common::broker::memory::MemoryBroker;
use cai_common::state::StateStore;
use cai_common::state::batch_log::BatchLog;
use cai_common::state::embedded::EmbeddedState;
use cai_common::state::step_log::StepLog;
use cai_worker::consume::{self, WorkerOptions};
use cai_worker::model::Models;
use cai_worker::pipeline::{JobContext, JobFatal};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::coordinate::{CoordinatorOptions, Run, Stop, Summary};
use crate::error::RunError;
use crate::ledger::Ledger;
use crate::plan::Plan;
use crate::progress::Progress;

/// How the in-process workers run.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// In-process workers.
    pub workers: usize,
    /// Samples in flight per worker.
    pub concurrency: usize,
    /// Coordinator pacing.
    pub coordinator: CoordinatorOptions,
}

impl EmbeddedOptions {
    /// Defaults for a plan: one worker with as many samples in flight as the busiest model
    /// allows (`max_concurrency`, or two batches' worth in batch mode), so the model, not the
    /// runner, is the limit.
    pub fn for_plan(plan: &Plan, workers: usize) -> Self {
        let concurrency = plan.spec().samples_in_flight();
        let coordinator = CoordinatorOptions::default();
        Self {
            workers: workers.max(1),
            concurrency,
            coordinator,
        }
    }
}

/// Runs a job in this process until it is complete or `shutdown` fires.
pub async fn run(
    plan: &Plan,
    models: Models,
    options: &EmbeddedOptions,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
) -> Result<Summary, RunError> {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::default());
    // Opening the ledger repairs what a crash left; the step log then keeps the steps of the
    // samples it has not committed, so a killed run's finished calls are not paid again.
    let ledger = Ledger::open(plan.job.output_dir()).context("opening the output directory")?;
    let (step_log, steps) =
        StepLog::open(plan.job.output_dir(), |key| ledger.status(key).is_some())
            .context("opening the step log")?;
    // The batches in flight at a provider, so a killed run's batches are waited for, not paid
    // again.
    let (batch_log, batches) =
        BatchLog::open(plan.job.output_dir()).context("opening the batch log")?;
    let state: Arc<dyn StateStore> = Arc::new(
        EmbeddedState::with_step_log(&plan.spec().name, step_log, steps).with_batch_log(
            &plan.spec().name,
            batch_log,
            batches,
        ),
    );
    let ctx = Arc::new(JobContext::new(
        Arc::new(plan.spec().clone()),
        plan.constitution.clone(),
        models,
        state.clone(),
    ));
    let task_size = options.coordinator.task_size.max(1);
    let worker_options = WorkerOptions {
        sample_concurrency: task_size,
        tasks_in_flight: WorkerOptions::tasks_for(options.concurrency, task_size),
        // The in-process queue is this process's own: nothing else can write to it.
        signatures: Default::default(),
    };
    let mut coordinator_options = options.coordinator.clone();
    coordinator_options.max_outstanding = coordinator_options
        .max_outstanding
        .max(2 * options.workers * worker_options.tasks_in_flight);

    let workers_stop = CancellationToken::new();
    let workers_stopped = CancellationToken::new();
    let mut workers = JoinSet::new();
    for _ in 0..options.workers {
        workers.spawn(consume::work(
            ctx.clone(),
            broker.clone(),
            worker_options.clone(),
            workers_stop.clone(),
        ));
    }
    let watcher = {
        let shutdown = shutdown.clone();
        let workers_stop = workers_stop.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            workers_stop.cancel();
        })
    };
    // Workers return once told to stop (after finishing their tasks in flight), or early with
    // a job-fatal error, which ends the run at once.
    let supervise = async {
        while let Some(joined) = workers.join_next().await {
            let worked = joined.context("a worker panicked")?;
            worked.map_err(|JobFatal(message)| RunError::JobFatal {
                job: plan.spec().name.clone(),
                message,
            })?;
        }
        workers_stopped.cancel();
        Ok::<(), RunError>(())
    };
    let coordinated = async {
        let run = Run {
            plan,
            broker,
            state,
            options: &coordinator_options,
            progress,
        };
        let stop = Stop {
            shutdown: shutdown.clone(),
            producers_stopped: workers_stopped.clone(),
        };
        let summary = run.coordinate(ledger, stop).await;
        workers_stop.cancel();
        summary.map_err(RunError::from)
    };
    let outcome = tokio::try_join!(coordinated, supervise);
    watcher.abort();
    let (summary, ()) = outcome?;
    Ok(summary)
}
