//! The consuming side of a RabbitMQ broker: a consume stream that outlives its channel
//! (subscribing again with backoff after a failure), and the acker that settles a delivery on
//! the channel it came from.

use std::sync::Arc;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::super::{Acker, BrokerError, Delivery};
use super::supervisor::Supervisor;
use super::{OPERATION_TIMEOUT, RESUBSCRIBE_MAX_DELAY, SETTLE_TIMEOUT};

/// The state behind a consume stream: what to consume, and the current consumer if any.
pub(super) struct Subscription {
    pub(super) supervisor: Arc<Supervisor>,
    pub(super) job: String,
    pub(super) queue: String,
    pub(super) prefetch: u16,
    pub(super) current: Option<Consuming>,
}

/// A consumer and its own channel (which carries the prefetch).
pub(super) struct Consuming {
    pub(super) channel: Channel,
    pub(super) consumer: Consumer,
}

impl Subscription {
    /// Opens a channel on the consuming connection and starts a consumer on it.
    pub(super) async fn subscribe(&self) -> Result<Consuming, BrokerError> {
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
    pub(super) async fn resubscribe(&self) -> Consuming {
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
    pub(super) async fn next(&mut self) -> Option<Delivery> {
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
pub(super) struct AmqpAcker {
    pub(super) acker: lapin::Acker,
    /// Keeps the delivery's channel open until the delivery is settled, even after its
    /// stream was dropped (a draining worker still acks what it finishes).
    pub(super) _channel: Channel,
    pub(super) queue: String,
}

impl AmqpAcker {
    /// Logs the outcome of a settlement. Whatever failed, the message is not lost: a
    /// delivery that was not settled returns to the queue when its channel closes.
    pub(super) fn settled(
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
