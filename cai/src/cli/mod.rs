//! The `cai` command line: clap structs that mirror what was typed, and one module per
//! subcommand that turns them into a checked plan before touching anything.
//!
//! Exit codes: 0 the job is complete (failed samples are reported, not fatal); 1 a run-time
//! error; 2 a bad job file, constitution or command line, or a broker or state store set up so
//! that no wait helps (a certificate this process does not trust, refused credentials, a URL
//! that does not parse, a host that never resolved); 130 stopped by a signal before the job was
//! complete (re-run the same command to resume). `validate` exits 1 when lines would be
//! rejected.

mod init;
mod job_keys;
mod report;
mod run;
mod shown;
mod status;
mod validate;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use cai_common::tls::TlsFiles;

use clap::{Parser, Subcommand};

use crate::telemetry::tracing_setup::{self, LogFormat};

/// Build Constitutional AI datasets: critique → revise (SFT) and pairwise AI feedback (preferences).
#[derive(Debug, Parser)]
#[command(
    name = "cai",
    version,
    about,
    after_help = "Example: start a job of your own and run it with the mock model:\n  \
                  cai init pairwise my-job && cai run my-job/job.toml && cai status my-job/out"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job. Embedded (this process does everything) unless a broker is given.
    #[command(
        after_help = "Example: the coordinator of a distributed run (workers: `cai worker`):\n  \
                            cai run examples/mock-critique-revise.toml \\\n    \
                            --broker amqp://guest:guest@127.0.0.1:5672/%2f --state redis://127.0.0.1:6379/0"
    )]
    Run(RunArgs),
    /// Start a new job: write a commented job file, a starter constitution and a small corpus.
    Init {
        /// The pipeline of the job.
        #[arg(value_enum)]
        pipeline: InitPipeline,
        /// The directory to write into (created if needed); existing files are not overwritten.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Check a job file, its constitution and its whole corpus without calling any model, and
    /// estimate what running it will cost.
    Validate {
        /// The job file.
        job: PathBuf,
        /// Print the counts and the estimate as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Write OUTPUT_DIR/report.html (plots and a sample browser, one self-contained file) from
    /// a finished or running job's output, and rewrite a finished job's dataset card (README.md).
    Report {
        /// The job's output directory.
        dir: PathBuf,
        /// Write the report here instead of OUTPUT_DIR/report.html.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A stateless worker of distributed runs: serves every active job it finds in Redis.
    Worker(WorkerArgs),
    /// Show the progress of a job: from its output directory, or from Redis with `--state`.
    Status {
        /// The job's output directory, or with `--state` the job's name.
        target: String,
        /// Redis URL: read the job's live progress and the workers from there.
        #[arg(long, env = "CAI_STATE")]
        state: Option<String>,
        /// Print one JSON object instead of lines for a person.
        #[arg(long)]
        json: bool,
        /// TLS files for a `rediss://` URL.
        #[command(flatten)]
        tls: TlsArgs,
    },
}

/// TLS beyond what `amqps://` and `rediss://` turn on: a private CA instead of the system's
/// roots, and a client certificate for services that ask for one (mutual TLS). Server names
/// are always checked.
#[derive(Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM file of the CA that signed the broker's and Redis's certificates.
    #[arg(long, env = "CAI_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of this process's client certificate (needs --tls-key-file).
    #[arg(long, env = "CAI_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (needs --tls-cert-file).
    #[arg(long, env = "CAI_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
}

impl TlsArgs {
    /// The files, as the connections take them.
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.tls_ca_file.clone(),
            cert_file: self.tls_cert_file.clone(),
            key_file: self.tls_key_file.clone(),
        }
    }
}

/// The pipeline `cai init` writes a job for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum InitPipeline {
    /// Critique → revise (SFT rows).
    CritiqueRevise,
    /// Pairwise AI feedback (preference labels).
    Pairwise,
    /// Dialogues between a user model and the policy, revised turn by turn (SFT rows).
    Dialogue,
}

