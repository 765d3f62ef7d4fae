//! Telemetry of real `cai` processes: the worker's `/metrics` after a small job (read directly
//! and through a real Prometheus), spans exported over OTLP with the coordinator → worker parent
//! link intact, `/readyz` while the broker is cut off and while draining, and no secret in any
//! log, output or Redis key.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cai_tests::harness::{eventually, get, read_jsonl};
use cai_tests::model_server::{Faults, ServerConfig};
use cai_tests::otlp_receiver::{OtlpReceiver, ReceivedSpan};
use cai_tests::prometheus::Prometheus;
use cai_tests::proxy::Proxy;
use cai_tests::scenario::{Scenario, Size, finish};
use cai_tests::service_users::ServiceUsers;
use tokio::process::Child;

// Each test has a Redis database of its own: a worker serves every active job it finds.

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port()
}

async fn terminate(worker: &mut Child) {
    cai_tests::harness::signal(worker, "TERM");
    tokio::time::timeout(Duration::from_secs(60), worker.wait())
        .await
        .expect("the worker drains within 60 s")
        .unwrap();
}

/// A RabbitMQ user and a Redis ACL user with known passwords, removed on drop.
struct Accounts {
    rabbit_user: String,
    rabbit_password: String,
    redis_user: String,
    redis_password: String,
    _users: ServiceUsers,
}

impl Accounts {
    fn create() -> Self {
        let (rabbit_user, rabbit_password) = (unique("cai-rmq-user-"), unique("rmq-secret-"));
        let (redis_user, redis_password) = (unique("cai-redis-user-"), unique("redis-secret-"));
        let mut users = ServiceUsers::default();
        users.add_rabbit(&rabbit_user, &rabbit_password, [".*", ".*", ".*"]);
        users.add_redis(&redis_user, &redis_password, &["~*", "&*", "+@all"]);
        Self {
            rabbit_user,
            rabbit_password,
            redis_user,
            redis_password,
            _users: users,
        }
    }

    fn broker_url(&self) -> String {
        format!(
            "amqp://{}:{}@127.0.0.1:5672/%2f",
            self.rabbit_user, self.rabbit_password
        )
    }

    /// The Redis URL as this account, with the key prefix `prefix`.
    fn state_url(&self, prefix: &str) -> String {
        format!(
            "redis://{}:{}@127.0.0.1:6379/0?prefix={prefix}",
            self.redis_user, self.redis_password
        )
    }
}

/// The value of the series `name{labels}` in a Prometheus text exposition, if present.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
}

