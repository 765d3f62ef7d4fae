//! Batch mode end to end: a critique → revise job whose every call goes through the test
//! server's Batch API, killed (SIGKILL) while a batch is in flight and run again, in embedded
//! mode and with a worker killed in distributed mode: every sample once, no line answered twice,
//! the failed lines sent again and only they, and the cost at the batch price. And a pairwise
//! job through batches labels as the same job with direct calls does.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cai_tests::cluster::Cluster;
use cai_tests::harness::{JobDir, cai_process, read_jsonl, repo_file, run_job, wait_until};
use cai_tests::jobs::{PAIRS, PROMPTS};
use cai_tests::model_server::{BatchConfig, ModelServer, ServerConfig};
use cai_tests::scenario::{check_exactly_once, finish};
use serde_json::Value;

/// The first 200 lines hold 199 distinct prompts (one repeats).
const LINES: usize = 200;
const DISTINCT: usize = 199;
/// Calls per sample: the initial answer, then a critique and a revision per round.
const CALLS: usize = 1 + 2 * 2;

/// A server whose batches take a second, with a few lines failing.
fn server_config() -> ServerConfig {
    ServerConfig {
        batch: BatchConfig {
            duration: Duration::from_secs(1),
            failed_lines: 0.03,
            ..BatchConfig::default()
        },
        ..ServerConfig::default()
    }
}

/// A critique-revise job named `name` over the first 200 prompts, two rounds, in batch mode at
/// $2 / $4 per million tokens direct (so $1 / $2 by batch).
fn job(dir: &JobDir, name: &str, url: &str) -> PathBuf {
    dir.head(PROMPTS, LINES, "prompts.jsonl");
    dir.write(
        "job.toml",
        format!(
            r#"
name = "{name}"
pipeline = "critique-revise"
seed = 3
output = "out"

[input]
path = "prompts.jsonl"
prompt = "prompt"

[constitution]
path = "{constitution}"
few_shot = false

[critique_revise]
model = "policy"
revisions = 2
sft = "every"

[models.policy]
backend = "openai"
url = "{url}"
model = "test-model"
max_retries = 8
price_in = 2.0
price_out = 4.0
batch = true
batch_size = 100
batch_wait_s = 1
"#,
            constitution = repo_file("constitutions/default.toml").display()
        ),
    )
}

/// Every call came by batch, no body was answered twice, every call of every sample was
/// answered once, and the lines sent again are exactly those that failed.
fn check_batch_calls(server: &ModelServer) {
    let calls = server.calls();
    assert!(calls.iter().all(|call| call.batch), "a call went direct");
    assert_eq!(server.repeated_answers(), 0, "a line was answered twice");
    let answered: Vec<&Value> = calls
        .iter()
        .filter(|call| call.fault.is_none())
        .map(|call| &call.body)
        .collect();
    assert_eq!(answered.len(), DISTINCT * CALLS);
    let failed: Vec<&Value> = calls
        .iter()
        .filter(|call| call.fault.is_some())
        .map(|call| &call.body)
        .collect();
    assert!(!failed.is_empty(), "no line failed");
    let answered: HashSet<String> = answered.iter().map(|body| body.to_string()).collect();
    assert!(
        failed
            .iter()
            .all(|body| answered.contains(&body.to_string())),
        "a failed line was not sent again"
    );
}

