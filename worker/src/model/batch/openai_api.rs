//! The Batch API of an OpenAI-compatible server, one request per method: upload an input file
//! (`POST /files`, multipart, `purpose=batch`), create a batch (`POST /batches`), find the batch
//! of an input file (`GET /batches`), read a batch (`GET /batches/{id}`) and a file's content
//! (`GET /files/{id}/content`). Failures are classified as the direct calls' are (the same
//! [`OpenAiModel`] does it), and carry no secret.

use std::sync::Arc;

use reqwest::RequestBuilder;
use serde_json::{Value, json};

use super::super::ModelError;
use super::super::openai::{OpenAiModel, redact, retry_after};
use super::api::BatchObject;

/// How many of the newest batches are searched for the batch of an input file.
const LISTED: u32 = 100;

/// A batch object of the OpenAI Batch API (`validating`, `in_progress`, `finalizing`,
/// `completed`, `failed`, `expired`, `cancelling` or `cancelled`) as the batcher waits for it:
/// final once `completed`, `failed`, `expired` or `cancelled`, answered in its output and error
/// files.
fn batch_object(value: &Value) -> Option<BatchObject> {
    let text = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_owned);
    let status = text("status")?;
    Some(BatchObject {
        id: text("id")?,
        finished: matches!(
            status.as_str(),
            "completed" | "failed" | "expired" | "cancelled"
        ),
        status,
        results: [text("output_file_id"), text("error_file_id")]
            .into_iter()
            .flatten()
            .collect(),
        errors: value
            .get("errors")
            .filter(|errors| !errors.is_null())
            .map(Value::to_string),
    })
}

/// The Batch API at the base URL of a model's server.
pub(super) struct OpenaiBatches {
    /// The direct backend: its client, key, and error classification.
    openai: Arc<OpenAiModel>,
    /// The base URL, without a trailing `/`.
    base: String,
    /// The base URL without secrets, for messages.
    shown: String,
    /// The job's name for the model, for messages.
    name: String,
}

impl OpenaiBatches {
    /// The direct backend, which reads the lines' replies.
    pub(super) fn openai(&self) -> &OpenAiModel {
        &self.openai
    }

    /// The server's base URL without secrets, for messages.
    pub(super) fn shown(&self) -> &str {
        &self.shown
    }

    /// The Batch API of the server at `base` that `openai` calls.
    pub(super) fn new(name: &str, base: &str, openai: Arc<OpenAiModel>) -> Self {
        Self {
            openai,
            base: base.trim_end_matches('/').to_owned(),
            shown: redact(base),
            name: name.to_owned(),
        }
    }

    /// Uploads a batch input file; returns its id.
    pub(super) async fn upload(&self, jsonl: Vec<u8>) -> Result<String, ModelError> {
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part(
                "file",
                reqwest::multipart::Part::bytes(jsonl)
                    .file_name("batch.jsonl")
                    .mime_str("application/jsonl")
                    .expect("a valid MIME type"),
            );
        let (client, _) = self.openai.client();
        let reply = self
            .json(client.post(format!("{}/files", self.base)).multipart(form))
            .await?;
        reply
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| self.unreadable("file upload", &reply))
    }

    /// Creates a batch of the lines of input file `file` for `endpoint` (`/v1/chat/completions`
    /// or `/v1/completions`), to be done within 24 hours.
    pub(super) async fn create(
        &self,
        file: &str,
        endpoint: &str,
    ) -> Result<BatchObject, ModelError> {
        let (client, _) = self.openai.client();
        let body = json!({"input_file_id": file, "endpoint": endpoint, "completion_window": "24h"});
        let reply = self
            .json(client.post(format!("{}/batches", self.base)).json(&body))
            .await?;
        batch_object(&reply).ok_or_else(|| self.unreadable("batch creation", &reply))
    }

    /// The batch created from input file `file`, if one is among the newest batches: after a
    /// create whose reply was lost, or a process killed before it recorded the batch, this
    /// tells whether it exists (creating it again would pay its lines twice).
    pub(super) async fn find(&self, file: &str) -> Result<Option<BatchObject>, ModelError> {
        let (client, _) = self.openai.client();
        let reply = self
            .json(client.get(format!("{}/batches?limit={LISTED}", self.base)))
            .await?;
        let data = reply
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| self.unreadable("batch list", &reply))?;
        Ok(data
            .iter()
            .find(|batch| batch.get("input_file_id").and_then(Value::as_str) == Some(file))
            .and_then(batch_object))
    }

    /// The batch `id` as it stands.
    pub(super) async fn get(&self, id: &str) -> Result<BatchObject, ModelError> {
        let (client, _) = self.openai.client();
        let reply = self
            .json(client.get(format!("{}/batches/{id}", self.base)))
            .await?;
        batch_object(&reply).ok_or_else(|| self.unreadable("batch", &reply))
    }

    /// The content of file `id`.
    pub(super) async fn content(&self, id: &str) -> Result<String, ModelError> {
        let (client, _) = self.openai.client();
        self.send(client.get(format!("{}/files/{id}/content", self.base)))
            .await
    }

    /// Sends a request with the key and reads a JSON reply.
    async fn json(&self, request: RequestBuilder) -> Result<Value, ModelError> {
        let text = self.send(request).await?;
        serde_json::from_str(&text).map_err(|e| ModelError::Retryable {
            message: self.openai.scrub(format!(
                "model {}: the Batch API at {} answered with other than JSON ({e})",
                self.name, self.shown
            )),
            retry_after: None,
            unreachable: false,
            overloaded: false,
            attempts: 1,
        })
    }

    /// Sends a request with the key; the body of a 2xx reply, or the failure classified.
    async fn send(&self, request: RequestBuilder) -> Result<String, ModelError> {
        let (_, key) = self.openai.client();
        let request = match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| self.openai.transport_error(e, &self.shown))?;
        let status = response.status();
        let wait = retry_after(response.headers());
        let text = response
            .text()
            .await
            .map_err(|e| self.openai.transport_error(e, &self.shown))?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(self.openai.status_error(status, wait, &text, &self.shown))
        }
    }

    fn unreadable(&self, what: &str, reply: &Value) -> ModelError {
        let shown: String = reply.to_string().chars().take(300).collect();
        ModelError::Retryable {
            message: self.openai.scrub(format!(
                "model {}: the {what} reply of the Batch API at {} is not one: {shown}",
                self.name, self.shown
            )),
            retry_after: None,
            unreachable: false,
            overloaded: false,
            attempts: 1,
        }
    }
}
