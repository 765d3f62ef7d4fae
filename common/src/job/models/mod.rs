//! A job's models: which backend serves each and how it is reached ([`BackendSpec`], one variant
//! per backend with only that backend's settings), how it samples ([`Sampling`]), and the call
//! policy the client layer applies to every backend alike ([`CallPolicy`]).
//!
//! The TOML is one flat table per model (`[models.policy]` with `backend = "openai"`, `url`,
//! `max_concurrency`, …). It is read into [`ModelFile`], which holds every key of every backend
//! (so unknown keys are refused with the parser's message, line and column), then converted into
//! a [`ModelSpec`], which refuses a setting of another backend. A spec serialises back through
//! [`ModelFile`], so its JSON (fingerprints, registry entries) is what it was before the types.
//! The file form and both conversions are in `file.rs`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::concurrency::Concurrency;

mod file;

pub(super) use file::ModelFile;

/// Which backend serves a model: the `backend` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Any OpenAI-compatible HTTP server (vLLM, SGLang, TGI, llama.cpp, Ollama, hosted APIs).
    Openai,
    /// Deterministic in-process model for dry runs, tests and benchmarks.
    Mock,
    /// A GGUF model run in-process on the CPU.
    Local,
    /// Anthropic's Messages API.
    Anthropic,
}

impl Backend {
    /// The name the job file uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Mock => "mock",
            Self::Local => "local",
            Self::Anthropic => "anthropic",
        }
    }

    /// Whether the backend returns token log-probabilities, which a `logprobs` or `cot` judge
    /// reads its label from.
    pub fn has_logprobs(self) -> bool {
        !matches!(self, Self::Anthropic)
    }
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

/// One model of a job: each part is read by one layer (the backend, the request, the client
/// layer), so a backend cannot see a setting that is not its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ModelFile", into = "ModelFile")]
pub struct ModelSpec {
    /// Which backend serves it, with that backend's settings.
    pub backend: BackendSpec,
    /// How it samples.
    pub sampling: Sampling,
    /// The limits, retries and prices the client layer applies to its calls.
    pub policy: CallPolicy,
}

/// A backend and the settings only it has. A new backend is a new variant: the compiler then
/// names every place that must handle it (building, the endpoint shown in spans, preflight).
#[derive(Clone, Debug, PartialEq)]
pub enum BackendSpec {
    /// An OpenAI-compatible HTTP server.
    Openai(OpenaiSpec),
    /// A GGUF model run in this process.
    Local(LocalSpec),
    /// The deterministic mock.
    Mock(MockSpec),
    /// Anthropic's Messages API.
    Anthropic(AnthropicSpec),
}

impl BackendSpec {
    /// Which backend this is.
    pub fn kind(&self) -> Backend {
        match self {
            Self::Openai(_) => Backend::Openai,
            Self::Local(_) => Backend::Local,
            Self::Mock(_) => Backend::Mock,
            Self::Anthropic(_) => Backend::Anthropic,
        }
    }
}

/// How an OpenAI-compatible server is reached.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenaiSpec {
    /// Base URLs of the servers, e.g. `http://127.0.0.1:8000/v1`: one, or one per replica (at
    /// least one, no two alike). The job file writes one as a string, several as a list.
    pub urls: Vec<String>,
    /// Set (`replicas_from_dns = true`): every address the URLs' host names resolve to is a
    /// replica, looked up again every this many seconds (`dns_refresh_s`). Unset: each URL is
    /// one server, reached as its host resolves.
    pub dns_refresh_s: Option<u64>,
    /// The model name the server knows.
    pub model: String,
    /// Chat or completions endpoint.
    pub endpoint: Endpoint,
    /// Chat endpoints only: the server continues a final assistant message (vLLM's
    /// `continue_final_message`, llama.cpp's server), so a judge's answer can be started with
    /// ` (` and the next token is the letter.
    pub prefill: bool,
    /// Name of the environment variable holding the API key (the key itself is never stored).
    pub api_key_env: Option<String>,
    /// `batch = true`: every call goes as a line of a batch of the provider's Batch API, at the
    /// batch price, instead of as a request of its own.
    pub batch: Option<BatchSpec>,
}

/// How Anthropic's Messages API is reached.
#[derive(Clone, Debug, PartialEq)]
pub struct AnthropicSpec {
    /// The API's base URL (default [`ANTHROPIC_URL`]); requests go to `{url}/messages`.
    pub url: String,
    /// The model name, e.g. `claude-sonnet-4-5`.
    pub model: String,
    /// Name of the environment variable holding the API key, sent as `x-api-key` (the key
    /// itself is never stored). Required: the API takes no request without one.
    pub api_key_env: String,
    /// `batch = true`: every call goes as a request of a batch of the Message Batches API, at
    /// the batch price.
    pub batch: Option<BatchSpec>,
}

/// The Messages API's base URL when a model sets no `url`.
pub const ANTHROPIC_URL: &str = "https://api.anthropic.com/v1";

/// How the calls of a model in batch mode (`batch = true`) are gathered into batches and what
/// they cost.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchSpec {
    /// Most lines in one batch (`batch_size`).
    pub size: usize,
    /// Longest wait, in seconds, from the first call gathered to the batch's submission
    /// (`batch_wait_s`).
    pub wait_s: u64,
    /// Price of a million prompt tokens by batch in USD (`batch_price_in`; default: half of
    /// `price_in`).
    pub price_in: Option<f64>,
    /// Price of a million generated tokens by batch in USD (`batch_price_out`; default: half of
    /// `price_out`).
    pub price_out: Option<f64>,
}

