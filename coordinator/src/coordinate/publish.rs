//! The publishing half of a run: reads the corpus on a blocking thread, counts every line,
//! stages rejections, skips what the ledger already holds, and publishes the rest as tasks of
//! `task_size` samples, waiting for a free slot before each (the back-pressure point).

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use cai_common::broker::{Broker, Queue};
use cai_common::envelope::{self, Task};
use cai_common::sample::Sample;
use cai_common::telemetry::trace_context;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::Outstanding;
use crate::corpus::{CorpusItem, CorpusReader};
use cai_common::signing::JobKey;

use crate::ledger::{Ledger, RejectedRow, Status};
use crate::outage;
use crate::progress::{Event, Progress};

/// Most task publishes awaiting the broker's confirm at once.
const PUBLISHES_IN_FLIGHT: usize = 8;
/// Corpus items read ahead of the publisher.
const READ_AHEAD: usize = 4096;

/// What the publisher of one run works with.
pub(super) struct Publisher<'a> {
    pub(super) job: &'a str,
    pub(super) broker: &'a dyn Broker,
    pub(super) ledger: &'a Mutex<Ledger>,
    pub(super) outstanding: &'a Outstanding,
    pub(super) progress: &'a Progress,
    pub(super) shutdown: &'a CancellationToken,
    pub(super) task_size: usize,
    /// The job key and the spec's fingerprint every task is signed with, if the run has a key.
    pub(super) signer: Option<(&'a JobKey, &'a str)>,
}

impl Publisher<'_> {
    /// Publishes the corpus until it ends or the run is stopped; then tells the collector that
    /// nothing more will be published.
    pub(super) async fn run(self, reader: CorpusReader) -> anyhow::Result<()> {
        let (items_tx, mut items_rx) = tokio::sync::mpsc::channel::<CorpusItem>(READ_AHEAD);
        let reading = tokio::task::spawn_blocking(move || {
            for item in reader {
                if items_tx.blocking_send(item).is_err() {
                    break;
                }
            }
        });
        let mut batch: Vec<Sample> = Vec::with_capacity(self.task_size);
        // Publishes waiting for their confirm: the next tasks go out meanwhile, so the publish
        // rate is not one task per confirm round trip.
        let mut publishing = FuturesUnordered::new();
        loop {
            let item = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some(published) = publishing.next(), if !publishing.is_empty() => {
                    published?;
                    continue;
                }
                item = items_rx.recv(), if publishing.len() < PUBLISHES_IN_FLIGHT => item,
            };
            let Some(item) = item else {
                publishing.push(self.publish(std::mem::take(&mut batch)));
                break;
            };
            self.progress.record(Event::LineRead);
            match item {
                CorpusItem::Rejected(rejection) => {
                    self.ledger
                        .lock()
                        .expect("ledger lock")
                        .stage_rejected(&RejectedRow {
                            line: rejection.line,
                            field: rejection.field,
                            reason: rejection.reason,
                        })?;
                    self.progress.record(Event::Rejected);
                }
                CorpusItem::Duplicate { .. } => self.progress.record(Event::Duplicate),
                CorpusItem::Sample(sample) => {
                    // Under the ledger's lock, so a result the collector stages meanwhile (from a
                    // task of an earlier coordinator) is counted exactly once: here if it is
                    // settled already, there if this run publishes the sample first.
                    let status = {
                        let ledger = self.ledger.lock().expect("ledger lock");
                        let status = ledger.settled(&sample.key);
                        if status.is_none() {
                            self.outstanding
                                .uncounted
                                .lock()
                                .expect("outstanding lock")
                                .insert(sample.key);
                        }
                        status
                    };
                    match status {
                        Some(Status::Done) => self.progress.record(Event::Done),
                        Some(Status::Failed) => self.progress.record(Event::Failed),
                        None => {
                            batch.push(sample);
                            if batch.len() >= self.task_size {
                                let full = std::mem::replace(
                                    &mut batch,
                                    Vec::with_capacity(self.task_size),
                                );
                                publishing.push(self.publish(full));
                            }
                        }
                    }
                }
            }
        }
        while let Some(published) = publishing.next().await {
            published?;
        }
        drop(items_rx);
        drop(reading);
        self.outstanding
            .publishing_done
            .store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Publishes one task, waiting for a free slot first. After a stop nothing more is
    /// published: the samples stay unpublished for the next run. A broker that is away is
    /// waited for.
    async fn publish(&self, samples: Vec<Sample>) -> anyhow::Result<()> {
        if samples.is_empty() {
            return Ok(());
        }
        tokio::select! {
            permit = self.outstanding.permits.acquire() => permit.expect("the semaphore is never closed").forget(),
            () = self.shutdown.cancelled() => return Ok(()),
        }
        let job = self.job;
        let task_id = self.outstanding.next_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("publish_task", job, task_id, samples = samples.len());
        let keys = samples.iter().map(|s| s.key).collect();
        self.outstanding
            .tasks
            .lock()
            .expect("outstanding lock")
            .insert(task_id, keys);
        self.outstanding.gauge.inc();
        let payload = envelope::encode(
            job,
            &Task {
                task_id,
                samples,
                trace_context: trace_context::traceparent(&span),
            },
        );
        let payload = match self.signer {
            Some((key, fingerprint)) => key.sign_task(job, fingerprint, payload),
            None => payload,
        };
        outage::unless_stopped("publishing a task", self.shutdown, || {
            self.broker.publish(job, Queue::Tasks, payload.clone())
        })
        .instrument(span)
        .await
        .with_context(|| format!("publishing task {task_id}"))?;
        Ok(())
    }
}

/// The first task id of this run: the start time in nanoseconds, far above the ids any earlier
/// run of the job can have reached.
pub(super) fn run_id_base() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.as_nanos() as u64)
}
