//! A worker that gave a job up (it could not build the job's model) tries it again once the job
//! is registered again with another spec: an operator who fixes the job file and runs it again
//! need not restart every worker.

use std::time::Duration;

use cai_tests::model_server::ServerConfig;
use cai_tests::scenario::{self, Scenario, Size};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_given_up_is_tried_again_when_its_spec_changes() {
    let lines = 20;
    let run = Scenario::critique_revise(
        ServerConfig::default(),
        Size {
            lines,
            revisions: 1,
            concurrency: 4,
        },
    )
    .await;
    let fixed = std::fs::read_to_string(&run.job).unwrap();
    let broken = fixed.replace(
        "model = \"test-model\"",
        "model = \"test-model\"\napi_key_env = \"CAI_TEST_KEY_NO_WORKER_HAS\"",
    );
    assert_ne!(broken, fixed);
    std::fs::write(&run.job, &broken).unwrap();
    // The variable is allowed, but the worker's environment lacks it.
    let mut worker = run.worker(
        "w1",
        &["--allow-key", "CAI_TEST_KEY_NO_WORKER_HAS=127.0.0.1"],
    );

    // The worker cannot build the model without the key: it reports the job fatal and the
    // coordinator stops.
    let first_log = run.dir.path("first.log");
    let first = run.coordinator("first.log");
    let status = tokio::time::timeout(Duration::from_secs(60), first.wait_with_output())
        .await
        .expect("the first coordinator stops within 60 s")
        .unwrap()
        .status;
    let text = std::fs::read_to_string(&first_log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("CAI_TEST_KEY_NO_WORKER_HAS is not set"),
        "{text}"
    );

    // The job file fixed and run again as a new job under the same name: the same worker serves it.
    std::fs::write(&run.job, &fixed).unwrap();
    let second_log = run.dir.path("second.log");
    let second = run
        .cluster
        .coordinator_with(&run.job, &second_log, &["--new"]);
    scenario::finish(second, &second_log).await;
    scenario::check_exactly_once(&run.out, "sft.jsonl", lines);
    let worker_log = std::fs::read_to_string(run.dir.path("w1.log")).unwrap();
    assert!(
        worker_log.contains("trying it again"),
        "the worker says why it serves the job again:\n{worker_log}"
    );
    worker.start_kill().unwrap();
}