/// Every key under `prefix` and every value held under it.
fn redis_values(prefix: &str) -> Vec<Vec<u8>> {
    let mut redis = redis::Client::open("redis://127.0.0.1:6379/0")
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut redis)
        .unwrap();
    let mut values = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut redis).unwrap();
        let mut items: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![redis::cmd("GET").arg(&key).query(&mut redis).unwrap()],
            "hash" => redis::cmd("HGETALL").arg(&key).query(&mut redis).unwrap(),
            "set" => redis::cmd("SMEMBERS").arg(&key).query(&mut redis).unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query(&mut redis)
                .unwrap(),
            "list" => redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query(&mut redis)
                .unwrap(),
            _ => Vec::new(),
        };
        values.push(key);
        values.append(&mut items);
    }
    values
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_exports_metrics_and_spans_and_no_secret_leaks() {
    const LINES: usize = 12;
    let api_key = unique("sk-cai-test-");
    let job_key = unique("cai-job-key-0123456789abcdef0123456789-");
    let accounts = Accounts::create();
    let receiver = OtlpReceiver::start().await;
    let mut run = Scenario::critique_revise(
        ServerConfig {
            api_key: Some(api_key.clone()),
            faults: Faults {
                error_500: 0.2,
                ..Faults::default()
            },
            ..ServerConfig::default()
        },
        Size {
            lines: LINES,
            revisions: 1,
            concurrency: 4,
        },
    )
    .await;
    run.cluster.broker = accounts.broker_url();
    run.cluster.state = accounts.state_url(&run.cluster.job);
    run.cluster.env = vec![
        ("CAI_TEST_API_KEY".into(), api_key.clone()),
        ("CAI_ALLOW_KEYS".into(), "CAI_TEST_API_KEY=127.0.0.1".into()),
        // The job and its tasks are signed, and the key must not leak either.
        ("CAI_JOB_KEY".into(), job_key.clone()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
        ("CAI_LOG".into(), "debug".into()),
    ];
    let (server, cluster, dir, job, out) =
        (&run.server, &run.cluster, &run.dir, &run.job, &run.out);
    let mut spec = std::fs::read_to_string(job).unwrap();
    spec.push_str("api_key_env = \"CAI_TEST_API_KEY\"\nmax_retries = 8\n");
    std::fs::write(job, spec).unwrap();

    let metrics_addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics_flag = metrics_addr.to_string();
    let worker_log = dir.path("worker.log");
    let mut worker = cluster.worker(
        "w-telemetry",
        &worker_log,
        &["--metrics-addr", &metrics_flag],
    );
    let prometheus = Prometheus::start(metrics_addr);
    let coordinator_log = dir.path("coordinator.log");
    finish(
        cluster.coordinator_with(job, &coordinator_log, &["--task-size", "4"]),
        &coordinator_log,
    )
    .await;

    // The worker's /metrics agree with the job's traces and the server's log.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["counts"]["done"], LINES as u64);
    assert_eq!(manifest["counts"]["failed"], 0);
    let steps: Vec<serde_json::Value> = read_jsonl(&out.join("traces.jsonl"))
        .iter()
        .flat_map(|trace| trace["steps"].as_array().unwrap().clone())
        .filter(|step| step["cached"] == false)
        .collect();
    let tokens = |field: &str| -> f64 {
        steps
            .iter()
            .map(|step| step[field].as_u64().unwrap() as f64)
            .sum()
    };
    let faults = server
        .calls()
        .iter()
        .filter(|call| call.fault.is_some())
        .count();
    assert!(
        faults > 0,
        "the server injected no fault: the retry count is untested"
    );
    let url = format!("http://{metrics_addr}/metrics");
    let text = get(&url).await.expect("the worker serves /metrics").1;
    let job_labels = format!("cai_job=\"{}\"", cluster.job);
    let expect = |name: &str, labels: &str, value: f64| {
        let key = format!("{name}{{{labels}}}");
        assert_eq!(series(&text, &key), Some(value), "{key} in\n{text}");
    };
    expect(
        "cai_samples_total",
        &format!("{job_labels},outcome=\"done\""),
        LINES as f64,
    );
    expect(
        "cai_model_calls_total",
        &format!("{job_labels},model=\"policy\",outcome=\"ok\""),
        steps.len() as f64,
    );
    expect(
        "cai_model_call_duration_seconds_count",
        &format!("{job_labels},model=\"policy\""),
        steps.len() as f64,
    );
    expect(
        "cai_model_tokens_total",
        &format!("{job_labels},model=\"policy\",direction=\"in\""),
        tokens("tokens_in"),
    );
    expect(
        "cai_model_tokens_total",
        &format!("{job_labels},model=\"policy\",direction=\"out\""),
        tokens("tokens_out"),
    );
    expect("cai_model_retries_total", "model=\"policy\"", faults as f64);
    expect("cai_tasks_in_flight", &job_labels, 0.0);
    let pauses = format!("cai_worker_pauses_total{{{job_labels}}}");
    assert_eq!(
        series(&text, &pauses).unwrap_or(0.0),
        0.0,
        "the endpoint never went down"
    );

    // A real Prometheus scrapes the same values.
    let done_query = format!("cai_samples_total{{{job_labels},outcome=\"done\"}}");
    let scraped = eventually(
        Duration::from_secs(60),
        "Prometheus scrapes the worker",
        || {
            let query = prometheus.query(&done_query);
            async move { query.await.and_then(|series| series.first().map(|s| s.1)) }
        },
    )
    .await;
    assert_eq!(scraped, LINES as f64);
    let up = prometheus.query("up{job=\"cai\"}").await.unwrap();
    assert_eq!(up.first().map(|s| s.1), Some(1.0), "{up:?}");

    // Spans: every worker task span is the child of the coordinator span that published it.
    let calls = steps.len();
    let spans = eventually(Duration::from_secs(60), "every span is exported", || {
        let spans = receiver.spans();
        async move {
            let count = |name: &str| spans.iter().filter(|s| s.name == name).count();
            (count("publish_task") >= LINES / 4
                && count("task") >= LINES / 4
                && count("sample") >= LINES
                && count("model_call") >= calls)
                .then_some(spans)
        }
    })
    .await;
    check_span_tree(&spans, &server.url());

    // No secret anywhere: logs, outputs (manifest included), Redis, the scraped metrics.
    terminate(&mut worker).await;
    let secrets = [
        api_key.as_str(),
        job_key.as_str(),
        accounts.rabbit_password.as_str(),
        accounts.redis_password.as_str(),
    ];
    let worker_text = std::fs::read(&worker_log).unwrap();
    assert!(
        contains(&worker_text, &accounts.rabbit_user),
        "the worker log names the broker (redacted): the check below is not vacuous"
    );
    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("worker log".into(), worker_text),
        (
            "coordinator log".into(),
            std::fs::read(&coordinator_log).unwrap(),
        ),
        ("/metrics".into(), text.into_bytes()),
    ];
    for file in files_under(out) {
        places.push((file.display().to_string(), std::fs::read(&file).unwrap()));
    }
    for value in redis_values(&run.cluster.job) {
        places.push(("a Redis key or value".into(), value));
    }
    for (place, bytes) in &places {
        for secret in secrets {
            assert!(!contains(bytes, secret), "a secret leaked into {place}");
        }
    }
}

