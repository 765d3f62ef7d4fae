//! Reading what the spawned `cai` processes log: the `CAI_LOG` filter they get, and the
//! coordinator's stderr scanned for its counts, run time and progress.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use crate::procs::round2;

/// The `tracing` target of the mock model's per-call lines (`cai_worker::model::mock`).
pub(crate) const MOCK_CALLS_TARGET: &str = "cai::mock::calls";

/// `CAI_LOG` of the spawned processes: info, plus the mock's call lines when counting calls.
pub(crate) fn log_filter(log_calls: bool) -> String {
    if log_calls {
        format!("info,{MOCK_CALLS_TARGET}=debug")
    } else {
        "info".into()
    }
}

/// What the coordinator's stderr said.
#[derive(Default)]
pub(crate) struct LogScan {
    /// Samples done, from the final counts line.
    pub(crate) done: Option<u64>,
    /// Samples failed, from the final counts line.
    pub(crate) failed: Option<u64>,
    /// Model calls of this run, from the `this run:` line.
    pub(crate) calls: Option<u64>,
    /// The run time of this run, from the `this run:` line.
    pub(crate) elapsed_s: Option<f64>,
    /// `(seconds since start, samples done)` of each progress line.
    pub(crate) progress: Vec<(f64, u64)>,
}

/// A log line without its ANSI colour codes (`cai` colours its log even into a file).
pub(crate) fn strip_ansi(line: &str) -> String {
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
pub(crate) fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..].split_whitespace().next()
}

/// Copies the coordinator's stderr to `path`, picking out its counts, its run time and the
/// progress lines.
pub(crate) fn scan_log(
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
