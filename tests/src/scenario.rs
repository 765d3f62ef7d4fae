//! A distributed critique-revise run ready to start: a model server, a cluster under the test's
//! own Redis key prefix, and a job over the first red-team prompts; plus the checks the distributed
//! and fault tests share (committed samples, a finished coordinator, exactly-once output).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cai_coordinator::ledger;
use serde_json::Value;
use tokio::process::Child;

use crate::cluster::Cluster;
use crate::harness::{JobDir, ids, read_jsonl, wait_until};
use crate::jobs::{self, Target};
use crate::model_server::{ModelServer, RecordedCall, ServerConfig};

/// What the job computes: its first `lines` prompts, `revisions` rounds, `concurrency` calls in
/// flight per worker.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// Corpus lines.
    pub lines: usize,
    /// Critique → revise rounds.
    pub revisions: u32,
    /// The model's `max_concurrency`.
    pub concurrency: usize,
}

/// The pieces of one distributed run.
pub struct Scenario {
    /// The model server.
    pub server: ModelServer,
    /// The job's cluster (its name, URLs and clean-up).
    pub cluster: Cluster,
    /// Where the job file, the logs and the output live.
    pub dir: JobDir,
    /// The job file.
    pub job: PathBuf,
    /// The output directory.
    pub out: PathBuf,
}

impl Scenario {
    /// A critique-revise job on a fresh model server answering with `config`, its Redis keys
    /// under a prefix of its own (workers serve every active job under their prefix).
    pub async fn critique_revise(config: ServerConfig, size: Size) -> Self {
        let server = ModelServer::start(config).await;
        let cluster = Cluster::unique();
        let dir = JobDir::new();
        let job = jobs::critique_revise(
            &dir,
            Target {
                file: "job.toml",
                name: &cluster.job,
                url: &server.url(),
                output: "out",
            },
            size.lines,
            size.revisions,
            size.concurrency,
        );
        let out = dir.path("out");
        Self {
            server,
            cluster,
            dir,
            job,
            out,
        }
    }

    /// Starts worker `id` (logging to `<id>.log`) with `extra` flags.
    pub fn worker(&self, id: &str, extra: &[&str]) -> Child {
        self.cluster
            .worker(id, &self.dir.path(&format!("{id}.log")), extra)
    }

    /// Starts the coordinator, logging to `log` in the job directory.
    pub fn coordinator(&self, log: &str) -> Child {
        self.cluster.coordinator(&self.job, &self.dir.path(log))
    }

    /// Samples committed (done or failed) so far.
    pub fn committed(&self) -> u64 {
        committed(&self.out)
    }

    /// Hex keys of the samples committed so far.
    pub fn committed_keys(&self) -> HashSet<String> {
        committed_keys(&self.out)
    }

    /// Waits until at least `count` samples are committed.
    pub async fn wait_committed(&self, count: u64) {
        wait_until(
            Duration::from_secs(60),
            &format!("{count} samples are committed"),
            || self.committed() >= count,
        )
        .await;
    }
}

/// Checks that the coordinator and every worker are still running (an outage must pause them,
/// not end them); shows the coordinator's log if it exited.
pub fn assert_all_running(coordinator: &mut Child, log: &Path, workers: &mut [(&str, &mut Child)]) {
    assert!(
        coordinator.try_wait().unwrap().is_none(),
        "the coordinator waits through the outage; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    for (id, worker) in workers {
        assert!(
            worker.try_wait().unwrap().is_none(),
            "worker {id} waits through the outage"
        );
    }
}

/// Samples committed (done or failed) in an output directory.
pub fn committed(out: &Path) -> u64 {
    ledger::totals(out).map(|t| t.done + t.failed).unwrap_or(0)
}

/// Hex keys of the samples committed in an output directory.
pub fn committed_keys(out: &Path) -> HashSet<String> {
    ledger::committed_keys(out)
        .map(|keys| keys.iter().map(|k| k.to_hex()).collect())
        .unwrap_or_default()
}

/// Waits (up to 180 s) for a coordinator to exit, and checks it succeeded; shows its log if not.
pub async fn finish(mut coordinator: Child, log: &Path) {
    let status = tokio::time::timeout(Duration::from_secs(180), coordinator.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the coordinator did not finish in 180 s; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .unwrap();
    assert!(
        status.success(),
        "coordinator failed; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Each sample exactly once, and the manifest's counts add up.
pub fn check_exactly_once(out: &Path, file: &str, expected_rows: usize) {
    let rows = read_jsonl(&out.join(file));
    assert_eq!(ids(&rows).len(), expected_rows, "rows in {file}");
    let trace_ids = ids(&read_jsonl(&out.join("traces.jsonl")));
    let unique: HashSet<&String> = trace_ids.iter().collect();
    assert_eq!(unique.len(), trace_ids.len(), "a sample was written twice");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["complete"], true);
    let counts = &manifest["counts"];
    let settled: u64 = ["done", "failed", "rejected", "duplicates"]
        .iter()
        .map(|k| counts[*k].as_u64().unwrap())
        .sum();
    assert_eq!(settled, counts["lines_read"].as_u64().unwrap());
}

/// Calls whose body repeats an earlier call's body (model work paid for twice), with their
/// positions in the server's log.
pub fn repeated(calls: &[RecordedCall]) -> Vec<(usize, &RecordedCall)> {
    let mut seen = HashSet::new();
    calls
        .iter()
        .enumerate()
        .filter(|(_, call)| !seen.insert(call.body.to_string()))
        .collect()
}