/// publish_task (coordinator) → task (worker) → sample → model_call, in one trace each.
fn check_span_tree(spans: &[ReceivedSpan], server_url: &str) {
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent_of = |span: &ReceivedSpan| -> &ReceivedSpan {
        let parent = by_id
            .get(span.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("the parent of {span:?} was not exported"));
        assert_eq!(parent.trace_id, span.trace_id, "{span:?} left its trace");
        parent
    };
    let mut traces = HashSet::new();
    for task in spans.iter().filter(|s| s.name == "task") {
        assert_eq!(task.service, "cai-worker");
        let publish = parent_of(task);
        assert_eq!(publish.name, "publish_task");
        assert_eq!(publish.service, "cai-coordinator");
        assert_eq!(publish.attribute("task_id"), task.attribute("task_id"));
        traces.insert(task.trace_id.clone());
    }
    assert!(traces.len() > 1, "each task has a trace of its own");
    for sample in spans.iter().filter(|s| s.name == "sample") {
        assert_eq!(parent_of(sample).name, "task");
    }
    for call in spans.iter().filter(|s| s.name == "model_call") {
        assert_eq!(parent_of(call).name, "sample");
        assert_eq!(call.attribute("model"), Some("policy"));
        assert_eq!(call.attribute("endpoint"), Some(server_url));
        assert_eq!(call.attribute("outcome"), Some("ok"));
        for field in ["tokens_in", "tokens_out", "latency_ms", "attempts", "step"] {
            assert!(call.attribute(field).is_some(), "{field} missing: {call:?}");
        }
    }
}

/// Waits until `url` answers `code` with a body containing `body`.
async fn becomes(url: String, code: u16, body: &'static str) {
    let what = format!("{url} answers {code} {body:?}");
    eventually(Duration::from_secs(30), &what, || {
        let url = url.clone();
        async move {
            get(&url)
                .await
                .filter(|(c, text)| *c == code && text.contains(body))
                .map(|_| ())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_not_ready_while_the_broker_is_cut_off_or_the_worker_drains() {
    let proxy = Proxy::start(([127, 0, 0, 1], 5672).into()).await;
    let mut run = Scenario::critique_revise(
        ServerConfig {
            latency: Duration::from_secs(3),
            ..ServerConfig::default()
        },
        Size {
            lines: 2,
            revisions: 1,
            concurrency: 2,
        },
    )
    .await;
    run.cluster.broker = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut worker = run.worker("w-ready", &["--metrics-addr", &addr, "--grace-s", "60"]);
    let status = |path: &'static str| {
        let url = format!("http://{addr}{path}");
        async move { get(&url).await }
    };
    let becomes = |path: &'static str, code: u16, body: &'static str| {
        becomes(format!("http://{addr}{path}"), code, body)
    };
    becomes("/readyz", 200, "ready").await;
    assert_eq!(status("/healthz").await.map(|s| s.0), Some(200));

    proxy.cut();
    becomes("/readyz", 503, "broker not connected").await;
    assert_eq!(
        status("/healthz").await.map(|s| s.0),
        Some(200),
        "alive while not ready"
    );
    proxy.restore();
    becomes("/readyz", 200, "ready").await;

    // A task in flight, then SIGTERM: not ready while the worker finishes it.
    let coordinator_addr = format!("127.0.0.1:{}", free_port());
    let _coordinator = run.cluster.coordinator_with(
        &run.job,
        &run.dir.path("coordinator.log"),
        &["--metrics-addr", &coordinator_addr],
    );
    eventually(Duration::from_secs(30), "a model call is in flight", || {
        let calls = run.server.calls().len();
        async move { (calls > 0).then_some(()) }
    })
    .await;

    // The coordinator's series while its one task is out: both lines read, one task
    // outstanding, and the task queue's depth read from RabbitMQ.
    let labels = format!("cai_job=\"{}\"", run.cluster.job);
    let metrics_url = format!("http://{coordinator_addr}/metrics");
    let text = eventually(
        Duration::from_secs(30),
        "the coordinator exports its series",
        || {
            let (url, read) = (
                metrics_url.clone(),
                format!("cai_lines_total{{{labels},status=\"read\"}}"),
            );
            async move {
                let text = get(&url).await?.1;
                (series(&text, &read) == Some(2.0)).then_some(text)
            }
        },
    )
    .await;
    let queue = format!("cai_queue_depth{{{labels},queue=\"tasks\"}}");
    assert!(series(&text, &queue).is_some(), "{queue} in\n{text}");
    let outstanding = format!("cai_tasks_outstanding{{{labels}}}");
    assert_eq!(
        series(&text, &outstanding),
        Some(1.0),
        "{outstanding} in\n{text}"
    );
    cai_tests::harness::signal(&worker, "TERM");
    becomes("/readyz", 503, "draining").await;
    assert!(
        worker.try_wait().unwrap().is_none(),
        "still draining when not ready"
    );
    tokio::time::timeout(Duration::from_secs(60), worker.wait())
        .await
        .expect("the worker drains within its grace")
        .unwrap();
}
