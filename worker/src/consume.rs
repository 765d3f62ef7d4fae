//! The worker loop: take a task, run its samples, publish the results, and only then ack.
//!
//! Invariant: a task is acked only after its results are confirmed by the broker, so a worker
//! that dies at any point loses nothing (the task is redelivered; finished steps come back from
//! the step cache and finished samples are skipped through the done set).

use std::sync::Arc;

use cai_common::broker::{Broker, Delivery, Queue};
use cai_common::envelope::{self, ResultBatch, Task};
use futures::StreamExt;
use futures::stream::{self, FuturesUnordered};
use tokio_util::sync::CancellationToken;

use crate::pipeline::{JobContext, JobFatal};

/// How one worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Samples of one task run at once.
    pub sample_concurrency: usize,
    /// Tasks worked on at once (the broker prefetch is this plus one).
    pub tasks_in_flight: usize,
}

/// Runs the samples of a task that are not done yet, `concurrency` at a time.
pub async fn run_task(
    ctx: &JobContext,
    task: Task,
    concurrency: usize,
) -> Result<ResultBatch, JobFatal> {
    let keys: Vec<_> = task.samples.iter().map(|s| s.key).collect();
    let done = ctx
        .state
        .done(&ctx.spec.name, &keys)
        .await
        .map_err(|e| JobFatal(e.to_string()))?;
    let (skipped, todo): (Vec<_>, Vec<_>) = task
        .samples
        .into_iter()
        .zip(done)
        .partition(|(_, done)| *done);
    let results: Vec<_> = stream::iter(
        todo.into_iter()
            .map(|(sample, _)| async move { ctx.run_sample(&sample).await }),
    )
    .buffer_unordered(concurrency.max(1))
    .collect()
    .await;
    Ok(ResultBatch {
        task_id: task.task_id,
        results: results.into_iter().collect::<Result<_, _>>()?,
        skipped: skipped.into_iter().map(|(sample, _)| sample.key).collect(),
    })
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
    while taking || !in_flight.is_empty() {
        tokio::select! {
            Some(handled) = in_flight.next(), if !in_flight.is_empty() => handled?,
            delivery = deliveries.next(), if taking && in_flight.len() < limit => match delivery {
                Some(delivery) => in_flight.push(handle(&ctx, broker.as_ref(), &options, delivery)),
                None => taking = false,
            },
            () = shutdown.cancelled(), if taking => taking = false,
        }
    }
    Ok(())
}

async fn handle(
    ctx: &JobContext,
    broker: &dyn Broker,
    options: &WorkerOptions,
    delivery: Delivery,
) -> Result<(), JobFatal> {
    let job = &ctx.spec.name;
    let task: Task = match envelope::decode(&delivery.payload, job) {
        Ok(task) => task,
        Err(error) => {
            tracing::warn!(job, %error, "dead-lettering a task that cannot be decoded");
            return delivery
                .acker
                .dead_letter(&error.to_string())
                .await
                .map_err(|e| JobFatal(e.to_string()));
        }
    };
    let batch = match run_task(ctx, task, options.sample_concurrency).await {
        Ok(batch) => batch,
        Err(fatal) => {
            let _ = delivery.acker.requeue().await;
            return Err(fatal);
        }
    };
    let payload = envelope::encode(job, &batch);
    if let Err(error) = broker.publish(job, Queue::Results, payload).await {
        tracing::warn!(job, %error, "results not confirmed; the task goes back to the queue");
        return delivery
            .acker
            .requeue()
            .await
            .map_err(|e| JobFatal(e.to_string()));
    }
    delivery
        .acker
        .ack()
        .await
        .map_err(|e| JobFatal(e.to_string()))
}
