//! The lines of the Batch API's files: an input line is `{"custom_id", "method": "POST", "url",
//! "body"}`; a line of the output or the error file is `{"id", "custom_id", "response":
//! {"status_code", "request_id", "body"}, "error"}`, with `response` null and `error` a
//! `{"code", "message"}` for a line that never ran (its batch expired or was cancelled).
//!
//! A response is read as a direct call's reply ([`OpenAiModel::parse_reply`], once its call is
//! answered, and [`OpenAiModel::status_error`] for a status other than 2xx), so a batch line
//! fails exactly as the same direct call would: 429 and 5xx are retryable, a 400 fails the
//! sample. Until then a 2xx body is kept as its text, which takes a fraction of the memory of
//! its parsed form (a batch may hold tens of thousands of judgments' log-probabilities).

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::super::ModelError;
use super::super::openai::OpenAiModel;

/// Error codes of a line that did not run, or did not finish, through no fault of its own.
const RETRYABLE_CODES: [&str; 6] = [
    "batch_expired",
    "batch_cancelled",
    "batch_failed",
    "server_error",
    "rate_limit_exceeded",
    "timeout",
];

/// What became of each line of a batch, by `custom_id`: the body of a 2xx response, or why the
/// line failed.
pub(super) type Answers = HashMap<String, Result<String, ModelError>>;

/// The `custom_id` of a call: stable across restarts and processes, because it hashes what
/// the call is (the job, the job's name for the model, the call's seed, which is unique per
/// sample and step, and the request body), and at most 64 characters, as providers require.
pub(super) fn custom_id(job: &str, model: &str, seed: u64, body: &Value) -> String {
    let digest = Sha256::new()
        .chain_update(job.as_bytes())
        .chain_update([0])
        .chain_update(model.as_bytes())
        .chain_update([0])
        .chain_update(seed.to_le_bytes())
        .chain_update(body.to_string().as_bytes())
        .finalize();
    format!("cai-{}", &hex::encode(digest)[..40])
}

/// The input line of a call.
pub(super) fn input_line(custom_id: &str, url: &str, body: &Value) -> String {
    json!({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).to_string()
}

/// Reads every line of an output or error file into `answers`; a line without a `custom_id`
/// is skipped (its call is then missing, and retried).
pub(super) fn read(
    openai: &OpenAiModel,
    name: &str,
    shown: &str,
    file: &str,
    answers: &mut Answers,
) {
    for line in file.lines().filter(|line| !line.trim().is_empty()) {
        let Ok(line) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(custom_id) = line.get("custom_id").and_then(Value::as_str) else {
            continue;
        };
        answers.insert(custom_id.to_owned(), answer(openai, name, shown, &line));
    }
}

/// What one output or error line says.
fn answer(
    openai: &OpenAiModel,
    name: &str,
    shown: &str,
    line: &Value,
) -> Result<String, ModelError> {
    if let Some(response) = line.get("response").filter(|r| !r.is_null()) {
        let body = response
            .get("body")
            .map(Value::to_string)
            .unwrap_or_default();
        let status = response
            .get("status_code")
            .and_then(Value::as_u64)
            .and_then(|code| StatusCode::from_u16(u16::try_from(code).ok()?).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return if status.is_success() {
            Ok(body)
        } else {
            Err(openai.status_error(status, None, &body, shown))
        };
    }
    let error = line.get("error").cloned().unwrap_or(Value::Null);
    let text = |field: &str| {
        error
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned()
    };
    let (code, message) = (text("code"), text("message"));
    let message = openai.scrub(format!(
        "model {name}: the batch did not answer the line ({code}): {message}"
    ));
    if RETRYABLE_CODES.contains(&code.as_str()) {
        Err(ModelError::Retryable {
            message,
            retry_after: None,
            unreachable: false,
            overloaded: false,
            attempts: 1,
        })
    } else {
        Err(ModelError::SampleFatal(message))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cai_common::job::{BackendSpec, ModelSpec};

    use super::*;

    fn openai() -> OpenAiModel {
        let spec = ModelSpec::openai("http://127.0.0.1:1/v1", "m");
        let BackendSpec::Openai(openai) = &spec.backend else {
            unreachable!("an openai spec")
        };
        OpenAiModel::new("policy", openai, &spec.sampling, Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn custom_ids_are_stable_short_and_differ_per_call() {
        let body = json!({"model": "m", "seed": 3});
        let id = custom_id("job", "policy", 3, &body);
        assert_eq!(id, custom_id("job", "policy", 3, &body));
        assert!(id.len() <= 64 && id.starts_with("cai-"), "{id}");
        assert_ne!(id, custom_id("job", "policy", 4, &body));
        assert_ne!(id, custom_id("job", "judge", 3, &body));
        assert_ne!(id, custom_id("other", "policy", 3, &body));
        assert_ne!(id, custom_id("job", "policy", 3, &json!({"model": "n"})));
    }

    #[test]
    fn lines_are_read_as_direct_replies_and_failures_classified() {
        let reply = json!({"choices": [{"message": {"content": " hi "}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}});
        let file = [
            json!({"id": "r1", "custom_id": "ok", "response": {"status_code": 200, "request_id": "q", "body": reply}, "error": null}),
            json!({"id": "r2", "custom_id": "busy", "response": {"status_code": 503, "body": {"error": {"message": "later"}}}, "error": null}),
            json!({"id": "r3", "custom_id": "bad", "response": {"status_code": 400, "body": {"error": {"message": "too long"}}}, "error": null}),
            json!({"id": "r4", "custom_id": "late", "response": null, "error": {"code": "batch_expired", "message": "expired"}}),
            json!({"id": "r5", "custom_id": "odd", "response": null, "error": {"code": "invalid_url", "message": "no"}}),
            json!({"id": "r6", "response": null}),
        ]
        .map(|line| line.to_string())
        .join("\n");
        let mut answers = Answers::new();
        read(&openai(), "policy", "http://server/v1", &file, &mut answers);
        assert_eq!(answers.len(), 5);
        let body = answers["ok"].clone().ok().unwrap();
        let generation = OpenAiModel::generation(
            openai()
                .parse_reply(&body, "http://server/v1")
                .ok()
                .unwrap(),
        );
        assert_eq!(
            (generation.text.as_str(), generation.usage.tokens_in),
            ("hi", 3)
        );
        let retryable = |id: &str| matches!(answers[id], Err(ModelError::Retryable { .. }));
        let fatal = |id: &str| matches!(answers[id], Err(ModelError::SampleFatal(_)));
        assert!(retryable("busy") && retryable("late"));
        assert!(fatal("bad") && fatal("odd"));
    }
}
