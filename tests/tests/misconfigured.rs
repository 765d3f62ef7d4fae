//! A misconfiguration is not an outage: the coordinator (`cai run --broker --state`) and `cai
//! worker`, as processes against the real RabbitMQ and Redis (and a TLS Redis with certificates
//! made by `openssl`), stop at once with exit code 2 and a message naming the service, the URL
//! and what to fix when no wait can help (a certificate they will never trust, refused
//! credentials or permissions, a URL that does not parse, an unreadable TLS file), and write
//! nothing to the output directory. A host name that does not resolve is waited for up to
//! `--connect-timeout-s`, saying what is waited for. A service that refuses connections is an
//! outage: the worker waits, alive but not ready, and serves once it answers.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use cai_tests::cluster::BROKER_URL;
use cai_tests::harness::{JobDir, cai_process, eventually, get};
use cai_tests::jobs;
use cai_tests::pki::TestPki;
use cai_tests::private_rabbitmq::PrivateRabbitMq;
use cai_tests::private_redis::PrivateRedis;

/// How soon a misconfigured process must have stopped (the acceptance bound; it takes well
/// under a second here).
const PROMPTLY: Duration = Duration::from_secs(10);

/// The shared Redis, under a key prefix no other test uses.
fn redis_url() -> String {
    format!(
        "redis://127.0.0.1:6379/0?prefix=misconfigured-{}",
        std::process::id()
    )
}

/// What a process did: its exit, its stderr, how long it ran.
struct Stopped {
    output: Output,
    took: Duration,
}

impl Stopped {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Checks exit code 2 within [`PROMPTLY`] and that the message holds each of `needles`.
    fn misconfigured(&self, who: &str, needles: &[&str]) {
        let stderr = self.stderr();
        assert_eq!(self.output.status.code(), Some(2), "{who}:\n{stderr}");
        assert!(
            self.took < PROMPTLY,
            "{who} took {:?}:\n{stderr}",
            self.took
        );
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{who}: no {needle:?} in:\n{stderr}"
            );
        }
    }
}

/// Runs `cai` with `args` to its end (at most a minute).
async fn cai(args: &[&str], log_level: &str) -> Stopped {
    let started = Instant::now();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        cai_process()
            .args(args)
            .env("CAI_LOG", log_level)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("cai stops within a minute")
    .expect("cai runs");
    Stopped {
        output,
        took: started.elapsed(),
    }
}

/// The coordinator of a small mock job against `broker` and `state`; checks that its output
/// directory was not written.
async fn coordinator(broker: &str, state: &str, extra: &[&str]) -> Stopped {
    let dir = JobDir::new();
    let job = jobs::mock_critique_revise(&dir, 3);
    let job = job.display().to_string();
    let mut args = vec!["run", "--broker", broker, "--state", state];
    args.extend_from_slice(extra);
    args.push(&job);
    let stopped = cai(&args, "warn").await;
    assert_untouched(&dir.path("out"), &stopped);
    stopped
}

/// A worker against `broker` and `state`.
async fn worker(broker: &str, state: &str, extra: &[&str]) -> Stopped {
    let mut args = vec![
        "worker",
        "--broker",
        broker,
        "--state",
        state,
        "--metrics-addr",
        "off",
    ];
    args.extend_from_slice(extra);
    cai(&args, "warn").await
}

fn assert_untouched(out: &Path, stopped: &Stopped) {
    assert!(
        !out.exists(),
        "the output directory was written: {:?}\n{}",
        std::fs::read_dir(out).map(|entries| entries.count()),
        stopped.stderr()
    );
}

