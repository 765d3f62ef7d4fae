//! A job's models: which backend serves each, how it is reached, and the call policy (limits,
//! retries, prices) the client layer applies to it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which backend serves a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Any OpenAI-compatible HTTP server (vLLM, SGLang, TGI, llama.cpp, Ollama, hosted APIs).
    Openai,
    /// Deterministic in-process model for dry runs, tests and benchmarks.
    Mock,
    /// A GGUF model run in-process on the CPU.
    Local,
}

/// Which OpenAI-compatible endpoint to call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `/chat/completions` with messages.
    Chat,
    /// `/completions` with a rendered transcript.
    Completions,
}

/// One model.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Which backend serves it.
    pub backend: Backend,
    /// Base URL of an OpenAI-compatible API, e.g. `http://127.0.0.1:8000/v1`.
    #[serde(default)]
    pub url: Option<String>,
    /// The model name the server knows.
    #[serde(default)]
    pub model: Option<String>,
    /// Chat or completions endpoint.
    #[serde(default = "default_endpoint")]
    pub endpoint: Endpoint,
    /// Chat endpoints only: the server continues a final assistant message (vLLM's
    /// `continue_final_message`, llama.cpp's server), so a judge's answer can be started with
    /// ` (` and the next token is the letter. Left out of the spec when off, so jobs from
    /// before the setting keep their fingerprint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefill: bool,
    /// Name of the environment variable holding the API key (the key itself is never stored).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Most calls in flight to this model from one process.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Sampling temperature.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Most tokens generated per call.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Per-request timeout in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// How many top log-probabilities to request when judging (20 is OpenAI's cap).
    #[serde(default = "default_top_logprobs")]
    pub top_logprobs: u32,
    /// Transient failures retried per call before the sample fails.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// The most time one call may take across its retries, in seconds: no retry starts whose
    /// wait would end past it (so a call ends within `retry_budget_s + timeout_s`). Unset: only
    /// `max_retries` bounds a call.
    #[serde(default)]
    pub retry_budget_s: Option<u64>,
    /// Most requests a minute sent to this model from one process (retries included).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Most tokens (prompt and completion) a minute sent to this model from one process.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Price of a million prompt tokens in USD, for cost accounting.
    #[serde(default)]
    pub price_in: Option<f64>,
    /// Price of a million generated tokens in USD, for cost accounting.
    #[serde(default)]
    pub price_out: Option<f64>,
    /// Mock only: simulated latency per call in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Local only: the GGUF file, relative to the job file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Local only: CPU threads for inference (default: every physical core).
    #[serde(default)]
    pub threads: Option<usize>,
}

fn default_endpoint() -> Endpoint {
    Endpoint::Chat
}
fn default_concurrency() -> usize {
    16
}
fn default_temperature() -> f32 {
    1.0
}
fn default_max_tokens() -> u32 {
    512
}
fn default_timeout() -> u64 {
    120
}
fn default_top_logprobs() -> u32 {
    20
}
fn default_max_retries() -> u32 {
    4
}

impl ModelSpec {
    pub(super) fn check(&self) -> Result<(), String> {
        if self.max_concurrency == 0 {
            return Err("`max_concurrency` must be at least 1".into());
        }
        if self.max_tokens == 0 {
            return Err("`max_tokens` must be at least 1".into());
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err("`temperature` must be between 0 and 2".into());
        }
        if !(1..=20).contains(&self.top_logprobs) {
            return Err("`top_logprobs` must be between 1 and 20".into());
        }
        if self.retry_budget_s == Some(0) {
            return Err("`retry_budget_s` must be at least 1".into());
        }
        if self.rpm == Some(0) {
            return Err("`rpm` must be at least 1 (leave it out for no limit)".into());
        }
        if self.tpm == Some(0) {
            return Err("`tpm` must be at least 1 (leave it out for no limit)".into());
        }
        for (field, price) in [("price_in", self.price_in), ("price_out", self.price_out)] {
            if price.is_some_and(|usd| !(usd.is_finite() && usd >= 0.0)) {
                return Err(format!(
                    "`{field}` must be a non-negative number of USD per million tokens"
                ));
            }
        }
        if self.backend == Backend::Openai {
            let url = self
                .url
                .as_deref()
                .ok_or("`url` is required for backend \"openai\"")?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err("`url` must start with http:// or https://".into());
            }
            if self.model.is_none() {
                return Err("`model` is required for backend \"openai\"".into());
            }
        }
        if self.backend == Backend::Local {
            if self.path.is_none() {
                return Err("`path` (the GGUF file) is required for backend \"local\"".into());
            }
            if self.threads == Some(0) {
                return Err("`threads` must be at least 1".into());
            }
        }
        Ok(())
    }
}
