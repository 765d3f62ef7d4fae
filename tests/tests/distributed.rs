//! Distributed mode against this machine's RabbitMQ and Redis, with real `cai` processes: the
//! same output as embedded mode, and exactly-once output through killed workers, a killed
//! coordinator (once, and three times in one run), a flushed Redis, poison messages and a
//! draining worker, and the lease that keeps one worker from paying twice for a sample.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cai_common::broker::{Broker, Queue};
use cai_common::envelope;
use cai_common::envelope::{ResultBatch, Task};
use cai_common::sample::Sample;
use cai_common::state::StateStore;
use cai_coordinator::corpus::{self, CorpusItem};
use cai_coordinator::plan::Plan;
use cai_tests::cluster::Cluster;
use cai_tests::harness::{JobDir, eventually, read_jsonl, run_job};
use cai_tests::jobs::{self, Target};
use cai_tests::model_server::{ModelServer, ServerConfig};
use cai_tests::private_redis::PrivateRedis;
use cai_tests::scenario::{Scenario, Size, check_exactly_once, finish, repeated};
use cai_worker::consume::run_task;
use cai_worker::model::Models;
use cai_worker::pipeline::JobContext;
use serde_json::Value;

// Each test's cluster has a Redis key prefix of its own: a worker serves every active job it
// finds under its prefix, so tests sharing a prefix would serve each other's jobs.

