//! The queue seam between the coordinator and the workers: bytes in, bytes out, with an
//! explicit acknowledgement. RabbitMQ and the in-process queue implement it; the envelope
//! codec and the pipelines never see which one is underneath.

pub mod amqp;
pub mod memory;
pub(crate) mod secret_url;

use async_trait::async_trait;
use futures::stream::BoxStream;

/// A broker failure, typed by what to do next ([`crate::service_error::FailureKind`]);
/// callers wait, retry or stop, they never drop a message because of it.
pub type BrokerError = crate::service_error::ServiceError;

/// The queues of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Queue {
    /// Coordinator → workers.
    Tasks,
    /// Workers → coordinator.
    Results,
    /// Messages that can never be handled: dead-lettered, or past the delivery limit.
    Dead,
}

/// Settles one delivery. Exactly one of the methods is called per delivery.
#[async_trait]
pub trait Acker: Send + Sync {
    /// The message is handled; remove it.
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    /// Put the message back for another consumer (shutdown, transient failure).
    async fn requeue(self: Box<Self>) -> Result<(), BrokerError>;
    /// The message can never be handled (undecodable): dead-letter it.
    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), BrokerError>;
}

/// One received message.
pub struct Delivery {
    /// The message body.
    pub payload: Vec<u8>,
    /// How to settle it.
    pub acker: Box<dyn Acker>,
}

/// A queue system: the messages, and the operations the coordinator, `cai status` and the
/// readiness probe need, so none of them knows which broker is underneath.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Publishes a message and returns once the broker has confirmed it.
    async fn publish(&self, job: &str, queue: Queue, payload: Vec<u8>) -> Result<(), BrokerError>;
    /// Starts consuming a queue with at most `prefetch` unsettled deliveries (0 counts as 1). A
    /// delivery dropped without being settled goes back to the queue, as when a consumer dies.
    async fn consume(
        &self,
        job: &str,
        queue: Queue,
        prefetch: u16,
    ) -> Result<BoxStream<'static, Delivery>, BrokerError>;
    /// Messages ready for delivery in a job's queue (deliveries in flight are not counted); 0
    /// when the queue does not exist.
    async fn depth(&self, job: &str, queue: Queue) -> Result<u32, BrokerError>;
    /// Removes every ready message of a job's queue and returns how many there were.
    async fn purge(&self, job: &str, queue: Queue) -> Result<u32, BrokerError>;
    /// Deletes the job's queues and their messages; consumers of them see their stream end.
    async fn delete_job(&self, job: &str) -> Result<(), BrokerError>;
    /// Whether the broker answers now, reconnecting if it must (for a readiness probe).
    async fn ready(&self) -> bool;
}

/// Connects to the broker `url` names, choosing the implementation by its scheme:
/// `amqp://` or `amqps://` (RabbitMQ), `memory:` (a fresh in-process broker, for one process).
pub async fn connect(url: &str) -> Result<std::sync::Arc<dyn Broker>, BrokerError> {
    connect_with_tls(url, &crate::tls::TlsFiles::default()).await
}

/// Connects as [`connect`] does, with `tls` for an `amqps://` URL.
pub async fn connect_with_tls(
    url: &str,
    tls: &crate::tls::TlsFiles,
) -> Result<std::sync::Arc<dyn Broker>, BrokerError> {
    match url.split_once(':').map(|(scheme, _)| scheme) {
        Some("amqp" | "amqps") => Ok(std::sync::Arc::new(
            amqp::AmqpBroker::connect_with_tls(url, tls).await?,
        )),
        Some("memory") => Ok(std::sync::Arc::new(memory::MemoryBroker::default())),
        _ => Err(crate::service_error::Service::Broker.failed(
            crate::service_error::Failure::BadUrl,
            format!(
                "{}: not a broker URL: amqp://, amqps:// (RabbitMQ) or memory: (in-process)",
                secret_url::SecretUrl::new(url)
            ),
        )),
    }
}
