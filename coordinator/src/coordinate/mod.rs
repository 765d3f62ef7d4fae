//! The coordinator of a run: streams the corpus, skips what the ledger says is done, publishes the
//! rest as tasks with a bounded number outstanding ([`publish`]), and collects results into the
//! ledger ([`collect`]). The same [`Run`] serves embedded and distributed mode; only its broker
//! and state store differ.
//!
//! Invariants: at most `max_outstanding` tasks are published and not yet collected (flat memory
//! and queue depth for any corpus size); a result is acked only after its rows are committed and
//! its samples marked done; every corpus line is counted exactly once, as done, failed, rejected
//! or duplicate.

mod collect;
mod publish;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cai_common::broker::Broker;
use cai_common::job::Turns;
use cai_common::result::Usage;
use cai_common::sample::SampleKey;
use cai_common::state::StateStore;
use cai_common::telemetry::metrics::{JobLabels, metrics};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use cai_common::signing::JobKey;

use crate::corpus;
use crate::ledger::Ledger;
use crate::plan::Plan;
use crate::progress::{Counts, Progress};

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
    /// The key that signs the job's registry entry and tasks for workers that hold it
    /// ([`cai_common::signing`]); distributed runs only.
    pub job_key: Option<JobKey>,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        Self {
            task_size: 16,
            max_outstanding: 64,
            commit_every: 512,
            commit_interval: Duration::from_millis(100),
            job_key: None,
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

/// What a run works with: the checked job, the services it publishes to and records progress
/// in, its pacing, and the counters it reports to.
pub struct Run<'a> {
    /// The job.
    pub plan: &'a Plan,
    /// Where tasks go and results come from.
    pub broker: Arc<dyn Broker>,
    /// The done set the collector marks and the step cache it forgets.
    pub state: Arc<dyn StateStore>,
    /// Pacing.
    pub options: &'a CoordinatorOptions,
    /// The counters the progress display, the manifest and `cai status` read.
    pub progress: Arc<Progress>,
}

/// When a run stops early: `shutdown` asks it to, and once `producers_stopped` has fired too
/// (the workers that could still send results are gone) the collector drains what is left and
/// returns.
#[derive(Clone)]
pub struct Stop {
    /// Stop publishing; finish collecting.
    pub shutdown: CancellationToken,
    /// No more results can come (in-process workers stopped; remote workers never block it).
    pub producers_stopped: CancellationToken,
}

/// Tasks published and not yet collected.
struct Outstanding {
    /// `cai_tasks_outstanding` of the job.
    gauge: Gauge,
    permits: Semaphore,
    tasks: Mutex<HashMap<u64, Vec<SampleKey>>>,
    /// Samples this run publishes and has not counted yet (added when the publisher reads their
    /// line and finds them unsettled). A sample the collector stages is counted there only if
    /// it is here; otherwise its line has not been read yet (the result came from a task of an
    /// earlier coordinator) and the publisher counts it, finding it settled, when it reads the
    /// line. Both look under the ledger's lock, so every line is counted once.
    uncounted: Mutex<HashSet<SampleKey>>,
    next_id: AtomicU64,
    publishing_done: AtomicBool,
}

impl Outstanding {
    fn new(job: &str, max_outstanding: usize) -> Self {
        let gauge = metrics()
            .tasks_outstanding
            .get_or_create(&JobLabels {
                cai_job: job.to_owned(),
            })
            .clone();
        gauge.set(0);
        Self {
            gauge,
            permits: Semaphore::new(max_outstanding.max(1)),
            tasks: Mutex::new(HashMap::new()),
            uncounted: Mutex::new(HashSet::new()),
            // Task ids must not repeat across runs: results of a previous coordinator's tasks
            // may still arrive and must not free this run's slots.
            next_id: AtomicU64::new(publish::run_id_base()),
            publishing_done: AtomicBool::new(false),
        }
    }

    fn settle(&self, task_id: u64) {
        let keys = self
            .tasks
            .lock()
            .expect("outstanding lock")
            .remove(&task_id);
        if let Some(keys) = keys {
            // Samples a worker skipped were counted when another run of them was committed.
            let mut uncounted = self.uncounted.lock().expect("outstanding lock");
            for key in &keys {
                uncounted.remove(key);
            }
            self.gauge.dec();
            self.permits.add_permits(1);
        }
    }

    /// Whether the collector counts a sample it committed: it was published in this run and
    /// not counted yet.
    fn count(&self, key: &SampleKey) -> bool {
        self.uncounted.lock().expect("outstanding lock").remove(key)
    }

    fn is_empty(&self) -> bool {
        self.tasks.lock().expect("outstanding lock").is_empty()
    }
}

impl Run<'_> {
    /// Runs the coordinator on the opened output directory `ledger` until every line is
    /// accounted for, or `stop` says to end and the collector has drained what can still arrive.
    pub async fn coordinate(self, ledger: Ledger, stop: Stop) -> anyhow::Result<Summary> {
        let started = Instant::now();
        let spec = self.plan.spec();
        let ledger = Arc::new(Mutex::new(ledger));
        let outstanding = Arc::new(Outstanding::new(&spec.name, self.options.max_outstanding));

        let reader = corpus::open(spec).context("opening the corpus")?;
        // With one sample per human turn the items outnumber the lines: no total, so no false
        // ETA.
        if spec.input.turns == Turns::Whole {
            let (path, limit, totals) = (
                spec.input.path.clone(),
                spec.input.limit,
                self.progress.clone(),
            );
            tokio::task::spawn_blocking(move || {
                if let Ok(lines) = corpus::count_lines(&path) {
                    totals.set_total(limit.map_or(lines, |limit| lines.min(limit)));
                }
            });
        }
        let publisher = publish::Publisher {
            job: &spec.name,
            broker: self.broker.as_ref(),
            ledger: &ledger,
            outstanding: &outstanding,
            progress: &self.progress,
            shutdown: &stop.shutdown,
            task_size: self.options.task_size.max(1),
            signer: self
                .options
                .job_key
                .as_ref()
                .map(|key| (key, self.plan.fingerprint.as_str())),
        };
        let collector = collect::Collector {
            job: &spec.name,
            broker: self.broker.as_ref(),
            state: self.state.as_ref(),
            ledger: &ledger,
            outstanding: &outstanding,
            progress: &self.progress,
            options: self.options,
            stop: &stop,
        };
        let (published, collected) = tokio::join!(publisher.run(reader), collector.run());
        published?;
        collected?;

        let counts = self.progress.counts();
        let complete = !stop.shutdown.is_cancelled()
            && outstanding.is_empty()
            && counts.settled() == counts.lines_read;
        let usage = ledger.lock().expect("ledger lock").usage();
        Ok(Summary {
            counts,
            usage,
            run_usage: self.progress.usage(),
            complete,
            elapsed: started.elapsed(),
        })
    }
}
