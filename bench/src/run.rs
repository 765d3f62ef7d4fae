//! One run of the benchmark: its job file, and each phase of it (`cai run` to exit, with its
//! workers in distributed mode) sampled for CPU, memory, queue depths and progress.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cai_tests::model_server::ModelServer;

use crate::args::{Args, Mode};
use crate::corpus::Pipeline;
use crate::log::{LogScan, MOCK_CALLS_TARGET, field, log_filter, scan_log, strip_ansi};
use crate::procs::{ProcessReport, Service, Tracked, round2};
use crate::report::{CallCheck, PhaseReport, QueueReport};
use crate::services::Services;

/// One run of the benchmark: its job and directory.
pub(crate) struct Bench<'a> {
    /// The command line.
    pub(crate) args: &'a Args,
    /// The `cai` binary.
    pub(crate) cai: &'a Path,
    /// This run's directory: job file, output and logs.
    pub(crate) dir: PathBuf,
    /// The synthetic corpus, shared by the runs.
    pub(crate) corpus: &'a Path,
    /// The job name.
    pub(crate) job: String,
    /// The test model server, with `--model server`.
    pub(crate) server: Option<&'a ModelServer>,
}

impl Bench<'_> {
    /// The Redis URL with the run's database.
    pub(crate) fn state_url(&self) -> String {
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
                "backend = \"openai\"\nurl = \"{}\"\nmodel = \"bench\"\ntimeout_s = 60\n{}",
                server.url(),
                match args.batch_size {
                    Some(size) => format!(
                        "batch = true\nbatch_size = {size}\nbatch_wait_s = {}\n",
                        args.batch_wait_s
                    ),
                    None => String::new(),
                }
            ),
            None => format!("backend = \"mock\"\nlatency_ms = {}\n", args.latency_ms),
        };
        let text = format!(
            "name = \"{job}\"\nseed = 1\noutput = \"{out}\"\n\n[input]\npath = \"{corpus}\"\n\
             prompt = \"prompt\"\nid = \"id\"\nlimit = {limit}\n\n[constitution]\npath = \"{constitution}\"\n\
             few_shot = false\n\n[models.{model_name}]\n{model}{concurrency}\n",
            job = self.job,
            out = self.dir.join("out").display(),
            corpus = self.corpus.display(),
            constitution = constitution.display(),
            concurrency = if args.auto {
                format!(
                    "max_concurrency = \"auto\"\nmax_concurrency_limit = {}\n",
                    args.concurrency
                )
            } else {
                format!("max_concurrency = {}\n", args.concurrency)
            },
        );
        // The pipeline section's first line is a top-level key: it must come before any table.
        let (first, rest) = pipeline.split_once('\n').expect("two lines");
        let text = format!("{first}\n{text}{rest}");
        let path = self.dir.join("job.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Runs the phases: one, or with `--resume-at` a first one and the resumed one.
    pub(crate) async fn run(
        &self,
        services: Option<&Services>,
    ) -> anyhow::Result<Vec<PhaseReport>> {
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

    /// Spawns `cai worker` number `index`, logging to `worker-<index>.log`.
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
        let server_before = self
            .server
            .map(|server| (server.counts().0, server.counts().1, server.over_capacity()));
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
                over_capacity: server.over_capacity() - before.2,
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
                over_capacity: 0,
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
