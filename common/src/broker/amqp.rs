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

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer, ErrorKind,
};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::secret_url::SecretUrl;
use super::{Acker, Broker, BrokerError, Delivery, Queue};
use crate::service_error::Service;

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
        let url = SecretUrl::new(url);
        let mut uri: AMQPUri = url.raw().parse().map_err(|error: String| {
            Service::Broker.fatal(format!("invalid broker URL {url}: {}", url.scrub(error)))
        })?;
        uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
        uri.query
            .connection_timeout
            .get_or_insert(CONNECT_TIMEOUT.as_millis() as u64);
        let supervisor = Arc::new(Supervisor {
            uri,
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

/// Owns the connections and replaces a connection that closed or got stuck.
struct Supervisor {
    /// Parsed URL with heartbeat and connect timeout filled in; holds the password, so this
    /// struct has no `Debug`.
    uri: AMQPUri,
    url: SecretUrl,
    next_id: AtomicU64,
    publishing: Slot,
    consuming: Slot,
}

/// One connection role, holding the current connection if there is one.
struct Slot {
    role: &'static str,
    current: tokio::sync::Mutex<Option<Arc<Link>>>,
}

impl Slot {
    fn new(role: &'static str) -> Self {
        Self {
            role,
            current: tokio::sync::Mutex::new(None),
        }
    }
}

/// A connection with its control channel (confirms on), used to publish and to declare.
struct Link {
    id: u64,
    connection: Connection,
    channel: Channel,
    /// Jobs whose queues were declared on this connection.
    declared: Mutex<HashSet<String>>,
}

impl Link {
    fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Declares the job's queues unless this connection already did.
    async fn declare(&self, job: &str) -> lapin::Result<()> {
        if self.declared.lock().expect("declared lock").contains(job) {
            return Ok(());
        }
        let dead = queue_name(job, Queue::Dead);
        let mut dead_arguments = FieldTable::default();
        dead_arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        let mut arguments = dead_arguments.clone();
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(dead.as_str().into()),
        );
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(DELIVERY_LIMIT),
        );
        for (name, arguments) in [
            (dead, &dead_arguments),
            (queue_name(job, Queue::Tasks), &arguments),
            (queue_name(job, Queue::Results), &arguments),
        ] {
            self.channel
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions::durable(),
                    arguments.clone(),
                )
                .await?;
        }
        self.declared
            .lock()
            .expect("declared lock")
            .insert(job.to_owned());
        Ok(())
    }
}

impl Supervisor {
    /// The slot's open connection, opening one if there is none or it closed.
    async fn link(&self, slot: &Slot) -> Result<Arc<Link>, BrokerError> {
        let mut current = slot.current.lock().await;
        if let Some(link) = current.as_ref() {
            if link.is_open() {
                return Ok(link.clone());
            }
            info!(role = slot.role, url = %self.url, "RabbitMQ connection closed; reconnecting");
        }
        *current = None;
        let link = Arc::new(self.open(slot.role).await?);
        *current = Some(link.clone());
        Ok(link)
    }

    async fn open(&self, role: &'static str) -> Result<Link, BrokerError> {
        let properties =
            ConnectionProperties::default().with_connection_name(format!("cai {role}").into());
        let opened = timeout(CONNECT_TIMEOUT, async {
            let connection = Connection::connect_uri(self.uri.clone(), properties).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>((connection, channel))
        })
        .await;
        let context = format!("connecting to RabbitMQ ({role})");
        let (connection, channel) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(error)) => return Err(self.error(&context, &error)),
            Err(_) => return Err(self.timed_out(&context, CONNECT_TIMEOUT)),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        info!(role, url = %self.url, id, "connected to RabbitMQ");
        Ok(Link {
            id,
            connection,
            channel,
            declared: Mutex::new(HashSet::new()),
        })
    }

    /// Forgets the slot's connection if it is still `link`, and closes it: the next use
    /// opens a new one, and consumers on it subscribe again.
    async fn discard(&self, slot: &Slot, link: &Link, reason: &str) {
        {
            let mut current = slot.current.lock().await;
            if current
                .as_ref()
                .is_some_and(|current| current.id == link.id)
            {
                *current = None;
            }
        }
        warn!(role = slot.role, url = %self.url, reason, "dropping the RabbitMQ connection");
        let closed = timeout(OPERATION_TIMEOUT, link.connection.close(200, reason.into())).await;
        if let Ok(Err(error)) = closed {
            debug!(error = %self.url.scrub(error), "closing a failed RabbitMQ connection");
        }
    }

    /// Runs an operation bounded by [`OPERATION_TIMEOUT`], mapping its failure to a
    /// [`BrokerError`] naming `what`.
    async fn bounded<T>(
        &self,
        what: &str,
        operation: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T, BrokerError> {
        match timeout(OPERATION_TIMEOUT, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.error(what, &error)),
            Err(_) => Err(self.timed_out(what, OPERATION_TIMEOUT)),
        }
    }

    /// A lapin error as a [`BrokerError`] of the right kind: refused credentials, a vhost the
    /// user may not use or a protocol the server does not speak end the job; a queue declared
    /// with other arguments or a frame that cannot be encoded is a rejected request; anything
    /// else (a connection refused, reset or closed, a channel gone, a missed heartbeat) is an
    /// outage to wait out.
    fn error(&self, context: &str, error: &lapin::Error) -> BrokerError {
        let message = format!("{context} at {}: {}", self.url, self.url.scrub(error));
        match error.kind() {
            ErrorKind::ProtocolError(amqp) => match amqp.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => Service::Broker.fatal(message),
                AMQPErrorKind::Soft(
                    AMQPSoftError::PRECONDITIONFAILED | AMQPSoftError::NOTFOUND,
                ) => Service::Broker.rejected(message),
                _ => Service::Broker.unavailable(message),
            },
            ErrorKind::AuthProviderError(_) | ErrorKind::InvalidProtocolVersion(_) => {
                Service::Broker.fatal(message)
            }
            ErrorKind::SerialisationError(_) => Service::Broker.rejected(message),
            _ => Service::Broker.unavailable(message),
        }
    }

    /// An operation that got no answer in time: the broker is unavailable (or the connection
    /// is stuck, and the caller drops it).
    fn timed_out(&self, context: &str, after: Duration) -> BrokerError {
        Service::Broker.unavailable(format!(
            "{context} at {}: no answer within {after:?}",
            self.url
        ))
    }
}

