//! The Redis state store against the real Redis on this machine (`CAI_STATE`, default
//! `redis://127.0.0.1:6379/0`): the done set in large batches and its memory per sample, the
//! step cache and its TTL, counters, the job registry, expiring heartbeats, and `clear_job`.
//!
//! Every key lives under this test process's own prefix (`sr-<pid>:`), each test uses its own
//! job name (`sr-<pid>:<job>:`) and clears the job at the end, even when it fails.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cai_common::sample::SampleKey;
use cai_common::state::StateStore;
use cai_common::state::redis::RedisState;
use futures::FutureExt;
use redis::aio::MultiplexedConnection;

/// The Redis these tests share with every other test of the machine.
fn base_url() -> String {
    std::env::var("CAI_STATE").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// The key prefix of this test process: nothing it writes is under another test's prefix.
fn prefix() -> String {
    format!("sr-{}", std::process::id())
}

fn url() -> String {
    format!("{}?prefix={}", base_url(), prefix())
}

fn unique_name(kind: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{kind}-{}-{nanos}-{n}", std::process::id())
}

/// Distinct keys: `n` in the first bytes, a fixed pattern in the rest.
fn keys(range: std::ops::Range<u32>) -> Vec<SampleKey> {
    range
        .map(|n| {
            let mut key = [0xa5; 16];
            key[..4].copy_from_slice(&n.to_le_bytes());
            SampleKey(key)
        })
        .collect()
}

/// A plain connection, to look at the keys behind the store.
async fn raw() -> MultiplexedConnection {
    redis::Client::open(base_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is not answering")
}

async fn job_keys(job: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(format!("{}:{job}:*", prefix()))
        .query_async(&mut raw().await)
        .await
        .unwrap()
}

/// Runs `body` on a fresh job, then clears the job whether or not it panicked.
async fn with_job<F, Fut>(body: F)
where
    F: FnOnce(RedisState, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let state = RedisState::connect(&url())
        .await
        .expect("Redis is not answering");
    let job = unique_name("t");
    let outcome = AssertUnwindSafe(body(state.clone(), job.clone()))
        .catch_unwind()
        .await;
    state.clear_job(&job).await.expect("clearing the test job");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn done_set_in_batches_of_ten_thousand() {
    with_job(|state, job| async move {
        let all = keys(0..30_000);
        for batch in all[..20_000].chunks(10_000) {
            state.mark_done(&job, batch).await.unwrap();
        }
        let done = state.done(&job, &all).await.unwrap();
        assert_eq!(done.len(), 30_000);
        assert!(done[..20_000].iter().all(|d| *d));
        assert!(done[20_000..].iter().all(|d| !*d));
        assert_eq!(state.done_count(&job).await.unwrap(), 20_000);
        assert!(state.done(&job, &[]).await.unwrap().is_empty());

        state.reset_done(&job, &all[25_000..]).await.unwrap();
        assert_eq!(state.done_count(&job).await.unwrap(), 5_000);
        let done = state.done(&job, &all).await.unwrap();
        assert!(done[..25_000].iter().all(|d| !*d));
        assert!(done[25_000..].iter().all(|d| *d));
        assert_eq!(
            job_keys(&job).await,
            [format!("{}:{job}:done", prefix())],
            "no swap key left"
        );
        state.reset_done(&job, &[]).await.unwrap();
        assert_eq!(state.done_count(&job).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn step_cache_put_get_forget_with_ttl() {
    with_job(|state, job| async move {
        let state = state.with_step_ttl(Duration::from_secs(3600));
        let [a, b]: [SampleKey; 2] = keys(0..2).try_into().unwrap();
        state
            .step_put(&job, &a, "answer", b"A0".to_vec())
            .await
            .unwrap();
        state
            .step_put(&job, &a, "critique-0", vec![0, 255, 7])
            .await
            .unwrap();
        state
            .step_put(&job, &b, "answer", b"B0".to_vec())
            .await
            .unwrap();
        assert_eq!(
            state.step_get(&job, &a, "answer").await.unwrap(),
            Some(b"A0".to_vec())
        );
        assert_eq!(
            state.step_get(&job, &a, "critique-0").await.unwrap(),
            Some(vec![0, 255, 7])
        );
        assert_eq!(state.step_get(&job, &a, "revision-0").await.unwrap(), None);

        let hash = format!("{}:{job}:steps:{}", prefix(), a.to_hex());
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&hash)
            .query_async(&mut raw().await)
            .await
            .unwrap();
        assert!(ttl > 3_590_000 && ttl <= 3_600_000, "step TTL {ttl} ms");

        state.step_forget(&job, &[a]).await.unwrap();
        assert_eq!(state.step_get(&job, &a, "answer").await.unwrap(), None);
        assert_eq!(
            state.step_get(&job, &b, "answer").await.unwrap(),
            Some(b"B0".to_vec())
        );
        assert_eq!(
            job_keys(&job).await,
            [format!("{}:{job}:steps:{}", prefix(), b.to_hex())]
        );
    })
    .await;
}

#[tokio::test]
async fn counters_add_up() {
    with_job(|state, job| async move {
        assert!(state.counters(&job).await.unwrap().is_empty());
        state
            .add_counters(&job, &[("done", 2), ("failed", 1)])
            .await
            .unwrap();
        state
            .add_counters(&job, &[("done", 3), ("tokens_in", 1_000_000_000_000)])
            .await
            .unwrap();
        state.add_counters(&job, &[]).await.unwrap();
        let counters = state.counters(&job).await.unwrap();
        assert_eq!(
            counters.into_iter().collect::<Vec<_>>(),
            [
                ("done".to_owned(), 5),
                ("failed".to_owned(), 1),
                ("tokens_in".to_owned(), 1_000_000_000_000)
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn job_registry_and_active_set() {
    with_job(|state, job| async move {
        assert_eq!(state.get_job(&job).await.unwrap(), None);
        state.put_job(&job, r#"{"name":"x"}"#, "f1").await.unwrap();
        state.put_job(&job, r#"{"name":"y"}"#, "f2").await.unwrap();
        assert_eq!(
            state.get_job(&job).await.unwrap(),
            Some((r#"{"name":"y"}"#.to_owned(), "f2".to_owned()))
        );
        state.set_active(&job, true).await.unwrap();
        assert!(state.active_jobs().await.unwrap().contains(&job));
        state.set_active(&job, false).await.unwrap();
        assert!(!state.active_jobs().await.unwrap().contains(&job));

        assert_eq!(state.fatal(&job).await.unwrap(), None);
        state.set_fatal(&job, "401 from the model").await.unwrap();
        state.set_fatal(&job, "a later error").await.unwrap();
        assert_eq!(
            state.fatal(&job).await.unwrap().as_deref(),
            Some("401 from the model")
        );
        state.clear_fatal(&job).await.unwrap();
        assert_eq!(state.fatal(&job).await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn heartbeats_expire() {
    let state = RedisState::connect(&url()).await.unwrap();
    let short = unique_name("w");
    let long = unique_name("w");
    state
        .heartbeat(&short, r#"{"tasks":1}"#, Duration::from_secs(1))
        .await
        .unwrap();
    state
        .heartbeat(&long, r#"{"tasks":2}"#, Duration::from_secs(60))
        .await
        .unwrap();
    let workers = state.workers().await.unwrap();
    assert!(
        workers.contains(&(short.clone(), r#"{"tasks":1}"#.to_owned())),
        "{workers:?}"
    );
    assert!(
        workers.contains(&(long.clone(), r#"{"tasks":2}"#.to_owned())),
        "{workers:?}"
    );

    let start = Instant::now();
    loop {
        let workers = state.workers().await.unwrap();
        if !workers.iter().any(|(id, _)| *id == short) {
            assert!(
                workers.iter().any(|(id, _)| *id == long),
                "the live worker went too"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "heartbeat did not expire"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let indexed: bool = redis::cmd("SISMEMBER")
        .arg(format!("{}:_workers", prefix()))
        .arg(&short)
        .query_async(&mut raw().await)
        .await
        .unwrap();
    assert!(!indexed, "an expired worker stays in the index");

    let _: () = redis::cmd("DEL")
        .arg(format!("{}:_workers:{long}", prefix()))
        .query_async(&mut raw().await)
        .await
        .unwrap();
    assert!(
        !state
            .workers()
            .await
            .unwrap()
            .iter()
            .any(|(id, _)| *id == long)
    );
}

#[tokio::test]
async fn clear_job_removes_every_key_of_the_job() {
    let state = RedisState::connect(&url()).await.unwrap();
    let job = unique_name("t");
    let other = unique_name("t");
    let some = keys(0..100);
    for job in [&job, &other] {
        state.put_job(job, "{}", "f").await.unwrap();
        state.set_active(job, true).await.unwrap();
        state.mark_done(job, &some).await.unwrap();
        state.add_counters(job, &[("done", 100)]).await.unwrap();
        state.set_fatal(job, "401").await.unwrap();
        for key in &some {
            state
                .step_put(job, key, "answer", b"x".to_vec())
                .await
                .unwrap();
        }
    }
    assert_eq!(job_keys(&job).await.len(), 104);

    state.clear_job(&job).await.unwrap();
    assert!(job_keys(&job).await.is_empty());
    assert!(!state.active_jobs().await.unwrap().contains(&job));
    assert_eq!(job_keys(&other).await.len(), 104, "another job was touched");
    state.clear_job(&other).await.unwrap();
    assert!(job_keys(&other).await.is_empty());
}

#[tokio::test]
async fn a_done_sample_costs_less_than_100_bytes() {
    with_job(|state, job| async move {
        const SAMPLES: u32 = 100_000;
        for batch in keys(0..SAMPLES).chunks(10_000) {
            state.mark_done(&job, batch).await.unwrap();
        }
        assert_eq!(state.done_count(&job).await.unwrap(), u64::from(SAMPLES));
        let bytes: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(format!("{}:{job}:done", prefix()))
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut raw().await)
            .await
            .unwrap();
        let per_sample = bytes as f64 / f64::from(SAMPLES);
        println!(
            "done set: {bytes} bytes for {SAMPLES} samples = {per_sample:.1} bytes per sample"
        );
        assert!(per_sample < 100.0, "{per_sample:.1} bytes per done sample");
    })
    .await;
}

#[tokio::test]
async fn a_killed_connection_is_replaced_without_an_error() {
    // A Redis of its own: the test kills every connection on it but its own.
    let redis = cai_tests::private_redis::PrivateRedis::start();
    let url = redis.url();
    let state = RedisState::connect(&url).await.unwrap();
    let job = unique_name("t");
    state.mark_done(&job, &keys(0..10)).await.unwrap();

    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let me: u64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut admin)
        .await
        .unwrap();
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    let victims: Vec<u64> = clients
        .lines()
        .filter(|line| line.split(' ').any(|field| field == "db=0"))
        .filter_map(|line| line.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .filter(|id| *id != me)
        .collect();
    assert!(
        !victims.is_empty(),
        "the store's connection is not on the private Redis: {clients}"
    );
    for id in victims {
        let _: () = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut admin)
            .await
            .unwrap();
    }

    assert_eq!(state.done_count(&job).await.unwrap(), 10);
    state.clear_job(&job).await.unwrap();
}

#[tokio::test]
async fn a_wrong_password_fails_without_showing_it() {
    let error = match RedisState::connect("redis://:s3cret-pw@127.0.0.1:6379/0").await {
        Ok(_) => panic!("connected with a password Redis does not have"),
        Err(error) => error.to_string(),
    };
    assert!(!error.contains("s3cret-pw"), "{error}");
}
