//! A distributed run on this machine's RabbitMQ and Redis: a unique job name, `cai worker` and
//! `cai run --broker --state` processes (so they can be killed for real), and clean-up of every
//! queue and key of the job.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use cai_common::broker::Broker;
use cai_common::broker::amqp::AmqpBroker;
use cai_common::state::StateStore;
use cai_common::state::redis::RedisState;
use tokio::process::Child;

use crate::harness::cai_process;

/// RabbitMQ on this machine.
pub const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A job name no other test run uses.
fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "t-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000
    )
}

/// One distributed job's environment.
pub struct Cluster {
    /// The job name (unique per test run).
    pub job: String,
    /// The broker URL.
    pub broker: String,
    /// The Redis URL, with the test's key prefix.
    pub state: String,
    /// Environment variables every process of the cluster gets.
    pub env: Vec<(String, String)>,
}

impl Cluster {
    /// A cluster with a unique job name, whose Redis keys live under a prefix of that name (its
    /// workers see no other test's jobs).
    pub fn unique() -> Self {
        let job = unique_name();
        Self {
            broker: BROKER_URL.into(),
            state: format!("redis://127.0.0.1:6379/0?prefix={job}"),
            job,
            env: Vec::new(),
        }
    }

    /// Another job on the same services and key prefix: the workers of this cluster serve it too.
    pub fn another_job(&self) -> Self {
        Self {
            job: unique_name(),
            broker: self.broker.clone(),
            state: self.state.clone(),
            env: self.env.clone(),
        }
    }

    /// Starts a `cai worker` process logging to `log`.
    pub fn worker(&self, id: &str, log: &Path, extra: &[&str]) -> Child {
        cai_process()
            .args([
                "worker",
                "--broker",
                &self.broker,
                "--state",
                &self.state,
                "--id",
                id,
            ])
            .args(extra)
            .args(if extra.contains(&"--metrics-addr") {
                &[][..]
            } else {
                &["--metrics-addr", "off"][..]
            })
            .env("CAI_LOG", "info,cai_common=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stderr(std::fs::File::create(log).expect("worker log file"))
            .stdout(Stdio::null())
            .spawn()
            .expect("cai worker starts")
    }

    /// Starts the coordinator of `job_file` logging to `log`.
    pub fn coordinator(&self, job_file: &Path, log: &Path) -> Child {
        self.coordinator_with(job_file, log, &[])
    }

    /// Starts the coordinator of `job_file` with `extra` flags, logging to `log`.
    pub fn coordinator_with(&self, job_file: &Path, log: &Path, extra: &[&str]) -> Child {
        cai_process()
            .args(["run", "--broker", &self.broker, "--state", &self.state])
            .args(extra)
            .arg(job_file)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stderr(std::fs::File::create(log).expect("coordinator log file"))
            .stdout(Stdio::null())
            .spawn()
            .expect("cai run starts")
    }

    /// A connection to the broker.
    pub async fn broker(&self) -> AmqpBroker {
        AmqpBroker::connect(&self.broker)
            .await
            .expect("RabbitMQ answers")
    }

    /// A connection to the state store.
    pub async fn state(&self) -> RedisState {
        RedisState::connect(&self.state)
            .await
            .expect("Redis answers")
    }
}

/// Removes a job's queues and keys.
async fn remove_job(job: &str, broker: &str, state: &str) -> Result<(), String> {
    let amqp = AmqpBroker::connect(broker)
        .await
        .map_err(|e| e.to_string())?;
    amqp.delete_job(job).await.map_err(|e| e.to_string())?;
    let redis = RedisState::connect(state)
        .await
        .map_err(|e| e.to_string())?;
    redis.clear_job(job).await.map_err(|e| e.to_string())?;
    // What is left under the cluster's own prefix (named after its job): the worker registry
    // and heartbeats.
    let Some(prefix) = state.split_once("?prefix=").map(|(_, prefix)| prefix) else {
        return Ok(());
    };
    let plain_url = state.split('?').next().unwrap_or(state);
    let mut raw = redis::Client::open(plain_url)
        .map_err(|e| e.to_string())?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut raw)
        .await
        .map_err(|e| e.to_string())?;
    if !left.is_empty() {
        let () = redis::cmd("DEL")
            .arg(&left)
            .query_async(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

impl Drop for Cluster {
    /// Removes the job's queues and keys, also when a test fails half-way, so no job stays
    /// active for later tests' workers. Runs on a thread of its own because the test's runtime
    /// may be shutting down.
    fn drop(&mut self) {
        let (job, broker, state) = (self.job.clone(), self.broker.clone(), self.state.clone());
        let cleaning = std::thread::Builder::new()
            .stack_size(16 << 20)
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for clean-up");
                runtime.block_on(async {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(20),
                        remove_job(&job, &broker, &state),
                    )
                    .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => eprintln!("cleaning up job {job}: {error}"),
                        Err(_) => eprintln!("cleaning up job {job}: timed out"),
                    }
                });
            })
            .expect("a clean-up thread starts");
        let _ = cleaning.join();
    }
}