/// The manifest's cost is the batch price times the tokens, and every call went by batch.
fn check_batch_cost(out: &Path) {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let count = |field: &str| manifest[field].as_u64().unwrap();
    assert_eq!(count("model_calls"), (DISTINCT * CALLS) as u64);
    assert_eq!(count("batch_calls"), count("model_calls"));
    let batch_price = (count("tokens_in") as f64 * 1.0 + count("tokens_out") as f64 * 2.0) / 1e6;
    let cost = manifest["cost_usd"].as_f64().unwrap();
    assert!(
        cost > 0.0 && (cost - batch_price).abs() < 1e-9,
        "{cost} ≠ {batch_price}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_with_a_batch_in_flight_resumes_without_paying_a_line_twice() {
    let server = ModelServer::start(server_config()).await;
    let dir = JobDir::new();
    let job = job(&dir, "batch-resume", &server.url());
    let mut child = cai_process()
        .arg("run")
        .arg(&job)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(120),
        "a batch is in flight after two finished",
        || {
            let (created, in_progress) = server.batches();
            created >= 3 && in_progress >= 1
        },
    )
    .await;
    child.start_kill().unwrap();
    assert!(!child.wait().await.unwrap().success());

    let output = cai_process().arg("run").arg(&job).output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = dir.path("out");
    check_exactly_once(&out, "sft.jsonl", DISTINCT * 2);
    check_batch_calls(&server);
    check_batch_cost(&out);
    let status = cai_process()
        .arg("status")
        .arg(&out)
        .output()
        .await
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    let calls = DISTINCT * CALLS;
    assert!(
        status.contains(&format!("usage: {calls} model calls ({calls} by batch)")),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_a_batch_in_flight_loses_nothing_and_pays_nothing_twice() {
    let server = ModelServer::start(server_config()).await;
    let cluster = Cluster::unique();
    let dir = JobDir::new();
    let job = job(&dir, &cluster.job, &server.url());
    let mut w1 = cluster.worker("w1", &dir.path("w1.log"), &[]);
    let mut w2 = cluster.worker("w2", &dir.path("w2.log"), &[]);
    let log = dir.path("coordinator.log");
    let coordinator = cluster.coordinator(&job, &log);
    wait_until(
        Duration::from_secs(120),
        "a batch is in flight after two finished",
        || {
            let (created, in_progress) = server.batches();
            created >= 3 && in_progress >= 1
        },
    )
    .await;
    w1.kill().await.unwrap();
    let mut w3 = cluster.worker("w3", &dir.path("w3.log"), &[]);
    finish(coordinator, &log).await;
    let out = dir.path("out");
    check_exactly_once(&out, "sft.jsonl", DISTINCT * 2);
    check_batch_calls(&server);
    check_batch_cost(&out);
    w2.start_kill().unwrap();
    w3.start_kill().unwrap();
}

/// A pairwise job over 40 pairs with the judge at `url`, direct or by batch, output in `out`.
fn pairwise(dir: &JobDir, url: &str, out: &str, batch: bool) -> PathBuf {
    dir.head(PAIRS, 40, "pairs.jsonl");
    let batch = if batch {
        "batch = true\nbatch_size = 30\nbatch_wait_s = 1\n"
    } else {
        ""
    };
    dir.write(
        &format!("{out}.toml"),
        format!(
            r#"
name = "batch-pairwise"
pipeline = "pairwise"
seed = 11
output = "{out}"

[input]
path = "pairs.jsonl"

[constitution]
path = "{constitution}"

[pairwise]
judge = "feedback"
candidates = ["chosen", "rejected"]
principles_per_label = 2

[models.feedback]
backend = "openai"
url = "{url}"
model = "judge"
{batch}"#,
            constitution = repo_file("constitutions/default.toml").display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pairwise_job_by_batch_labels_as_the_same_job_with_direct_calls() {
    let server = ModelServer::start(ServerConfig::default()).await;
    let dir = JobDir::new();
    run_job(&pairwise(&dir, &server.url(), "direct", false))
        .await
        .unwrap();
    let direct = server.calls().len();
    assert!(direct > 0 && server.calls().iter().all(|call| !call.batch));
    run_job(&pairwise(&dir, &server.url(), "batched", true))
        .await
        .unwrap();
    let batched: Vec<_> = server.calls().into_iter().skip(direct).collect();
    assert_eq!(batched.len(), direct);
    assert!(batched.iter().all(|call| call.batch && call.judge));
    let rows = |out: &str| -> Vec<String> {
        let mut rows: Vec<String> = read_jsonl(&dir.path(out).join("preferences.jsonl"))
            .iter()
            .map(Value::to_string)
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(rows("batched").len(), 40);
    assert_eq!(rows("batched"), rows("direct"));
}
