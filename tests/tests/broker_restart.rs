//! A distributed run through a RabbitMQ restart (`rabbitmqctl stop_app` / `start_app`): the run
//! completes with every sample exactly once. Its own test binary, because stopping the broker
//! would disturb any test running beside it.

use std::process::Command;
use std::time::Duration;

use cai_tests::harness::{ids, read_jsonl};
use cai_tests::model_server::ServerConfig;
use cai_tests::scenario::{Scenario, Size};

/// Starts the RabbitMQ app again when dropped, so a failing test leaves the broker running.
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "start_app"])
            .status();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_a_broker_restart() {
    let run = Scenario::critique_revise(
        7,
        ServerConfig {
            latency: Duration::from_millis(200),
            ..ServerConfig::default()
        },
        Size {
            lines: 120,
            revisions: 1,
            concurrency: 4,
        },
    )
    .await;
    let mut w1 = run.worker("w1", &[]);
    let mut w2 = run.worker("w2", &[]);
    let log = run.dir.path("coordinator.log");
    let mut coordinator = run.coordinator("coordinator.log");
    run.wait_committed(20).await;

    assert!(
        coordinator.try_wait().unwrap().is_none(),
        "the run is still going when the broker stops"
    );
    let guard = StartAppOnDrop;
    rabbitmqctl(&["-q", "stop_app"]);
    rabbitmqctl(&["-q", "start_app"]);
    rabbitmqctl(&["-q", "await_startup"]);
    drop(guard);

    let status = tokio::time::timeout(Duration::from_secs(240), coordinator.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no finish in 240 s; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
        .unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let rows = ids(&read_jsonl(&run.out.join("sft.jsonl")));
    let unique: std::collections::HashSet<&String> = rows.iter().collect();
    assert_eq!((rows.len(), unique.len()), (120, 120));
    assert_eq!(ids(&read_jsonl(&run.out.join("traces.jsonl"))).len(), 120);
    w1.start_kill().unwrap();
    w2.start_kill().unwrap();
}
