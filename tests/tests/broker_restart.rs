//! A distributed run through a 30 s RabbitMQ outage (`rabbitmqctl stop_app`, 30 s, `start_app`):
//! the coordinator and the workers wait instead of failing, and the run completes with every
//! sample exactly once and nothing failed. Its own test binary, because stopping the broker would
//! disturb any test running beside it.

use std::process::Command;
use std::time::Duration;

use cai_tests::harness::{ids, read_jsonl};
use cai_tests::model_server::ServerConfig;
use cai_tests::scenario::{self, Scenario, Size};

/// How long RabbitMQ stays down: longer than two heartbeats (so every connection is noticed
/// dead) and than many publish and resubscribe attempts.
const OUTAGE: Duration = Duration::from_secs(30);

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
async fn a_run_pauses_through_a_broker_outage_and_completes() {
    let run = Scenario::critique_revise(
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
    tokio::time::sleep(OUTAGE).await;
    scenario::assert_all_running(
        &mut coordinator,
        &log,
        &mut [("w1", &mut w1), ("w2", &mut w2)],
    );
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
    assert!(
        read_jsonl(&run.out.join("failed.jsonl")).is_empty(),
        "no sample failed because of the outage"
    );
    w1.start_kill().unwrap();
    w2.start_kill().unwrap();
}
