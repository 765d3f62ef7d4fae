//! Helpers the scenario tests share: paths to the repository's data, job directories, running a
//! job in-process or through the `cai` binary, reading output files, and waiting on conditions
//! with deadlines.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cai_coordinator::coordinate::Summary;
use cai_coordinator::embedded::{self, EmbeddedOptions};
use cai_coordinator::manifest;
use cai_coordinator::plan::Plan;
use cai_coordinator::progress::Progress;
use cai_worker::model::Models;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A file of the repository's data (`data/` at the repository root; see `data/SOURCES.md`).
pub fn data_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data")
        .join(relative)
}

/// A file of this repository.
pub fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// A temporary directory holding a job file, its corpus and its output.
pub struct JobDir {
    dir: tempfile::TempDir,
}

impl Default for JobDir {
    fn default() -> Self {
        Self::new()
    }
}

impl JobDir {
    /// A fresh directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// A path inside the directory.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes a file and returns its path.
    pub fn write(&self, relative: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(relative);
        std::fs::write(&path, contents).expect("write a test file");
        path
    }

    /// Writes the first `n` lines of a file of the repository's data (see [`data_file`]) as
    /// `name`; panics if the file has fewer (`data/` holds samples of a few hundred lines).
    pub fn head(&self, data: &str, n: usize, name: &str) -> PathBuf {
        let text = std::fs::read_to_string(data_file(data)).expect("data file readable");
        let lines: Vec<&str> = text.lines().take(n).collect();
        assert_eq!(lines.len(), n, "data/{data} has fewer than {n} lines");
        let lines: String = lines.iter().map(|l| format!("{l}\n")).collect();
        self.write(name, lines)
    }

    /// Rows of an output file of the job whose output is `out/` in this directory.
    pub fn rows(&self, file: &str) -> Vec<Value> {
        read_jsonl(&self.path("out").join(file))
    }
}

/// Every line of a JSONL file, parsed; a missing file has no rows.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// Runs a job file to completion in this process (embedded mode), as `cai run` would, manifest
/// included.
pub async fn run_job(job: &Path) -> anyhow::Result<Summary> {
    let plan = Plan::load(job)?;
    plan.claim_output(false)?;
    let models = Models::build(&plan.spec().models)?;
    let options = EmbeddedOptions::for_plan(&plan, 2);
    let started_at = std::time::SystemTime::now();
    let summary = embedded::run(
        &plan,
        models,
        &options,
        Arc::new(Progress::default()),
        CancellationToken::new(),
    )
    .await?;
    manifest::write(&plan, &summary, started_at)?;
    Ok(summary)
}

/// The `cai` binary of this build. `cargo test --workspace` (or `-p cai`, whose
/// integration tests need it) builds it next to the test binaries.
pub fn cai_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in <target>/<profile>/deps")
        .join("cai");
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or add `-p cai`)",
        binary.display()
    );
    binary
}

/// A command that runs the `cai` binary of this build as a child that cannot outlive the
/// test: killed when its handle is dropped (a failed assertion unwinds through it) and, through
/// the kernel's parent-death signal (`setpriv --pdeathsig KILL`, util-linux), when the test
/// process dies without unwinding (an abort, a SIGKILL, a timeout of the test runner). A `cai
/// worker` left behind would serve the next test's jobs.
pub fn cai_process() -> tokio::process::Command {
    let mut command = tokio::process::Command::new("setpriv");
    command
        .args(["--pdeathsig", "KILL", "--"])
        .arg(cai_binary())
        .kill_on_drop(true);
    command
}

/// Sends `signal` (`"INT"`, `"TERM"`, …) to a running child, as an operator's Ctrl-C or a
/// Kubernetes stop would; panics if it cannot be sent.
pub fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("the process runs").to_string();
    let sent = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "SIG{signal} could not be sent");
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` after `deadline`.
pub async fn wait_until(deadline: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + deadline;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the async `probe` every 100 ms until it yields a value; panics naming `what` after
/// `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status and body of a GET of `url` (a process's `/metrics`, `/healthz`, `/readyz`), or
/// `None` while nothing answers there.
pub async fn get(url: &str) -> Option<(u16, String)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Ids of rows, sorted, with repeats kept (so a duplicate shows).
pub fn ids(rows: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = rows
        .iter()
        .map(|row| match &row["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    ids.sort();
    ids
}
