//! A model served by several replicas: a `cai run` job over three test servers completes with
//! every sample exactly once when one of them is stopped mid-run, the two left sharing the calls;
//! a DNS name with three addresses is spread over them, each asked for by name; a job whose URL
//! is looked up in the system's DNS runs; a replica that answers 500s is ejected and the calls go
//! to the other; and with every replica down a call is unreachable, as with one server down.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cai_common::job::{BackendSpec, ModelSpec};
use cai_tests::harness::{JobDir, cai_process, eventually, ids, wait_until};
use cai_tests::jobs::{self, Target};
use cai_tests::model_server::{Faults, ModelServer, ServerConfig};
use cai_worker::model::client::Governed;
use cai_worker::model::openai::OpenAiModel;
use cai_worker::model::replicas::{Resolver, STREAK};
use cai_worker::model::{Model, ModelError, Prompt, Speaker, Turn};
use futures::StreamExt;
use serde_json::{Value, json};

/// Samples of the job that loses a replica: three calls each (one revision).
const SAMPLES: usize = 150;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port()
}

fn port_of(server: &ModelServer) -> u16 {
    reqwest::Url::parse(&server.url())
        .unwrap()
        .port()
        .expect("the test server's URL has a port")
}

/// The critique-revise job of `jobs` over `lines` prompts, with `url` (a TOML value) and
/// `extra` lines in place of its single URL.
fn job(dir: &JobDir, url: &str, extra: &str, lines: usize) -> std::path::PathBuf {
    let placeholder = "http://placeholder.invalid/v1";
    let job = jobs::critique_revise(
        dir,
        Target {
            file: "job.toml",
            name: "replicas",
            url: placeholder,
            output: "out",
        },
        lines,
        1,
        8,
    );
    let text = std::fs::read_to_string(&job).unwrap();
    let text = text.replace(
        &format!("url = \"{placeholder}\""),
        &format!("url = {url}\n{extra}"),
    );
    std::fs::write(&job, text).unwrap();
    job
}

/// `cai run JOB` with `args`, its output once it ends (within `deadline`).
async fn cai_run(job: &Path, args: &[String], deadline: Duration) -> Output {
    let child = cai_process()
        .arg("run")
        .arg(job)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cai starts");
    tokio::time::timeout(deadline, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("cai run did not end within {deadline:?}"))
        .expect("cai's output is read")
}

/// Every sample of a finished job exactly once in `sft.jsonl`, none failed.
fn assert_every_sample_once(dir: &JobDir, output: &Output, samples: usize) {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let done = ids(&dir.rows("sft.jsonl"));
    let unique: HashSet<&String> = done.iter().collect();
    assert_eq!(unique.len(), done.len(), "a sample was written twice");
    assert_eq!(done.len(), samples);
    assert!(dir.rows("failed.jsonl").is_empty());
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["counts"]["done"], samples);
    assert_eq!(manifest["counts"]["failed"], 0);
}

/// The value of the series `name{labels}` in a Prometheus text exposition, if present.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_over_three_replicas_completes_when_one_stops_and_the_others_share_the_calls() {
    let config = ServerConfig {
        latency: Duration::from_millis(50),
        ..ServerConfig::default()
    };
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(ModelServer::start(config.clone()).await);
    }
    let urls: Vec<String> = servers.iter().map(ModelServer::url).collect();
    let dir = JobDir::new();
    // A JSON array of strings is a TOML array.
    let job = job(&dir, &serde_json::to_string(&urls).unwrap(), "", SAMPLES);
    let port = free_port();
    let args = vec!["--metrics-addr".to_owned(), format!("127.0.0.1:{port}")];
    let run = tokio::spawn(async move { cai_run(&job, &args, Duration::from_secs(300)).await });

    let calls = |servers: &[ModelServer]| servers.iter().map(|s| s.calls().len()).sum::<usize>();
    wait_until(
        Duration::from_secs(120),
        "a quarter of the calls are made",
        || calls(&servers) >= SAMPLES * 3 / 4,
    )
    .await;
    let stopped = servers.remove(1);
    let stopped_url = stopped.url();
    stopped.stop().await;
    let at_stop: Vec<usize> = servers.iter().map(|server| server.calls().len()).collect();

    // The stopped replica is refused and ejected, and /metrics says so while the run goes on.
    let ejections =
        format!("cai_replica_ejections_total{{model=\"policy\",replica=\"{stopped_url}\"}}");
    let metrics = eventually(
        Duration::from_secs(60),
        "the stopped replica is counted as ejected",
        || async {
            let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            series(&text, &ejections)
                .filter(|n| *n >= 1.0)
                .map(|_| text)
        },
    )
    .await;
    let refused = format!(
        "cai_replica_calls_total{{model=\"policy\",replica=\"{stopped_url}\",outcome=\"refused\"}}"
    );
    assert!(
        series(&metrics, &refused).is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    for url in &urls {
        let latency = format!(
            "cai_replica_call_duration_seconds_count{{model=\"policy\",replica=\"{url}\"}}"
        );
        assert!(
            series(&metrics, &latency).is_some_and(|n| n >= 1.0),
            "{latency}: {metrics}"
        );
    }

    let output = run.await.unwrap();
    assert_every_sample_once(&dir, &output, SAMPLES);
    // The two replicas left each served at least a fifth of the calls after the stop.
    let after: Vec<usize> = servers
        .iter()
        .zip(&at_stop)
        .map(|(server, before)| server.calls().len() - before)
        .collect();
    let total: usize = after.iter().sum();
    assert!(
        total >= SAMPLES * 3 / 2,
        "{after:?}: most calls come after the stop"
    );
    assert!(after.iter().all(|n| n * 5 >= total), "{after:?}");
}

