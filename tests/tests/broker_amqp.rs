//! The RabbitMQ broker against the real RabbitMQ on this machine (`CAI_BROKER`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`): confirms, prefetch, requeue, dead-lettering, the
//! delivery limit, queue depth, and a broker restart under a live consumer and publisher.
//!
//! Each test uses its own job name and deletes its queues, even when it fails. The restart
//! test takes [`RESTART`] for writing, the others for reading, so it never runs beside them.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cai_common::broker::amqp::{AmqpBroker, DELIVERY_LIMIT};
use cai_common::broker::{Broker, Delivery, Queue};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::RwLock;
use tokio::time::timeout;

/// Longest wait for a message that should come.
const WAIT: Duration = Duration::from_secs(10);
/// How long a message that must not come is waited for.
const QUIET: Duration = Duration::from_millis(500);
/// Held for writing by the restart test, for reading by every other test.
static RESTART: RwLock<()> = RwLock::const_new(());

fn url() -> String {
    std::env::var("CAI_BROKER").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn unique_job() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("t-{}-{nanos}-{n}", std::process::id())
}

/// Runs `body` on a fresh job, then deletes the job's queues whether or not it panicked.
async fn with_job<F, Fut>(body: F)
where
    F: FnOnce(AmqpBroker, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let broker = AmqpBroker::connect(&url())
        .await
        .expect("RabbitMQ is not answering");
    let job = unique_job();
    let outcome = AssertUnwindSafe(body(broker.clone(), job.clone()))
        .catch_unwind()
        .await;
    broker
        .delete_job(&job)
        .await
        .expect("deleting the test queues");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
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

#[tokio::test]
async fn publish_confirm_consume_ack_round_trip() {
    let _shared = RESTART.read().await;
    with_job(|broker, job| async move {
        for n in 0..3 {
            broker.publish(&job, Queue::Tasks, vec![n]).await.unwrap();
        }
        // Confirmed means stored: the depth counts every message at once.
        assert_eq!(broker.depth(&job, Queue::Tasks).await.unwrap(), 3);
        let mut tasks = broker.consume(&job, Queue::Tasks, 10).await.unwrap();
        for n in 0..3 {
            let delivery = next(&mut tasks).await;
            assert_eq!(delivery.payload, [n]);
            delivery.acker.ack().await.unwrap();
        }
        drop(tasks);

        broker
            .publish(&job, Queue::Tasks, b"marker".to_vec())
            .await
            .unwrap();
        let mut again = broker.consume(&job, Queue::Tasks, 10).await.unwrap();
        let delivery = next(&mut again).await;
        assert_eq!(delivery.payload, b"marker", "an acked message came back");
        delivery.acker.ack().await.unwrap();
        assert_quiet(&mut again).await;
        assert_eq!(broker.depth(&job, Queue::Tasks).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn prefetch_bounds_unsettled_deliveries() {
    let _shared = RESTART.read().await;
    with_job(|broker, job| async move {
        for n in 0..5 {
            broker.publish(&job, Queue::Tasks, vec![n]).await.unwrap();
        }
        let mut tasks = broker.consume(&job, Queue::Tasks, 2).await.unwrap();
        let first = next(&mut tasks).await;
        let second = next(&mut tasks).await;
        assert_quiet(&mut tasks).await;
        first.acker.ack().await.unwrap();
        let third = next(&mut tasks).await;
        assert_eq!(third.payload, [2]);
        assert_quiet(&mut tasks).await;
        for delivery in [second, third] {
            delivery.acker.ack().await.unwrap();
        }
        for _ in 0..2 {
            next(&mut tasks).await.acker.ack().await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn requeue_redelivers_and_dead_letter_lands_in_dead_queue() {
    let _shared = RESTART.read().await;
    with_job(|broker, job| async move {
        broker
            .publish(&job, Queue::Tasks, b"again".to_vec())
            .await
            .unwrap();
        let mut tasks = broker.consume(&job, Queue::Tasks, 1).await.unwrap();
        next(&mut tasks).await.acker.requeue().await.unwrap();
        let redelivered = next(&mut tasks).await;
        assert_eq!(redelivered.payload, b"again");
        redelivered.acker.dead_letter("undecodable").await.unwrap();

        let mut dead = broker.consume(&job, Queue::Dead, 1).await.unwrap();
        let dead_letter = next(&mut dead).await;
        assert_eq!(dead_letter.payload, b"again");
        dead_letter.acker.ack().await.unwrap();
        assert_quiet(&mut tasks).await;
        assert_eq!(broker.depth(&job, Queue::Tasks).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_message_requeued_past_the_delivery_limit_is_dead_lettered() {
    let _shared = RESTART.read().await;
    with_job(|broker, job| async move {
        broker
            .publish(&job, Queue::Tasks, b"poison".to_vec())
            .await
            .unwrap();
        let mut tasks = broker.consume(&job, Queue::Tasks, 1).await.unwrap();
        let mut dead = broker.consume(&job, Queue::Dead, 1).await.unwrap();
        let mut deliveries = 0;
        let dead_letter = timeout(Duration::from_secs(60), async {
            loop {
                tokio::select! {
                    Some(delivery) = tasks.next() => {
                        deliveries += 1;
                        delivery.acker.requeue().await.unwrap();
                    }
                    Some(delivery) = dead.next() => return delivery,
                }
            }
        })
        .await
        .expect("the poison message never reached the dead-letter queue");
        assert_eq!(dead_letter.payload, b"poison");
        dead_letter.acker.ack().await.unwrap();
        let limit = DELIVERY_LIMIT as usize;
        println!("dead-lettered after {deliveries} deliveries (limit {limit})");
        assert!(
            (limit..=limit + 1).contains(&deliveries),
            "delivered {deliveries} times with a limit of {limit}"
        );
    })
    .await;
}

#[tokio::test]
async fn queue_depth_counts_ready_messages_and_purge_empties() {
    let _shared = RESTART.read().await;
    with_job(|broker, job| async move {
        assert_eq!(
            broker.depth(&job, Queue::Results).await.unwrap(),
            0,
            "missing queue"
        );
        for n in 0..4 {
            broker.publish(&job, Queue::Results, vec![n]).await.unwrap();
        }
        assert_eq!(broker.depth(&job, Queue::Results).await.unwrap(), 4);
        assert_eq!(broker.depth(&job, Queue::Tasks).await.unwrap(), 0);
        assert_eq!(broker.depth(&job, Queue::Dead).await.unwrap(), 0);
        let mut results = broker.consume(&job, Queue::Results, 1).await.unwrap();
        let in_flight = next(&mut results).await;
        assert_eq!(
            broker.depth(&job, Queue::Results).await.unwrap(),
            3,
            "in flight is not ready"
        );
        assert_eq!(broker.purge(&job, Queue::Results).await.unwrap(), 3);
        assert_eq!(broker.depth(&job, Queue::Results).await.unwrap(), 0);
        in_flight.acker.ack().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn deleting_the_queues_ends_their_consume_streams() {
    let _shared = RESTART.read().await;
    with_job(|broker, job| async move {
        let mut tasks = broker.consume(&job, Queue::Tasks, 1).await.unwrap();
        broker.delete_job(&job).await.unwrap();
        let end = timeout(WAIT, tasks.next())
            .await
            .expect("the stream did not end");
        assert!(end.is_none(), "a delivery from a deleted queue");
        assert_eq!(broker.depth(&job, Queue::Tasks).await.unwrap(), 0);
        broker
            .publish(&job, Queue::Tasks, b"new".to_vec())
            .await
            .unwrap();
        assert_eq!(
            broker.depth(&job, Queue::Tasks).await.unwrap(),
            1,
            "queues declared again"
        );
    })
    .await;
}

#[tokio::test]
async fn a_wrong_password_fails_without_showing_it() {
    let error = match AmqpBroker::connect("amqp://guest:s3cret-pw@127.0.0.1:5672/%2f").await {
        Ok(_) => panic!("connected with a wrong password"),
        Err(error) => error.to_string(),
    };
    assert!(!error.contains("s3cret-pw"), "{error}");
    assert!(error.contains("guest:***@127.0.0.1"), "{error}");
    let error = match AmqpBroker::connect("amqp://guest:s3cret-pw@127.0.0.1:notaport/%2f").await {
        Ok(_) => panic!("a bad URL was accepted"),
        Err(error) => error.to_string(),
    };
    assert!(!error.contains("s3cret-pw"), "{error}");
}

/// Runs `rabbitmqctl start_app` when dropped, so a failing restart test leaves RabbitMQ up.
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let status = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("rabbitmqctl start_app failed: RabbitMQ may be left stopped");
        }
    }
}

async fn rabbitmqctl(command: &str) {
    let status = tokio::process::Command::new("rabbitmqctl")
        .arg(command)
        .status()
        .await
        .expect("running rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {command}: {status}");
}

async fn port_open() -> bool {
    tokio::net::TcpStream::connect("127.0.0.1:5672")
        .await
        .is_ok()
}

/// Polls `condition` every 100 ms until it holds; panics past `deadline`.
async fn wait_until<Fut: Future<Output = bool>>(
    what: &str,
    deadline: Duration,
    condition: impl Fn() -> Fut,
) {
    let start = Instant::now();
    while !condition().await {
        assert!(
            start.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn publisher_and_consumer_survive_a_rabbitmq_restart() {
    let _exclusive = RESTART.write().await;
    with_job(|broker, job| async move {
        broker
            .publish(&job, Queue::Tasks, b"before".to_vec())
            .await
            .unwrap();
        let mut tasks = broker.consume(&job, Queue::Tasks, 2).await.unwrap();
        let before = next(&mut tasks).await;
        assert_eq!(before.payload, b"before");

        {
            let _restart = StartAppOnDrop;
            rabbitmqctl("stop_app").await;
            wait_until(
                "RabbitMQ stops listening",
                Duration::from_secs(30),
                || async { !port_open().await },
            )
            .await;
            let refused = broker.publish(&job, Queue::Tasks, b"lost".to_vec()).await;
            assert!(
                refused.is_err(),
                "a publish succeeded while RabbitMQ was down"
            );
            rabbitmqctl("start_app").await;
        }
        wait_until("RabbitMQ listens again", Duration::from_secs(60), port_open).await;

        // Settling a delivery of the old connection is a no-op: RabbitMQ redelivers it.
        before.acker.ack().await.unwrap();

        let start = Instant::now();
        while let Err(error) = broker.publish(&job, Queue::Tasks, b"after".to_vec()).await {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "no publish after the restart: {error}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let mut payloads = Vec::new();
        for _ in 0..2 {
            let delivery = timeout(Duration::from_secs(60), tasks.next())
                .await
                .expect("the consumer did not resume")
                .expect("the stream ended");
            payloads.push(delivery.payload.clone());
            delivery.acker.ack().await.unwrap();
        }
        payloads.sort();
        assert_eq!(payloads, [b"after".to_vec(), b"before".to_vec()]);
        assert_quiet(&mut tasks).await;
    })
    .await;
}
