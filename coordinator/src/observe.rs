//! The coordinator's metrics: what became of the corpus lines (from the run's progress counters)
//! and, in distributed mode, how deep the job's queues are. Both are polled, so the hot paths of
//! the publisher and the collector stay free of metric updates.

use std::sync::Arc;
use std::time::Duration;

use cai_common::broker::{Broker, Queue};
use cai_common::telemetry::metrics::{LineLabels, QueueLabels, metrics};
use tokio_util::sync::CancellationToken;

use crate::progress::{Counts, Progress};

/// Adds the growth of the run's line counts to `cai_lines_total` every second, and once more
/// when `stop` fires.
pub fn mirror_lines(
    job: String,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut exported = Counts::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                () = stop.cancelled() => true,
            };
            let now = progress.counts();
            for (status, before, after) in [
                ("read", exported.lines_read, now.lines_read),
                ("done", exported.done, now.done),
                ("failed", exported.failed, now.failed),
                ("rejected", exported.rejected, now.rejected),
                ("duplicate", exported.duplicates, now.duplicates),
            ] {
                if after > before {
                    metrics()
                        .lines
                        .get_or_create(&LineLabels {
                            cai_job: job.clone(),
                            status,
                        })
                        .inc_by(after - before);
                }
            }
            exported = now;
            if stopping {
                return;
            }
        }
    })
}

/// Sets `cai_queue_depth` from the broker every `every` until `stop` fires. A failed read keeps
/// the last value (the broker's own reconnects report the outage).
pub fn watch_queues(
    job: String,
    broker: Arc<dyn Broker>,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            for (queue, name) in [
                (Queue::Tasks, "tasks"),
                (Queue::Results, "results"),
                (Queue::Dead, "dead"),
            ] {
                match broker.depth(&job, queue).await {
                    Ok(depth) => {
                        metrics()
                            .queue_depth
                            .get_or_create(&QueueLabels {
                                cai_job: job.clone(),
                                queue: name,
                            })
                            .set(i64::from(depth));
                    }
                    Err(error) => tracing::debug!(job, %error, "cannot read the queue depth"),
                }
            }
        }
    })
}
