//! The queue seam between the coordinator and the workers: bytes in, bytes out, with an
//! explicit acknowledgement. RabbitMQ and the in-process queue implement it; the envelope
//! codec and the pipelines never see which one is underneath.

pub mod amqp;
pub mod memory;
pub(crate) mod secret_url;

use async_trait::async_trait;
use futures::stream::BoxStream;

/// A broker failure; callers retry or stop, they never drop a message because of it.
#[derive(Debug, thiserror::Error)]
#[error("broker: {0}")]
pub struct BrokerError(pub String);

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

/// A queue system.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Publishes a message and returns once the broker has confirmed it.
    async fn publish(&self, job: &str, queue: Queue, payload: Vec<u8>) -> Result<(), BrokerError>;
    /// Starts consuming a queue with at most `prefetch` unsettled deliveries.
    async fn consume(
        &self,
        job: &str,
        queue: Queue,
        prefetch: u16,
    ) -> Result<BoxStream<'static, Delivery>, BrokerError>;
}
