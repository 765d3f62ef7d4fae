//! Mixed versions during a rolling upgrade, with a registry entry and messages written in a
//! newer format version than this build's: a worker leaves such a job to newer workers and says
//! why once (not once per poll, nor per task), without taking its tasks or stopping the job; a
//! coordinator refuses to take over a job whose registry entry or queue is newer, exits 2, and
//! leaves the newer messages where they are.

use std::time::Duration;

use cai_common::broker::{Broker, Queue};
use cai_common::envelope::FORMAT_VERSION;
use cai_common::state::StateStore;
use cai_coordinator::plan::Plan;
use cai_tests::cluster::Cluster;
use cai_tests::harness::{JobDir, eventually, wait_until};
use cai_tests::jobs::{self, Target};
use serde::Serialize;

/// An envelope as a newer build writes it: the fields this build knows, a version it does not.
#[derive(Serialize)]
struct NewerEnvelope<'a> {
    version: u16,
    job: &'a str,
    body: &'a str,
}

fn newer_message(job: &str) -> Vec<u8> {
    rmp_serde::to_vec_named(&NewerEnvelope {
        version: FORMAT_VERSION + 1,
        job,
        body: "written by a newer cai",
    })
    .unwrap()
}

/// A job file of the cluster's job, and the registry entry a newer coordinator would write for
/// it: a newer format version and a spec field this build does not know.
fn newer_registration(cluster: &Cluster, dir: &JobDir) -> (std::path::PathBuf, String) {
    let job = jobs::critique_revise(
        dir,
        Target {
            file: "job.toml",
            name: &cluster.job,
            url: "http://127.0.0.1:9/v1",
            output: "out",
        },
        5,
        1,
        2,
    );
    let plan = Plan::load(&job).unwrap();
    let mut spec = serde_json::to_value(plan.spec()).unwrap();
    spec["a_setting_from_the_future"] = true.into();
    let entry = serde_json::json!({
        "spec": spec,
        "constitution": serde_json::to_value(&*plan.constitution).unwrap(),
        "fingerprint": plan.fingerprint,
        "format_version": FORMAT_VERSION + 1,
    });
    (job, entry.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_leaves_a_newer_job_to_newer_workers_and_says_why_once() {
    let cluster = Cluster::unique();
    let dir = JobDir::new();
    let (_, entry) = newer_registration(&cluster, &dir);
    let state = cluster.state().await;
    state.put_job(&cluster.job, &entry, "newer").await.unwrap();
    state.set_active(&cluster.job, true).await.unwrap();
    let broker = cluster.broker().await;
    broker
        .publish(&cluster.job, Queue::Tasks, newer_message(&cluster.job))
        .await
        .unwrap();

    let log = dir.path("worker.log");
    let mut worker = cluster.worker("w-old", &log, &[]);
    let says_why = "is registered with message format version";
    wait_until(Duration::from_secs(20), "the worker says why", || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains(says_why))
    })
    .await;
    // Three more polls (one every 2 s) find the job still active: still said once.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches(says_why).count(), 1, "{text}");
    assert_eq!(
        broker.depth(&cluster.job, Queue::Tasks).await.unwrap(),
        1,
        "the newer task is left in the queue for a newer worker"
    );
    assert_eq!(
        state.fatal(&cluster.job).await.unwrap(),
        None,
        "the job is not stopped: newer workers can serve it"
    );
    worker.start_kill().unwrap();
}

/// Runs the coordinator of `job`, checks that it refuses the job (exit 2) and returns its log.
async fn refused(cluster: &Cluster, dir: &JobDir, job: &std::path::Path) -> String {
    let log = dir.path("coordinator.log");
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        cluster.coordinator(job, &log).wait(),
    )
    .await
    .expect("the coordinator exits")
    .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2), "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_refuses_a_job_a_newer_build_registered() {
    let cluster = Cluster::unique();
    let dir = JobDir::new();
    let (job, entry) = newer_registration(&cluster, &dir);
    let state = cluster.state().await;
    state.put_job(&cluster.job, &entry, "newer").await.unwrap();

    let text = refused(&cluster, &dir, &job).await;
    assert!(text.contains("was registered by a newer cai"), "{text}");
    assert_eq!(
        state.get_job(&cluster.job).await.unwrap().map(|(_, fp)| fp),
        Some("newer".into()),
        "the newer registration is left as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_refuses_a_job_whose_queue_holds_newer_messages() {
    let cluster = Cluster::unique();
    let dir = JobDir::new();
    let (job, _) = newer_registration(&cluster, &dir);
    let broker = cluster.broker().await;
    broker
        .publish(&cluster.job, Queue::Results, newer_message(&cluster.job))
        .await
        .unwrap();

    let text = refused(&cluster, &dir, &job).await;
    assert!(text.contains("holds messages of format version"), "{text}");
    // The result is left for the build that can read it.
    eventually(
        Duration::from_secs(10),
        "the newer result is back in its queue",
        || async {
            (broker.depth(&cluster.job, Queue::Results).await.ok() == Some(1)).then_some(())
        },
    )
    .await;
}
