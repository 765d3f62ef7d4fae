//! Batch mode of the `openai` and `anthropic` backends (`batch = true`): every call goes as one
//! line of a batch of the server's Batch API (OpenAI's, Azure OpenAI's, LiteLLM's proxy, llm-d's
//! batch gateway and several hosted providers serve it) or of Anthropic's Message Batches API,
//! at half the price of a direct call.
//!
//! A call's line is the body the direct backend would send ([`OpenAiModel::body`],
//! [`AnthropicModel::body`]) under a
//! `custom_id` that hashes the job, the model, the call's seed and the body, so the same call
//! made again (after a restart, on another worker) has the same id; its answer is read as the
//! direct backend reads a reply. The model's batcher ([`batcher`]) gathers the calls of the
//! samples in flight into batches, records each batch in the job's state store before waiting
//! on it ([`records`]), and a call found in a recorded batch waits for that batch instead of
//! being paid again. The model is not behind the client layer: its calls wait in batches, not in
//! `max_concurrency` slots, nothing paces them, and the batcher sends failed lines again itself.

mod anthropic_api;
mod api;
mod batcher;
mod lines;
mod openai_api;
mod records;
mod run;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use cai_common::job::{BackendSpec, Endpoint, ModelSpec};
use cai_common::state::StateStore;
use serde_json::Value;

use super::anthropic::AnthropicModel;
use super::openai::OpenAiModel;
use super::{Generation, Judgment, Model, ModelError, Prompt};
use anthropic_api::AnthropicBatches;
use api::BatchApi;
use batcher::{Batcher, Gathering};
use openai_api::OpenaiBatches;
use records::Records;
use run::Context;

/// The direct backend of a model in batch mode: what a line's body is, and how its reply reads.
#[derive(Clone)]
pub(super) enum Direct {
    /// An OpenAI-compatible server.
    Openai(Arc<OpenAiModel>),
    /// Anthropic's Messages API.
    Anthropic(Arc<AnthropicModel>),
}

impl Direct {
    /// The request body of a generation.
    fn body(&self, prompt: &Prompt, seed: u64) -> Result<Value, ModelError> {
        match self {
            Self::Openai(openai) => Ok(openai.body(prompt, seed, false)),
            Self::Anthropic(anthropic) => anthropic.body(prompt),
        }
    }

    /// The line of a call in the provider's batch format.
    fn line(&self, custom_id: &str, endpoint: &str, body: &Value) -> String {
        match self {
            Self::Openai(_) => lines::input_line(custom_id, endpoint, body),
            Self::Anthropic(_) => {
                serde_json::json!({"custom_id": custom_id, "params": body}).to_string()
            }
        }
    }

    /// Whether a line's reply body reads as a reply (a garbled one is retryable).
    pub(super) fn check(&self, body: &str, shown: &str) -> Result<(), ModelError> {
        match self {
            Self::Openai(openai) => openai.parse_reply(body, shown).map(drop),
            Self::Anthropic(anthropic) => anthropic.parse_reply(body).map(drop),
        }
    }

    fn generation(&self, body: &str, shown: &str) -> Result<Generation, ModelError> {
        match self {
            Self::Openai(openai) => Ok(OpenAiModel::generation(openai.parse_reply(body, shown)?)),
            Self::Anthropic(anthropic) => {
                Ok(AnthropicModel::generation(anthropic.parse_reply(body)?))
            }
        }
    }

    fn prompt_tokens(&self, prompt: &Prompt) -> u64 {
        match self {
            Self::Openai(openai) => openai.prompt_tokens(prompt),
            Self::Anthropic(anthropic) => anthropic.prompt_tokens(prompt),
        }
    }
}

/// A model whose calls go by batch.
pub struct BatchModel {
    name: String,
    direct: Direct,
    /// The server's base URL without secrets, for messages.
    shown: String,
    /// The endpoint of every line.
    endpoint: &'static str,
    gathering: Gathering,
    /// The job and its state store, once bound ([`Model::bind`]).
    bound: OnceLock<(String, Arc<dyn StateStore>)>,
    /// Started at the first call.
    batcher: OnceLock<Batcher>,
    /// The server's base URL, below which its batch API is.
    base: String,
}

