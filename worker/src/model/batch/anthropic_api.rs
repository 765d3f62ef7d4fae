//! Anthropic's Message Batches API, one request per method: create a batch of requests
//! (`POST /messages/batches`, the requests inline: the API has no input files), read a batch
//! (`GET /messages/batches/{id}`), list the newest batches (`GET /messages/batches`) and read a
//! finished batch's results (its `results_url`, one JSON line per request). Failures are
//! classified as the direct calls' are (the same [`AnthropicModel`] does it), and carry no secret.
//!
//! With no input file to record a batch under, a batch's record is keyed by a hash of its
//! lines' ids, written before the create. A create whose reply was lost (or a process killed
//! before it recorded the batch) leaves a record without a batch id; [`AnthropicBatches::find`]
//! then looks among the batches created since the record for one that answers the record's
//! lines, waiting for those still in progress, because the API cannot say what a running batch
//! holds: the lines are sent again only once no batch can hold them.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::super::ModelError;
use super::super::anthropic::AnthropicModel;
use super::super::openai::{redact, retry_after};
use super::api::BatchObject;
use super::lines::Answers;
use super::records::Record;

/// How many of the newest batches are searched for a record's batch.
const LISTED: u32 = 100;
/// How much earlier than its record a batch may say it was created (clocks differ).
const CLOCK_SLACK: Duration = Duration::from_secs(120);
/// How long a search waits between two looks at a batch still in progress.
const SEARCH_POLL: Duration = Duration::from_secs(5);

/// The Message Batches API of a model's base URL.
pub(super) struct AnthropicBatches {
    /// The direct backend: its client, key, and error classification.
    anthropic: Arc<AnthropicModel>,
    /// `{url}/messages/batches`.
    batches: String,
    /// The base URL without secrets, for messages.
    shown: String,
    /// The job's name for the model, for messages.
    name: String,
}

/// A message batch object: final once `ended`, answered at its `results_url`.
fn batch_object(value: &Value) -> Option<BatchObject> {
    let status = value.get("processing_status")?.as_str()?.to_owned();
    Some(BatchObject {
        id: value.get("id")?.as_str()?.to_owned(),
        finished: status == "ended",
        status,
        results: value
            .get("results_url")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .into_iter()
            .collect(),
        errors: None,
    })
}

impl AnthropicBatches {
    /// The Message Batches API of the API `anthropic` calls.
    pub(super) fn new(name: &str, anthropic: Arc<AnthropicModel>) -> Self {
        let batches = format!("{}/messages/batches", anthropic.base());
        Self {
            shown: redact(anthropic.base()),
            batches,
            anthropic,
            name: name.to_owned(),
        }
    }

    /// The base URL without secrets, for messages.
    pub(super) fn shown(&self) -> &str {
        &self.shown
    }

    /// The key a batch of these lines is recorded under: their ids hashed, and the time, so
    /// that the same lines sent again in a later batch get a record of their own (as a new
    /// input file would), which the earlier one's removal leaves alone.
    pub(super) fn record_key(lines: &[(String, String)]) -> String {
        let mut digest = Sha256::new();
        for (custom_id, _) in lines {
            digest.update(custom_id.as_bytes());
            digest.update([0]);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        format!(
            "cai-msgbatch-{}-{now}",
            &hex::encode(digest.finalize())[..24]
        )
    }

    /// Creates a batch of `lines` (each a `{"custom_id", "params"}` request as JSON text).
    pub(super) async fn create(
        &self,
        lines: &[(String, String)],
    ) -> Result<BatchObject, ModelError> {
        let mut body = String::from("{\"requests\":[");
        for (index, (_, line)) in lines.iter().enumerate() {
            if index > 0 {
                body.push(',');
            }
            body.push_str(line);
        }
        body.push_str("]}");
        let request = self
            .anthropic
            .request(Method::POST, &self.batches)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let reply = self.json(request).await?;
        batch_object(&reply).ok_or_else(|| self.unreadable("batch creation", &reply))
    }

    /// The batch `id` as it stands.
    pub(super) async fn get(&self, id: &str) -> Result<BatchObject, ModelError> {
        let request = self
            .anthropic
            .request(Method::GET, &format!("{}/{id}", self.batches));
        let reply = self.json(request).await?;
        batch_object(&reply).ok_or_else(|| self.unreadable("batch", &reply))
    }

    /// The results of a finished batch, from its `results_url`.
    pub(super) async fn content(&self, results_url: &str) -> Result<String, ModelError> {
        self.send(self.anthropic.request(Method::GET, results_url))
            .await
    }

    /// The batch that holds `record`'s lines, among those created since the record was
    /// written (see the module documentation): each one still in progress is waited for, and
    /// each finished one is looked into. `None` when none holds them.
    pub(super) async fn find(&self, record: &Record) -> Result<Option<BatchObject>, ModelError> {
        let since = UNIX_EPOCH + Duration::from_millis(record.created_ms);
        let since = since.checked_sub(CLOCK_SLACK).unwrap_or(UNIX_EPOCH);
        let request = self
            .anthropic
            .request(Method::GET, &format!("{}?limit={LISTED}", self.batches));
        let reply = self.json(request).await?;
        let data = reply
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| self.unreadable("batch list", &reply))?;
        let Some(probe) = record.custom_ids.first() else {
            return Ok(None);
        };
        for candidate in data {
            let created = candidate
                .get("created_at")
                .and_then(Value::as_str)
                .and_then(|at| humantime::parse_rfc3339_weak(at).ok())
                .unwrap_or(SystemTime::now());
            if created < since {
                continue;
            }
            let Some(mut batch) = batch_object(candidate) else {
                continue;
            };
            while !batch.finished {
                tokio::time::sleep(SEARCH_POLL).await;
                batch = self.get(&batch.id).await?;
            }
            for results in &batch.results {
                let text = self.content(results).await?;
                let holds = |line: &str| {
                    serde_json::from_str::<Value>(line)
                        .is_ok_and(|line| line["custom_id"].as_str() == Some(probe.as_str()))
                };
                if text.lines().any(holds) {
                    return Ok(Some(batch));
                }
            }
        }
        Ok(None)
    }

