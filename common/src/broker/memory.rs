//! The in-process broker of embedded mode: one unbounded MPMC channel per (job, queue), with
//! RabbitMQ's delivery rules, so a pipeline that works here works on RabbitMQ: a consumer holds
//! at most `prefetch` unsettled deliveries, a requeued message comes back, a delivery dropped
//! without being settled goes back to its queue (as when a consumer's channel closes), and a
//! dead-lettered message goes to the job's [`Queue::Dead`] channel.
//!
//! Unbounded is safe because the coordinator bounds what is outstanding; there is no
//! redelivery across processes because everything lives and dies with this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Acker, Broker, BrokerError, Delivery, Queue};
use crate::service_error::Service;

type Channel = (
    async_channel::Sender<Vec<u8>>,
    async_channel::Receiver<Vec<u8>>,
);

#[derive(Default)]
struct Inner {
    channels: Mutex<HashMap<(String, Queue), Channel>>,
    dead: Mutex<Vec<(String, String)>>,
}

/// An in-process broker; clones share the same queues.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl Inner {
    fn channel(&self, job: &str, queue: Queue) -> Channel {
        self.channels
            .lock()
            .expect("broker lock")
            .entry((job.to_owned(), queue))
            .or_insert_with(async_channel::unbounded)
            .clone()
    }
}

impl MemoryBroker {
    /// Messages dead-lettered so far, as (job, reason).
    pub fn dead_letters(&self) -> Vec<(String, String)> {
        self.inner.dead.lock().expect("broker lock").clone()
    }
}

fn closed() -> BrokerError {
    Service::Broker.fatal("in-process queue closed")
}

/// One unsettled delivery: its message until it is settled, and its consumer's prefetch slot.
struct MemoryAcker {
    /// `None` once settled; a delivery dropped while it holds its message puts it back.
    payload: Option<Vec<u8>>,
    requeue_to: async_channel::Sender<Vec<u8>>,
    job: String,
    inner: Arc<Inner>,
    _slot: OwnedSemaphorePermit,
}

impl MemoryAcker {
    fn take(&mut self) -> Vec<u8> {
        self.payload.take().expect("a delivery is settled once")
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if let Some(payload) = self.payload.take() {
            // An unbounded channel only refuses when closed, and then nobody consumes anyway.
            let _ = self.requeue_to.try_send(payload);
        }
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        self.take();
        Ok(())
    }

    async fn requeue(mut self: Box<Self>) -> Result<(), BrokerError> {
        let payload = self.take();
        self.requeue_to.send(payload).await.map_err(|_| closed())
    }

    async fn dead_letter(mut self: Box<Self>, reason: &str) -> Result<(), BrokerError> {
        let payload = self.take();
        self.inner
            .dead
            .lock()
            .expect("broker lock")
            .push((self.job.clone(), reason.to_owned()));
        self.inner
            .channel(&self.job, Queue::Dead)
            .0
            .send(payload)
            .await
            .map_err(|_| closed())
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, job: &str, queue: Queue, payload: Vec<u8>) -> Result<(), BrokerError> {
        self.inner
            .channel(job, queue)
            .0
            .send(payload)
            .await
            .map_err(|_| closed())
    }

    async fn consume(
        &self,
        job: &str,
        queue: Queue,
        prefetch: u16,
    ) -> Result<BoxStream<'static, Delivery>, BrokerError> {
        let (sender, receiver) = self.inner.channel(job, queue);
        let slots = Arc::new(Semaphore::new(usize::from(prefetch.max(1))));
        let job = job.to_owned();
        let inner = self.inner.clone();
        let deliveries = stream::unfold((), move |()| {
            let (slots, sender, receiver) = (slots.clone(), sender.clone(), receiver.clone());
            let (job, inner) = (job.clone(), inner.clone());
            async move {
                // A slot first, then a message: a consumer at its prefetch takes nothing more.
                let slot = slots.acquire_owned().await.expect("never closed");
                let payload = receiver.recv().await.ok()?;
                let delivery = Delivery {
                    payload: payload.clone(),
                    acker: Box::new(MemoryAcker {
                        payload: Some(payload),
                        requeue_to: sender,
                        job,
                        inner,
                        _slot: slot,
                    }),
                };
                Some((delivery, ()))
            }
        });
        Ok(deliveries.boxed())
    }

    async fn depth(&self, job: &str, queue: Queue) -> Result<u32, BrokerError> {
        let channels = self.inner.channels.lock().expect("broker lock");
        Ok(channels
            .get(&(job.to_owned(), queue))
            .map_or(0, |(_, receiver)| {
                u32::try_from(receiver.len()).unwrap_or(u32::MAX)
            }))
    }

    async fn purge(&self, job: &str, queue: Queue) -> Result<u32, BrokerError> {
        let (_, receiver) = self.inner.channel(job, queue);
        let mut purged = 0u32;
        while receiver.try_recv().is_ok() {
            purged = purged.saturating_add(1);
        }
        Ok(purged)
    }

    async fn delete_job(&self, job: &str) -> Result<(), BrokerError> {
        let mut channels = self.inner.channels.lock().expect("broker lock");
        for queue in [Queue::Tasks, Queue::Results, Queue::Dead] {
            if let Some((sender, _)) = channels.remove(&(job.to_owned(), queue)) {
                sender.close();
            }
        }
        Ok(())
    }

    async fn ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requeued_message_comes_back_and_dead_letters_are_kept() {
        let broker = MemoryBroker::default();
        broker
            .publish("j", Queue::Tasks, b"one".to_vec())
            .await
            .unwrap();
        let mut stream = broker.consume("j", Queue::Tasks, 1).await.unwrap();
        let first = stream.next().await.unwrap();
        assert_eq!(first.payload, b"one");
        first.acker.requeue().await.unwrap();
        let again = stream.next().await.unwrap();
        assert_eq!(again.payload, b"one");
        again.acker.dead_letter("bad").await.unwrap();
        assert_eq!(
            broker.dead_letters(),
            vec![("j".to_owned(), "bad".to_owned())]
        );
        let mut dead = broker.consume("j", Queue::Dead, 1).await.unwrap();
        assert_eq!(dead.next().await.unwrap().payload, b"one");
    }
}