impl BatchModel {
    /// The model `name` of `spec`, an `openai` or `anthropic` model with `batch = true`. Fails
    /// (job-fatal) as the direct backend does, on an API key variable that is not set.
    pub fn new(name: &str, spec: &ModelSpec) -> Result<Self, ModelError> {
        let batch = spec.batch().ok_or_else(|| {
            ModelError::JobFatal(format!("model {name}: `batch = true` is not set"))
        })?;
        let timeout = Duration::from_secs(spec.policy.timeout_s);
        let (direct, endpoint, base) = match &spec.backend {
            BackendSpec::Openai(openai) => {
                let model = Arc::new(OpenAiModel::new(name, openai, &spec.sampling, timeout)?);
                let endpoint = match openai.endpoint {
                    Endpoint::Chat => "/v1/chat/completions",
                    Endpoint::Completions => "/v1/completions",
                };
                (Direct::Openai(model), endpoint, openai.urls[0].clone())
            }
            BackendSpec::Anthropic(anthropic) => {
                let model = Arc::new(AnthropicModel::new(
                    name,
                    anthropic,
                    &spec.sampling,
                    timeout,
                )?);
                (
                    Direct::Anthropic(model),
                    "/v1/messages",
                    anthropic.url.clone(),
                )
            }
            BackendSpec::Local(_) | BackendSpec::Mock(_) => {
                return Err(ModelError::JobFatal(format!(
                    "model {name}: batch mode is a setting of backends \"openai\" and \"anthropic\""
                )));
            }
        };
        Ok(Self {
            name: name.to_owned(),
            direct,
            shown: super::openai::redact(&base),
            endpoint,
            gathering: Gathering {
                size: batch.size,
                wait: Duration::from_secs(batch.wait_s),
                max_retries: spec.policy.max_retries,
            },
            bound: OnceLock::new(),
            batcher: OnceLock::new(),
            base,
        })
    }

    /// Makes a call of `body` as a batch line; the body of its reply once its batch is
    /// finished.
    async fn call(&self, seed: u64, body: Value) -> Result<String, ModelError> {
        let (job, state) = self.bound.get().ok_or_else(|| {
            ModelError::JobFatal(format!(
                "model {}: a model in batch mode must be bound to its job's state first",
                self.name
            ))
        })?;
        let batcher = self.batcher.get_or_init(|| {
            let api = match &self.direct {
                Direct::Openai(openai) => {
                    BatchApi::Openai(OpenaiBatches::new(&self.name, &self.base, openai.clone()))
                }
                Direct::Anthropic(anthropic) => {
                    BatchApi::Anthropic(AnthropicBatches::new(&self.name, anthropic.clone()))
                }
            };
            let context = Context {
                name: self.name.clone(),
                direct: self.direct.clone(),
                api,
                records: Records {
                    job: job.clone(),
                    state: state.clone(),
                },
                endpoint: self.endpoint,
                max_retries: self.gathering.max_retries,
            };
            Batcher::start(Arc::new(context), self.gathering)
        });
        let custom_id = lines::custom_id(job, &self.name, seed, &body);
        let line = self.direct.line(&custom_id, self.endpoint, &body);
        batcher.call(custom_id, line).await
    }
}

#[async_trait]
impl Model for BatchModel {
    async fn generate(&self, prompt: &Prompt, seed: u64) -> Result<Generation, ModelError> {
        let body = self.call(seed, self.direct.body(prompt, seed)?).await?;
        self.direct.generation(&body, &self.shown)
    }

    /// A judgment reads log-probabilities, which only an OpenAI-compatible server returns (a
    /// checked job never asks one of an `anthropic` model): refused before any call otherwise.
    async fn judge(&self, prompt: &Prompt, seed: u64) -> Result<Judgment, ModelError> {
        let Direct::Openai(openai) = &self.direct else {
            return Err(ModelError::JobFatal(format!(
                "model {}: the Anthropic Messages API returns no log-probabilities to judge from",
                self.name
            )));
        };
        let body = self.call(seed, openai.body(prompt, seed, true)).await?;
        openai.judgment(openai.parse_reply(&body, &self.shown)?)
    }

    fn prompt_tokens(&self, prompt: &Prompt) -> u64 {
        self.direct.prompt_tokens(prompt)
    }

    /// Batches are recorded in the job's state store, and their lines' ids name the job.
    fn bind(&self, job: &str, state: &Arc<dyn StateStore>) {
        // A model is bound once, to the one job it was built for.
        let _ = self.bound.set((job.to_owned(), state.clone()));
    }
}
