//! The collecting half of a run, with group commit: stage the rows of arriving results, commit
//! them (durable, on a blocking thread: the commit fsyncs), mark the samples done in the state
//! store, then ack the results and free their tasks' slots.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use cai_common::broker::{Acker, Broker, Queue};
use cai_common::envelope::{self, ResultBatch};
use cai_common::sample::SampleKey;
use cai_common::state::StateStore;
use futures::StreamExt;

use super::{CoordinatorOptions, Outstanding, Stop};
use crate::ledger::{Ledger, Status};
use crate::outage;
use crate::progress::{Event, Progress};

/// What the collector of one run works with.
pub(super) struct Collector<'a> {
    pub(super) job: &'a str,
    pub(super) broker: &'a dyn Broker,
    pub(super) state: &'a dyn StateStore,
    pub(super) ledger: &'a Arc<Mutex<Ledger>>,
    pub(super) outstanding: &'a Outstanding,
    pub(super) progress: &'a Progress,
    pub(super) options: &'a CoordinatorOptions,
    pub(super) stop: &'a Stop,
}

impl Collector<'_> {
    /// Collects until the corpus is published and nothing is outstanding, or, after a stop,
    /// until the producers have stopped and the results queue has been quiet for two commit
    /// intervals.
    pub(super) async fn run(self) -> anyhow::Result<()> {
        let job = self.job;
        let prefetch = u16::try_from(self.options.commit_every.max(1)).unwrap_or(u16::MAX);
        let mut deliveries = self.broker.consume(job, Queue::Results, prefetch).await?;
        let mut tick = tokio::time::interval(self.options.commit_interval);
        let mut acks: Vec<Box<dyn Acker>> = Vec::new();
        let mut settled_tasks: Vec<u64> = Vec::new();
        let mut quiet_ticks = 0u32;
        loop {
            let finished = self.outstanding.publishing_done.load(Ordering::SeqCst)
                && self.outstanding.is_empty();
            let draining =
                self.stop.shutdown.is_cancelled() && self.stop.producers_stopped.is_cancelled();
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
                            self.stage(&batch)?;
                            settled_tasks.push(batch.task_id);
                            acks.push(delivery.acker);
                        }
                        Err(error) => {
                            tracing::warn!(job, %error, "dead-lettering a result that cannot be decoded");
                            delivery.acker.dead_letter(&error.to_string()).await?;
                        }
                    }
                    if acks.len() < self.options.commit_every {
                        continue;
                    }
                }
                // Group commit: once no result is ready, commit what is staged now rather than
                // at the next tick (the outstanding tasks may all be waiting on this commit).
                () = std::future::ready(()), if !acks.is_empty() => {}
                _ = tick.tick() => quiet_ticks += 1,
            }
            let committed = self.commit().await?;
            if !committed.is_empty() {
                self.mark_done(&committed).await?;
            }
            for acker in acks.drain(..) {
                acker.ack().await?;
            }
            for task_id in settled_tasks.drain(..) {
                self.outstanding.settle(task_id);
            }
        }
        self.commit().await?;
        Ok(())
    }

    /// Stages a batch's rows and counts each sample it settles for the first time, if this run
    /// published it (see `Outstanding::uncounted`).
    fn stage(&self, batch: &ResultBatch) -> anyhow::Result<()> {
        let mut ledger = self.ledger.lock().expect("ledger lock");
        for result in &batch.results {
            let event = match ledger.stage_result(result)? {
                Some(Status::Done) => Event::Done,
                Some(Status::Failed) => Event::Failed,
                None => continue,
            };
            if self.outstanding.count(&result.key) {
                self.progress.record(event);
            }
            self.progress.record_usage(&result.usage);
        }
        Ok(())
    }

    /// Makes what is staged durable, off the runtime's threads, and returns the samples it
    /// committed.
    async fn commit(&self) -> anyhow::Result<Vec<SampleKey>> {
        let ledger = self.ledger.clone();
        let committed =
            tokio::task::spawn_blocking(move || ledger.lock().expect("ledger lock").commit())
                .await??;
        Ok(committed)
    }

    /// Tells the state store the committed samples are done and their steps can go. The rows
    /// are durable: the state store only speeds workers up, so an outage of it pauses the acks
    /// (and so the run) until it answers, or is left to the next run.
    async fn mark_done(&self, committed: &[SampleKey]) -> anyhow::Result<()> {
        let (job, state, shutdown) = (self.job, self.state, &self.stop.shutdown);
        outage::unless_stopped("marking samples done", shutdown, || {
            state.mark_done(job, committed)
        })
        .await?;
        outage::unless_stopped("forgetting done samples' steps", shutdown, || {
            state.step_forget(job, committed)
        })
        .await?;
        Ok(())
    }
}
