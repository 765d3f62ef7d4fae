//! TLS to a real RabbitMQ TLS listener and a real Redis TLS port, each with a CA and
//! certificates the test makes (`openssl`, nothing downloaded): the connection checks the
//! server's certificate against the CA named with `--tls-ca-file` and its name against the URL,
//! sends a client certificate where the service demands one, refuses a wrong CA with an error
//! that says so, and a whole distributed job runs over both.

use std::time::Duration;

use cai_common::broker::{self, Queue};
use cai_common::service_error::ServiceError;
use cai_common::state;
use cai_common::tls::TlsFiles;
use cai_tests::model_server::ServerConfig;
use cai_tests::pki::TestPki;
use cai_tests::private_rabbitmq::PrivateRabbitMq;
use cai_tests::private_redis::PrivateRedis;
use cai_tests::scenario::{self, Scenario, Size};
use futures::StreamExt;

fn files(pki: &TestPki, ca: &str, client: bool) -> TlsFiles {
    TlsFiles {
        ca_file: Some(pki.path(ca)),
        cert_file: client.then(|| pki.path("client.pem")),
        key_file: client.then(|| pki.path("client.key")),
    }
}

/// A refused connection says it was the certificate, so the operator knows where to look, and
/// is a misconfiguration (the process stops), not an outage to wait out.
fn assert_names_the_certificate(error: &ServiceError) {
    let message = error.to_string();
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    assert!(error.is_misconfigured(), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_checks_the_ca_the_name_and_sends_the_client_certificate() {
    let pki = TestPki::new();
    let redis = PrivateRedis::start_tls(&pki, true);

    let state = state::connect_with_tls(&redis.url(), &files(&pki, "ca.pem", true))
        .await
        .expect("the CA and the client certificate are accepted");
    state.put_job("tls-job", "{}", "fp").await.unwrap();
    assert_eq!(
        state.get_job("tls-job").await.unwrap(),
        Some(("{}".into(), "fp".into()))
    );

    let wrong_ca = state::connect_with_tls(&redis.url(), &files(&pki, "other-ca.pem", true))
        .await
        .err()
        .expect("a server signed by another CA is refused");
    assert_names_the_certificate(&wrong_ca);

    let without_client = state::connect_with_tls(&redis.url(), &files(&pki, "ca.pem", false))
        .await
        .err()
        .expect("Redis demands a client certificate");
    assert_names_the_certificate(&without_client);

    // 127.0.0.2 reaches the same server, but the certificate names only localhost and 127.0.0.1.
    let other_name = format!("rediss://127.0.0.2:{}", redis.port());
    let mismatch = state::connect_with_tls(&other_name, &files(&pki, "ca.pem", true))
        .await
        .err()
        .expect("a certificate for another name is refused");
    assert_names_the_certificate(&mismatch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_over_tls_checks_the_ca_and_sends_the_client_certificate() {
    let pki = TestPki::new();
    let rabbit = PrivateRabbitMq::start_tls(&pki, true);

    let amqp = broker::connect_with_tls(&rabbit.url(), &files(&pki, "ca.pem", true))
        .await
        .expect("the CA and the client certificate are accepted");
    amqp.publish("tls-job", Queue::Tasks, b"over tls".to_vec())
        .await
        .unwrap();
    let mut tasks = amqp.consume("tls-job", Queue::Tasks, 1).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), tasks.next())
        .await
        .expect("a delivery in time")
        .expect("the stream is open");
    assert_eq!(delivery.payload, b"over tls");
    delivery.acker.ack().await.unwrap();
    drop(tasks);
    amqp.delete_job("tls-job").await.unwrap();

    let wrong_ca = broker::connect_with_tls(&rabbit.url(), &files(&pki, "other-ca.pem", true))
        .await
        .err()
        .expect("a server signed by another CA is refused");
    assert_names_the_certificate(&wrong_ca);
    let without_client = broker::connect_with_tls(&rabbit.url(), &files(&pki, "ca.pem", false))
        .await
        .err()
        .expect("RabbitMQ demands a client certificate");
    assert_names_the_certificate(&without_client);
}

/// The coordinator and a worker as processes, given the TLS files through `CAI_TLS_*`, run a
/// job through RabbitMQ and Redis over TLS only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_job_runs_over_tls_to_both_services() {
    let pki = TestPki::new();
    let rabbit = PrivateRabbitMq::start_tls(&pki, true);
    let redis = PrivateRedis::start_tls(&pki, true);
    let lines = 20;
    let mut run = Scenario::critique_revise(
        ServerConfig::default(),
        Size {
            lines,
            revisions: 1,
            concurrency: 4,
        },
    )
    .await;
    run.cluster.broker = rabbit.url();
    run.cluster.state = redis.url();
    for (var, file) in [
        ("CAI_TLS_CA_FILE", "ca.pem"),
        ("CAI_TLS_CERT_FILE", "client.pem"),
        ("CAI_TLS_KEY_FILE", "client.key"),
    ] {
        run.cluster
            .env
            .push((var.into(), pki.path(file).display().to_string()));
    }
    let mut worker = run.worker("w1", &[]);
    let log = run.dir.path("coordinator.log");
    let coordinator = run.coordinator("coordinator.log");
    scenario::finish(coordinator, &log).await;
    scenario::check_exactly_once(&run.out, "sft.jsonl", lines);
    worker.start_kill().unwrap();
}
