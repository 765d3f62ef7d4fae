//! The `cai` binary: parse, run, exit with the code the command chose.

use clap::Parser;

fn main() -> std::process::ExitCode {
    cai_coordinator::cli::main(cai_coordinator::cli::Cli::parse())
}
