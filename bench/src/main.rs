//! `cai-bench`: runs a job on a deterministic synthetic corpus through the real `cai` binary,
//! in embedded mode (one process) or distributed mode (a coordinator and N `cai worker`
//! processes on the local RabbitMQ and Redis), and reports what it cost: samples/s, model
//! calls/s, CPU seconds per 1,000 samples and peak RSS per process, the task and result queue
//! depths over time, and the Redis memory the job keeps per sample. JSON (`--json`) plus a
//! table on stdout. Every target of BENCHMARKS.md is one command line of this binary.
//!
//! Each run uses a fresh job name and output directory; its queues and Redis keys are deleted
//! afterwards (also when it fails).

mod corpus;
mod procs;
mod services;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cai_tests::model_server::{ModelServer, ServerConfig};
use clap::Parser;
use serde::Serialize;

use crate::corpus::Pipeline;
use crate::procs::{Machine, ProcessReport, Service, Tracked, round2};
use crate::services::{RedisReport, Services};

/// The local RabbitMQ.
const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The `tracing` target of the mock model's per-call lines (`cai_worker::model::mock`).
const MOCK_CALLS_TARGET: &str = "cai::mock::calls";

/// Benchmark one job configuration of cai.
#[derive(Clone, Debug, Parser, Serialize)]
#[command(name = "cai-bench", version, about)]
struct Args {
    /// Which pipeline.
    #[arg(long, value_enum, default_value = "pairwise")]
    pipeline: Pipeline,
    /// Critique-revise rounds (pairwise always judges both orders of one principle).
    #[arg(long, default_value_t = 1)]
    revisions: u32,
    /// Corpus lines (= samples).
    #[arg(long, default_value_t = 10_000)]
    samples: u64,
    /// Embedded (one `cai run` process) or distributed (`cai run --broker --state` + workers).
    #[arg(long, value_enum, default_value = "embedded")]
    mode: Mode,
    /// Workers: in-process workers in embedded mode, `cai worker` processes in distributed mode.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// `mock` (in-process, deterministic) or `server` (the OpenAI-compatible test server,
    /// run inside this process, reached over HTTP).
    #[arg(long, value_enum, default_value = "mock")]
    model: ModelKind,
    /// Latency of each model call, ms (the mock's `latency_ms`, or the test server's delay).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// The model's `max_concurrency`, which is also each process's samples in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Samples in flight per process (`--concurrency` of `cai run` and `cai worker`); default:
    /// `--concurrency`. More than the model's `max_concurrency` keeps the model's slots full
    /// while a task waits for its slowest sample.
    #[arg(long)]
    samples_in_flight: Option<usize>,
    /// Samples per task (`cai run --task-size`); default: cai's.
    #[arg(long)]
    task_size: Option<usize>,
    /// Repetitions; medians and spreads are reported over them.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Run the job to this fraction of the corpus first (`input.limit`), then resume it on
    /// the whole corpus and measure the resumed run: time to the first task published, and
    /// that no model call is made twice.
    #[arg(long)]
    resume_at: Option<f64>,
    /// Redis database of distributed runs.
    #[arg(long, default_value_t = 10)]
    db: u8,
    /// RabbitMQ URL.
    #[arg(long, default_value = BROKER_URL)]
    broker: String,
    /// Redis host URL without the database (`redis://host:port`).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Where corpora, job files, outputs and logs go; default: a temporary directory, removed
    /// afterwards.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write the report here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The `cai` binary; default: the one next to this binary.
    #[arg(long)]
    cai: Option<PathBuf>,
    /// The constitution; default: the repository's `constitutions/default.toml`.
    #[arg(long)]
    constitution: Option<PathBuf>,
    /// Log every mock model call in the measured run and check that none is made twice (costs
    /// some CPU: one log line per call).
    #[arg(long)]
    count_calls: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Embedded,
    Distributed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum ModelKind {
    Mock,
    Server,
}

impl Args {
    /// Samples in flight per process.
    fn in_flight(&self) -> usize {
        self.samples_in_flight.unwrap_or(self.concurrency)
    }

