//! A distributed run through a 30 s outage of Redis (a private `redis-server`, stopped and
//! started again on the same port with its data): workers and the coordinator pause instead of
//! failing the job, and the run completes with every sample exactly once and nothing failed.
//! A coordinator started while Redis is away waits too, and a signal ends that wait.

use std::time::Duration;

use cai_tests::model_server::ServerConfig;
use cai_tests::private_redis::PrivateRedis;
use cai_tests::scenario::{self, Scenario, Size};

/// How long Redis stays down: long enough that a worker's probes, a lease's expiry and the
/// coordinator's commits all meet it.
const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_pauses_through_a_redis_outage_and_completes() {
    let mut redis = PrivateRedis::start();
    let lines = 150;
    let mut run = Scenario::critique_revise(
        ServerConfig {
            latency: Duration::from_millis(200),
            ..ServerConfig::default()
        },
        Size {
            lines,
            revisions: 1,
            concurrency: 4,
        },
    )
    .await;
    run.cluster.state = redis.url();
    let mut w1 = run.worker("w1", &[]);
    let mut w2 = run.worker("w2", &[]);
    let log = run.dir.path("coordinator.log");
    let mut coordinator = run.coordinator("coordinator.log");
    run.wait_committed(20).await;

    redis.stop();
    let at_stop = run.committed();
    assert!(at_stop < lines as u64, "the outage starts mid-run");
    tokio::time::sleep(OUTAGE).await;
    scenario::assert_all_running(
        &mut coordinator,
        &log,
        &mut [("w1", &mut w1), ("w2", &mut w2)],
    );
    redis.start_again();

    scenario::finish(coordinator, &log).await;
    scenario::check_exactly_once(&run.out, "sft.jsonl", lines);
    assert!(
        run.dir.rows("failed.jsonl").is_empty(),
        "no sample failed because of the outage"
    );
    let worker_logs: Vec<String> = ["w1", "w2"]
        .iter()
        .map(|id| std::fs::read_to_string(run.dir.path(&format!("{id}.log"))).unwrap())
        .collect();
    assert!(
        worker_logs.iter().any(|log| {
            // Held a paid step until Redis answered, or put its task back and paused.
            log.contains("service unavailable; pausing until it answers")
                || log.contains("the state store is unreachable; pausing")
        }),
        "a worker met the outage and paused; logs:\n{}",
        worker_logs.join("\n---\n")
    );
    for log in &worker_logs {
        assert!(
            !log.contains("job failed fatally"),
            "no worker gave the job up; log:\n{log}"
        );
    }
    w1.start_kill().unwrap();
    w2.start_kill().unwrap();
}

/// A coordinator started while Redis is away waits for it (instead of exiting), as it would in
/// the middle of a run, and one Ctrl-C (SIGINT) ends that wait: exit 130, nothing published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_waits_for_redis_at_start_and_one_interrupt_stops_it() {
    let mut redis = PrivateRedis::start();
    redis.stop();
    let mut run = Scenario::critique_revise(
        ServerConfig::default(),
        Size {
            lines: 10,
            revisions: 1,
            concurrency: 2,
        },
    )
    .await;
    run.cluster.state = redis.url();
    let log = run.dir.path("coordinator.log");
    let mut coordinator = run.coordinator("coordinator.log");
    cai_tests::harness::wait_until(
        Duration::from_secs(30),
        "the coordinator pauses for the state store",
        || {
            std::fs::read_to_string(&log)
                .is_ok_and(|text| text.contains("service unavailable; pausing until it answers"))
        },
    )
    .await;
    assert!(
        coordinator.try_wait().unwrap().is_none(),
        "the coordinator waits instead of exiting"
    );
    cai_tests::harness::signal(&coordinator, "INT");
    let status = tokio::time::timeout(Duration::from_secs(30), coordinator.wait())
        .await
        .expect("one SIGINT ends the wait within 30 s")
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(text.contains("run the same command again"), "{text}");
    assert_eq!(run.committed(), 0, "nothing ran");
}

/// A worker started while Redis is away waits for it instead of exiting, starts serving once it
/// answers, and stops at SIGTERM as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_for_redis_at_start_and_serves_once_it_answers() {
    let mut redis = PrivateRedis::start();
    redis.stop();
    let mut cluster = cai_tests::cluster::Cluster::unique();
    cluster.state = redis.url();
    let dir = cai_tests::harness::JobDir::new();
    let log = dir.path("worker.log");
    let mut worker = cluster.worker("w1", &log, &[]);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    cai_tests::harness::wait_until(
        Duration::from_secs(30),
        "the worker pauses for the state store",
        || read().contains("service unavailable; pausing until it answers"),
    )
    .await;
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker waits instead of exiting:\n{}",
        read()
    );
    redis.start_again();
    cai_tests::harness::wait_until(Duration::from_secs(60), "the worker starts", || {
        read().contains("worker started")
    })
    .await;
    cai_tests::harness::signal(&worker, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker stops within 30 s of SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", read());
}

/// A Redis restarted with a large data set answers `LOADING` to every command until it has read
/// it; a transaction (a step's write) then fails with `EXECABORT` around those. Both are an
/// outage to wait out, not a rejected request (the chaos soak found workers giving a job up on
/// the transaction's error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_loading_its_data_is_waited_for_also_inside_a_transaction() {
    use cai_common::sample::SampleKey;
    use cai_common::service_error::through_outage;
    use cai_common::state::StateStore;
    use cai_common::state::redis::RedisState;

    let mut redis = PrivateRedis::start();
    assert!(
        redis
            .cli(&["DEBUG", "POPULATE", "3000000", "filler", "64"])
            .contains("OK")
    );
    assert!(redis.cli(&["BGREWRITEAOF"]).contains("rewriting"));
    cai_tests::harness::wait_until(Duration::from_secs(60), "the AOF is rewritten", || {
        redis
            .cli(&["INFO", "persistence"])
            .contains("aof_rewrite_in_progress:0")
            && !redis
                .cli(&["INFO", "persistence"])
                .contains("aof_rewrite_scheduled:1")
    })
    .await;
    // Connected before the restart: a new connection opens with a PING, which waits out the
    // loading itself; the connection that is already there meets it in the transaction.
    let state = RedisState::connect(&redis.url())
        .await
        .expect("Redis answers");
    redis.stop();
    redis.start_again_loading();

    let key = SampleKey([9; 16]);
    let mut loading_seen = false;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(tokio::time::Instant::now() < give_up, "Redis never loaded");
        match state
            .step_put("job", &key, "initial", b"paid".to_vec())
            .await
        {
            Ok(()) => break,
            Err(error) if error.to_string().contains("BusyLoading") => {
                assert!(error.is_unavailable(), "{error}");
                loading_seen = true;
            }
            Err(error) => assert!(error.is_unavailable(), "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        loading_seen,
        "the write met the server while it was loading"
    );
    // And the loop the workers use gets through it.
    through_outage("caching a step", Some(Duration::from_secs(60)), || {
        state.step_put("job", &key, "critique-1", b"paid".to_vec())
    })
    .await
    .unwrap();
}
