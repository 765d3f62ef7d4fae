//! What a distributed run leaves in RabbitMQ and Redis: queue depths while it runs, the Redis
//! memory its keys take once it is done, and the clean-up of both.

use cai_common::broker::amqp::AmqpBroker;
use cai_common::broker::{Broker, Queue};
use cai_common::state::StateStore;
use cai_common::state::redis::RedisState;
use serde::Serialize;

/// Connections to the run's broker and Redis database.
pub struct Services {
    /// The job whose queues and keys these are.
    pub job: String,
    broker: AmqpBroker,
    redis: redis::aio::MultiplexedConnection,
    state_url: String,
}

/// Redis memory of a job after its run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RedisReport {
    /// Keys under `cai:<job>:`.
    pub job_keys: u64,
    /// Sum of `MEMORY USAGE` (exact: `SAMPLES 0`) of those keys, bytes.
    pub job_bytes: u64,
    /// `job_bytes` per sample of the job.
    pub bytes_per_sample: f64,
    /// Members of the done set.
    pub done_set_members: u64,
    /// `MEMORY USAGE` of the done set alone, bytes.
    pub done_set_bytes: u64,
    /// Step-cache hashes left (0 once every done sample's steps are forgotten).
    pub step_hashes_left: u64,
    /// Lease keys left.
    pub leases_left: u64,
    /// Change of the server's `used_memory` over the run (all databases: noisy), bytes.
    pub used_memory_delta: i64,
}

impl Services {
    /// Connects to both services.
    pub async fn connect(job: &str, broker_url: &str, state_url: &str) -> anyhow::Result<Self> {
        let broker = AmqpBroker::connect(broker_url).await?;
        let client = redis::Client::open(state_url)?;
        let redis = client.get_multiplexed_async_connection().await?;
        Ok(Self {
            job: job.to_owned(),
            broker,
            redis,
            state_url: state_url.to_owned(),
        })
    }

    /// Ready messages in the job's task and result queues.
    pub async fn queue_depths(&self) -> anyhow::Result<(u32, u32)> {
        Ok((
            self.broker.depth(&self.job, Queue::Tasks).await?,
            self.broker.depth(&self.job, Queue::Results).await?,
        ))
    }

    /// Members of the job's done set.
    pub async fn done_count(&self) -> anyhow::Result<u64> {
        let mut redis = self.redis.clone();
        let count: u64 = redis::cmd("SCARD")
            .arg(format!("cai:{}:done", self.job))
            .query_async(&mut redis)
            .await?;
        Ok(count)
    }

    /// The server's `used_memory`, bytes.
    pub async fn used_memory(&self) -> anyhow::Result<i64> {
        let mut redis = self.redis.clone();
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut redis)
            .await?;
        Ok(info
            .lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0))
    }

    /// The memory the job's keys hold now, per sample of `samples`.
    pub async fn redis_report(
        &self,
        samples: u64,
        used_before: i64,
    ) -> anyhow::Result<RedisReport> {
        let mut redis = self.redis.clone();
        let prefix = format!("cai:{}:", self.job);
        let mut report = RedisReport::default();
        let mut cursor = 0_u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut redis)
                .await?;
            for key in keys {
                let bytes: Option<u64> = redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(&key)
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async(&mut redis)
                    .await?;
                let bytes = bytes.unwrap_or(0);
                report.job_keys += 1;
                report.job_bytes += bytes;
                let suffix = &key[prefix.len()..];
                if suffix == "done" {
                    report.done_set_bytes = bytes;
                } else if suffix.starts_with("steps:") {
                    report.step_hashes_left += 1;
                } else if suffix.starts_with("lease:") {
                    report.leases_left += 1;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        report.done_set_members = self.done_count().await?;
        report.bytes_per_sample = if samples > 0 {
            report.job_bytes as f64 / samples as f64
        } else {
            0.0
        };
        report.used_memory_delta = self.used_memory().await? - used_before;
        Ok(report)
    }

    /// Deletes the job's queues and every key of the job.
    pub async fn clean_up(&self) -> anyhow::Result<()> {
        self.broker.delete_job(&self.job).await?;
        RedisState::connect(&self.state_url)
            .await?
            .clear_job(&self.job)
            .await?;
        Ok(())
    }
}