    /// Model calls one sample makes.
    fn calls_per_sample(&self) -> u64 {
        match self.pipeline {
            Pipeline::Pairwise => 2,
            Pipeline::CritiqueRevise => 1 + 2 * u64::from(self.revisions),
        }
    }

    /// Samples per second if the model were the only limit: every process keeps `concurrency`
    /// calls in flight, each taking the latency.
    fn ideal_samples_per_s(&self) -> Option<f64> {
        if self.latency_ms == 0 {
            return None;
        }
        let processes = match self.mode {
            Mode::Embedded => 1,
            Mode::Distributed => self.workers,
        };
        let calls_per_s = (processes * self.concurrency) as f64 / (self.latency_ms as f64 / 1e3);
        Some(calls_per_s / self.calls_per_sample() as f64)
    }
}

/// The whole report.
#[derive(Serialize)]
struct Report {
    args: Args,
    machine: Machine,
    cai_binary: PathBuf,
    /// One entry per run; the last phase of each is the measured one.
    runs: Vec<RunReport>,
    summary: Summary,
}

#[derive(Serialize)]
struct RunReport {
    run: usize,
    job: String,
    phases: Vec<PhaseReport>,
}

/// One `cai run` from start to exit, with its workers.
#[derive(Clone, Serialize)]
struct PhaseReport {
    /// `run`, or `first` and `resume` with `--resume-at`.
    phase: String,
    mode: Mode,
    /// Corpus lines this phase reads (its `input.limit`).
    lines: u64,
    exit_code: Option<i32>,
    /// Samples done in the output directory at the end.
    done_total: u64,
    /// Samples done by this phase.
    done_this_run: u64,
    failed: u64,
    /// Model calls this phase paid for (cached steps excluded).
    model_calls: u64,
    /// The coordinator's own run time (`this run: … in X s`).
    coordinator_elapsed_s: f64,
    /// From spawning the coordinator to its exit.
    wall_s: f64,
    /// `done_this_run / coordinator_elapsed_s`.
    samples_per_s: f64,
    /// `model_calls / coordinator_elapsed_s`.
    calls_per_s: f64,
    /// `done_this_run / wall_s`.
    wall_samples_per_s: f64,
    /// Concurrency ÷ latency ÷ calls per sample (model-bound runs).
    ideal_samples_per_s: Option<f64>,
    /// `samples_per_s / ideal_samples_per_s`.
    efficiency: Option<f64>,
    /// Seconds from spawning the coordinator to the first task in the queue (resumed runs
    /// measure it with no worker running, so the task stays visible).
    first_task_s: Option<f64>,
    /// Seconds from spawning the coordinator to the first sample counted done by this phase.
    first_done_s: Option<f64>,
    /// Every process of the phase: `cai` processes, then (distributed) Redis and RabbitMQ,
    /// whose CPU is counted over the phase and whose memory is the whole server's.
    processes: Vec<ProcessReport>,
    /// CPU seconds of all processes (servers included) per 1,000 samples.
    total_cpu_s_per_1k_samples: f64,
    /// Task and result queue depths (distributed).
    queues: Option<QueueReport>,
    /// Redis footprint after the phase (distributed).
    redis: Option<RedisReport>,
    /// `(seconds since start, samples done)`: Redis's done set (distributed) or the
    /// coordinator's progress log lines (embedded, every 5 s).
    progress: Vec<(f64, u64)>,
    /// Model calls seen by the mock's call log or the test server, and how many repeated one.
    call_check: Option<CallCheck>,
}

#[derive(Clone, Serialize)]
struct QueueReport {
    max_tasks: u32,
    max_results: u32,
    /// `(seconds since start, ready tasks, ready results)`.
    series: Vec<(f64, u32, u32)>,
}

#[derive(Clone, Serialize)]
struct CallCheck {
    /// Where the calls were counted: `mock-log` or `server`.
    source: String,
    calls: u64,
    /// Calls for a (sample, step) already called before.
    repeated: u64,
    /// Calls this phase had to make: samples done × calls per sample.
    expected: u64,
}

#[derive(Serialize, Default)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        // Three decimals: CPU seconds per 1,000 samples are a few hundredths.
        let round3 = |value: f64| (value * 1000.0).round() / 1000.0;
        Some(Self {
            median: round3(median),
            min: round3(values[0]),
            max: round3(values[n - 1]),
            n,
        })
    }
}

