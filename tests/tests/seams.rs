//! Contract suites for the two seams: every behaviour the coordinator and the workers rely on,
//! run against both implementations of each (the in-process broker and RabbitMQ; the embedded
//! state and Redis), so embedded mode cannot pass where a distributed run would fail. Each
//! implementation is chosen by its URL, as the binary chooses it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cai_common::broker::{self, Broker, Delivery, Queue};
use cai_common::sample::SampleKey;
use cai_common::state::{self, StateStore};
use cai_tests::cluster::BROKER_URL;
use cai_tests::harness::eventually;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::time::timeout;

/// Longest wait for a delivery that must come.
const WAIT: Duration = Duration::from_secs(10);
/// How long a consumer must stay quiet to show a delivery is withheld.
const QUIET: Duration = Duration::from_millis(500);

fn unique(kind: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{kind}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn next(stream: &mut BoxStream<'static, Delivery>) -> Delivery {
    timeout(WAIT, stream.next())
        .await
        .expect("no delivery in time")
        .expect("the stream ended")
}

async fn assert_quiet(stream: &mut BoxStream<'static, Delivery>) {
    if let Ok(delivery) = timeout(QUIET, stream.next()).await {
        panic!("unexpected delivery: {:?}", delivery.map(|d| d.payload));
    }
}

/// A broker from its URL and a job of its own; the job's queues are deleted at the end.
struct BrokerCase {
    broker: Arc<dyn Broker>,
    job: String,
}

impl BrokerCase {
    async fn new(url: &str) -> Self {
        Self {
            broker: broker::connect(url).await.expect("the broker answers"),
            job: unique("seam"),
        }
    }

    async fn publish(&self, queue: Queue, payload: &[u8]) {
        self.broker
            .publish(&self.job, queue, payload.to_vec())
            .await
            .unwrap();
    }

    async fn consume(&self, queue: Queue, prefetch: u16) -> BoxStream<'static, Delivery> {
        self.broker
            .consume(&self.job, queue, prefetch)
            .await
            .unwrap()
    }

    async fn finish(self) {
        self.broker.delete_job(&self.job).await.unwrap();
    }
}

async fn acked_messages_are_gone(url: &str) {
    let case = BrokerCase::new(url).await;
    for n in 0..3u8 {
        case.publish(Queue::Tasks, &[n]).await;
    }
    assert_eq!(case.broker.depth(&case.job, Queue::Tasks).await.unwrap(), 3);
    let mut tasks = case.consume(Queue::Tasks, 10).await;
    for n in 0..3u8 {
        let delivery = next(&mut tasks).await;
        assert_eq!(delivery.payload, [n], "in publish order");
        delivery.acker.ack().await.unwrap();
    }
    drop(tasks);
    let mut again = case.consume(Queue::Tasks, 10).await;
    assert_quiet(&mut again).await;
    assert_eq!(case.broker.depth(&case.job, Queue::Tasks).await.unwrap(), 0);
    case.finish().await;
}

async fn prefetch_bounds_unsettled_deliveries(url: &str) {
    let case = BrokerCase::new(url).await;
    for n in 0..5u8 {
        case.publish(Queue::Tasks, &[n]).await;
    }
    let mut tasks = case.consume(Queue::Tasks, 2).await;
    let first = next(&mut tasks).await;
    let _second = next(&mut tasks).await;
    assert_quiet(&mut tasks).await;
    first.acker.ack().await.unwrap();
    let _third = next(&mut tasks).await;
    assert_quiet(&mut tasks).await;
    drop(tasks);
    case.finish().await;
}

async fn requeued_and_dropped_deliveries_come_back(url: &str) {
    let case = BrokerCase::new(url).await;
    case.publish(Queue::Tasks, b"requeued").await;
    let mut tasks = case.consume(Queue::Tasks, 1).await;
    next(&mut tasks).await.acker.requeue().await.unwrap();
    let again = next(&mut tasks).await;
    assert_eq!(again.payload, b"requeued");
    // Dropped unsettled, with its consumer gone: as a worker killed mid-task.
    drop(again);
    drop(tasks);
    let mut fresh = case.consume(Queue::Tasks, 1).await;
    let redelivered = next(&mut fresh).await;
    assert_eq!(redelivered.payload, b"requeued");
    redelivered.acker.ack().await.unwrap();
    drop(fresh);
    case.finish().await;
}

