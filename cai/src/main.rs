//! The `cai` binary: the command line ([`cli`]) and how the process reports on itself
//! ([`telemetry`]: logs, trace export, the metrics and probe listener). Everything the commands
//! do lives in the library crates: `cai-coordinator` (plan, corpus, ledger, runs, report),
//! `cai-worker` (models and pipelines) and `cai-common` (job spec, wire format, seams).

mod cli;
mod telemetry;

use clap::Parser;

fn main() -> std::process::ExitCode {
    cli::main(cli::Cli::parse())
}
