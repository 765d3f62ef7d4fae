//! Batch mode of the `openai` backend (`batch = true`): every call goes as one line of a batch
//! of the server's Batch API (OpenAI's, Azure OpenAI's, LiteLLM's proxy, llm-d's batch gateway
//! and several hosted providers serve it), at half the price of a direct call.
//!
//! A call's line is the body the direct backend would send ([`OpenAiModel::body`]) under a
//! `custom_id` that hashes the job, the model, the call's seed and the body, so the same call
//! made again (after a restart, on another worker) has the same id; its answer is read as the
//! direct backend reads a reply. The model's batcher ([`batcher`]) gathers the calls of the
//! samples in flight into batches, records each batch in the job's state store before waiting
//! on it ([`records`]), and a call found in a recorded batch waits for that batch instead of
//! being paid again. The model is not behind the client layer: its calls wait in batches, not in
//! `max_concurrency` slots, nothing paces them, and the batcher sends failed lines again itself.

mod api;
mod batcher;
mod lines;
mod records;
mod run;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use cai_common::job::{BackendSpec, Endpoint, ModelSpec};
use cai_common::state::StateStore;
use serde_json::Value;

use super::openai::{OpenAiModel, Reply};
use super::{Generation, Judgment, Model, ModelError, Prompt};
use api::BatchApi;
use batcher::{Batcher, Gathering};
use records::Records;
use run::Context;

/// A model of an OpenAI-compatible server whose calls go by batch.
pub struct BatchModel {
    name: String,
    openai: Arc<OpenAiModel>,
    /// The server's base URL.
    base: String,
    /// The endpoint of every line.
    endpoint: &'static str,
    gathering: Gathering,
    /// The job and its state store, once bound ([`Model::bind`]).
    bound: OnceLock<(String, Arc<dyn StateStore>)>,
    /// Started at the first call.
    batcher: OnceLock<Batcher>,
}

impl BatchModel {
    /// The model `name` of `spec`, an `openai` model with `batch = true`. Fails (job-fatal) as
    /// the direct backend does, on an API key variable that is not set.
    pub fn new(name: &str, spec: &ModelSpec) -> Result<Self, ModelError> {
        let BackendSpec::Openai(openai) = &spec.backend else {
            return Err(ModelError::JobFatal(format!(
                "model {name}: batch mode is a setting of backend \"openai\""
            )));
        };
        let batch = openai.batch.as_ref().ok_or_else(|| {
            ModelError::JobFatal(format!("model {name}: `batch = true` is not set"))
        })?;
        let timeout = Duration::from_secs(spec.policy.timeout_s);
        Ok(Self {
            name: name.to_owned(),
            openai: Arc::new(OpenAiModel::new(name, openai, &spec.sampling, timeout)?),
            base: openai.urls[0].clone(),
            endpoint: match openai.endpoint {
                Endpoint::Chat => "/v1/chat/completions",
                Endpoint::Completions => "/v1/completions",
            },
            gathering: Gathering {
                size: batch.size,
                wait: Duration::from_secs(batch.wait_s),
                max_retries: spec.policy.max_retries,
            },
            bound: OnceLock::new(),
            batcher: OnceLock::new(),
        })
    }

    /// Makes a call of `body` as a batch line; its reply once its batch is finished.
    async fn call(&self, seed: u64, body: Value) -> Result<Reply, ModelError> {
        let (job, state) = self.bound.get().ok_or_else(|| {
            ModelError::JobFatal(format!(
                "model {}: a model in batch mode must be bound to its job's state first",
                self.name
            ))
        })?;
        let batcher = self.batcher.get_or_init(|| {
            let context = Context {
                name: self.name.clone(),
                openai: self.openai.clone(),
                api: BatchApi::new(&self.name, &self.base, self.openai.clone()),
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
        let line = lines::input_line(&custom_id, self.endpoint, &body);
        batcher.call(custom_id, line).await
    }
}

#[async_trait]
impl Model for BatchModel {
    async fn generate(&self, prompt: &Prompt, seed: u64) -> Result<Generation, ModelError> {
        let reply = self
            .call(seed, self.openai.body(prompt, seed, false))
            .await?;
        Ok(OpenAiModel::generation(reply))
    }

    async fn judge(&self, prompt: &Prompt, seed: u64) -> Result<Judgment, ModelError> {
        let reply = self
            .call(seed, self.openai.body(prompt, seed, true))
            .await?;
        self.openai.judgment(reply)
    }

    fn prompt_tokens(&self, prompt: &Prompt) -> u64 {
        self.openai.prompt_tokens(prompt)
    }

    /// Batches are recorded in the job's state store, and their lines' ids name the job.
    fn bind(&self, job: &str, state: &Arc<dyn StateStore>) {
        // A model is bound once, to the one job it was built for.
        let _ = self.bound.set((job.to_owned(), state.clone()));
    }
}