async fn dead_letters_land_in_the_dead_queue(url: &str) {
    let case = BrokerCase::new(url).await;
    case.publish(Queue::Results, b"poison").await;
    let mut results = case.consume(Queue::Results, 1).await;
    next(&mut results)
        .await
        .acker
        .dead_letter("cannot decode")
        .await
        .unwrap();
    assert_quiet(&mut results).await;
    let mut dead = case.consume(Queue::Dead, 1).await;
    assert_eq!(next(&mut dead).await.payload, b"poison");
    drop((results, dead));
    case.finish().await;
}

async fn purge_empties_only_its_queue(url: &str) {
    let case = BrokerCase::new(url).await;
    for _ in 0..3 {
        case.publish(Queue::Tasks, b"t").await;
    }
    case.publish(Queue::Results, b"r").await;
    assert_eq!(case.broker.purge(&case.job, Queue::Tasks).await.unwrap(), 3);
    assert_eq!(case.broker.depth(&case.job, Queue::Tasks).await.unwrap(), 0);
    assert_eq!(
        case.broker.depth(&case.job, Queue::Results).await.unwrap(),
        1
    );
    assert!(case.broker.ready().await);
    case.finish().await;
}

async fn deleting_a_job_ends_its_consumers(url: &str) {
    let case = BrokerCase::new(url).await;
    let mut tasks = case.consume(Queue::Tasks, 1).await;
    case.broker.delete_job(&case.job).await.unwrap();
    let ended = timeout(WAIT, tasks.next()).await.expect("the stream ends");
    assert!(ended.is_none(), "a delivery from a deleted queue");
    assert_eq!(case.broker.depth(&case.job, Queue::Tasks).await.unwrap(), 0);
}

/// One `#[tokio::test]` per contract and implementation.
macro_rules! broker_contract {
    ($($contract:ident),* $(,)?) => {
        mod broker_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $contract() {
                    super::$contract("memory:").await;
                }
            )*
        }
        mod broker_rabbitmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $contract() {
                    super::$contract(cai_tests::cluster::BROKER_URL).await;
                }
            )*
        }
    };
}

broker_contract!(
    acked_messages_are_gone,
    prefetch_bounds_unsettled_deliveries,
    requeued_and_dropped_deliveries_come_back,
    dead_letters_land_in_the_dead_queue,
    purge_empties_only_its_queue,
    deleting_a_job_ends_its_consumers,
);

/// A state store from its URL, on Redis under a fresh key prefix, every key of which is
/// deleted at the end.
struct StateCase {
    state: Arc<dyn StateStore>,
    redis_prefix: Option<(String, String)>,
}

impl StateCase {
    async fn new(url: &str) -> Self {
        let (url, redis_prefix) = if url.starts_with("redis") {
            let prefix = unique("seam");
            (
                format!("{url}?prefix={prefix}"),
                Some((url.to_owned(), prefix)),
            )
        } else {
            (url.to_owned(), None)
        };
        Self {
            state: state::connect(&url).await.expect("the state store answers"),
            redis_prefix,
        }
    }

    async fn finish(self) {
        let Some((url, prefix)) = self.redis_prefix else {
            return;
        };
        let mut redis = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let left: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut redis)
            .await
            .unwrap();
        if !left.is_empty() {
            let () = redis::cmd("DEL")
                .arg(&left)
                .query_async(&mut redis)
                .await
                .unwrap();
        }
    }
}

fn keys(n: u8) -> Vec<SampleKey> {
    (0..n).map(|i| SampleKey([i; 16])).collect()
}

