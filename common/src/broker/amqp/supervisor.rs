//! The connections of a RabbitMQ broker: a supervisor owns one for publishing and one for
//! consuming, reopens a closed one on its next use, drops a stuck one, declares a job's queues
//! once per connection, and types every lapin error by what the caller should do.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, DefaultConnectionBuilder, ErrorKind};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::super::secret_url::SecretUrl;
use super::super::{BrokerError, Queue};
use super::{CONNECT_TIMEOUT, DELIVERY_LIMIT, OPERATION_TIMEOUT, queue_name, tls_probe};
use crate::service_error::{Failure, Service};

/// Owns the connections and replaces a connection that closed or got stuck.
pub(super) struct Supervisor {
    /// Parsed URL with heartbeat and connect timeout filled in; holds the password, so this
    /// struct has no `Debug`.
    pub(super) uri: AMQPUri,
    /// The private CA and client certificate of an `amqps://` URL, if any.
    pub(super) tls: OwnedTLSConfig,
    pub(super) url: SecretUrl,
    pub(super) next_id: AtomicU64,
    pub(super) publishing: Slot,
    pub(super) consuming: Slot,
}

/// One connection role, holding the current connection if there is one.
pub(super) struct Slot {
    pub(super) role: &'static str,
    pub(super) current: tokio::sync::Mutex<Option<Arc<Link>>>,
}

impl Slot {
    pub(super) fn new(role: &'static str) -> Self {
        Self {
            role,
            current: tokio::sync::Mutex::new(None),
        }
    }
}

/// A connection with its control channel (confirms on), used to publish and to declare.
pub(super) struct Link {
    pub(super) id: u64,
    pub(super) connection: Connection,
    pub(super) channel: Channel,
    /// Jobs whose queues were declared on this connection.
    pub(super) declared: Mutex<HashSet<String>>,
}

impl Link {
    pub(super) fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Declares the job's queues unless this connection already did.
    pub(super) async fn declare(&self, job: &str) -> lapin::Result<()> {
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
    pub(super) async fn link(&self, slot: &Slot) -> Result<Arc<Link>, BrokerError> {
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

    pub(super) async fn open(&self, role: &'static str) -> Result<Link, BrokerError> {
        let properties =
            ConnectionProperties::default().with_connection_name(format!("cai {role}").into());
        let opened = timeout(CONNECT_TIMEOUT, async {
            let connection = DefaultConnectionBuilder::new()?
                .with_uri(self.uri.clone())
                .with_properties(properties)
                .with_tls_config(self.tls.clone())
                .connect()
                .await?;
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
            Ok(Err(error)) => {
                let failed = self.error(&context, &error);
                if failed.is_unavailable() && tls_probe::worth_probing(&self.uri, &error) {
                    let refusal = tls_probe::handshake_refusal(&self.uri, &self.tls).await;
                    if let Some(refusal) = refusal {
                        let refused = self.error(&format!("{context}, TLS handshake"), &refusal);
                        if refused.is_misconfigured() {
                            return Err(refused);
                        }
                    }
                }
                return Err(failed);
            }
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
    pub(super) async fn discard(&self, slot: &Slot, link: &Link, reason: &str) {
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
    pub(super) async fn bounded<T>(
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

    /// A lapin error as a [`BrokerError`] of the kind the one classification gives it.
    pub(super) fn error(&self, context: &str, error: &lapin::Error) -> BrokerError {
        let message = format!("{context} at {}: {}", self.url, self.url.scrub(error));
        Service::Broker.failed(Failure::Amqp(error), message)
    }

    /// An operation that got no answer in time: the broker is unavailable (or the connection
    /// is stuck, and the caller drops it).
    pub(super) fn timed_out(&self, context: &str, after: Duration) -> BrokerError {
        Service::Broker.unavailable(format!(
            "{context} at {}: no answer within {after:?}",
            self.url
        ))
    }
}

/// Whether the broker closed the channel because a queue does not exist.
pub(super) fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(error) if *error.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}
