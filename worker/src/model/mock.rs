//! A deterministic in-process model for dry runs, tests and benchmarks: the same request always
//! gets the same reply, judging returns log-probabilities (with several spellings of each letter,
//! like real tokenizers), and an optional fixed latency simulates a server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cai_common::job::MockSpec;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::{CallUsage, Generation, Judgment, Model, ModelError, Prompt, TokenLogprob};

/// The `tracing` target of the per-call log lines.
pub const CALL_LOG_TARGET: &str = "cai::mock::calls";

/// The mock model.
pub struct MockModel {
    name: String,
    latency: Duration,
    calls: AtomicU64,
    /// Bounds calls in flight to the capacity, as a server's would.
    permits: Semaphore,
}

impl MockModel {
    /// A mock named `name`, honouring `latency_ms`, that serves `capacity` calls at a time (the
    /// model's `max_concurrency`, as a server sized for it would; for `max_concurrency =
    /// "auto"`, its `max_concurrency_limit`: the mock queues and never refuses a call, so an
    /// adaptive limit climbs to that ceiling and the mock runs as with a fixed one).
    pub fn new(name: &str, spec: &MockSpec, capacity: usize) -> Self {
        Self {
            name: name.to_owned(),
            latency: Duration::from_millis(spec.latency_ms),
            calls: AtomicU64::new(0),
            permits: Semaphore::new(capacity),
        }
    }

    /// Calls served so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn digest(&self, prompt: &Prompt, seed: u64) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.name.as_bytes());
        hasher.update(prompt.transcript().as_bytes());
        hasher.update(seed.to_le_bytes());
        hasher.finalize().into()
    }

    /// Waits for capacity and the latency. Every call is logged at debug level under the
    /// target [`CALL_LOG_TARGET`] with its seed, which is unique per (sample, step): a benchmark
    /// counts them to prove that no call is made twice (`CAI_LOG=info,cai::mock::calls=debug`).
    async fn serve(&self, seed: u64) {
        tracing::debug!(target: CALL_LOG_TARGET, model = %self.name, seed, "mock call");
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }
}

fn usage(prompt: &Prompt, reply: &str) -> CallUsage {
    CallUsage {
        tokens_in: prompt
            .turns
            .iter()
            .map(|t| t.text.len() as u64 / 4 + 1)
            .sum(),
        tokens_out: reply.len() as u64 / 4 + 1,
    }
}

/// The probability of option A the mock judge gives a prompt: spread over (0.05, 0.95).
pub fn mock_p_first(digest: &[u8; 32]) -> f64 {
    let unit = u16::from_le_bytes([digest[0], digest[1]]) as f64 / u16::MAX as f64;
    0.05 + 0.9 * unit
}

#[async_trait]
impl Model for MockModel {
    async fn generate(&self, prompt: &Prompt, seed: u64) -> Result<Generation, ModelError> {
        self.serve(seed).await;
        let digest = self.digest(prompt, seed);
        let text = format!(
            "Mock answer {} from {}.",
            hex::encode(&digest[..6]),
            self.name
        );
        Ok(Generation {
            usage: usage(prompt, &text),
            text,
        })
    }

    /// A vote for (A) with the probability the mock's judgment gives (A) for this prompt,
    /// drawn with the seed, written in every built-in verdict format at once so that any of
    /// them reads it.
    async fn verdict(&self, prompt: &Prompt, seed: u64) -> Result<Generation, ModelError> {
        self.serve(seed).await;
        let p_a = mock_p_first(&self.digest(prompt, 0));
        let draw = self.digest(prompt, seed);
        let unit = u32::from_le_bytes([draw[0], draw[1], draw[2], draw[3]]) as f64 / 2f64.powi(32);
        let letter = if unit < p_a { "A" } else { "B" };
        let text = format!(
            "Mock feedback {} from {}. The answer is: ({letter}) [[{letter}]] [RESULT] {letter}",
            hex::encode(&draw[..6]),
            self.name
        );
        Ok(Generation {
            usage: usage(prompt, &text),
            text,
        })
    }

    async fn judge(&self, prompt: &Prompt, seed: u64) -> Result<Judgment, ModelError> {
        self.serve(seed).await;
        let digest = self.digest(prompt, 0);
        let p_a = mock_p_first(&digest);
        let spread = |letter: &str, p: f64| {
            [
                (format!(" {letter}"), 0.6 * p),
                (letter.to_owned(), 0.3 * p),
                (format!("({letter}"), 0.1 * p),
            ]
        };
        let positions = vec![
            spread("A", p_a * 0.95)
                .into_iter()
                .chain(spread("B", (1.0 - p_a) * 0.95))
                .chain([(" The".to_owned(), 0.05)])
                .map(|(token, p)| TokenLogprob {
                    token,
                    logprob: p.ln(),
                })
                .collect(),
        ];
        let text = if p_a >= 0.5 { " A" } else { " B" }.to_owned();
        Ok(Judgment {
            positions,
            usage: usage(prompt, &text),
            text,
        })
    }
}
