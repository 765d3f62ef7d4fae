//! The processes of a run (a coordinator, workers) and what they cost, read from `/proc`.
//!
//! CPU time is `utime + stime` of `/proc/PID/stat`, which the kernel keeps for a process that
//! exited until its parent reaps it: a child is reaped only after it is seen as a zombie, so
//! its last reading is its whole CPU time, not the last sample before the end. Peak RSS is the
//! kernel's high-water mark (`VmHWM`), which only grows; RSS is also sampled over time to show
//! whether it stays flat.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Clock ticks per second of `/proc/PID/stat` times.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `(state, utime + stime in ticks)` of a process, if it still exists.
fn read_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Fields 14 and 15 of stat(5) (utime, stime) are 11 and 12 after the state (field 3).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((state, utime + stime))
}

/// `(VmHWM, VmRSS)` in KiB; `None` once the process has released its memory.
fn read_memory(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|value| value.parse::<u64>().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// A spawned process and its measurements so far.
pub struct Tracked {
    /// What it is in the run: `coordinator`, `worker-1`, …
    pub role: String,
    child: Child,
    started: Instant,
    cpu_ticks: u64,
    peak_rss_kib: u64,
    rss_series: Vec<(f64, u64)>,
    exit: Option<(ExitStatus, f64)>,
}

impl Tracked {
    /// Spawns `command` (stdin closed) and starts tracking it.
    pub fn spawn(role: &str, mut command: Command) -> anyhow::Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {role}: {e}"))?;
        Ok(Self {
            role: role.to_owned(),
            child,
            started: Instant::now(),
            cpu_ticks: 0,
            peak_rss_kib: 0,
            rss_series: Vec::new(),
            exit: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Takes the child's stderr, if it was piped.
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// Reads the process's counters; reaps it once it has exited (after the final reading).
    pub fn sample(&mut self) {
        if self.exit.is_some() {
            return;
        }
        let pid = self.pid();
        let stat = read_stat(pid);
        if let Some((_, ticks)) = stat {
            self.cpu_ticks = ticks;
        }
        if let Some((hwm, rss)) = read_memory(pid) {
            self.peak_rss_kib = self.peak_rss_kib.max(hwm);
            let t = self.started.elapsed().as_secs_f64();
            // Keep the series small: one point per 0.5 s is plenty to see a trend.
            if self
                .rss_series
                .last()
                .is_none_or(|(last, _)| t - last >= 0.5)
            {
                self.rss_series.push((t, rss));
            }
        }
        let gone = match stat {
            Some((state, _)) => state == 'Z' || state == 'X',
            None => true,
        };
        if gone {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some((status, self.started.elapsed().as_secs_f64()));
            }
        }
    }

    /// The exit status and the seconds from spawn to exit, once it exited.
    pub fn exit(&self) -> Option<(ExitStatus, f64)> {
        self.exit
    }

    /// Asks the process to stop (SIGTERM, which `cai` answers by draining).
    pub fn terminate(&self) {
        if self.exit.is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
        }
    }

    /// Waits until the process exited, sampling it; kills it after `deadline`.
    pub async fn wait(&mut self, deadline: Duration) -> ExitStatus {
        let give_up = Instant::now() + deadline;
        loop {
            self.sample();
            if let Some((status, _)) = self.exit {
                return status;
            }
            if Instant::now() > give_up {
                eprintln!("{} did not exit within {deadline:?}; killing it", self.role);
                let _ = self.child.kill();
                let status = self.child.wait().expect("a killed child can be reaped");
                self.exit = Some((status, self.started.elapsed().as_secs_f64()));
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the process cost, with CPU per 1,000 samples of `samples`.
    pub fn report(&self, samples: u64) -> ProcessReport {
        let cpu_s = self.cpu_ticks as f64 / clock_ticks();
        let rss_mib: Vec<f64> = self
            .rss_series
            .iter()
            .map(|(_, kib)| *kib as f64 / 1024.0)
            .collect();
        // RSS over the second half of the run against the first: "flat" means the late
        // maximum is not far above the early one.
        let half = rss_mib.len() / 2;
        let max = |values: &[f64]| values.iter().copied().fold(0.0, f64::max);
        ProcessReport {
            role: self.role.clone(),
            pid: self.pid(),
            wall_s: self.exit.map(|(_, t)| t),
            cpu_s,
            cpu_s_per_1k_samples: if samples > 0 {
                cpu_s * 1000.0 / samples as f64
            } else {
                0.0
            },
            peak_rss_mib: self.peak_rss_kib as f64 / 1024.0,
            rss_first_half_max_mib: max(&rss_mib[..half]),
            rss_second_half_max_mib: max(&rss_mib[half..]),
            rss_series_mib: self
                .rss_series
                .iter()
                .map(|(t, kib)| (round2(*t), round2(*kib as f64 / 1024.0)))
                .collect(),
        }
    }
}

impl Drop for Tracked {
    /// A process still running when its run is abandoned (an error) is killed and reaped.
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Rounds to two decimals (keeps the JSON readable).
pub fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// What one process of a run cost.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessReport {
    /// `coordinator`, `embedded`, `worker-1`, …
    pub role: String,
    /// Its process id.
    pub pid: u32,
    /// Seconds from spawn to exit.
    pub wall_s: Option<f64>,
    /// User + system CPU seconds.
    pub cpu_s: f64,
    /// CPU seconds per 1,000 samples done in the run.
    pub cpu_s_per_1k_samples: f64,
    /// Peak resident memory (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// Largest RSS seen in the first half of the samples, MiB.
    pub rss_first_half_max_mib: f64,
    /// Largest RSS seen in the second half of the samples, MiB.
    pub rss_second_half_max_mib: f64,
    /// `(seconds since spawn, RSS MiB)`, about every half second.
    pub rss_series_mib: Vec<(f64, f64)>,
}

/// The machine the numbers come from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPUs the kernel offers.
    pub cpus: usize,
    /// `model name` of `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads the machine's description from `/proc`.
    pub fn read() -> Self {
        let read = |path: &str| std::fs::read_to_string(Path::new(path)).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split(':').nth(1))
                .unwrap_or("unknown")
                .trim()
                .to_owned(),
            memory_mib: meminfo
                .lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
                .map_or(0, |kib| kib / 1024),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        }
    }
}

/// A server process the run uses but did not start (RabbitMQ, Redis): its CPU time over the
/// run is read at the start and at the end.
pub struct Service {
    role: String,
    pid: u32,
    start_ticks: u64,
}

impl Service {
    /// The running processes whose command name is `comm` (`redis-server`, `beam.smp`).
    pub fn find(role: &str, comm: &str) -> Vec<Self> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|name| name.trim() == comm)
            })
            .filter_map(|pid| {
                Some(Self {
                    role: role.to_owned(),
                    pid,
                    start_ticks: read_stat(pid)?.1,
                })
            })
            .collect()
    }

    /// Its CPU time since [`Service::find`], with CPU per 1,000 of `samples`.
    pub fn report(&self, samples: u64) -> ProcessReport {
        let ticks = read_stat(self.pid).map_or(0, |(_, ticks)| ticks);
        let cpu_s = ticks.saturating_sub(self.start_ticks) as f64 / clock_ticks();
        let (hwm, rss) = read_memory(self.pid).unwrap_or((0, 0));
        ProcessReport {
            role: self.role.clone(),
            pid: self.pid,
            wall_s: None,
            cpu_s,
            cpu_s_per_1k_samples: if samples > 0 {
                cpu_s * 1000.0 / samples as f64
            } else {
                0.0
            },
            peak_rss_mib: hwm as f64 / 1024.0,
            rss_first_half_max_mib: 0.0,
            rss_second_half_max_mib: rss as f64 / 1024.0,
            rss_series_mib: Vec::new(),
        }
    }
}