fn sorted_rows(path: &Path) -> Vec<String> {
    let mut rows: Vec<String> = read_jsonl(path).iter().map(Value::to_string).collect();
    rows.sort();
    rows
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
    let cluster = Cluster::unique();
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
    let status = cai_tests::harness::cai_process()
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

    let cluster = cluster.another_job();
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
    let run = Scenario::critique_revise(
        ServerConfig {
            latency: Duration::from_millis(20),
            ..ServerConfig::default()
        },
        Size {
            lines: 120,
            revisions: 2,
            concurrency: 4,
        },
    )
    .await;
    let log = run.dir.path("coordinator.log");
    let mut w1 = run.worker("w1", &[]);
    let mut w2 = run.worker("w2", &[]);
    let coordinator = run.coordinator("coordinator.log");

    run.wait_committed(25).await;
    w1.kill().await.unwrap();
    let done_at_first_kill = run.committed_keys();
    let mut w1 = run.worker("w1b", &[]);

    run.wait_committed(70).await;
    w2.kill().await.unwrap();
    let done_at_second_kill = run.committed_keys();
    let calls_at_second_kill = run.server.calls().len();
    let mut w2 = run.worker("w2b", &[]);

    finish(coordinator, &log).await;
    check_exactly_once(&run.out, "sft.jsonl", 120 * 2);
    let calls = run.server.calls();
    let distinct: HashSet<String> = calls.iter().map(|c| c.body.to_string()).collect();
    assert_eq!(distinct.len(), 120 * 5, "every step of every sample called");
    // A worker has at most 4 calls in flight (max_concurrency); only those can be repeated.
    let repeats = repeated(&calls);
    assert!(repeats.len() <= 2 * 4, "{} calls repeated", repeats.len());
    let keys = key_of_prompt(&run.out);
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

/// The takeover bound: workers go on through every coordinator kill and leases keep a
/// republished sample from running twice at once, so at most the calls in flight on the two
/// workers (4 each) are repeated, and none of a sample committed before a kill.
fn check_takeover_repeats(run: &Scenario, done_before_a_kill: &HashSet<String>) {
    let calls = run.server.calls();
    let repeats = repeated(&calls);
    assert!(repeats.len() <= 2 * 4, "{} calls repeated", repeats.len());
    let keys = key_of_prompt(&run.out);
    for (_, call) in repeats {
        let key = &keys[call.body["messages"][0]["content"].as_str().unwrap()];
        assert!(
            !done_before_a_kill.contains(key),
            "a sample done before a kill was paid for again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_resumes_the_job() {
    let run = Scenario::critique_revise(
        ServerConfig {
            latency: Duration::from_millis(20),
            ..ServerConfig::default()
        },
        Size {
            lines: 120,
            revisions: 2,
            concurrency: 4,
        },
    )
    .await;
    let mut w1 = run.worker("w1", &[]);
    let mut w2 = run.worker("w2", &[]);
    let mut coordinator = run.coordinator("coordinator-1.log");
    run.wait_committed(40).await;
    coordinator.kill().await.unwrap();
    let done_at_kill = run.committed_keys();

    let log = run.dir.path("coordinator-2.log");
    finish(run.coordinator("coordinator-2.log"), &log).await;
    check_exactly_once(&run.out, "sft.jsonl", 120 * 2);
    check_takeover_repeats(&run, &done_at_kill);
    w1.start_kill().unwrap();
    w2.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_three_times_repeats_no_call_done_before_a_kill() {
    // The first 186 prompts are distinct (line 186 repeats an earlier one).
    let lines = 180;
    let run = Scenario::critique_revise(
        ServerConfig {
            latency: Duration::from_millis(20),
            ..ServerConfig::default()
        },
        Size {
            lines,
            revisions: 2,
            concurrency: 4,
        },
    )
    .await;
    let mut w1 = run.worker("w1", &[]);
    let mut w2 = run.worker("w2", &[]);
    let mut coordinator = run.coordinator("coordinator-1.log");
    let mut done_at_kills = HashSet::new();
    // Killed at 20 %, 45 % and 70 % of the corpus; the workers go on through every takeover.
    for (kill, percent) in [20u64, 45, 70].into_iter().enumerate() {
        run.wait_committed(lines as u64 * percent / 100).await;
        coordinator.kill().await.unwrap();
        done_at_kills.extend(run.committed_keys());
        coordinator = run.coordinator(&format!("coordinator-{}.log", kill + 2));
    }
    finish(coordinator, &run.dir.path("coordinator-4.log")).await;
    check_exactly_once(&run.out, "sft.jsonl", lines * 2);
    let calls = run.server.calls();
    let distinct: HashSet<String> = calls.iter().map(|c| c.body.to_string()).collect();
    assert_eq!(
        distinct.len(),
        lines * 5,
        "every step of every sample called"
    );
    // The same bound as one kill.
    check_takeover_repeats(&run, &done_at_kills);
    w1.start_kill().unwrap();
    w2.start_kill().unwrap();
}

/// The mechanism behind the takeover bound: a worker process handed the same samples in two
/// tasks at once (its task from the old coordinator and the copy the new one republished) runs
/// each sample once; the other copy waits on the sample's lease, then takes every step from the
/// step cache. A lease held in the name of the process let both copies run and pay twice.
/// A worker's job context in this test process, on the scenario's Redis and model server, and
/// the samples of its corpus: for running tasks by hand, as a worker would.
async fn in_this_process(run: &Scenario) -> (JobContext, Vec<Sample>) {
    let plan = Plan::load(&run.job).unwrap();
    let state: Arc<dyn StateStore> = Arc::new(run.cluster.state().await);
    let ctx = JobContext::new(
        Arc::new(plan.spec().clone()),
        plan.constitution.clone(),
        Models::build(&plan.spec().models).unwrap(),
        state,
    );
    let samples = corpus::open(plan.spec())
        .unwrap()
        .filter_map(|item| match item {
            CorpusItem::Sample(sample) => Some(sample),
            _ => None,
        })
        .collect();
    (ctx, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_handed_a_sample_twice_at_once_pays_for_it_once() {
    let run = Scenario::critique_revise(
        ServerConfig {
            latency: Duration::from_millis(30),
            ..ServerConfig::default()
        },
        Size {
            lines: 4,
            revisions: 2,
            concurrency: 8,
        },
    )
    .await;
    let (ctx, samples) = in_this_process(&run).await;
    assert_eq!(samples.len(), 4);
    let task = |task_id| Task {
        task_id,
        samples: samples.clone(),
        trace_context: None,
    };
    let (old, republished) = tokio::join!(run_task(&ctx, task(1), 4), run_task(&ctx, task(2), 4));
    let paid = |batch: &ResultBatch| batch.results.iter().map(|r| r.usage.calls).sum::<u64>();
    let (old, republished) = (old.unwrap(), republished.unwrap());
    assert_eq!(
        paid(&old) + paid(&republished),
        4 * 5,
        "each step paid once"
    );
    assert!(repeated(&run.server.calls()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_future_messages_are_dead_lettered_and_work_goes_on() {
    let run = Scenario::critique_revise(
        ServerConfig {
            latency: Duration::from_millis(10),
            ..ServerConfig::default()
        },
        Size {
            lines: 60,
            revisions: 1,
            concurrency: 4,
        },
    )
    .await;
    let log = run.dir.path("coordinator.log");
    let mut worker = run.worker("w1", &[]);
    let coordinator = run.coordinator("coordinator.log");
    run.wait_committed(1).await;

    let broker = run.cluster.broker().await;
    broker
        .publish(&run.cluster.job, Queue::Tasks, b"\xc1 not msgpack".to_vec())
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
        job: &run.cluster.job,
        body: "a task from the future",
    })
    .unwrap();
    broker
        .publish(&run.cluster.job, Queue::Tasks, future)
        .await
        .unwrap();

    finish(coordinator, &log).await;
    check_exactly_once(&run.out, "sft.jsonl", 60);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while broker.depth(&run.cluster.job, Queue::Dead).await.unwrap() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both messages should be dead-lettered; worker log:\n{}",
            std::fs::read_to_string(run.dir.path("w1.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        broker.depth(&run.cluster.job, Queue::Dead).await.unwrap(),
        2
    );
    let worker_log = std::fs::read_to_string(run.dir.path("w1.log")).unwrap();
    assert!(worker_log.contains("format version"), "{worker_log}");
    worker.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_told_to_stop_drains_within_its_grace_period() {
    let run = Scenario::critique_revise(
        ServerConfig {
            latency: Duration::from_millis(100),
            ..ServerConfig::default()
        },
        Size {
            lines: 40,
            revisions: 1,
            concurrency: 4,
        },
    )
    .await;
    let log = run.dir.path("coordinator.log");
    let draining = run.worker("w1", &["--grace-s", "5"]);
    let coordinator = run.coordinator("coordinator.log");
    run.wait_committed(4).await;
    cai_tests::harness::signal(&draining, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), draining.wait_with_output())
        .await
        .expect("the worker exits within its grace period (5 s) and a margin")
        .unwrap();
    assert!(status.status.success());
    let worker_log = std::fs::read_to_string(run.dir.path("w1.log")).unwrap();
    assert!(worker_log.contains("draining"), "{worker_log}");

    let mut other = run.worker("w2", &[]);
    finish(coordinator, &log).await;
    check_exactly_once(&run.out, "sft.jsonl", 40);
    other.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_is_reseeded_and_no_row_is_duplicated() {
    // A Redis of its own: this test flushes it. Calls of 100 ms keep the job running for
    // seconds after the flush, long enough for the coordinator (checking every 500 ms) to see it.
    let redis = PrivateRedis::start();
    let mut run = Scenario::critique_revise(
        ServerConfig {
            latency: Duration::from_millis(100),
            ..ServerConfig::default()
        },
        Size {
            lines: 100,
            revisions: 1,
            concurrency: 4,
        },
    )
    .await;
    run.cluster.state = redis.url();
    let log = run.dir.path("coordinator.log");
    let mut w1 = run.worker("w1", &[]);
    let mut w2 = run.worker("w2", &[]);
    let coordinator = run.coordinator("coordinator.log");
    run.wait_committed(30).await;
    let client = redis::Client::open(run.cluster.state.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut connection)
        .await
        .unwrap();

    finish(coordinator, &log).await;
    check_exactly_once(&run.out, "sft.jsonl", 100);
    let coordinator_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        coordinator_log.contains("registering it again"),
        "{coordinator_log}"
    );
    let state = run.cluster.state().await;
    assert_eq!(state.done_count(&run.cluster.job).await.unwrap(), 100);
    w1.start_kill().unwrap();
    w2.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_samples_keep_queue_depth_and_coordinator_memory_bounded() {
    const SAMPLES: usize = 10_000;
    let cluster = Cluster::unique();
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
        max_depth = max_depth.max(broker.depth(&cluster.job, Queue::Tasks).await.unwrap());
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

/// Only workers build models: the coordinator of a distributed job whose local model file is not
/// on its machine, and whose API-key variable is unset there, says so and runs the job anyway
/// (it registers it for workers) instead of loading weights or refusing to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_loads_no_model_and_needs_no_api_key() {
    let cluster = Cluster::unique();
    let dir = JobDir::new();
    let job = jobs::critique_revise(
        &dir,
        Target {
            file: "job.toml",
            name: &cluster.job,
            url: "http://127.0.0.1:9/v1",
            output: "out",
        },
        10,
        1,
        2,
    );
    let text = std::fs::read_to_string(&job).unwrap().replace(
        "[models.policy]\nbackend = \"openai\"\n",
        "[models.policy]\nbackend = \"openai\"\napi_key_env = \"CAI_TEST_KEY_ONLY_WORKERS_HAVE\"\n",
    );
    std::fs::write(
        &job,
        format!(
            "{text}\n[models.unused_local]\nbackend = \"local\"\npath = \"/models/only-on-workers.gguf\"\n"
        ),
    )
    .unwrap();
    let log = dir.path("coordinator.log");
    let mut coordinator = cluster.coordinator(&job, &log);
    let state = cluster.state().await;
    eventually(
        Duration::from_secs(30),
        "the coordinator registers the job",
        || async { state.get_job(&cluster.job).await.ok().flatten() },
    )
    .await;
    assert!(coordinator.try_wait().unwrap().is_none(), "it runs");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("/models/only-on-workers.gguf is not on this machine"),
        "{text}"
    );
    assert!(
        text.contains("$CAI_TEST_KEY_ONLY_WORKERS_HAVE is not set here"),
        "{text}"
    );
    coordinator.start_kill().unwrap();
}

/// Results of an earlier coordinator's tasks can still be in the results queue when a new
/// coordinator takes over, and be committed before its publisher reads their lines: each line
/// is still counted once, so the run ends complete (it used to count such samples twice, report
/// more done than lines read, and exit 130 as if stopped; the chaos soak found it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_left_by_an_earlier_coordinator_are_counted_once() {
    let lines = 120;
    let run = Scenario::critique_revise(
        ServerConfig {
            latency: Duration::from_millis(50),
            ..ServerConfig::default()
        },
        Size {
            lines,
            revisions: 1,
            concurrency: 2,
        },
    )
    .await;
    let (ctx, samples) = in_this_process(&run).await;
    let last = samples[lines - 3..].to_vec();
    let earlier = run_task(
        &ctx,
        Task {
            task_id: 1,
            samples: last,
            trace_context: None,
        },
        3,
    )
    .await
    .unwrap();
    run.cluster
        .broker()
        .await
        .publish(
            &run.cluster.job,
            Queue::Results,
            envelope::encode(&run.cluster.job, &earlier),
        )
        .await
        .unwrap();

    let mut worker = run.worker("w1", &[]);
    let log = run.dir.path("coordinator.log");
    // One sample a task: the publisher reaches the last lines long after the collector has
    // committed the earlier results.
    let coordinator = run
        .cluster
        .coordinator_with(&run.job, &log, &["--task-size", "1"]);
    finish(coordinator, &log).await;
    check_exactly_once(&run.out, "sft.jsonl", lines);
    worker.start_kill().unwrap();
}
