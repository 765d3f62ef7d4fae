//! The report of a benchmark: every phase of every run, the medians and spreads of the
//! measured phases, and the table printed on stdout.

use std::path::PathBuf;

use serde::Serialize;

use crate::args::{Args, Mode};
use crate::procs::{Machine, ProcessReport};
use crate::services::RedisReport;

/// The whole report.
#[derive(Serialize)]
pub(crate) struct Report {
    /// The command line.
    pub(crate) args: Args,
    /// The machine it ran on.
    pub(crate) machine: Machine,
    /// The `cai` binary it ran.
    pub(crate) cai_binary: PathBuf,
    /// One entry per run; the last phase of each is the measured one.
    pub(crate) runs: Vec<RunReport>,
    /// Medians and spreads of the measured phases.
    pub(crate) summary: Summary,
}

/// One run: its job and its phases.
#[derive(Serialize)]
pub(crate) struct RunReport {
    /// 1-based run number.
    pub(crate) run: usize,
    /// The job name, fresh for each run.
    pub(crate) job: String,
    /// The phases, the measured one last.
    pub(crate) phases: Vec<PhaseReport>,
}

/// One `cai run` from start to exit, with its workers.
#[derive(Clone, Serialize)]
pub(crate) struct PhaseReport {
    /// `run`, or `first` and `resume` with `--resume-at`.
    pub(crate) phase: String,
    /// Embedded or distributed.
    pub(crate) mode: Mode,
    /// Corpus lines this phase reads (its `input.limit`).
    pub(crate) lines: u64,
    /// `cai run`'s exit code.
    pub(crate) exit_code: Option<i32>,
    /// Samples done in the output directory at the end.
    pub(crate) done_total: u64,
    /// Samples done by this phase.
    pub(crate) done_this_run: u64,
    /// Samples failed at the end.
    pub(crate) failed: u64,
    /// Model calls this phase paid for (cached steps excluded).
    pub(crate) model_calls: u64,
    /// The coordinator's own run time (`this run: … in X s`).
    pub(crate) coordinator_elapsed_s: f64,
    /// From spawning the coordinator to its exit.
    pub(crate) wall_s: f64,
    /// `done_this_run / coordinator_elapsed_s`.
    pub(crate) samples_per_s: f64,
    /// `model_calls / coordinator_elapsed_s`.
    pub(crate) calls_per_s: f64,
    /// `done_this_run / wall_s`.
    pub(crate) wall_samples_per_s: f64,
    /// Concurrency ÷ latency ÷ calls per sample (model-bound runs).
    pub(crate) ideal_samples_per_s: Option<f64>,
    /// `samples_per_s / ideal_samples_per_s`.
    pub(crate) efficiency: Option<f64>,
    /// Seconds from spawning the coordinator to the first task in the queue (resumed runs
    /// measure it with no worker running, so the task stays visible).
    pub(crate) first_task_s: Option<f64>,
    /// Seconds from spawning the coordinator to the first sample counted done by this phase.
    pub(crate) first_done_s: Option<f64>,
    /// Every process of the phase: `cai` processes, then (distributed) Redis and RabbitMQ,
    /// whose CPU is counted over the phase and whose memory is the whole server's.
    pub(crate) processes: Vec<ProcessReport>,
    /// CPU seconds of all processes (servers included) per 1,000 samples.
    pub(crate) total_cpu_s_per_1k_samples: f64,
    /// Task and result queue depths (distributed).
    pub(crate) queues: Option<QueueReport>,
    /// Redis footprint after the phase (distributed).
    pub(crate) redis: Option<RedisReport>,
    /// `(seconds since start, samples done)`: Redis's done set (distributed) or the
    /// coordinator's progress log lines (embedded, every 5 s).
    pub(crate) progress: Vec<(f64, u64)>,
    /// Model calls seen by the mock's call log or the test server, and how many repeated one.
    pub(crate) call_check: Option<CallCheck>,
}

/// The task and result queue depths of a distributed phase.
#[derive(Clone, Serialize)]
pub(crate) struct QueueReport {
    /// Most tasks ready at once.
    pub(crate) max_tasks: u32,
    /// Most results ready at once.
    pub(crate) max_results: u32,
    /// `(seconds since start, ready tasks, ready results)`.
    pub(crate) series: Vec<(f64, u32, u32)>,
}

/// Whether a phase made each model call it needed once.
#[derive(Clone, Serialize)]
pub(crate) struct CallCheck {
    /// Where the calls were counted: `mock-log` or `server`.
    pub(crate) source: String,
    /// Calls counted.
    pub(crate) calls: u64,
    /// Calls for a (sample, step) already called before.
    pub(crate) repeated: u64,
    /// Calls this phase had to make: samples done × calls per sample.
    pub(crate) expected: u64,
    /// Calls the server refused with a 429 for its `--server-capacity` (not in `calls`'
    /// repeats: a refused call was not served).
    pub(crate) over_capacity: u64,
}

/// The median, minimum and maximum of one measure over the measured phases.
#[derive(Serialize, Default)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Spread {
    /// The spread of `values`, rounded to three decimals; `None` for no values.
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
pub(crate) struct Summary {
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

/// Medians and spreads over the last (measured) phase of each run.
pub(crate) fn summarise(runs: &[RunReport]) -> Summary {
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

/// Prints one phase: its rates, then each process, the queues, Redis and the call check.
pub(crate) fn print_phase(run: usize, phase: &PhaseReport) {
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
            "    calls ({}): {} made, {} expected, {} repeated, {} refused over capacity",
            check.source, check.calls, check.expected, check.repeated, check.over_capacity
        );
    }
}

/// Prints the summary, one line per measure.
pub(crate) fn print_summary(summary: &Summary) {
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
