//! Progress of a run: counters every part updates, shown as a bar with rate and ETA on a
//! terminal, or as a plain log line every few seconds otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cai_common::result::Usage;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

/// Where every corpus line ended up; `lines_read = done + failed + rejected + duplicates` once
/// the run is complete.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Corpus lines read.
    pub lines_read: u64,
    /// Samples with output rows.
    pub done: u64,
    /// Samples in `failed.jsonl`.
    pub failed: u64,
    /// Lines in `rejected.jsonl`.
    pub rejected: u64,
    /// Lines whose content repeats an earlier line.
    pub duplicates: u64,
}

impl Counts {
    /// Lines accounted for so far.
    pub fn settled(&self) -> u64 {
        self.done + self.failed + self.rejected + self.duplicates
    }
}

/// Live counters of a run, shared by the publisher and the collector.
#[derive(Default)]
pub struct Progress {
    lines_read: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    duplicates: AtomicU64,
    total: AtomicU64,
    calls: AtomicU64,
    tokens_in: AtomicU64,
    tokens_out: AtomicU64,
    cost_micro_usd: AtomicU64,
    batch_calls: AtomicU64,
}

/// Which counter to bump.
#[derive(Clone, Copy, Debug)]
pub enum Event {
    /// A corpus line was read.
    LineRead,
    /// A sample is done.
    Done,
    /// A sample failed.
    Failed,
    /// A line was rejected.
    Rejected,
    /// A line was a duplicate.
    Duplicate,
}

impl Progress {
    /// Counts one event.
    pub fn record(&self, event: Event) {
        let counter = match event {
            Event::LineRead => &self.lines_read,
            Event::Done => &self.done,
            Event::Failed => &self.failed,
            Event::Rejected => &self.rejected,
            Event::Duplicate => &self.duplicates,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the model usage of a sample collected in this run.
    pub fn record_usage(&self, usage: &Usage) {
        self.calls.fetch_add(usage.calls, Ordering::Relaxed);
        self.tokens_in.fetch_add(usage.tokens_in, Ordering::Relaxed);
        self.tokens_out
            .fetch_add(usage.tokens_out, Ordering::Relaxed);
        self.cost_micro_usd
            .fetch_add(usage.cost_micro_usd, Ordering::Relaxed);
        self.batch_calls
            .fetch_add(usage.batch_calls, Ordering::Relaxed);
    }

    /// Model usage of the samples collected in this run.
    pub fn usage(&self) -> Usage {
        Usage {
            tokens_in: self.tokens_in.load(Ordering::Relaxed),
            tokens_out: self.tokens_out.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            cost_micro_usd: self.cost_micro_usd.load(Ordering::Relaxed),
            batch_calls: self.batch_calls.load(Ordering::Relaxed),
        }
    }

    /// Sets the expected number of lines (once known), for the ETA.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// A snapshot of the counters.
    pub fn counts(&self) -> Counts {
        Counts {
            lines_read: self.lines_read.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
        }
    }

    /// Shows progress until the returned guard is dropped.
    pub fn display(self: &Arc<Self>, job: &str) -> Display {
        let progress = self.clone();
        let job = job.to_owned();
        let handle = tokio::spawn(async move {
            let terminal = std::io::stderr().is_terminal();
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} lines  {per_sec}  ETA {eta}  {msg}",
                )
                .expect("valid template"),
            );
            bar.set_prefix(job.clone());
            let mut tick = tokio::time::interval(if terminal {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(5)
            });
            tick.tick().await;
            loop {
                tick.tick().await;
                let counts = progress.counts();
                let total = progress.total.load(Ordering::Relaxed);
                if terminal {
                    if total > 0 {
                        bar.set_length(total);
                    }
                    bar.set_position(counts.settled());
                    bar.set_message(format!(
                        "done {} failed {} rejected {} duplicates {}",
                        counts.done, counts.failed, counts.rejected, counts.duplicates
                    ));
                } else {
                    tracing::info!(
                        job,
                        settled = counts.settled(),
                        total,
                        done = counts.done,
                        failed = counts.failed,
                        rejected = counts.rejected,
                        duplicates = counts.duplicates,
                        "progress"
                    );
                }
            }
        });
        Display { handle }
    }
}

/// Stops the progress display when dropped.
pub struct Display {
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for Display {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
