//! `cai run`: plan, claim the output directory, run, write the manifest, the report and (once
//! the job is finished) the dataset card, print the counts.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cai_worker::model::Models;
use tokio_util::sync::CancellationToken;

use super::shown::shown;
use super::{MetricsAddr, RunArgs, report};
use crate::telemetry::listener::{self, Readiness};
use cai_coordinator::card::{self, CardOutcome};
use cai_coordinator::distributed::{self, Connected, Services};
use cai_coordinator::embedded::{self, EmbeddedOptions};
use cai_coordinator::manifest;
use cai_coordinator::observe;
use cai_coordinator::plan::Plan;
use cai_coordinator::progress::Progress;
use cai_coordinator::report as page;

/// Where the job runs.
enum Mode {
    /// In this process, with these models.
    Embedded(Models),
    /// On workers, through these services.
    Distributed(Connected),
}

pub(super) async fn run(args: RunArgs) -> u8 {
    let plan = match Plan::load(&args.job) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("error: {error}");
            return 2;
        }
    };
    // Only a distributed run signs (an embedded run's queue is its own), so only it reads the key.
    let job_key = match args.broker {
        Some(_) => match super::job_keys::coordinator_key(args.job_key_file.as_deref()) {
            Ok(job_key) => job_key,
            Err(error) => {
                eprintln!("error: {error}");
                return 2;
            }
        },
        None => None,
    };
    let shutdown = CancellationToken::new();
    watch_signals(shutdown.clone());
    // Only workers build models: the coordinator of a distributed job loads no weights and
    // reads no key, it only says what the workers will need. It connects to the services
    // before it claims the output directory, so a setup no wait mends leaves that untouched.
    let mode = match (args.broker, args.state) {
        (Some(broker), Some(state)) => {
            for note in Models::preflight(&plan.spec().models) {
                tracing::warn!("{note}");
            }
            let services = Services {
                broker,
                state,
                tls: args.tls.files(),
                connect_timeout: Duration::from_secs(args.connect_timeout_s),
            };
            match distributed::connect(&services, &shutdown).await {
                Ok(connected) => Mode::Distributed(connected),
                Err(error) => {
                    report(&error);
                    return error.exit_code();
                }
            }
        }
        _ => match Models::build(&plan.spec().models) {
            Ok(models) => Mode::Embedded(models),
            Err(error) => {
                eprintln!("error: {error}");
                return 2;
            }
        },
    };
    if let Err(error) = plan.claim_output(args.new) {
        eprintln!("error: {error}");
        return 2;
    }
    let mut options = EmbeddedOptions::for_plan(&plan, args.workers);
    if let Some(concurrency) = args.concurrency {
        options.concurrency = concurrency.max(1);
    }
    options.coordinator.task_size = args.task_size.max(1);
    options.coordinator.job_key = job_key;
    // Enough tasks outstanding for two workers' samples in flight (many for a model in batch
    // mode, whose batches they fill).
    options.coordinator.max_outstanding = options
        .coordinator
        .max_outstanding
        .max(2 * options.concurrency.div_ceil(options.coordinator.task_size));

    let _listener = match args.metrics_addr {
        MetricsAddr::Off => None,
        MetricsAddr::At(addr) => {
            let readiness = Readiness {
                draining: shutdown.clone(),
                ..Readiness::default()
            };
            match listener::serve(addr, readiness).await {
                Ok(listener) => Some(listener),
                Err(error) => {
                    eprintln!("error: --metrics-addr {addr}: {error}");
                    return 2;
                }
            }
        }
    };
    let progress = Arc::new(Progress::default());
    let lines_stop = CancellationToken::new();
    let lines = observe::mirror_lines(
        plan.spec().name.clone(),
        progress.clone(),
        lines_stop.clone(),
    );
    let started_at = SystemTime::now();
    let display = progress.display(&plan.spec().name);
    let outcome = match mode {
        Mode::Distributed(connected) => {
            distributed::run(&plan, connected, &options.coordinator, progress, shutdown).await
        }
        Mode::Embedded(models) => embedded::run(&plan, models, &options, progress, shutdown).await,
    };
    drop(display);
    lines_stop.cancel();
    let _ = lines.await;
    let summary = match outcome {
        Ok(summary) => summary,
        Err(error) => {
            report(&error);
            return error.exit_code();
        }
    };
    let labels = match manifest::write(&plan, &summary, started_at) {
        Ok(labels) => labels,
        Err(error) => {
            eprintln!(
                "error: {}: cannot write the manifest: {error}",
                plan.job.output_dir().display()
            );
            return 1;
        }
    };
    let counts = summary.counts;
    eprintln!(
        "{}: {} lines read = {} done + {} failed + {} rejected + {} duplicates{}",
        plan.spec().name,
        counts.lines_read,
        counts.done,
        counts.failed,
        counts.rejected,
        counts.duplicates,
        if summary.complete {
            ""
        } else {
            "; stopped before the end: run the same command again to resume"
        },
    );
    eprintln!(
        "this run: {} model calls, {} tokens in, {} tokens out, ${:.4} in {:.1} s; whole job: {} calls, {} tokens in, {} tokens out, ${:.4}",
        summary.run_usage.calls,
        summary.run_usage.tokens_in,
        summary.run_usage.tokens_out,
        summary.run_usage.cost_micro_usd as f64 / 1e6,
        summary.elapsed.as_secs_f64(),
        summary.usage.calls,
        summary.usage.tokens_in,
        summary.usage.tokens_out,
        summary.usage.cost_micro_usd as f64 / 1e6,
    );
    if let Some(labels) = &labels {
        eprintln!("{}", labels.describe());
    }
    write_pages(plan.job.output_dir());
    eprintln!("output: {}", shown(plan.job.output_dir()));
    if summary.complete { 0 } else { 130 }
}

/// Writes the report of the run's output, and the dataset card when the job is finished. The
/// data are safe whatever happens here: a failure is a warning (`cai report` makes them again).
fn write_pages(dir: &std::path::Path) {
    match page::write(dir, None) {
        Ok(path) => eprintln!("report: {}", shown(&path)),
        Err(error) => eprintln!("warning: cannot write the report: {error:#}"),
    }
    match card::write(dir) {
        Ok(CardOutcome::Written(path)) => eprintln!("dataset card: {}", shown(&path)),
        Ok(CardOutcome::Incomplete) => {}
        Ok(CardOutcome::Foreign(path)) => eprintln!(
            "dataset card: not written, {} was not written by cai",
            shown(&path)
        ),
        Err(error) => eprintln!("warning: cannot write the dataset card: {error:#}"),
    }
}

/// First SIGINT or SIGTERM: stop taking work, finish what is in flight. Second: exit at once.
fn watch_signals(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler installs");
        for round in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            if round == 0 {
                eprintln!(
                    "stopping: finishing the samples in flight (press Ctrl-C again to quit now)"
                );
                shutdown.cancel();
            } else {
                eprintln!("quitting now; committed samples are kept, re-run to resume");
                std::process::exit(130);
            }
        }
    });
}