fn ask(question: &str) -> Prompt {
    Prompt {
        turns: vec![Turn::new(Speaker::Human, question)],
        reply_as: Some(Speaker::Assistant),
        prefill: None,
    }
}

/// An `openai` model spec with `fields` set.
fn spec(fields: Value) -> ModelSpec {
    let mut spec = json!({"backend": "openai", "model": "test-model"});
    for (key, value) in fields.as_object().expect("the fields are an object") {
        spec[key] = value.clone();
    }
    serde_json::from_value(spec).expect("a valid model spec")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_three_addresses_is_spread_over_them_each_asked_for_by_name() {
    // Three servers on one port of three loopback addresses, and a made-up name for all three
    // (no name on this machine resolves to several addresses).
    let first = ModelServer::start(ServerConfig::default()).await;
    let port = port_of(&first);
    let mut servers = vec![first];
    for octet in [2, 3] {
        servers.push(
            ModelServer::start_at(&format!("127.0.0.{octet}:{port}"), ServerConfig::default())
                .await,
        );
    }
    let addresses: Vec<SocketAddr> = (1..=3)
        .map(|octet| SocketAddr::from(([127, 0, 0, octet], port)))
        .collect();
    let authority = format!("replicas.test:{port}");
    let expected = authority.clone();
    let resolver: Resolver = Arc::new(move |asked| {
        assert_eq!(asked, expected);
        let addresses = addresses.clone();
        Box::pin(async move { Ok(addresses) })
    });
    let spec = spec(json!({
        "url": format!("http://{authority}/v1"),
        "replicas_from_dns": true,
        "max_concurrency": 6,
    }));
    let BackendSpec::Openai(openai) = &spec.backend else {
        unreachable!("an openai spec")
    };
    let timeout = Duration::from_secs(spec.policy.timeout_s);
    let backend =
        OpenAiModel::with_resolver("policy", openai, &spec.sampling, timeout, resolver).unwrap();
    let model = Governed::new("policy", &spec, Arc::new(backend));

    let replies: Vec<_> = futures::stream::iter(0..60u64)
        .map(|i| {
            let model = &model;
            async move { model.generate(&ask(&format!("question {i}")), i).await }
        })
        .buffer_unordered(6)
        .collect()
        .await;
    assert!(replies.iter().all(Result::is_ok), "{replies:?}");
    for server in &servers {
        let calls = server.calls();
        assert!(
            calls.len() * 5 >= 60,
            "{} of 60 calls on {}",
            calls.len(),
            server.url()
        );
        assert!(
            calls
                .iter()
                .all(|call| call.host.as_deref() == Some(authority.as_str())),
            "{:?}",
            calls.iter().map(|call| &call.host).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn a_job_whose_name_is_looked_up_in_the_system_dns_runs() {
    let server = ModelServer::start(ServerConfig::default()).await;
    let authority = format!("localhost:{}", port_of(&server));
    let dir = JobDir::new();
    let job = job(
        &dir,
        &format!("\"http://{authority}/v1\""),
        "replicas_from_dns = true\ndns_refresh_s = 1",
        12,
    );
    let output = cai_run(&job, &[], Duration::from_secs(120)).await;
    assert_every_sample_once(&dir, &output, 12);
    let calls = server.calls();
    assert_eq!(calls.len(), 12 * 3);
    assert!(
        calls
            .iter()
            .all(|call| call.host.as_deref() == Some(authority.as_str())),
        "the name is kept in the Host header"
    );
}

#[tokio::test]
async fn a_replica_that_answers_500s_is_ejected_and_the_calls_go_to_the_other() {
    let failing = ModelServer::start(ServerConfig {
        faults: Faults {
            error_500: 1.0,
            ..Faults::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let healthy = ModelServer::start(ServerConfig::default()).await;
    let spec = spec(json!({
        "url": [failing.url(), healthy.url()],
        "max_concurrency": 1,
        "max_retries": 4,
    }));
    let model = cai_worker::model::build("policy", &spec).unwrap();
    for i in 0..30 {
        model.generate(&ask(&format!("q{i}")), i).await.unwrap();
    }
    assert_eq!(healthy.calls().len(), 30);
    // The streak that ejected it, and at most two probes (2 s and 4 s after it) if the calls
    // took that long.
    let failed = failing.calls().len();
    assert!(
        (STREAK as usize..=STREAK as usize + 2).contains(&failed),
        "{failed} calls on the failing replica"
    );
}

#[tokio::test]
async fn with_every_replica_down_a_call_is_unreachable() {
    let mut urls = Vec::new();
    for _ in 0..2 {
        let server = ModelServer::start(ServerConfig::default()).await;
        urls.push(server.url());
        server.stop().await;
    }
    let spec = spec(json!({"url": urls, "max_retries": 3}));
    let model = cai_worker::model::build("policy", &spec).unwrap();
    match model.generate(&ask("hi"), 1).await {
        Err(ModelError::Retryable {
            unreachable: true,
            attempts: 4,
            ..
        }) => {}
        other => panic!("expected an unreachable error after 4 attempts, got {other:?}"),
    }
}
