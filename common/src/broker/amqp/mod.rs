//! The RabbitMQ [`Broker`] (lapin): durable quorum queues per job, publisher confirms, manual
//! acks, bounded prefetch, and recovery from a broker restart without the caller noticing more
//! than a failed publish.
//!
//! # Topology
//! Per job, declared idempotently before the first use of the job on a connection:
//! `cai.<job>.tasks` and `cai.<job>.results`, durable quorum queues that dead-letter (default
//! exchange, routing key `cai.<job>.dead`) what is rejected without requeue or returned more
//! than [`DELIVERY_LIMIT`] times, and `cai.<job>.dead`, a durable quorum queue keeping those.
//!
//! # Recovery
//! A supervisor owns two connections, one for publishing and one for consuming (RabbitMQ's
//! advice: flow control on a publisher must not stall the acks of consumers). Each use takes
//! the current connection and opens a new one when it is closed, so after a broker restart the
//! first publish reconnects; while the broker is down a publish fails at once with a
//! [`BrokerError`] and the caller retries. A publish whose confirm does not come within
//! [`CONFIRM_TIMEOUT`] also drops its connection (the watchdog for a connection that looks
//! open but is stuck), and heartbeats ([`HEARTBEAT_SECS`]) end a silent one. A consume stream
//! outlives its channel: when the channel or the connection fails it subscribes again with
//! backoff, and only ends when the broker cancels the consumer (its queue was deleted).
//!
//! # Invariants
//! - `publish` returns `Ok` only once RabbitMQ confirmed the message as routed and stored; an
//!   unroutable, refused or unconfirmed message is an error, never a silent drop.
//! - A delivery is settled at most once, on the channel it came from. Settling a delivery whose
//!   channel is gone is a logged no-op: RabbitMQ redelivers the message (at-least-once).
//! - No log line or error carries the password of the URL.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use lapin::options::{
    BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Confirmation};
use tokio::time::timeout;
use tracing::warn;

mod consume;
mod supervisor;
mod tls_probe;

use super::secret_url::SecretUrl;
use super::{Broker, BrokerError, Delivery, Queue};
use crate::service_error::{Failure, Service};
use crate::tls::TlsFiles;
use consume::Subscription;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use supervisor::{Slot, Supervisor, is_not_found};

/// Deliveries of one message before RabbitMQ dead-letters it instead of delivering it again.
pub const DELIVERY_LIMIT: i32 = 20;
/// Longest wait for a publisher confirm; past it the publish fails and its connection is rebuilt.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for opening a connection and its control channel.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a declare, purge, delete, qos or consume.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for an ack, nack or reject to be handed to the connection.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Heartbeat proposed to the broker when the URL does not set one: a dead peer is noticed
/// within two of them.
pub const HEARTBEAT_SECS: u16 = 15;
/// Longest pause between two attempts of a consume stream to subscribe again.
const RESUBSCRIBE_MAX_DELAY: Duration = Duration::from_secs(5);

/// The name of a job's queue: `cai.<job>.tasks`, `cai.<job>.results` or `cai.<job>.dead`.
pub fn queue_name(job: &str, queue: Queue) -> String {
    let suffix = match queue {
        Queue::Tasks => "tasks",
        Queue::Results => "results",
        Queue::Dead => "dead",
    };
    format!("cai.{job}.{suffix}")
}

/// A RabbitMQ broker; clones share the same connections.
#[derive(Clone)]
pub struct AmqpBroker {
    supervisor: Arc<Supervisor>,
}

