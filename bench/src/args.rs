//! The command line of `cai-bench`: one job configuration, how to run it and where the
//! report goes, and what follows from it (samples in flight, calls per sample, the ideal rate).

use std::path::PathBuf;

use clap::Parser;
use serde::Serialize;

use crate::corpus::Pipeline;

/// The local RabbitMQ.
pub(crate) const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Benchmark one job configuration of cai.
#[derive(Clone, Debug, Parser, Serialize)]
#[command(name = "cai-bench", version, about)]
pub(crate) struct Args {
    /// Which pipeline.
    #[arg(long, value_enum, default_value = "pairwise")]
    pub(crate) pipeline: Pipeline,
    /// Critique-revise rounds (pairwise always judges both orders of one principle).
    #[arg(long, default_value_t = 1)]
    pub(crate) revisions: u32,
    /// Corpus lines (= samples).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) samples: u64,
    /// Embedded (one `cai run` process) or distributed (`cai run --broker --state` + workers).
    #[arg(long, value_enum, default_value = "embedded")]
    pub(crate) mode: Mode,
    /// Workers: in-process workers in embedded mode, `cai worker` processes in distributed mode.
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: usize,
    /// `mock` (in-process, deterministic) or `server` (the OpenAI-compatible test server,
    /// run inside this process, reached over HTTP).
    #[arg(long, value_enum, default_value = "mock")]
    pub(crate) model: ModelKind,
    /// Latency of each model call, ms (the mock's `latency_ms`, or the test server's delay).
    #[arg(long, default_value_t = 0)]
    pub(crate) latency_ms: u64,
    /// The model's `max_concurrency`, which is also each process's samples in flight; with
    /// `--auto`, the model's `max_concurrency_limit`.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// The model's `max_concurrency = "auto"`: an adaptive limit up to `--concurrency`.
    #[arg(long)]
    pub(crate) auto: bool,
    /// With `--model server`: the server serves at most this many requests at once and answers
    /// a 429 to the rest (the report counts them: `over_capacity`).
    #[arg(long)]
    pub(crate) server_capacity: Option<usize>,
    /// Samples in flight per process (`--concurrency` of `cai run` and `cai worker`); default:
    /// `--concurrency`. More than the model's `max_concurrency` keeps the model's slots full
    /// while a task waits for its slowest sample.
    #[arg(long)]
    samples_in_flight: Option<usize>,
    /// Samples per task (`cai run --task-size`); default: cai's.
    #[arg(long)]
    pub(crate) task_size: Option<usize>,
    /// Repetitions; medians and spreads are reported over them.
    #[arg(long, default_value_t = 1)]
    pub(crate) runs: usize,
    /// Run the job to this fraction of the corpus first (`input.limit`), then resume it on
    /// the whole corpus and measure the resumed run: time to the first task published, and
    /// that no model call is made twice.
    #[arg(long)]
    pub(crate) resume_at: Option<f64>,
    /// Redis database of distributed runs.
    #[arg(long, default_value_t = 10)]
    pub(crate) db: u8,
    /// RabbitMQ URL.
    #[arg(long, default_value = BROKER_URL)]
    pub(crate) broker: String,
    /// Redis host URL without the database (`redis://host:port`).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub(crate) redis: String,
    /// Where corpora, job files, outputs and logs go; default: a temporary directory, removed
    /// afterwards.
    #[arg(long)]
    pub(crate) work_dir: Option<PathBuf>,
    /// Write the report here as JSON.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// The `cai` binary; default: the one next to this binary.
    #[arg(long)]
    pub(crate) cai: Option<PathBuf>,
    /// The constitution; default: the repository's `constitutions/default.toml`.
    #[arg(long)]
    pub(crate) constitution: Option<PathBuf>,
    /// Log every mock model call in the measured run and check that none is made twice (costs
    /// some CPU: one log line per call).
    #[arg(long)]
    pub(crate) count_calls: bool,
    /// With `--model server`: the model in batch mode (`batch = true`) with this `batch_size`;
    /// the samples in flight then default to two batches' worth, as cai's own default.
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Batch mode's `batch_wait_s`.
    #[arg(long, default_value_t = 1)]
    pub(crate) batch_wait_s: u64,
}

/// How the job runs: one `cai run` process, or a coordinator and `cai worker` processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    Embedded,
    Distributed,
}

/// The model the job calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ModelKind {
    Mock,
    Server,
}

impl Args {
    /// Samples in flight per process.
    pub(crate) fn in_flight(&self) -> usize {
        self.samples_in_flight.unwrap_or(match self.batch_size {
            Some(size) => self.concurrency.max(2 * size),
            None => self.concurrency,
        })
    }

    /// Model calls one sample makes.
    pub(crate) fn calls_per_sample(&self) -> u64 {
        match self.pipeline {
            Pipeline::Pairwise => 2,
            Pipeline::CritiqueRevise => 1 + 2 * u64::from(self.revisions),
        }
    }

    /// Samples per second if the model were the only limit: every process keeps `concurrency`
    /// calls in flight (no more than the server's capacity), each taking the latency.
    pub(crate) fn ideal_samples_per_s(&self) -> Option<f64> {
        if self.latency_ms == 0 {
            return None;
        }
        let processes = match self.mode {
            Mode::Embedded => 1,
            Mode::Distributed => self.workers,
        };
        let slots = match self.server_capacity {
            Some(capacity) if self.model == ModelKind::Server => {
                capacity.min(processes * self.concurrency)
            }
            _ => processes * self.concurrency,
        };
        let calls_per_s = slots as f64 / (self.latency_ms as f64 / 1e3);
        Some(calls_per_s / self.calls_per_sample() as f64)
    }
}
