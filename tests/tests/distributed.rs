//! Distributed mode against this machine's RabbitMQ and Redis, with real `cai` processes: the
//! same output as embedded mode, and exactly-once output through killed workers, a killed
//! coordinator, a flushed Redis, poison messages and a draining worker.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use cai_common::broker::{Broker, Queue};
use cai_common::envelope;
use cai_common::state::StateStore;
use cai_coordinator::ledger;
use cai_tests::cluster::Cluster;
use cai_tests::harness::{JobDir, ids, read_jsonl, run_job, wait_until};
use cai_tests::jobs::{self, Target};
use cai_tests::model_server::{ModelServer, RecordedCall, ServerConfig};
use serde_json::Value;
use tokio::process::Child;

// Each test has a Redis database of its own: a worker serves every active job it finds, so
// tests sharing a database would serve each other's jobs.

fn committed(out: &Path) -> u64 {
    ledger::totals(out).map(|t| t.done + t.failed).unwrap_or(0)
}

fn committed_keys(out: &Path) -> HashSet<String> {
    ledger::committed_keys(out)
        .map(|keys| keys.iter().map(|k| k.to_hex()).collect())
        .unwrap_or_default()
}

async fn finish(mut coordinator: Child, log: &Path) {
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

fn sorted_rows(path: &Path) -> Vec<String> {
    let mut rows: Vec<String> = read_jsonl(path).iter().map(Value::to_string).collect();
    rows.sort();
    rows
}

/// Each sample exactly once, and the manifest's counts add up.
fn check_exactly_once(out: &Path, file: &str, expected_rows: usize) {
    let rows = read_jsonl(&out.join(file));
    let row_ids = ids(&rows);
    assert_eq!(row_ids.len(), expected_rows, "rows in {file}");
    let traces = read_jsonl(&out.join("traces.jsonl"));
    let trace_ids = ids(&traces);
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

/// Calls whose body repeats an earlier call's body: model work paid for twice.
fn repeated(calls: &[RecordedCall]) -> Vec<(usize, &RecordedCall)> {
    let mut seen = HashSet::new();
    calls
        .iter()
        .enumerate()
        .filter(|(_, call)| !seen.insert(call.body.to_string()))
        .collect()
}

/// The sample key of every prompt, from the finished output.
fn key_of_prompt(out: &Path) -> HashMap<String, String> {
    let key_of_id: HashMap<String, String> = read_jsonl(&out.join("traces.jsonl"))
        .iter()
        .map(|t| (t["id"].to_string(), t["key"].as_str().unwrap().to_owned()))
        .collect();
    read_jsonl(&out.join("sft.jsonl"))
        .iter()
        .map(|row| {
            (
                row["messages"][0]["content"].as_str().unwrap().to_owned(),
                key_of_id[&row["id"].to_string()].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_produce_the_embedded_output() {
    let server = ModelServer::start(ServerConfig::default()).await;
    let cluster = Cluster::new(1);
    let dir = JobDir::new();
    let mut workers = vec![
        cluster.worker("w1", &dir.path("w1.log"), &[]),
        cluster.worker("w2", &dir.path("w2.log"), &[]),
    ];

    let cr = jobs::critique_revise(
        &dir,
        Target {
            file: "cr.toml",
            name: &cluster.job,
            url: &server.url(),
            output: "cr-dist",
        },
        60,
        2,
        8,
    );
    let log = dir.path("coordinator.log");
    finish(cluster.coordinator(&cr, &log), &log).await;
    let embedded = jobs::critique_revise(
        &dir,
        Target {
            file: "cr-embedded.toml",
            name: &cluster.job,
            url: &server.url(),
            output: "cr-emb",
        },
        60,
        2,
        8,
    );
    run_job(&embedded).await.unwrap();
    let (dist, emb) = (dir.path("cr-dist"), dir.path("cr-emb"));
    check_exactly_once(&dist, "sft.jsonl", 60 * 2);
    assert_eq!(
        sorted_rows(&dist.join("sft.jsonl")),
        sorted_rows(&emb.join("sft.jsonl"))
    );
    let principles = |out: &Path| {
        let mut p: Vec<String> = read_jsonl(&out.join("traces.jsonl"))
            .iter()
            .map(|t| {
                format!(
                    "{} {:?}",
                    t["id"],
                    t["steps"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s["principle_id"].to_string())
                        .collect::<Vec<_>>()
                )
            })
            .collect();
        p.sort();
        p
    };
    assert_eq!(principles(&dist), principles(&emb));
    let status = tokio::process::Command::new(cai_tests::harness::cai_binary())
        .args(["status", &cluster.job, "--state", &cluster.state])
        .output()
        .await
        .unwrap();
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{status_text}");
    assert!(
        status_text.contains("lines read 60: done 60, failed 0"),
        "{status_text}"
    );
    assert!(
        status_text.contains("not active") && status_text.contains("  w1  "),
        "{status_text}"
    );

    let cluster = Cluster::new(1);
    let pw = jobs::pairwise(
        &dir,
        Target {
            file: "pw.toml",
            name: &cluster.job,
            url: &server.url(),
            output: "pw-dist",
        },
        40,
    );
    finish(cluster.coordinator(&pw, &log), &log).await;
    let embedded = jobs::pairwise(
        &dir,
        Target {
            file: "pw-embedded.toml",
            name: &cluster.job,
            url: &server.url(),
            output: "pw-emb",
        },
        40,
    );
    run_job(&embedded).await.unwrap();
    check_exactly_once(&dir.path("pw-dist"), "preferences.jsonl", 40);
    assert_eq!(
        sorted_rows(&dir.path("pw-dist").join("preferences.jsonl")),
        sorted_rows(&dir.path("pw-emb").join("preferences.jsonl"))
    );
    for worker in &mut workers {
        worker.start_kill().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_twice_lose_nothing_and_repeat_only_steps_in_flight() {
    let server = ModelServer::start(ServerConfig {
        latency: Duration::from_millis(20),
        ..ServerConfig::default()
    })
    .await;
    let cluster = Cluster::new(2);
    let dir = JobDir::new();
    let job = jobs::critique_revise(
        &dir,
        Target {
            file: "job.toml",
            name: &cluster.job,
            url: &server.url(),
            output: "out",
        },
        120,
        2,
        4,
    );
    let out = dir.path("out");
    let log = dir.path("coordinator.log");
    let mut w1 = cluster.worker("w1", &dir.path("w1.log"), &[]);
    let mut w2 = cluster.worker("w2", &dir.path("w2.log"), &[]);
    let coordinator = cluster.coordinator(&job, &log);

    wait_until(Duration::from_secs(60), "25 samples are committed", || {
        committed(&out) >= 25
    })
    .await;
    w1.kill().await.unwrap();
    let done_at_first_kill = committed_keys(&out);
    let mut w1 = cluster.worker("w1b", &dir.path("w1b.log"), &[]);

    wait_until(Duration::from_secs(60), "70 samples are committed", || {
        committed(&out) >= 70
    })
    .await;
    w2.kill().await.unwrap();
    let done_at_second_kill = committed_keys(&out);
    let calls_at_second_kill = server.calls().len();
    let mut w2 = cluster.worker("w2b", &dir.path("w2b.log"), &[]);

    finish(coordinator, &log).await;
    check_exactly_once(&out, "sft.jsonl", 120 * 2);
    let calls = server.calls();
    let distinct: HashSet<String> = calls.iter().map(|c| c.body.to_string()).collect();
    assert_eq!(distinct.len(), 120 * 5, "every step of every sample called");
    // A worker has at most 4 calls in flight (max_concurrency); only those can be repeated.
    let repeats = repeated(&calls);
    assert!(repeats.len() <= 2 * 4, "{} calls repeated", repeats.len());
    let keys = key_of_prompt(&out);
    for (index, call) in repeats {
        let key = &keys[call.body["messages"][0]["content"].as_str().unwrap()];
        assert!(
            !done_at_first_kill.contains(key),
            "a sample done before the first kill was paid for again"
        );
        if index >= calls_at_second_kill {
            assert!(
                !done_at_second_kill.contains(key),
                "a sample done before the second kill was paid for again"
            );
        }
    }
    w1.start_kill().unwrap();
    w2.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_resumes_the_job() {
    let server = ModelServer::start(ServerConfig {
        latency: Duration::from_millis(20),
        ..ServerConfig::default()
    })
    .await;
    let cluster = Cluster::new(3);
    let dir = JobDir::new();
    let job = jobs::critique_revise(
        &dir,
        Target {
            file: "job.toml",
            name: &cluster.job,
            url: &server.url(),
            output: "out",
        },
        120,
        2,
        4,
    );
    let out = dir.path("out");
    let mut w1 = cluster.worker("w1", &dir.path("w1.log"), &[]);
    let mut w2 = cluster.worker("w2", &dir.path("w2.log"), &[]);
    let mut coordinator = cluster.coordinator(&job, &dir.path("coordinator-1.log"));
    wait_until(Duration::from_secs(60), "40 samples are committed", || {
        committed(&out) >= 40
    })
    .await;
    coordinator.kill().await.unwrap();
    let done_at_kill = committed_keys(&out);

    let log = dir.path("coordinator-2.log");
    finish(cluster.coordinator(&job, &log), &log).await;
    check_exactly_once(&out, "sft.jsonl", 120 * 2);
    let calls = server.calls();
    let repeats = repeated(&calls);
    // Workers go on through the takeover; leases keep a republished sample from running twice
    // at once, so at most the calls in flight on the two workers (4 each) are repeated.
    assert!(repeats.len() <= 2 * 4, "{} calls repeated", repeats.len());
    let keys = key_of_prompt(&out);
    for (_, call) in repeats {
        let key = &keys[call.body["messages"][0]["content"].as_str().unwrap()];
        assert!(
            !done_at_kill.contains(key),
            "a sample done before the kill was paid for again"
        );
    }
    w1.start_kill().unwrap();
    w2.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_future_messages_are_dead_lettered_and_work_goes_on() {
    let server = ModelServer::start(ServerConfig {
        latency: Duration::from_millis(10),
        ..ServerConfig::default()
    })
    .await;
    let cluster = Cluster::new(4);
    let dir = JobDir::new();
    let job = jobs::critique_revise(
        &dir,
        Target {
            file: "job.toml",
            name: &cluster.job,
            url: &server.url(),
            output: "out",
        },
        60,
        1,
        4,
    );
    let out = dir.path("out");
    let log = dir.path("coordinator.log");
    let mut worker = cluster.worker("w1", &dir.path("w1.log"), &[]);
    let coordinator = cluster.coordinator(&job, &log);
    wait_until(Duration::from_secs(60), "a sample is committed", || {
        committed(&out) >= 1
    })
    .await;

    let broker = cluster.broker().await;
    broker
        .publish(&cluster.job, Queue::Tasks, b"\xc1 not msgpack".to_vec())
        .await
        .unwrap();
    #[derive(serde::Serialize)]
    struct Future<'a> {
        version: u16,
        job: &'a str,
        body: &'a str,
    }
    let future = rmp_serde::to_vec_named(&Future {
        version: envelope::FORMAT_VERSION + 1,
        job: &cluster.job,
        body: "a task from the future",
    })
    .unwrap();
    broker
        .publish(&cluster.job, Queue::Tasks, future)
        .await
        .unwrap();

    finish(coordinator, &log).await;
    check_exactly_once(&out, "sft.jsonl", 60);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while broker.queue_depth(&cluster.job, Queue::Dead).await.unwrap() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both messages should be dead-lettered; worker log:\n{}",
            std::fs::read_to_string(dir.path("w1.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        broker.queue_depth(&cluster.job, Queue::Dead).await.unwrap(),
        2
    );
    let worker_log = std::fs::read_to_string(dir.path("w1.log")).unwrap();
    assert!(worker_log.contains("format version"), "{worker_log}");
    worker.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_told_to_stop_drains_within_its_grace_period() {
    let server = ModelServer::start(ServerConfig {
        latency: Duration::from_millis(100),
        ..ServerConfig::default()
    })
    .await;
    let cluster = Cluster::new(5);
    let dir = JobDir::new();
    let job = jobs::critique_revise(
        &dir,
        Target {
            file: "job.toml",
            name: &cluster.job,
            url: &server.url(),
            output: "out",
        },
        40,
        1,
        4,
    );
    let out = dir.path("out");
    let log = dir.path("coordinator.log");
    let draining = cluster.worker("w1", &dir.path("w1.log"), &["--grace-s", "5"]);
    let coordinator = cluster.coordinator(&job, &log);
    wait_until(Duration::from_secs(60), "4 samples are committed", || {
        committed(&out) >= 4
    })
    .await;
    let pid = draining.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(15), draining.wait_with_output())
        .await
        .expect("the worker exits within its grace period (5 s) and a margin")
        .unwrap();
    assert!(status.status.success());
    let worker_log = std::fs::read_to_string(dir.path("w1.log")).unwrap();
    assert!(worker_log.contains("draining"), "{worker_log}");

    let mut other = cluster.worker("w2", &dir.path("w2.log"), &[]);
    finish(coordinator, &log).await;
    check_exactly_once(&out, "sft.jsonl", 40);
    other.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_is_reseeded_and_no_row_is_duplicated() {
    let server = ModelServer::start(ServerConfig {
        latency: Duration::from_millis(20),
        ..ServerConfig::default()
    })
    .await;
    // A database of its own: this test flushes it.
    let cluster = Cluster::new(9);
    let dir = JobDir::new();
    let job = jobs::critique_revise(
        &dir,
        Target {
            file: "job.toml",
            name: &cluster.job,
            url: &server.url(),
            output: "out",
        },
        100,
        1,
        4,
    );
    let out = dir.path("out");
    let log = dir.path("coordinator.log");
    let mut w1 = cluster.worker("w1", &dir.path("w1.log"), &[]);
    let mut w2 = cluster.worker("w2", &dir.path("w2.log"), &[]);
    let coordinator = cluster.coordinator(&job, &log);
    wait_until(Duration::from_secs(60), "30 samples are committed", || {
        committed(&out) >= 30
    })
    .await;
    let client = redis::Client::open(cluster.state.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("FLUSHDB")
        .query_async(&mut connection)
        .await
        .unwrap();

    finish(coordinator, &log).await;
    check_exactly_once(&out, "sft.jsonl", 100);
    let coordinator_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        coordinator_log.contains("registering it again"),
        "{coordinator_log}"
    );
    let state = cluster.state().await;
    assert_eq!(state.done_count(&cluster.job).await.unwrap(), 100);
    w1.start_kill().unwrap();
    w2.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_samples_keep_queue_depth_and_coordinator_memory_bounded() {
    const SAMPLES: usize = 10_000;
    let cluster = Cluster::new(6);
    let dir = JobDir::new();
    let corpus: String = (0..SAMPLES)
        .map(|i| {
            format!(
                "{{\"prompt\": \"synthetic question number {i}: how do I stay safe online?\"}}\n"
            )
        })
        .collect();
    dir.write("prompts.jsonl", corpus);
    let job = dir.write(
        "job.toml",
        format!(
            r#"
name = "{}"
pipeline = "critique-revise"
output = "out"
[input]
path = "prompts.jsonl"
prompt = "prompt"
[constitution]
path = "{}"
few_shot = false
[critique_revise]
model = "policy"
revisions = 1
[models.policy]
backend = "mock"
max_concurrency = 64
"#,
            cluster.job,
            cai_tests::harness::repo_file("constitutions/default.toml").display()
        ),
    );
    let mut w1 = cluster.worker("w1", &dir.path("w1.log"), &[]);
    let mut w2 = cluster.worker("w2", &dir.path("w2.log"), &[]);
    let log = dir.path("coordinator.log");
    let mut coordinator = cluster.coordinator(&job, &log);
    let pid = coordinator.id().unwrap();
    let broker = cluster.broker().await;
    let (mut max_depth, mut max_rss_kib) = (0u32, 0u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = coordinator.try_wait().unwrap() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run did not finish in 240 s"
        );
        max_depth = max_depth.max(
            broker
                .queue_depth(&cluster.job, Queue::Tasks)
                .await
                .unwrap(),
        );
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let rss = text
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0);
            max_rss_kib = max_rss_kib.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    check_exactly_once(&dir.path("out"), "sft.jsonl", SAMPLES);
    eprintln!("max task queue depth {max_depth}, max coordinator RSS {max_rss_kib} KiB");
    // At most `max_outstanding` (64) tasks are published and not collected.
    assert!(max_depth <= 64, "queue depth {max_depth}");
    assert!(
        max_rss_kib > 0 && max_rss_kib < 100 * 1024,
        "coordinator RSS {max_rss_kib} KiB"
    );
    w1.start_kill().unwrap();
    w2.start_kill().unwrap();
}
