//! The in-process broker of embedded mode: one unbounded MPMC channel per (job, queue).
//!
//! Unbounded is safe because the coordinator bounds what is outstanding; there is no
//! redelivery across processes because everything lives and dies with this process. A
//! dead-lettered message goes to the job's [`Queue::Dead`] channel, as with RabbitMQ.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{Acker, Broker, BrokerError, Delivery, Queue};

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

struct MemoryAcker {
    payload: Vec<u8>,
    requeue_to: async_channel::Sender<Vec<u8>>,
    job: String,
    inner: Arc<Inner>,
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn requeue(self: Box<Self>) -> Result<(), BrokerError> {
        self.requeue_to
            .send(self.payload)
            .await
            .map_err(|_| BrokerError("in-process queue closed".into()))
    }

    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), BrokerError> {
        self.inner
            .dead
            .lock()
            .expect("broker lock")
            .push((self.job.clone(), reason.to_owned()));
        self.inner
            .channel(&self.job, Queue::Dead)
            .0
            .send(self.payload)
            .await
            .map_err(|_| BrokerError("in-process queue closed".into()))
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
            .map_err(|_| BrokerError("in-process queue closed".into()))
    }

    async fn consume(
        &self,
        job: &str,
        queue: Queue,
        _prefetch: u16,
    ) -> Result<BoxStream<'static, Delivery>, BrokerError> {
        let (sender, receiver) = self.inner.channel(job, queue);
        let job = job.to_owned();
        let inner = self.inner.clone();
        Ok(receiver
            .map(move |payload| Delivery {
                payload: payload.clone(),
                acker: Box::new(MemoryAcker {
                    payload,
                    requeue_to: sender.clone(),
                    job: job.clone(),
                    inner: inner.clone(),
                }),
            })
            .boxed())
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