impl AmqpBroker {
    /// Connects to `url` (`amqp://user:password@host:port/vhost`), opening the publishing and
    /// the consuming connections so a wrong URL or credentials fail here.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::connect_with_tls(url, &TlsFiles::default()).await
    }

    /// Connects as [`Self::connect`] does, with `tls` for an `amqps://` URL: a private CA and a
    /// client certificate (see [`crate::tls`]).
    pub async fn connect_with_tls(url: &str, tls: &TlsFiles) -> Result<Self, BrokerError> {
        let url = SecretUrl::new(url);
        let pem = tls
            .read()
            .map_err(|message| Service::Broker.failed(Failure::TlsFile, message))?;
        let tls = OwnedTLSConfig {
            cert_chain: pem
                .ca
                .map(|ca| String::from_utf8_lossy(ca.as_slice()).into_owned()),
            identity: pem
                .client
                .map(|(pem, key)| OwnedIdentity::PKCS8 { pem, key }),
        };
        let mut uri: AMQPUri = url.raw().parse().map_err(|error: String| {
            let message = format!("invalid broker URL {url}: {}", url.scrub(error));
            Service::Broker.failed(Failure::BadUrl, message)
        })?;
        uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
        uri.query
            .connection_timeout
            .get_or_insert(CONNECT_TIMEOUT.as_millis() as u64);
        let supervisor = Arc::new(Supervisor {
            uri,
            tls,
            url,
            next_id: AtomicU64::new(0),
            publishing: Slot::new("publishing"),
            consuming: Slot::new("consuming"),
        });
        supervisor.link(&supervisor.publishing).await?;
        supervisor.link(&supervisor.consuming).await?;
        Ok(Self { supervisor })
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn publish(&self, job: &str, queue: Queue, payload: Vec<u8>) -> Result<(), BrokerError> {
        let name = queue_name(job, queue);
        let link = self.supervisor.link(&self.supervisor.publishing).await?;
        let confirmed = timeout(CONFIRM_TIMEOUT, async {
            link.declare(job).await?;
            link.channel
                .basic_publish(
                    "".into(),
                    name.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &payload,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?
                .await
        })
        .await;
        match confirmed {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                // Declared again at the next attempt.
                link.declared.lock().expect("declared lock").remove(job);
                Err(Service::Broker
                    .unavailable(format!("{name} does not exist: message not stored")))
            }
            // A quorum queue without a leader (a node restarting) nacks: waiting helps.
            Ok(Ok(Confirmation::Nack(_))) => {
                Err(Service::Broker.unavailable(format!("RabbitMQ refused a message to {name}")))
            }
            Ok(Ok(Confirmation::NotRequested)) => Err(Service::Broker.fatal(format!(
                "publish to {name} was not confirmed: confirms are off on the channel"
            ))),
            Ok(Err(error)) => Err(self.supervisor.error(&format!("publish to {name}"), &error)),
            Err(_) => {
                self.supervisor
                    .discard(
                        &self.supervisor.publishing,
                        &link,
                        "a publisher confirm timed out",
                    )
                    .await;
                Err(self
                    .supervisor
                    .timed_out(&format!("publish to {name}"), CONFIRM_TIMEOUT))
            }
        }
    }

    /// Consumes with manual acks and `prefetch` unsettled deliveries at most (0 counts as 1:
    /// AMQP would read it as unlimited). The stream survives broker restarts and ends only
    /// when the broker cancels the consumer, e.g. because the queue was deleted.
    async fn consume(
        &self,
        job: &str,
        queue: Queue,
        prefetch: u16,
    ) -> Result<BoxStream<'static, Delivery>, BrokerError> {
        let mut subscription = Subscription {
            supervisor: self.supervisor.clone(),
            job: job.to_owned(),
            queue: queue_name(job, queue),
            prefetch: prefetch.max(1),
            current: None,
        };
        subscription.current = match subscription.subscribe().await {
            Ok(consuming) => Some(consuming),
            // The stream subscribes once the broker answers, as after a restart.
            Err(error) if error.is_unavailable() => {
                warn!(queue = %subscription.queue, %error, "cannot consume yet; retrying");
                None
            }
            Err(error) => return Err(error),
        };
        Ok(stream::unfold(subscription, |mut subscription| async move {
            let delivery = subscription.next().await?;
            Some((delivery, subscription))
        })
        .boxed())
    }

    /// Whether both connections are open, reopening a closed one, within two seconds: for a
    /// readiness probe, which thereby also brings an idle process back after a broker outage.
    async fn ready(&self) -> bool {
        for slot in [&self.supervisor.publishing, &self.supervisor.consuming] {
            let linked = timeout(Duration::from_secs(2), self.supervisor.link(slot)).await;
            if !matches!(linked, Ok(Ok(link)) if link.is_open()) {
                return false;
            }
        }
        true
    }

    /// Messages ready for delivery in a job's queue (deliveries in flight are not counted);
    /// 0 when the queue does not exist.
    async fn depth(&self, job: &str, queue: Queue) -> Result<u32, BrokerError> {
        let name = queue_name(job, queue);
        let link = self.supervisor.link(&self.supervisor.publishing).await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        self.supervisor
            .bounded("queue depth", async {
                let channel = link.connection.create_channel().await?;
                let declared = channel
                    .queue_declare(name.as_str().into(), passive, FieldTable::default())
                    .await;
                match declared {
                    Ok(queue) => Ok(queue.message_count()),
                    Err(error) if is_not_found(&error) => Ok(0),
                    Err(error) => Err(error),
                }
            })
            .await
    }

    /// Removes every ready message of a job's queue (declaring the job's queues first) and
    /// returns how many there were.
    async fn purge(&self, job: &str, queue: Queue) -> Result<u32, BrokerError> {
        let name = queue_name(job, queue);
        let link = self.supervisor.link(&self.supervisor.publishing).await?;
        self.supervisor
            .bounded("purge", async {
                link.declare(job).await?;
                link.channel
                    .queue_purge(name.as_str().into(), QueuePurgeOptions::default())
                    .await
            })
            .await
    }

    /// Deletes the job's three queues and their messages (a missing queue is not an error).
    /// Consumers of them see their stream end.
    async fn delete_job(&self, job: &str) -> Result<(), BrokerError> {
        let link = self.supervisor.link(&self.supervisor.publishing).await?;
        for queue in [Queue::Tasks, Queue::Results, Queue::Dead] {
            let name = queue_name(job, queue);
            self.supervisor
                .bounded("delete queue", async {
                    let channel = link.connection.create_channel().await?;
                    let deleted = channel
                        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                        .await;
                    match deleted {
                        Err(error) if !is_not_found(&error) => Err(error),
                        _ => Ok(()),
                    }
                })
                .await?;
        }
        for slot in [&self.supervisor.publishing, &self.supervisor.consuming] {
            if let Some(link) = slot.current.lock().await.as_ref() {
                link.declared.lock().expect("declared lock").remove(job);
            }
        }
        Ok(())
    }
}