async fn the_done_set_grows_and_is_reseeded(url: &str) {
    let case = StateCase::new(url).await;
    let state = &case.state;
    let job = unique("j");
    let all = keys(4);
    assert_eq!(state.done(&job, &all).await.unwrap(), [false; 4]);
    state.mark_done(&job, &all[..2]).await.unwrap();
    state.mark_done(&job, &all[1..3]).await.unwrap();
    assert_eq!(
        state.done(&job, &all).await.unwrap(),
        [true, true, true, false]
    );
    assert_eq!(state.done_count(&job).await.unwrap(), 3);
    state.reset_done(&job, &all[3..]).await.unwrap();
    assert_eq!(
        state.done(&job, &all).await.unwrap(),
        [false, false, false, true]
    );
    state.clear_job(&job).await.unwrap();
    assert_eq!(state.done_count(&job).await.unwrap(), 0);
    case.finish().await;
}

async fn steps_are_cached_until_forgotten(url: &str) {
    let case = StateCase::new(url).await;
    let state = &case.state;
    let job = unique("j");
    let [a, b] = [SampleKey([1; 16]), SampleKey([2; 16])];
    assert_eq!(state.step_get(&job, &a, "initial").await.unwrap(), None);
    state
        .step_put(&job, &a, "initial", b"answer".to_vec())
        .await
        .unwrap();
    state
        .step_put(&job, &b, "initial", b"other".to_vec())
        .await
        .unwrap();
    assert_eq!(
        state
            .step_get(&job, &a, "initial")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"answer"[..])
    );
    assert_eq!(state.step_get(&job, &a, "critique-1").await.unwrap(), None);
    state.step_forget(&job, &[a]).await.unwrap();
    assert_eq!(state.step_get(&job, &a, "initial").await.unwrap(), None);
    assert!(state.step_get(&job, &b, "initial").await.unwrap().is_some());
    state.clear_job(&job).await.unwrap();
    assert_eq!(state.step_get(&job, &b, "initial").await.unwrap(), None);
    case.finish().await;
}

async fn batch_records_are_kept_until_removed(url: &str) {
    let case = StateCase::new(url).await;
    let state = &case.state;
    let (job, other) = (unique("j"), unique("j"));
    assert!(state.batch_records(&job).await.unwrap().is_empty());
    state
        .batch_put(&job, "file-1", b"one".to_vec())
        .await
        .unwrap();
    state
        .batch_put(&job, "file-2", b"two".to_vec())
        .await
        .unwrap();
    state
        .batch_put(&job, "file-1", b"three".to_vec())
        .await
        .unwrap();
    state
        .batch_put(&other, "file-9", b"x".to_vec())
        .await
        .unwrap();
    let mut records = state.batch_records(&job).await.unwrap();
    records.sort();
    assert_eq!(
        records,
        [
            ("file-1".to_owned(), b"three".to_vec()),
            ("file-2".to_owned(), b"two".to_vec())
        ]
    );
    state.batch_remove(&job, "file-2").await.unwrap();
    state.batch_remove(&job, "file-7").await.unwrap();
    assert_eq!(state.batch_records(&job).await.unwrap().len(), 1);
    state.clear_job(&job).await.unwrap();
    assert!(state.batch_records(&job).await.unwrap().is_empty());
    assert_eq!(state.batch_records(&other).await.unwrap().len(), 1);
    state.clear_job(&other).await.unwrap();
    case.finish().await;
}

async fn a_lease_has_one_holder_until_released_or_expired(url: &str) {
    let case = StateCase::new(url).await;
    let state = &case.state;
    let job = unique("j");
    let key = SampleKey([7; 16]);
    let long = Duration::from_secs(30);
    assert!(state.lease(&job, &key, "a", long).await.unwrap());
    assert!(!state.lease(&job, &key, "b", long).await.unwrap());
    assert!(state.lease(&job, &key, "a", long).await.unwrap(), "renewed");
    state.release(&job, &key, "b").await.unwrap();
    assert!(
        !state.lease(&job, &key, "b", long).await.unwrap(),
        "only the holder releases"
    );
    state.release(&job, &key, "a").await.unwrap();
    assert!(
        state
            .lease(&job, &key, "b", Duration::from_millis(200))
            .await
            .unwrap()
    );
    eventually(Duration::from_secs(10), "the lease expires", || async {
        state
            .lease(&job, &key, "c", long)
            .await
            .unwrap()
            .then_some(())
    })
    .await;
    state.clear_job(&job).await.unwrap();
    case.finish().await;
}

