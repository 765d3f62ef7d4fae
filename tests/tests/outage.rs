//! A model endpoint that goes down for 20 s mid-run: the run pauses instead of failing samples,
//! then completes when the endpoint answers again, with nothing in `failed.jsonl`.

use std::time::Duration;

use cai_coordinator::ledger;
use cai_tests::harness::{JobDir, ids, run_job, wait_until};
use cai_tests::jobs::{self, Target};
use cai_tests::model_server::{ModelServer, ServerConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_pauses_through_an_endpoint_outage_and_completes() {
    let config = ServerConfig {
        latency: Duration::from_millis(20),
        ..ServerConfig::default()
    };
    let first = ModelServer::start(config.clone()).await;
    let url = first.url();
    let dir = JobDir::new();
    let job = jobs::critique_revise(
        &dir,
        Target {
            file: "job.toml",
            name: "outage",
            url: &url,
            output: "out",
        },
        100,
        1,
        4,
    );
    let job_text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(
        &job,
        job_text.replace(
            "max_concurrency = 4",
            "max_concurrency = 4\nmax_retries = 1",
        ),
    )
    .unwrap();
    let out = dir.path("out");
    let committed = || {
        ledger::totals(&out)
            .map(|t| (t.done, t.failed))
            .unwrap_or((0, 0))
    };
    let run = tokio::spawn(async move { run_job(&job).await });

    wait_until(Duration::from_secs(60), "20 samples are committed", || {
        committed().0 >= 20
    })
    .await;
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_owned();
    first.stop().await;
    let during = committed();
    tokio::time::sleep(Duration::from_secs(20)).await;
    // Nothing failed while the endpoint was down, and the run did not finish without it.
    let after_outage = committed();
    assert_eq!(after_outage.1, 0, "samples failed during the outage");
    assert!(after_outage.0 < 100 && after_outage.0 >= during.0);
    assert!(!run.is_finished());

    let second = ModelServer::start_at(&address, config).await;
    let summary = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run completes once the endpoint is back")
        .unwrap()
        .unwrap();
    assert!(summary.complete);
    assert_eq!((summary.counts.done, summary.counts.failed), (100, 0));
    assert!(dir.rows("failed.jsonl").is_empty());
    assert_eq!(ids(&dir.rows("sft.jsonl")).len(), 100);
    assert!(!second.calls().is_empty());
}
