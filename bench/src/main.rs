//! `cai-bench`: runs a job on a deterministic synthetic corpus through the real `cai` binary,
//! in embedded mode (one process) or distributed mode (a coordinator and N `cai worker`
//! processes on the local RabbitMQ and Redis), and reports what it cost: samples/s, model
//! calls/s, CPU seconds per 1,000 samples and peak RSS per process, the task and result queue
//! depths over time, and the Redis memory the job keeps per sample. JSON (`--json`) plus a
//! table on stdout. Every target of BENCHMARKS.md is one command line of this binary.
//!
//! Each run uses a fresh job name and output directory; its queues and Redis keys are deleted
//! afterwards (also when it fails).
//!
//! # Layout
//! - this file: the runs of one command line, and the report written;
//! - [`args`]: the command line;
//! - [`run`]: one run and its phases;
//! - [`log`]: what the spawned processes log, and the coordinator's log scanned;
//! - [`report`]: the report, its summary and the printed table;
//! - [`corpus`], [`procs`], [`services`]: the synthetic corpus, the processes' costs, and
//!   RabbitMQ and Redis.

mod args;
mod corpus;
mod log;
mod procs;
mod report;
mod run;
mod services;

use std::time::Duration;

use anyhow::Context as _;
use cai_tests::model_server::{ModelServer, ServerConfig};
use clap::Parser;

use crate::args::{Args, Mode, ModelKind};
use crate::procs::Machine;
use crate::report::{Report, RunReport, print_phase, print_summary, summarise};
use crate::run::Bench;
use crate::services::Services;

/// Parses the command line and runs the benchmark on a two-thread runtime.
fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(bench(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Writes the corpus if missing, runs the job `--runs` times, prints and writes the report.
async fn bench(args: Args) -> anyhow::Result<()> {
    let cai = match &args.cai {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary has a directory")?
            .join("cai"),
    };
    anyhow::ensure!(
        cai.exists(),
        "{} is missing: build it (`cargo build --release -p cai`) or pass --cai",
        cai.display()
    );
    if let Some(at) = args.resume_at {
        anyhow::ensure!(at > 0.0 && at < 1.0, "--resume-at must be in (0, 1)");
    }
    let temporary;
    let work_dir = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temporary = tempfile::tempdir()?;
            temporary.path().to_owned()
        }
    };
    let corpus = work_dir.join(format!("corpus-{:?}-{}.jsonl", args.pipeline, args.samples));
    if !corpus.exists() {
        eprintln!("writing {} ({} lines)", corpus.display(), args.samples);
        corpus::write(&corpus, args.pipeline, args.samples)?;
    }
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        // A fresh server per run: its count of repeated requests covers exactly this run.
        let server = match args.model {
            ModelKind::Server => Some(
                ModelServer::start(ServerConfig {
                    latency: Duration::from_millis(args.latency_ms),
                    count_only: true,
                    capacity: args.server_capacity,
                    ..ServerConfig::default()
                })
                .await,
            ),
            ModelKind::Mock => None,
        };
        let job = format!(
            "bench-{}-{run}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .subsec_nanos()
                % 1_000_000
        );
        let bench = Bench {
            args: &args,
            cai: &cai,
            dir: work_dir.join(&job),
            corpus: &corpus,
            job: job.clone(),
            server: server.as_ref(),
        };
        std::fs::create_dir_all(&bench.dir)?;
        let services = match args.mode {
            Mode::Distributed => {
                Some(Services::connect(&job, &args.broker, &bench.state_url()).await?)
            }
            Mode::Embedded => None,
        };
        let outcome = bench.run(services.as_ref()).await;
        if let Some(services) = &services {
            if let Err(error) = services.clean_up().await {
                eprintln!("cleaning up job {job}: {error:#}");
            }
        }
        let phases = outcome?;
        for phase in &phases {
            print_phase(run, phase);
        }
        runs.push(RunReport { run, job, phases });
        if let Some(server) = server {
            server.stop().await;
        }
    }

    let summary = summarise(&runs);
    print_summary(&summary);
    let report = Report {
        args: args.clone(),
        machine: Machine::read(),
        cai_binary: cai,
        runs,
        summary,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