    /// Reads every line of a batch's results into `answers`: a `succeeded` line's message as
    /// its text (read as a direct reply once its call is answered), an `errored` line by its
    /// error type as a direct call's error, `canceled` and `expired` lines retryable. A line
    /// without a `custom_id` is skipped (its call is then missing, and retried).
    pub(super) fn read(&self, text: &str, answers: &mut Answers) {
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let Ok(line) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let Some(custom_id) = line.get("custom_id").and_then(Value::as_str) else {
                continue;
            };
            answers.insert(custom_id.to_owned(), self.answer(&line["result"]));
        }
    }

    fn answer(&self, result: &Value) -> Result<String, ModelError> {
        match result["type"].as_str().unwrap_or("") {
            "succeeded" => Ok(result["message"].to_string()),
            "errored" => {
                // The error as a direct call's reply body says it: {"type": "error", "error"}.
                let body = result["error"].to_string();
                let status = match result.pointer("/error/error/type").and_then(Value::as_str) {
                    Some("invalid_request_error") => 400,
                    Some("authentication_error") => 401,
                    Some("permission_error") => 403,
                    Some("not_found_error") => 404,
                    Some("request_too_large") => 413,
                    Some("rate_limit_error") => 429,
                    Some("overloaded_error") => 529,
                    _ => 500,
                };
                let status = reqwest::StatusCode::from_u16(status).expect("a status");
                Err(self
                    .anthropic
                    .status_error(status, None, &body, &self.shown))
            }
            other => Err(ModelError::Retryable {
                message: format!(
                    "model {}: the batch did not answer the line ({})",
                    self.name,
                    if other.is_empty() { "no result" } else { other }
                ),
                retry_after: None,
                unreachable: false,
                overloaded: false,
                attempts: 1,
            }),
        }
    }

    /// Sends a request and reads a JSON reply.
    async fn json(&self, request: reqwest::RequestBuilder) -> Result<Value, ModelError> {
        let text = self.send(request).await?;
        serde_json::from_str(&text).map_err(|e| ModelError::Retryable {
            message: self.anthropic.scrub(format!(
                "model {}: the Message Batches API at {} answered with other than JSON ({e})",
                self.name, self.shown
            )),
            retry_after: None,
            unreachable: false,
            overloaded: false,
            attempts: 1,
        })
    }

    /// Sends a request; the body of a 2xx reply, or the failure classified.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<String, ModelError> {
        let response = request
            .send()
            .await
            .map_err(|e| self.anthropic.transport_error(e, &self.shown))?;
        let status = response.status();
        let wait = retry_after(response.headers());
        let text = response
            .text()
            .await
            .map_err(|e| self.anthropic.transport_error(e, &self.shown))?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(self
                .anthropic
                .status_error(status, wait, &text, &self.shown))
        }
    }

    fn unreadable(&self, what: &str, reply: &Value) -> ModelError {
        let shown: String = reply.to_string().chars().take(300).collect();
        ModelError::Retryable {
            message: self.anthropic.scrub(format!(
                "model {}: the {what} reply of the Message Batches API at {} is not one: {shown}",
                self.name, self.shown
            )),
            retry_after: None,
            unreachable: false,
            overloaded: false,
            attempts: 1,
        }
    }
}