async fn the_registry_counters_and_fatal_error_are_kept(url: &str) {
    let case = StateCase::new(url).await;
    let state = &case.state;
    let job = unique("j");
    assert_eq!(state.get_job(&job).await.unwrap(), None);
    state.put_job(&job, "{\"spec\":1}", "fp1").await.unwrap();
    state.put_job(&job, "{\"spec\":2}", "fp2").await.unwrap();
    assert_eq!(
        state.get_job(&job).await.unwrap(),
        Some(("{\"spec\":2}".into(), "fp2".into()))
    );
    state.set_active(&job, true).await.unwrap();
    assert!(state.active_jobs().await.unwrap().contains(&job));
    state.set_active(&job, false).await.unwrap();
    assert!(!state.active_jobs().await.unwrap().contains(&job));
    state
        .add_counters(&job, &[("done", 2), ("failed", 1)])
        .await
        .unwrap();
    state.add_counters(&job, &[("done", 3)]).await.unwrap();
    let counters = state.counters(&job).await.unwrap();
    assert_eq!((counters["done"], counters["failed"]), (5, 1));
    assert_eq!(state.fatal(&job).await.unwrap(), None);
    state.set_fatal(&job, "first").await.unwrap();
    state.set_fatal(&job, "second").await.unwrap();
    assert_eq!(state.fatal(&job).await.unwrap().as_deref(), Some("first"));
    state.clear_fatal(&job).await.unwrap();
    assert_eq!(state.fatal(&job).await.unwrap(), None);
    state.set_fatal(&job, "again").await.unwrap();
    state.clear_job(&job).await.unwrap();
    assert_eq!(state.get_job(&job).await.unwrap(), None);
    assert!(state.counters(&job).await.unwrap().is_empty());
    assert_eq!(state.fatal(&job).await.unwrap(), None);
    assert!(state.ready().await);
    case.finish().await;
}

async fn heartbeats_expire(url: &str) {
    let case = StateCase::new(url).await;
    let state = &case.state;
    state
        .heartbeat("w-short", "{}", Duration::from_millis(300))
        .await
        .unwrap();
    state
        .heartbeat("w-long", "{\"jobs\":[]}", Duration::from_secs(30))
        .await
        .unwrap();
    let ids = |workers: Vec<(String, String)>| -> Vec<String> {
        workers.into_iter().map(|(id, _)| id).collect()
    };
    assert_eq!(ids(state.workers().await.unwrap()), ["w-long", "w-short"]);
    eventually(
        Duration::from_secs(10),
        "the short heartbeat expires",
        || async { (ids(state.workers().await.unwrap()) == ["w-long"]).then_some(()) },
    )
    .await;
    case.finish().await;
}

/// One `#[tokio::test]` per contract and implementation.
macro_rules! state_contract {
    ($($contract:ident),* $(,)?) => {
        mod state_embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $contract() {
                    super::$contract("memory:").await;
                }
            )*
        }
        mod state_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $contract() {
                    super::$contract("redis://127.0.0.1:6379/0").await;
                }
            )*
        }
    };
}

state_contract!(
    the_done_set_grows_and_is_reseeded,
    steps_are_cached_until_forgotten,
    batch_records_are_kept_until_removed,
    a_lease_has_one_holder_until_released_or_expired,
    the_registry_counters_and_fatal_error_are_kept,
    heartbeats_expire,
);

#[tokio::test]
async fn an_unknown_scheme_is_refused_by_name() {
    for url in ["kafka://broker:9092", "nats://127.0.0.1:4222"] {
        let error = broker::connect(url).await.err().expect("refused");
        assert!(error.to_string().contains("not a broker URL"), "{error}");
        let error = state::connect(url).await.err().expect("refused");
        assert!(
            error.to_string().contains("not a state store URL"),
            "{error}"
        );
    }
    assert!(broker::connect(BROKER_URL).await.is_ok());
}