/// Whether the broker closed the channel because a queue does not exist.
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(error) if *error.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}

/// The state behind a consume stream: what to consume, and the current consumer if any.
struct Subscription {
    supervisor: Arc<Supervisor>,
    job: String,
    queue: String,
    prefetch: u16,
    current: Option<Consuming>,
}

/// A consumer and its own channel (which carries the prefetch).
struct Consuming {
    channel: Channel,
    consumer: Consumer,
}

impl Subscription {
    /// Opens a channel on the consuming connection and starts a consumer on it.
    async fn subscribe(&self) -> Result<Consuming, BrokerError> {
        let supervisor = &self.supervisor;
        let link = supervisor.link(&supervisor.consuming).await?;
        let subscribed = timeout(OPERATION_TIMEOUT, async {
            link.declare(&self.job).await?;
            let channel = link.connection.create_channel().await?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    self.queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>(Consuming { channel, consumer })
        })
        .await;
        let context = format!("consuming {}", self.queue);
        match subscribed {
            Ok(Ok(consuming)) => Ok(consuming),
            Ok(Err(error)) => Err(supervisor.error(&context, &error)),
            Err(_) => {
                supervisor
                    .discard(&supervisor.consuming, &link, "subscribing timed out")
                    .await;
                Err(supervisor.timed_out(&context, OPERATION_TIMEOUT))
            }
        }
    }

    /// Subscribes, retrying with exponential backoff until it works.
    async fn resubscribe(&self) -> Consuming {
        let mut delays = ExponentialBuilder::default()
            .with_max_delay(RESUBSCRIBE_MAX_DELAY)
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            match self.subscribe().await {
                Ok(consuming) => {
                    info!(queue = %self.queue, "consuming again");
                    return consuming;
                }
                Err(error) => {
                    let delay = delays.next().unwrap_or(RESUBSCRIBE_MAX_DELAY);
                    warn!(queue = %self.queue, %error, ?delay, "cannot consume yet; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The next delivery; `None` once the broker cancelled the consumer.
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let consuming = match self.current.take() {
                Some(consuming) => consuming,
                None => self.resubscribe().await,
            };
            let consuming = self.current.insert(consuming);
            match consuming.consumer.next().await {
                Some(Ok(delivery)) => {
                    return Some(Delivery {
                        payload: delivery.data,
                        acker: Box::new(AmqpAcker {
                            acker: delivery.acker,
                            _channel: consuming.channel.clone(),
                            queue: self.queue.clone(),
                        }),
                    });
                }
                Some(Err(error)) => {
                    warn!(queue = %self.queue, error = %self.supervisor.url.scrub(error), "consumer channel failed; subscribing again");
                    self.current = None;
                }
                None if consuming.channel.status().connected() => {
                    info!(queue = %self.queue, "RabbitMQ cancelled the consumer; the stream ends");
                    return None;
                }
                None => self.current = None,
            }
        }
    }
}

/// Settles one RabbitMQ delivery on the channel it came from.
struct AmqpAcker {
    acker: lapin::Acker,
    /// Keeps the delivery's channel open until the delivery is settled, even after its
    /// stream was dropped (a draining worker still acks what it finishes).
    _channel: Channel,
    queue: String,
}

impl AmqpAcker {
    /// Logs the outcome of a settlement. Whatever failed, the message is not lost: a
    /// delivery that was not settled returns to the queue when its channel closes.
    fn settled(
        &self,
        what: &str,
        outcome: Result<lapin::Result<bool>, tokio::time::error::Elapsed>,
    ) {
        match outcome {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => debug!(
                queue = %self.queue, what,
                "delivery came from a channel that is gone; RabbitMQ redelivers it"
            ),
            Ok(Err(error)) => debug!(
                queue = %self.queue, what, %error,
                "channel closed while settling; RabbitMQ redelivers the message"
            ),
            Err(_) => warn!(
                queue = %self.queue, what,
                "settling timed out; RabbitMQ redelivers the message when the channel closes"
            ),
        }
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        let outcome = timeout(SETTLE_TIMEOUT, self.acker.ack(BasicAckOptions::default())).await;
        self.settled("ack", outcome);
        Ok(())
    }

    async fn requeue(self: Box<Self>) -> Result<(), BrokerError> {
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        let outcome = timeout(SETTLE_TIMEOUT, self.acker.nack(options)).await;
        self.settled("requeue", outcome);
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), BrokerError> {
        warn!(queue = %self.queue, reason, "dead-lettering a message");
        let outcome = timeout(
            SETTLE_TIMEOUT,
            self.acker.reject(BasicRejectOptions { requeue: false }),
        )
        .await;
        self.settled("dead-letter", outcome);
        Ok(())
    }
}
