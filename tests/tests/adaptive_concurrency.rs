//! `max_concurrency = "auto"` against test servers that refuse what is beyond their capacity:
//! the server's capacity itself, and real `cai run` jobs that find it, or climb to
//! `max_concurrency_limit` where there is none.
//!
//! The limit a run reached is read from its log: `cai --log-format json` with
//! `CAI_LOG=info,cai::model::concurrency=debug` logs every change of an adaptive limit with its
//! new value (`fields.limit`).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use cai_tests::harness::{JobDir, cai_process, repo_file, wait_until};
use cai_tests::model_server::{ModelServer, ServerConfig};
use cai_worker::model::concurrency::LIMIT_LOG_TARGET;
use serde_json::{Value, json};

const PROMPTS: &str = "hh-rlhf/red-team-prompts/harmless-base_test_prompts.jsonl";
/// Each sample makes 3 calls (one revision).
const SAMPLES: usize = 400;
/// The latency of every call.
const LATENCY: Duration = Duration::from_millis(20);

/// A critique-revise job over the first [`SAMPLES`] red-team prompts (one revision) with
/// `model_lines` in its model's table.
fn job(dir: &JobDir, url: &str, model_lines: &str) -> PathBuf {
    dir.head(PROMPTS, SAMPLES, "prompts.jsonl");
    dir.write(
        "job.toml",
        format!(
            r#"
name = "adaptive"
pipeline = "critique-revise"
seed = 3
output = "out"

[input]
path = "prompts.jsonl"
prompt = "prompt"
id = "source_line"

[constitution]
path = "{constitution}"
few_shot = false

[critique_revise]
model = "policy"
revisions = 1
sft = "final"

[models.policy]
backend = "openai"
url = "{url}"
model = "test-model"
max_tokens = 64
{model_lines}
"#,
            constitution = repo_file("constitutions/default.toml").display()
        ),
    )
}

/// What a run of `cai run` left: its output, and every limit its adaptive limit logged, in order.
struct Run {
    output: Output,
    limits: Vec<u64>,
}

/// Runs `cai run JOB` with the limit's log lines on; panics unless it ends within 5 minutes.
async fn cai_run(job: &Path) -> Run {
    let child = cai_process()
        .args(["--log-format", "json", "run"])
        .arg(job)
        .env("CAI_LOG", format!("info,{LIMIT_LOG_TARGET}=debug"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cai starts");
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("cai run ends within 5 minutes")
        .expect("cai's output is read");
    let limits = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == LIMIT_LOG_TARGET)
        .map(|line| line["fields"]["limit"].as_u64().expect("a limit"))
        .collect();
    Run { output, limits }
}

/// Asserts that the run completed with every sample done and none failed.
fn completed(dir: &JobDir, run: &Run) {
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    assert_eq!(run.output.status.code(), Some(0), "{stderr}");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/manifest.json")).unwrap())
            .unwrap();
    let counts = &manifest["counts"];
    assert_eq!(manifest["complete"], true);
    assert_eq!(counts["failed"], 0, "{manifest:#}");
    // The corpus repeats a few prompts: those are done once.
    let settled = counts["done"].as_u64().unwrap() + counts["duplicates"].as_u64().unwrap();
    assert_eq!(settled, SAMPLES as u64, "{manifest:#}");
}

/// Posts a chat request, returning the status.
async fn post(client: &reqwest::Client, url: &str, text: &str) -> u16 {
    client
        .post(format!("{url}/chat/completions"))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .expect("the server answers")
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_test_server_refuses_what_arrives_beyond_its_capacity_with_a_429() {
    let server = ModelServer::start(ServerConfig {
        capacity: Some(2),
        latency: Duration::from_millis(500),
        ..ServerConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let url = server.url();
    let served = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { tokio::join!(post(&client, &url, "one"), post(&client, &url, "two")) }
    });
    wait_until(
        Duration::from_secs(10),
        "two requests are in flight",
        || server.calls().len() == 2,
    )
    .await;
    assert_eq!(post(&client, &url, "three").await, 429);
    assert_eq!(served.await.unwrap(), (200, 200));
    assert_eq!(post(&client, &url, "four").await, 200);

    let faults: Vec<Option<&str>> = server.calls().iter().map(|call| call.fault).collect();
    assert_eq!(faults, [None, None, Some("capacity"), None]);
    assert_eq!(server.over_capacity(), 1);
    // The refused request was not served, so it is no repeat when it comes again.
    assert_eq!(post(&client, &url, "three").await, 200);
    assert_eq!(server.counts(), (5, 0));
}

#[tokio::test]
async fn auto_finds_a_capacity_of_16_with_few_429s() {
    let server = ModelServer::start(ServerConfig {
        capacity: Some(16),
        latency: LATENCY,
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    let job = job(&dir, &server.url(), "max_concurrency = \"auto\"");
    let run = cai_run(&job).await;
    completed(&dir, &run);

    let (requests, _) = server.counts();
    let refused = server.over_capacity();
    assert!(refused > 0, "the limit never went past the capacity");
    assert!(
        refused * 20 < requests,
        "{refused} of {requests} requests refused (5 % allowed)"
    );
    // It climbed to the capacity and a little past, and lives near it after its first cut
    // (its sawtooth: 12 to 17).
    let peak = *run.limits.iter().max().expect("the limit changed");
    assert!((16..=20).contains(&peak), "{:?}", run.limits);
    let first_cut = run
        .limits
        .windows(2)
        .position(|pair| pair[1] < pair[0])
        .expect("the limit was cut");
    let mut settled = run.limits[first_cut + 1..].to_vec();
    settled.sort_unstable();
    let median = settled[settled.len() / 2];
    assert!((12..=17).contains(&median), "{:?}", run.limits);
}

#[tokio::test]
async fn auto_climbs_to_max_concurrency_limit_where_the_server_has_no_limit() {
    let server = ModelServer::start(ServerConfig {
        latency: LATENCY,
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    let job = job(
        &dir,
        &server.url(),
        "max_concurrency = \"auto\"\nmax_concurrency_limit = 32",
    );
    let run = cai_run(&job).await;
    completed(&dir, &run);
    assert_eq!(server.over_capacity(), 0);
    assert_eq!(run.limits.iter().max(), Some(&32), "{:?}", run.limits);
}