/// Flags of `cai worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// RabbitMQ URL (`amqp://user:password@host:5672/vhost`).
    #[arg(long, env = "CAI_BROKER")]
    pub broker: String,
    /// Redis URL (`redis://host:6379/db`).
    #[arg(long, env = "CAI_STATE")]
    pub state: String,
    /// Samples in flight per job; default: the job's largest model `max_concurrency` (for
    /// `"auto"`, its `max_concurrency_limit`).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Seconds to finish tasks in flight after SIGTERM; unfinished tasks go back to the queue.
    #[arg(long, default_value_t = 30)]
    pub grace_s: u64,
    /// This worker's id in heartbeats; default: host name and process id.
    #[arg(long)]
    pub id: Option<String>,
    /// Lets jobs read the API-key variable VAR and send it to these hosts only (repeatable, one
    /// variable each; also `CAI_ALLOW_KEYS="VAR=HOST,HOST;VAR2=HOST"`). A job naming another
    /// variable, or sending an allowed one to another host, fails before the key is read.
    #[arg(long = "allow-key", value_name = "VAR=HOST[,HOST...]")]
    pub allow_keys: Vec<String>,
    /// Files holding the job keys this worker verifies jobs and tasks with: the current key
    /// and, during a rotation, the previous one (at most two; also `CAI_JOB_KEY` and
    /// `CAI_JOB_KEY_PREVIOUS`). With a key, unsigned or wrongly signed jobs are refused.
    #[arg(long = "job-key-file", value_name = "PATH")]
    pub job_key_files: Vec<PathBuf>,

    /// Where to serve /metrics, /healthz and /readyz (`HOST:PORT`, port 0 picks one), or `off`.
    /// Default: 0.0.0.0:9090, skipped with a warning if that port is taken.
    #[arg(long, value_parser = parse_metrics_addr)]
    pub metrics_addr: Option<MetricsAddr>,
    /// Seconds to wait at start for a broker or state-store host name that does not resolve
    /// (DNS in a starting cluster lags) before stopping; a service that refuses connections is
    /// waited for as long as it takes.
    #[arg(long, env = "CAI_CONNECT_TIMEOUT_S", default_value_t = 120)]
    pub connect_timeout_s: u64,
    /// TLS files for `amqps://` and `rediss://` URLs.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// The `--metrics-addr` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    /// No listener.
    Off,
    /// Listen here.
    At(SocketAddr),
}

fn parse_metrics_addr(value: &str) -> Result<MetricsAddr, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(MetricsAddr::Off);
    }
    value
        .parse()
        .map(MetricsAddr::At)
        .map_err(|_| format!("{value:?} is not HOST:PORT (an IP address and a port) or `off`"))
}

/// Flags of `cai run`: how this process runs (the job file says what to compute).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The job file (TOML).
    pub job: PathBuf,
    /// In-process workers (embedded mode).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Samples in flight per worker; default: the largest `max_concurrency` of the job's models
    /// (for `"auto"`, its `max_concurrency_limit`).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Samples per task.
    #[arg(long, default_value_t = 16)]
    pub task_size: usize,
    /// Start the job over: remove the previous run's output in the output directory.
    #[arg(long)]
    pub new: bool,
    /// RabbitMQ URL: run as the coordinator of a distributed job (needs `--state`).
    #[arg(long, env = "CAI_BROKER", requires = "state")]
    pub broker: Option<String>,
    /// Redis URL: run as the coordinator of a distributed job (needs `--broker`).
    #[arg(long, env = "CAI_STATE", requires = "broker")]
    pub state: Option<String>,
    /// Where to serve /metrics, /healthz and /readyz (`HOST:PORT`, port 0 picks one); off by
    /// default.
    #[arg(long, value_parser = parse_metrics_addr, default_value = "off")]
    pub metrics_addr: MetricsAddr,
    /// File holding the job key that signs the job and its tasks for the workers (distributed
    /// mode; also `CAI_JOB_KEY`, the key itself). Workers holding the key run only what it
    /// signed.
    #[arg(long, value_name = "PATH", requires = "broker")]
    pub job_key_file: Option<PathBuf>,
    /// Seconds to wait at start for a broker or state-store host name that does not resolve
    /// (DNS in a starting cluster lags) before stopping; a service that refuses connections is
    /// waited for as long as it takes.
    #[arg(long, env = "CAI_CONNECT_TIMEOUT_S", default_value_t = 120)]
    pub connect_timeout_s: u64,
    /// TLS files for `amqps://` and `rediss://` URLs.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Runs the parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let service = match cli.command {
        Command::Worker(_) => "cai-worker",
        _ => "cai-coordinator",
    };
    let tracing = {
        let _runtime = runtime.enter();
        tracing_setup::init(cli.log_format, service)
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Init { pipeline, dir } => init::init(pipeline, &dir),
            Command::Validate { job, json } => validate::validate(&job, json).await,
            Command::Worker(args) => worker::worker(args).await,
            Command::Report { dir, out } => report::report(&dir, out.as_deref()),
            Command::Status {
                target,
                state,
                json,
                tls,
            } => match state {
                Some(state) => status::live(&target, &state, &tls.files(), json).await,
                None => status::status(std::path::Path::new(&target), json),
            },
        }
    });
    // Outside `block_on`, while the runtime's threads still run the exporter.
    tracing.shutdown();
    // Blocking corpus readers may still be parked on a full channel: don't wait for them.
    runtime.shutdown_background();
    ExitCode::from(code)
}

/// Prints an error with its chain of causes, one per line.
fn report(error: &(dyn std::error::Error + 'static)) {
    eprintln!("error: {error}");
    let mut cause = error.source();
    while let Some(error) = cause {
        eprintln!("  caused by: {error}");
        cause = error.source();
    }
}