/// Both processes, each stopped at once with the same message.
async fn both_stop(broker: &str, state: &str, extra: &[&str], needles: &[&str]) {
    coordinator(broker, state, extra)
        .await
        .misconfigured("the coordinator", needles);
    worker(broker, state, extra)
        .await
        .misconfigured("the worker", needles);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verification_failures_stop_both_processes_at_once() {
    let pki = TestPki::new();
    let file = |name: &str| pki.path(name).display().to_string();
    let (ca, other_ca) = (file("ca.pem"), file("other-ca.pem"));
    let (cert, key) = (file("client.pem"), file("client.key"));
    let open = PrivateRedis::start_tls(&pki, false);
    let demanding = PrivateRedis::start_tls(&pki, true);

    // The server's certificate is signed by a CA the process was not given.
    both_stop(
        BROKER_URL,
        &open.url(),
        &["--tls-ca-file", &other_ca],
        &["state store", &open.url(), "certificate", "--tls-ca-file"],
    )
    .await;
    // The certificate names localhost and 127.0.0.1, not 127.0.0.2.
    let other_name = format!("rediss://127.0.0.2:{}", open.port());
    both_stop(
        BROKER_URL,
        &other_name,
        &["--tls-ca-file", &ca],
        &["state store", &other_name, "certificate", "name"],
    )
    .await;
    // The server demands a client certificate and none is given.
    both_stop(
        BROKER_URL,
        &demanding.url(),
        &["--tls-ca-file", &ca],
        &["state store", &demanding.url(), "client certificate"],
    )
    .await;
    // TLS to a port that speaks plain AMQP. (A plain Redis port answers a TLS hello with
    // nothing at all: that times out, and is waited for like any server that does not answer.)
    both_stop(
        "amqps://guest:guest@127.0.0.1:5672/%2f",
        &open.url(),
        &["--tls-ca-file", &ca],
        &["broker", "amqps://guest:***@127.0.0.1:5672", "speaks TLS"],
    )
    .await;

    // With the right files, the same server is accepted: the worker connects and serves until
    // stopped (the whole job over TLS runs in tls.rs).
    let dir = JobDir::new();
    let log = dir.path("worker.log");
    let mut serving = cai_process()
        .args([
            "worker",
            "--broker",
            BROKER_URL,
            "--state",
            &demanding.url(),
        ])
        .args(["--metrics-addr", "off", "--tls-ca-file", &ca])
        .args(["--tls-cert-file", &cert, "--tls-key-file", &key])
        .env("CAI_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "the worker starts", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move { text.contains("worker started").then_some(()) }
    })
    .await;
    cai_tests::harness::signal(&serving, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), serving.wait())
        .await
        .expect("the worker stops at SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// RabbitMQ's TLS listener resets a client without the certificate it demands (the alert is
/// lost in the reset); the processes still stop, with the alert read by a second handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_tls_listener_refusing_the_client_stops_both_processes_at_once() {
    let pki = TestPki::new();
    let file = |name: &str| pki.path(name).display().to_string();
    let rabbit = PrivateRabbitMq::start_tls(&pki, true);
    let shown = rabbit.url().replace(":guest@", ":***@");
    both_stop(
        &rabbit.url(),
        &redis_url(),
        &["--tls-ca-file", &file("ca.pem")],
        &["broker", &shown, "client certificate"],
    )
    .await;
    both_stop(
        &rabbit.url(),
        &redis_url(),
        &["--tls-ca-file", &file("other-ca.pem")],
        &["broker", &shown, "--tls-ca-file"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_and_permissions_stop_both_processes_at_once() {
    let redis = redis_url();
    // RabbitMQ: a wrong password, and a vhost that does not exist.
    both_stop(
        "amqp://guest:not-the-password@127.0.0.1:5672/%2f",
        &redis,
        &[],
        &["broker", "amqp://guest:***@127.0.0.1:5672", "password"],
    )
    .await;
    both_stop(
        "amqp://guest:guest@127.0.0.1:5672/cai-no-such-vhost",
        &redis,
        &[],
        &["broker", "cai-no-such-vhost", "vhost"],
    )
    .await;

    // Redis: a password where none is set, a missing password (NOAUTH), a wrong one
    // (WRONGPASS) and a user without permissions (NOPERM).
    both_stop(
        BROKER_URL,
        "redis://:not-the-password@127.0.0.1:6379/0",
        &[],
        &["state store", "redis://:***@127.0.0.1:6379", "password"],
    )
    .await;
    let private = PrivateRedis::start();
    assert!(
        private
            .cli(&[
                "ACL",
                "SETUSER",
                "powerless",
                "on",
                ">its-password",
                "-@all"
            ])
            .contains("OK")
    );
    assert!(
        private
            .cli(&["CONFIG", "SET", "requirepass", "the-password"])
            .contains("OK")
    );
    let port = private.port();
    for (url, needle) in [
        (format!("redis://127.0.0.1:{port}"), "NOAUTH"),
        (format!("redis://:wrong@127.0.0.1:{port}"), "password"),
        (
            format!("redis://powerless:its-password@127.0.0.1:{port}"),
            "no permissions",
        ),
    ] {
        let shown = url.replace("its-password", "***").replace("wrong", "***");
        both_stop(BROKER_URL, &url, &[], &["state store", &shown, needle]).await;
    }
    let stopped = worker(
        BROKER_URL,
        &format!("redis://powerless:its-password@127.0.0.1:{port}"),
        &[],
    )
    .await;
    assert!(
        !stopped.stderr().contains("its-password"),
        "no password in the message:\n{}",
        stopped.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_or_an_unreadable_tls_file_stops_both_processes_at_once() {
    let redis = redis_url();
    both_stop(
        "nats://127.0.0.1:4222",
        &redis,
        &[],
        &["broker", "not a broker URL", "fix the URL"],
    )
    .await;
    both_stop(
        BROKER_URL,
        "redis://127.0.0.1:not-a-port/0",
        &[],
        &["state store", "fix the URL"],
    )
    .await;
    both_stop(
        BROKER_URL,
        "rediss://localhost:6379/0",
        &["--tls-ca-file", "/nonexistent/cai-ca.pem"],
        &["/nonexistent/cai-ca.pem", "--tls-ca-file"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_is_waited_for_up_to_the_connect_timeout_then_stops_both() {
    let url = "redis://cai-no-such-host.invalid:6379/0";
    for who in ["coordinator", "worker"] {
        let dir = JobDir::new();
        let job = jobs::mock_critique_revise(&dir, 3).display().to_string();
        let mut args = match who {
            "coordinator" => vec!["run", "--broker", BROKER_URL, "--state", url],
            _ => vec!["worker", "--broker", BROKER_URL, "--state", url],
        };
        args.extend(["--connect-timeout-s", "4"]);
        match who {
            "coordinator" => args.push(&job),
            _ => args.extend(["--metrics-addr", "off"]),
        }
        let stopped = cai(&args, "info").await;
        let stderr = stopped.stderr();
        assert_eq!(stopped.output.status.code(), Some(2), "{who}:\n{stderr}");
        assert!(
            stopped.took >= Duration::from_secs(4) && stopped.took < Duration::from_secs(30),
            "{who} waited {:?}:\n{stderr}",
            stopped.took
        );
        for needle in [
            "cai-no-such-host.invalid",
            "gave up after 4 s",
            "does not resolve",
        ] {
            assert!(
                stderr.contains(needle),
                "{who}: no {needle:?} in:\n{stderr}"
            );
        }
        assert!(
            stderr.contains("still waiting for the service"),
            "{who} says what it waits for while it waits:\n{stderr}"
        );
        assert_untouched(&dir.path("out"), &stopped);
    }
}

/// An outage at start is waited for: the worker is alive (`/healthz`) but not ready
/// (`/readyz` says what it waits for), and becomes ready once Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waiting_for_an_outage_is_alive_but_not_ready() {
    let mut redis = PrivateRedis::start();
    redis.stop();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = cai_process()
        .args(["worker", "--broker", BROKER_URL, "--state", &redis.url()])
        .args(["--metrics-addr", &addr])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let probe = |path: &'static str, code: u16, body: &'static str| {
        let url = format!("http://{addr}{path}");
        eventually(
            Duration::from_secs(30),
            "the probe answers as expected",
            move || {
                let url = url.clone();
                async move {
                    get(&url)
                        .await
                        .filter(|(c, text)| *c == code && text.contains(body))
                }
            },
        )
    };
    let (_, text) = probe("/readyz", 503, "waiting").await;
    assert!(text.contains("state store"), "{text}");
    assert!(text.contains("refused"), "{text}");
    probe("/healthz", 200, "ok").await;
    assert!(worker.try_wait().unwrap().is_none(), "it waits");

    redis.start_again();
    probe("/readyz", 200, "ready").await;
    cai_tests::harness::signal(&worker, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker stops at SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