/// Medians and spreads of the measured phases.
#[derive(Serialize, Default)]
struct Summary {
    samples_per_s: Option<Spread>,
    calls_per_s: Option<Spread>,
    wall_samples_per_s: Option<Spread>,
    efficiency: Option<Spread>,
    first_task_s: Option<Spread>,
    total_cpu_s_per_1k_samples: Option<Spread>,
    /// Per role: CPU seconds per 1,000 samples.
    cpu_s_per_1k_samples: std::collections::BTreeMap<String, Spread>,
    /// Per role: peak RSS, MiB.
    peak_rss_mib: std::collections::BTreeMap<String, Spread>,
    redis_bytes_per_sample: Option<Spread>,
    max_task_queue_depth: Option<Spread>,
}

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
        "{} is missing: build it (`cargo build --release -p cai-coordinator`) or pass --cai",
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

/// One run of the benchmark: its job and directory.
struct Bench<'a> {
    args: &'a Args,
    cai: &'a Path,
    dir: PathBuf,
    corpus: &'a Path,
    job: String,
    server: Option<&'a ModelServer>,
}

impl Bench<'_> {
    fn state_url(&self) -> String {
        format!("{}/{}", self.args.redis.trim_end_matches('/'), self.args.db)
    }

    /// Writes the job file, reading the first `limit` lines of the corpus.
    fn job_file(&self, limit: u64) -> anyhow::Result<PathBuf> {
        let args = self.args;
        let constitution = args.constitution.clone().unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../constitutions/default.toml")
        });
        let model_name = match args.pipeline {
            Pipeline::Pairwise => "judge",
            Pipeline::CritiqueRevise => "policy",
        };
        let pipeline = match args.pipeline {
            Pipeline::Pairwise => format!(
                "pipeline = \"pairwise\"\n\n[pairwise]\njudge = \"{model_name}\"\n\
                 candidates = [\"chosen\", \"rejected\"]\nswap = true\n"
            ),
            Pipeline::CritiqueRevise => format!(
                "pipeline = \"critique-revise\"\n\n[critique_revise]\nmodel = \"{model_name}\"\n\
                 revisions = {}\nsft = \"final\"\n",
                args.revisions
            ),
        };
        let model = match self.server {
            Some(server) => format!(
                "backend = \"openai\"\nurl = \"{}\"\nmodel = \"bench\"\ntimeout_s = 60\n",
                server.url()
            ),
            None => format!("backend = \"mock\"\nlatency_ms = {}\n", args.latency_ms),
        };
        let text = format!(
            "name = \"{job}\"\nseed = 1\noutput = \"{out}\"\n\n[input]\npath = \"{corpus}\"\n\
             prompt = \"prompt\"\nid = \"id\"\nlimit = {limit}\n\n[constitution]\npath = \"{constitution}\"\n\
             few_shot = false\n\n[models.{model_name}]\n{model}max_concurrency = {concurrency}\n\n",
            job = self.job,
            out = self.dir.join("out").display(),
            corpus = self.corpus.display(),
            constitution = constitution.display(),
            concurrency = args.concurrency,
        );
        // The pipeline section's first line is a top-level key: it must come before any table.
        let (first, rest) = pipeline.split_once('\n').expect("two lines");
        let text = format!("{first}\n{text}{rest}");
        let path = self.dir.join("job.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    async fn run(&self, services: Option<&Services>) -> anyhow::Result<Vec<PhaseReport>> {
        let mut phases = Vec::new();
        match self.args.resume_at {
            Some(at) => {
                let first_lines = ((self.args.samples as f64) * at).round() as u64;
                let first = self.phase("first", first_lines, 0, false, services).await?;
                let done_before = first.done_total;
                phases.push(first);
                phases.push(
                    self.phase("resume", self.args.samples, done_before, true, services)
                        .await?,
                );
            }
            None => phases.push(
                self.phase("run", self.args.samples, 0, false, services)
                    .await?,
            ),
        }
        Ok(phases)
    }

    fn worker(&self, index: usize, log_calls: bool) -> anyhow::Result<Tracked> {
        let mut command = Command::new(self.cai);
        command
            .args(["worker", "--broker", &self.args.broker, "--state"])
            .arg(self.state_url())
            .args(["--id", &format!("{}-w{index}", self.job)])
            .args(["--concurrency", &self.args.in_flight().to_string()])
            .args(["--grace-s", "60"])
            .args(["--metrics-addr", "off"])
            .env("CAI_LOG", log_filter(log_calls))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(
                self.dir.join(format!("worker-{index}.log")),
            )?);
        Tracked::spawn(&format!("worker-{index}"), command)
    }

    /// Runs `cai run` on the first `lines` lines (with workers in distributed mode) until it
    /// exits, sampling everything on the way.
    async fn phase(
        &self,
        name: &str,
        lines: u64,
        done_before: u64,
        resumed: bool,
        services: Option<&Services>,
    ) -> anyhow::Result<PhaseReport> {
        let args = self.args;
        let job_file = self.job_file(lines)?;
        let log_calls = resumed && args.count_calls;
        let server_before = self.server.map(ModelServer::counts);
        let used_before = match services {
            Some(services) => services.used_memory().await?,
            None => 0,
        };
        // The servers' CPU counts too: the broker and the state store work for every sample.
        let servers: Vec<Service> = match services {
            Some(_) => Service::find("redis", "redis-server")
                .into_iter()
                .chain(Service::find("rabbitmq", "beam.smp"))
                .collect(),
            None => Vec::new(),
        };
        let mut workers = Vec::new();
        // Workers poll for new jobs every 2 s: start them first so they are ready, except for
        // a resumed run, whose first task is timed in an empty queue.
        if args.mode == Mode::Distributed && !resumed {
            for index in 1..=args.workers {
                workers.push(self.worker(index, log_calls)?);
            }
        }

        let mut command = Command::new(self.cai);
        command.arg("run").arg(&job_file);
        match args.mode {
            Mode::Embedded => {
                command
                    .args(["--workers", &args.workers.to_string()])
                    .args(["--concurrency", &args.in_flight().to_string()]);
            }
            Mode::Distributed => {
                command
                    .args(["--broker", &args.broker, "--state"])
                    .arg(self.state_url());
            }
        }
        if let Some(task_size) = args.task_size {
            command.args(["--task-size", &task_size.to_string()]);
        }
        command
            .env(
                "CAI_LOG",
                log_filter(log_calls && args.mode == Mode::Embedded),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let role = match args.mode {
            Mode::Embedded => "embedded",
            Mode::Distributed => "coordinator",
        };
        let mut coordinator = Tracked::spawn(role, command)?;
        let log = Arc::new(Mutex::new(LogScan::default()));
        let reader = {
            let stderr = coordinator.take_stderr().context("stderr is piped")?;
            let log = log.clone();
            let path = self.dir.join(format!("{role}-{name}.log"));
            std::thread::spawn(move || scan_log(stderr, &path, started, &log))
        };

        let mut queue_series = Vec::new();
        let mut progress = Vec::new();
        let mut first_task_s = None;
        let mut first_done_s = None;
        let mut last_poll = Instant::now() - Duration::from_secs(1);
        loop {
            coordinator.sample();
            for worker in &mut workers {
                worker.sample();
            }
            if coordinator.exit().is_some() {
                break;
            }
            let t = started.elapsed().as_secs_f64();
            if let Some(services) = services {
                if workers.is_empty() {
                    // A resumed run: time the first task, then start the workers.
                    let (tasks, _) = services.queue_depths().await.unwrap_or((0, 0));
                    if tasks > 0 {
                        first_task_s = Some(round2(started.elapsed().as_secs_f64()));
                        for index in 1..=args.workers {
                            workers.push(self.worker(index, log_calls)?);
                        }
                    } else if t > 600.0 {
                        anyhow::bail!("no task published within 600 s");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                if last_poll.elapsed() >= Duration::from_millis(500) {
                    last_poll = Instant::now();
                    if let Ok((tasks, results)) = services.queue_depths().await {
                        queue_series.push((round2(t), tasks, results));
                    }
                    if let Ok(done) = services.done_count().await {
                        progress.push((round2(t), done));
                        if first_done_s.is_none() && done > done_before {
                            first_done_s = Some(round2(t));
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wall_s = started.elapsed().as_secs_f64();
        let exit = coordinator.wait(Duration::from_secs(1)).await;
        reader.join().expect("the log reader does not panic");
        let log = std::mem::take(&mut *log.lock().expect("log lock"));
        anyhow::ensure!(
            exit.success(),
            "cai run exited with {exit}; see {}",
            self.dir.display()
        );
        let server_costs: Vec<ProcessReport> = servers
            .iter()
            .map(|server| server.report(log.done.unwrap_or(0).saturating_sub(done_before)))
            .collect();
        let redis = match services {
            Some(services) => Some(
                services
                    .redis_report(log.done.unwrap_or(0), used_before)
                    .await?,
            ),
            None => None,
        };
        for worker in &workers {
            worker.terminate();
        }
        for worker in &mut workers {
            worker.wait(Duration::from_secs(90)).await;
        }

        let done_total = log.done.context("cai run printed no counts")?;
        let done_this_run = done_total.saturating_sub(done_before);
        // The manifest has the run time at full precision (the summary line rounds it).
        let elapsed = std::fs::read_to_string(self.dir.join("out/manifest.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|manifest| manifest["elapsed_s"].as_f64())
            .or(log.elapsed_s)
            .context("cai run reported no run time")?;
        let model_calls = log.calls.unwrap_or(0);
        if services.is_none() {
            progress = log.progress.clone();
            first_done_s = log
                .progress
                .iter()
                .find(|(_, done)| *done > done_before)
                .map(|(t, _)| *t);
        }
        let samples_per_s = done_this_run as f64 / elapsed.max(1e-9);
        let ideal = args.ideal_samples_per_s();
        let mut processes = vec![coordinator.report(done_this_run)];
        processes.extend(workers.iter().map(|w| w.report(done_this_run)));
        processes.extend(server_costs);
        let total_cpu: f64 = processes.iter().map(|p| p.cpu_s).sum();
        let expected = done_this_run * args.calls_per_sample();
        let call_check = if let (Some(server), Some(before)) = (self.server, server_before) {
            let (calls, repeats) = server.counts();
            Some(CallCheck {
                source: "server".into(),
                calls: calls - before.0,
                repeated: repeats - before.1,
                expected,
            })
        } else if log_calls {
            let mut seeds = std::collections::HashSet::new();
            let mut calls = 0_u64;
            let mut logs: Vec<PathBuf> = (1..=workers.len())
                .map(|i| self.dir.join(format!("worker-{i}.log")))
                .collect();
            logs.push(self.dir.join(format!("{role}-{name}.log")));
            for path in logs {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for line in text.lines().filter(|l| l.contains(MOCK_CALLS_TARGET)) {
                    calls += 1;
                    if let Some(seed) = field(&strip_ansi(line), "seed") {
                        seeds.insert(seed.to_owned());
                    }
                }
            }
            Some(CallCheck {
                source: "mock-log".into(),
                calls,
                repeated: calls - seeds.len() as u64,
                expected,
            })
        } else {
            None
        };
        Ok(PhaseReport {
            phase: name.to_owned(),
            mode: args.mode,
            lines,
            exit_code: exit.code(),
            done_total,
            done_this_run,
            failed: log.failed.unwrap_or(0),
            model_calls,
            coordinator_elapsed_s: round2(elapsed),
            wall_s: round2(wall_s),
            samples_per_s: round2(samples_per_s),
            calls_per_s: round2(model_calls as f64 / elapsed.max(1e-9)),
            wall_samples_per_s: round2(done_this_run as f64 / wall_s.max(1e-9)),
            ideal_samples_per_s: ideal.map(round2),
            efficiency: ideal.map(|ideal| (samples_per_s / ideal * 1000.0).round() / 1000.0),
            first_task_s,
            first_done_s,
            total_cpu_s_per_1k_samples: if done_this_run > 0 {
                (total_cpu * 1e6 / done_this_run as f64).round() / 1000.0
            } else {
                0.0
            },
            processes,
            queues: services.map(|_| QueueReport {
                max_tasks: queue_series.iter().map(|q| q.1).max().unwrap_or(0),
                max_results: queue_series.iter().map(|q| q.2).max().unwrap_or(0),
                series: queue_series,
            }),
            redis,
            progress,
            call_check,
        })
    }
}

/// `CAI_LOG` of the spawned processes: info, plus the mock's call lines when counting calls.
fn log_filter(log_calls: bool) -> String {
    if log_calls {
        format!("info,{MOCK_CALLS_TARGET}=debug")
    } else {
        "info".into()
    }
}

/// What the coordinator's stderr said.
#[derive(Default)]
struct LogScan {
    done: Option<u64>,
    failed: Option<u64>,
    calls: Option<u64>,
    elapsed_s: Option<f64>,
    progress: Vec<(f64, u64)>,
}

/// A log line without its ANSI colour codes (`cai` colours its log even into a file).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip `ESC [ … m`.
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `name=value` in a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..].split_whitespace().next()
}

/// Copies the coordinator's stderr to `path`, picking out its counts, its run time and the
/// progress lines.
fn scan_log(
    stderr: std::process::ChildStderr,
    path: &Path,
    started: Instant,
    log: &Mutex<LogScan>,
) {
    let mut file = std::fs::File::create(path)
        .ok()
        .map(std::io::BufWriter::new);
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let line = strip_ansi(&line);
        if let Some(file) = &mut file {
            let _ = writeln!(file, "{line}");
        }
        let mut log = log.lock().expect("log lock");
        if line.contains("progress") {
            if let Some(done) = field(&line, "done").and_then(|v| v.parse().ok()) {
                log.progress
                    .push((round2(started.elapsed().as_secs_f64()), done));
            }
        }
        // "<job>: N lines read = D done + F failed + R rejected + U duplicates…"
        if let Some((_, counts)) = line.split_once(" lines read = ") {
            let numbers: Vec<u64> = counts
                .split_whitespace()
                .filter_map(|word| word.parse().ok())
                .collect();
            log.done = numbers.first().copied();
            log.failed = numbers.get(1).copied();
        }
        // "this run: C model calls, … in S s; whole job: …"
        if let Some(rest) = line.strip_prefix("this run: ") {
            log.calls = rest.split_whitespace().next().and_then(|v| v.parse().ok());
            log.elapsed_s = rest
                .split(';')
                .next()
                .and_then(|part| part.rsplit_once(" in "))
                .and_then(|(_, time)| time.trim_end_matches(" s").parse().ok());
        }
    }
}

fn summarise(runs: &[RunReport]) -> Summary {
    let measured: Vec<&PhaseReport> = runs.iter().filter_map(|r| r.phases.last()).collect();
    let collect = |f: &dyn Fn(&PhaseReport) -> Option<f64>| {
        Spread::of(measured.iter().filter_map(|p| f(p)).collect())
    };
    let mut summary = Summary {
        samples_per_s: collect(&|p| Some(p.samples_per_s)),
        calls_per_s: collect(&|p| Some(p.calls_per_s)),
        wall_samples_per_s: collect(&|p| Some(p.wall_samples_per_s)),
        efficiency: collect(&|p| p.efficiency),
        first_task_s: collect(&|p| p.first_task_s),
        total_cpu_s_per_1k_samples: collect(&|p| Some(p.total_cpu_s_per_1k_samples)),
        redis_bytes_per_sample: collect(&|p| p.redis.as_ref().map(|r| r.bytes_per_sample)),
        max_task_queue_depth: collect(&|p| p.queues.as_ref().map(|q| f64::from(q.max_tasks))),
        ..Summary::default()
    };
    let roles: std::collections::BTreeSet<String> = measured
        .iter()
        .flat_map(|p| p.processes.iter().map(|p| p.role.clone()))
        .collect();
    for role in roles {
        let of = |f: &dyn Fn(&ProcessReport) -> f64| {
            Spread::of(
                measured
                    .iter()
                    .flat_map(|p| p.processes.iter().filter(|p| p.role == role).map(f))
                    .collect(),
            )
        };
        if let Some(spread) = of(&|p| p.cpu_s_per_1k_samples) {
            summary.cpu_s_per_1k_samples.insert(role.clone(), spread);
        }
        if let Some(spread) = of(&|p| p.peak_rss_mib) {
            summary.peak_rss_mib.insert(role, spread);
        }
    }
    summary
}

fn print_phase(run: usize, phase: &PhaseReport) {
    println!(
        "run {run} {:<7} {:<11} lines {:>9}  done {:>9}  {:>8.1} s  {:>10.1} samples/s  {:>10.1} calls/s{}{}",
        phase.phase,
        format!("{:?}", phase.mode).to_lowercase(),
        phase.lines,
        phase.done_this_run,
        phase.coordinator_elapsed_s,
        phase.samples_per_s,
        phase.calls_per_s,
        phase
            .efficiency
            .map(|e| format!("  efficiency {e:.3}"))
            .unwrap_or_default(),
        phase
            .first_task_s
            .map(|t| format!("  first task {t:.2} s"))
            .unwrap_or_default(),
    );
    for process in &phase.processes {
        println!(
            "    {:<12} cpu {:>8.2} s  {:>7.3} cpu-s/1k samples  peak RSS {:>7.1} MiB (max {:.1} → {:.1} MiB first → second half)",
            process.role,
            process.cpu_s,
            process.cpu_s_per_1k_samples,
            process.peak_rss_mib,
            process.rss_first_half_max_mib,
            process.rss_second_half_max_mib,
        );
    }
    if let Some(queues) = &phase.queues {
        println!(
            "    queues: max {} tasks, {} results ready",
            queues.max_tasks, queues.max_results
        );
    }
    if let Some(redis) = &phase.redis {
        println!(
            "    redis: {} keys, {} bytes = {:.1} bytes/sample (done set {} members, {} bytes; {} step hashes, {} leases left)",
            redis.job_keys,
            redis.job_bytes,
            redis.bytes_per_sample,
            redis.done_set_members,
            redis.done_set_bytes,
            redis.step_hashes_left,
            redis.leases_left
        );
    }
    if let Some(check) = &phase.call_check {
        println!(
            "    calls ({}): {} made, {} expected, {} repeated",
            check.source, check.calls, check.expected, check.repeated
        );
    }
}

fn print_summary(summary: &Summary) {
    let show = |name: &str, spread: Option<&Spread>| {
        if let Some(s) = spread {
            println!(
                "{name:<28} median {:>10.3}  min {:>10.3}  max {:>10.3}  (n = {})",
                s.median, s.min, s.max, s.n
            );
        }
    };
    println!("summary of the measured phases:");
    show("samples/s", summary.samples_per_s.as_ref());
    show("model calls/s", summary.calls_per_s.as_ref());
    show("samples/s (wall)", summary.wall_samples_per_s.as_ref());
    show("efficiency", summary.efficiency.as_ref());
    show("first task (s)", summary.first_task_s.as_ref());
    show(
        "cpu-s/1k samples (all)",
        summary.total_cpu_s_per_1k_samples.as_ref(),
    );
    for (role, spread) in &summary.cpu_s_per_1k_samples {
        show(&format!("cpu-s/1k samples {role}"), Some(spread));
    }
    for (role, spread) in &summary.peak_rss_mib {
        show(&format!("peak RSS MiB {role}"), Some(spread));
    }
    show(
        "redis bytes/sample",
        summary.redis_bytes_per_sample.as_ref(),
    );
    show(
        "max task queue depth",
        summary.max_task_queue_depth.as_ref(),
    );
}