/// Lines in a batch unless `batch_size` says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 5000;
/// The most lines a batch may hold (OpenAI's limit).
pub const MAX_BATCH_SIZE: usize = 50_000;
/// Seconds a batch gathers calls unless `batch_wait_s` says otherwise.
pub const DEFAULT_BATCH_WAIT_S: u64 = 60;

/// A GGUF model run in-process on the CPU.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalSpec {
    /// The GGUF file (relative to the job file as written; resolved by [`super::Job::parse`]).
    pub path: PathBuf,
    /// CPU threads for inference (default: every physical core).
    pub threads: Option<usize>,
}

/// The mock's one setting.
#[derive(Clone, Debug, PartialEq)]
pub struct MockSpec {
    /// Simulated latency per call in milliseconds.
    pub latency_ms: u64,
}

/// How a model samples, whatever serves it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Sampling temperature, 0 to 2.
    pub temperature: f32,
    /// Most tokens generated per call.
    pub max_tokens: u32,
    /// How many top log-probabilities to request when judging (20 is OpenAI's cap).
    pub top_logprobs: u32,
}

/// The call policy of the client layer (`cai_worker::model::client`), the same for every
/// backend: how many calls are in flight, how fast they go, how they are retried and what they
/// cost.
#[derive(Clone, Debug, PartialEq)]
pub struct CallPolicy {
    /// Most calls in flight to this model from one process: a number, or an adaptive limit.
    pub max_concurrency: Concurrency,
    /// Per-request timeout in seconds.
    pub timeout_s: u64,
    /// Transient failures retried per call before the sample fails.
    pub max_retries: u32,
    /// The most time one call may take across its retries, in seconds: no retry starts whose
    /// wait would end past it. Unset: only `max_retries` bounds a call.
    pub retry_budget_s: Option<u64>,
    /// Most requests a minute sent to this model from one process (retries included).
    pub rpm: Option<u32>,
    /// Most tokens (prompt and completion) a minute sent to this model from one process.
    pub tpm: Option<u64>,
    /// Price of a million prompt tokens in USD, for cost accounting.
    pub price_in: Option<f64>,
    /// Price of a million generated tokens in USD, for cost accounting.
    pub price_out: Option<f64>,
}

/// What a model's calls cost: USD per million tokens in and out, and whether they go by batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prices {
    /// USD per million prompt tokens.
    pub price_in: Option<f64>,
    /// USD per million generated tokens.
    pub price_out: Option<f64>,
    /// Whether the calls go by batch (and these are the batch prices).
    pub batch: bool,
}

impl ModelSpec {
    /// The batch settings of a model in batch mode.
    pub fn batch(&self) -> Option<&BatchSpec> {
        match &self.backend {
            BackendSpec::Openai(openai) => openai.batch.as_ref(),
            BackendSpec::Anthropic(anthropic) => anthropic.batch.as_ref(),
            BackendSpec::Local(_) | BackendSpec::Mock(_) => None,
        }
    }

    /// The environment variable holding the model's API key, if its backend sends one.
    pub fn api_key_env(&self) -> Option<&String> {
        match &self.backend {
            BackendSpec::Openai(openai) => openai.api_key_env.as_ref(),
            BackendSpec::Anthropic(anthropic) => Some(&anthropic.api_key_env),
            BackendSpec::Local(_) | BackendSpec::Mock(_) => None,
        }
    }

    /// The base URLs the model's calls go to (and its API key with them), if it has any.
    pub fn urls(&self) -> &[String] {
        match &self.backend {
            BackendSpec::Openai(openai) => &openai.urls,
            BackendSpec::Anthropic(anthropic) => std::slice::from_ref(&anthropic.url),
            BackendSpec::Local(_) | BackendSpec::Mock(_) => &[],
        }
    }

    /// What its calls cost: the batch prices in batch mode (half the direct ones unless set),
    /// else `price_in` and `price_out`.
    pub fn prices(&self) -> Prices {
        let (price_in, price_out) = (self.policy.price_in, self.policy.price_out);
        match self.batch() {
            Some(batch) => Prices {
                price_in: batch.price_in.or(price_in.map(|usd| usd / 2.0)),
                price_out: batch.price_out.or(price_out.map(|usd| usd / 2.0)),
                batch: true,
            },
            None => Prices {
                price_in,
                price_out,
                batch: false,
            },
        }
    }

    /// How many of its calls one process may have waiting at once: `max_concurrency` (its
    /// `max_concurrency_limit` for `"auto"`), or in batch mode two batches' worth (one gathering while one runs), so that the samples in
    /// flight fill its batches.
    pub fn calls_in_flight(&self) -> usize {
        let most = self.policy.max_concurrency.most_in_flight();
        match self.batch() {
            Some(batch) => most.max(2 * batch.size),
            None => most,
        }
    }

    /// The model of an OpenAI-compatible server at `url` with every other setting at its default
    /// (tests, embedding callers).
    pub fn openai(url: &str, model: &str) -> Self {
        Self {
            backend: BackendSpec::Openai(OpenaiSpec {
                urls: vec![url.to_owned()],
                dns_refresh_s: None,
                model: model.to_owned(),
                endpoint: Endpoint::Chat,
                prefill: false,
                api_key_env: None,
                batch: None,
            }),
            ..Self::mock()
        }
    }

    /// The mock with every setting at its default.
    pub fn mock() -> Self {
        ModelFile::default_for(Backend::Mock)
            .try_into()
            .expect("the defaults are a valid mock")
    }
}
