//! The provider's batch API, as the batcher uses it whoever serves it: OpenAI's Batch API
//! ([`super::openai_api`]: an uploaded input file, a batch created from it, output and error
//! files) or Anthropic's Message Batches API ([`super::anthropic_api`]: the requests inline, a
//! results file). Each step of a batch's life ([`super::run`]) is one method here.

use super::anthropic_api::AnthropicBatches;
use super::lines::{self, Answers};
use super::openai_api::OpenaiBatches;
use super::records::Record;
use crate::model::ModelError;

/// The state of a batch, as far as waiting for it goes.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct BatchObject {
    /// The batch's id.
    pub(super) id: String,
    /// The provider's status word, for messages.
    pub(super) status: String,
    /// Whether the batch will not change any more.
    pub(super) finished: bool,
    /// Where its answers are, once finished: files or URLs to read.
    pub(super) results: Vec<String>,
    /// Why a failed batch failed, as the server said.
    pub(super) errors: Option<String>,
}

/// A provider's batch API.
pub(super) enum BatchApi {
    /// OpenAI's Batch API (and the servers that copy it).
    Openai(OpenaiBatches),
    /// Anthropic's Message Batches API.
    Anthropic(AnthropicBatches),
}

impl BatchApi {
    /// The server's base URL without secrets, for messages.
    pub(super) fn shown(&self) -> &str {
        match self {
            Self::Openai(api) => api.shown(),
            Self::Anthropic(api) => api.shown(),
        }
    }

    /// Makes the lines ready for a batch and returns the key its record is kept under:
    /// OpenAI's uploads them as an input file (its id is the key); Anthropic's, which takes the
    /// requests inline, needs nothing sent.
    pub(super) async fn prepare(&self, lines: &[(String, String)]) -> Result<String, ModelError> {
        match self {
            Self::Openai(api) => {
                let mut jsonl = String::new();
                for (_, line) in lines {
                    jsonl.push_str(line);
                    jsonl.push('\n');
                }
                api.upload(jsonl.into_bytes()).await
            }
            Self::Anthropic(_) => Ok(AnthropicBatches::record_key(lines)),
        }
    }

    /// Creates the batch recorded under `key`. OpenAI's is created from the input file;
    /// Anthropic's needs the lines themselves, which a process that only found the record does
    /// not have (`None`): those lines then go into a new batch.
    pub(super) async fn create(
        &self,
        key: &str,
        lines: Option<&[(String, String)]>,
        endpoint: &str,
    ) -> Result<BatchObject, ModelError> {
        match (self, lines) {
            (Self::Openai(api), _) => api.create(key, endpoint).await,
            (Self::Anthropic(api), Some(lines)) => api.create(lines).await,
            (Self::Anthropic(api), None) => Err(ModelError::Retryable {
                message: format!(
                    "the batch recorded as {key} at {} was never created; its lines go into a \
                     new batch",
                    api.shown()
                ),
                retry_after: None,
                unreachable: false,
                overloaded: false,
                attempts: 1,
            }),
        }
    }

    /// The batch recorded under `key`, if the provider has it although the record names none
    /// (a create whose reply was lost).
    pub(super) async fn find(
        &self,
        key: &str,
        record: &Record,
    ) -> Result<Option<BatchObject>, ModelError> {
        match self {
            Self::Openai(api) => api.find(key).await,
            Self::Anthropic(api) => api.find(record).await,
        }
    }

    /// The batch `id` as it stands.
    pub(super) async fn get(&self, id: &str) -> Result<BatchObject, ModelError> {
        match self {
            Self::Openai(api) => api.get(id).await,
            Self::Anthropic(api) => api.get(id).await,
        }
    }

    /// The text of one of a finished batch's [`BatchObject::results`].
    pub(super) async fn content(&self, results: &str) -> Result<String, ModelError> {
        match self {
            Self::Openai(api) => api.content(results).await,
            Self::Anthropic(api) => api.content(results).await,
        }
    }

    /// Reads a results text into `answers`: each line's reply body, or its failure classified
    /// as the same direct call's would be.
    pub(super) fn read(&self, name: &str, text: &str, answers: &mut Answers) {
        match self {
            Self::Openai(api) => lines::read(api.openai(), name, api.shown(), text, answers),
            Self::Anthropic(api) => api.read(text, answers),
        }
    }
}
