//! `POST /v1/messages`: Anthropic's Messages API as a strict stand-in. A request is refused,
//! with the API's error shape (`{"type": "error", "error": {"type", "message"}}`), unless it
//! carries `x-api-key` (the configured key, when [`ServerConfig::api_key`] is set) and
//! `anthropic-version: 2023-06-01`, names a `model`, sends `max_tokens` (at least 1), puts the
//! system prompt in the top-level `system` string (never a `system` role among the messages),
//! has messages whose roles alternate strictly from `user`, ends with a user message or with an
//! assistant prefill that does not end in whitespace, keeps `temperature` within 0 to 1, and
//! holds no field the API does not know (`seed`, `logprobs`, …).
//!
//! A well-formed request is answered with a `message` whose text is [`reply_for`] of its prompt
//! text (the system prompt, then every message's content, concatenated) and seed 0, unless
//! [`ServerConfig::replies`] scripts it, or [`ServerConfig::verdict`] makes it a written verdict
//! ([`verdict_for`], drawn with the number of earlier direct requests of the same body in place
//! of the seed the API does not take), and whose usage counts a token per four characters.
//! [`ServerConfig::anthropic_errors`] answers the first requests with given errors instead
//! (`retry-after: 0` on 429 and 529). Requests are recorded with the endpoint `"messages"`.
//!
//! # Message Batches
//! `POST /v1/messages/batches` (`{"requests": [{"custom_id", "params"}]}`, ids of 1 to 64
//! characters from `a-zA-Z0-9_-`, no two alike), `GET /v1/messages/batches` (newest first),
//! `GET /v1/messages/batches/{id}` and `GET /v1/messages/batches/{id}/results`, with the same
//! headers checked. A batch is `in_progress` for [`BatchConfig::duration`](super::BatchConfig),
//! then each request is answered as a direct request of its `params` would be (`succeeded` with
//! the message, or `errored` with the error a direct request would get), a share
//! [`BatchConfig::failed_lines`](super::BatchConfig) of them `errored` with an `api_error`
//! instead, and the batch is `ended` with a `results_url`. The reply to a create is held back
//! [`BatchConfig::create_reply_delay`](super::BatchConfig). Every request answered is recorded
//! with [`RecordedCall::batch`] set.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{HOST, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ServerConfig;
use super::calls::{RecordedCall, Shared};
use super::reply::{reply_for, verdict_for};

/// The version the stand-in accepts.
const VERSION: &str = "2023-06-01";
/// The top-level fields the Messages API knows.
const FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "messages",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "metadata",
    "stream",
];

/// `POST /v1/messages`.
pub(super) async fn messages(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let earlier = shared
        .calls
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|call| call.endpoint == "messages")
        .count();
    let scripted = shared.config.anthropic_errors.get(earlier).cloned();
    // The API takes no seed: a verdict's draw is how many times this body came before.
    let draw = shared
        .calls
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|call| {
            call.endpoint == "messages" && parsed.as_ref().is_some_and(|body| &call.body == body)
        })
        .count() as u64;
    shared.record(
        &body,
        RecordedCall {
            endpoint: "messages",
            body: parsed
                .clone()
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned().into()),
            judge: false,
            fault: scripted.as_ref().map(|_| "anthropic-error"),
            host: headers
                .get(HOST)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            batch: false,
        },
    );
    if let Err((status, kind, message)) = check_headers(&shared.config, &headers) {
        return error(status, kind, &message);
    }
    if let Some((code, kind)) = scripted {
        let status = StatusCode::from_u16(code).expect("a scripted status is a status");
        let mut response = error(status, &kind, "a scripted error");
        if code == 429 || code == 529 {
            response
                .headers_mut()
                .insert(RETRY_AFTER, "0".parse().expect("a digit"));
        }
        return response;
    }
    let Some(request) = parsed else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "The body is not JSON.",
        );
    };
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    match answer(&shared.config, &request, draw) {
        Ok(reply) => {
            shared.answered(&body);
            axum::Json(reply).into_response()
        }
        Err(message) => error(StatusCode::BAD_REQUEST, "invalid_request_error", &message),
    }
}

/// The key and version headers.
fn check_headers(
    config: &ServerConfig,
    headers: &HeaderMap,
) -> Result<(), (StatusCode, &'static str, String)> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let key_ok = match (&config.api_key, header("x-api-key")) {
        (_, None) => false,
        (None, Some(key)) => !key.is_empty(),
        (Some(expected), Some(key)) => key == expected,
    };
    if !key_ok {
        return Err((
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid x-api-key".into(),
        ));
    }
    if headers.contains_key("authorization") {
        return Err((
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the key goes in x-api-key, not in an Authorization header".into(),
        ));
    }
    match header("anthropic-version") {
        Some(VERSION) => Ok(()),
        other => Err((
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("anthropic-version: expected {VERSION:?}, got {other:?}"),
        )),
    }
}

/// The reply to a request, or why it is refused.
fn answer(config: &ServerConfig, request: &Value, draw: u64) -> Result<Value, String> {
    let object = request.as_object().ok_or("the body must be an object")?;
    if let Some(field) = object.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        return Err(format!("{field}: Extra inputs are not permitted"));
    }
    let model = request["model"].as_str().ok_or("model: Field required")?;
    match request["max_tokens"].as_u64() {
        Some(tokens) if tokens >= 1 => {}
        _ => return Err("max_tokens: Field required (an integer of at least 1)".into()),
    }
    if let Some(temperature) = request.get("temperature") {
        let temperature = temperature
            .as_f64()
            .ok_or("temperature: must be a number")?;
        if !(0.0..=1.0).contains(&temperature) {
            return Err("temperature: must be between 0 and 1".into());
        }
    }
    let system = match request.get("system") {
        None => "",
        Some(Value::String(system)) => system,
        Some(_) => return Err("system: must be a string".into()),
    };
    let messages = request["messages"]
        .as_array()
        .filter(|messages| !messages.is_empty())
        .ok_or("messages: at least one message is required")?;
    let mut text = system.to_owned();
    for (index, message) in messages.iter().enumerate() {
        let expected = if index % 2 == 0 { "user" } else { "assistant" };
        let role = message["role"].as_str().unwrap_or("");
        if role == "system" {
            return Err(format!(
                "messages.{index}.role: system is not a role; use the top-level `system`"
            ));
        }
        if role != expected {
            return Err(format!(
                "messages.{index}.role: roles must alternate from `user`: expected {expected}, \
                 got {role:?}"
            ));
        }
        let content = message["content"]
            .as_str()
            .ok_or(format!("messages.{index}.content: must be a string"))?;
        if content.is_empty() {
            return Err(format!("messages.{index}.content: must not be empty"));
        }
        text.push_str(content);
    }
    let last = messages.last().expect("not empty");
    if last["role"] == "assistant"
        && last["content"]
            .as_str()
            .is_some_and(|content| content.ends_with(char::is_whitespace))
    {
        return Err("final assistant content cannot end with trailing whitespace".into());
    }
    let reply = config
        .replies
        .iter()
        .find(|(marker, _)| text.contains(marker.as_str()))
        .map(|(_, reply)| reply.clone())
        .unwrap_or_else(|| match config.verdict {
            Some(style) => verdict_for(&text, draw, config, style),
            None => reply_for(&text, 0),
        });
    let tokens = |text: &str| text.len() as u64 / 4 + 1;
    Ok(json!({
        "id": format!("msg_{}", &reply_for(&text, 1)[6..14]),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": tokens(&text), "output_tokens": tokens(&reply)},
    }))
}

/// An error in the API's shape.
fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
    )
        .into_response()
}

/// The message batches the stand-in holds.
#[derive(Default)]
pub(super) struct MessageBatches {
    /// Batch id → its object and, once ended, its results (JSON lines).
    batches: BTreeMap<String, (Value, Option<String>)>,
    /// Batches created so far.
    created: u64,
}

impl MessageBatches {
    /// `(batches created, batches in progress)`.
    pub(super) fn counts(&self) -> (usize, usize) {
        let running = self
            .batches
            .values()
            .filter(|(object, _)| object["processing_status"] == "in_progress")
            .count();
        (self.batches.len(), running)
    }
}

/// `POST /v1/messages/batches`.
pub(super) async fn create_batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err((status, kind, message)) = check_headers(&shared.config, &headers) {
        return error(status, kind, &message);
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "The body is not JSON.",
        );
    };
    let Some(requests) = request["requests"]
        .as_array()
        .filter(|r| !r.is_empty())
        .cloned()
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "requests: at least one request is required",
        );
    };
    let mut ids = HashSet::new();
    for (index, entry) in requests.iter().enumerate() {
        let id = entry["custom_id"].as_str().unwrap_or("");
        let valid = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid || !ids.insert(id.to_owned()) {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("requests.{index}.custom_id: missing, malformed or repeated"),
            );
        }
        if !entry["params"].is_object() {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("requests.{index}.params: Field required"),
            );
        }
    }
    let host = headers
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let (id, object) = {
        let mut batches = shared
            .message_batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        batches.created += 1;
        let id = format!("msgbatch_{:06}", batches.created);
        let object = json!({
            "id": id,
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": {"processing": requests.len(), "succeeded": 0, "errored": 0,
                "canceled": 0, "expired": 0},
            "ended_at": null,
            "created_at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "expires_at": null,
            "cancel_initiated_at": null,
            "results_url": null,
        });
        batches.batches.insert(id.clone(), (object.clone(), None));
        (id, object)
    };
    let runner = shared.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(runner.config.batch.duration) => {}
            () = runner.stopping.cancelled() => return,
        }
        let results_url = format!("http://{host}/v1/messages/batches/{id}/results");
        end_batch(&runner, &id, &requests, results_url);
    });
    tokio::time::sleep(shared.config.batch.create_reply_delay).await;
    axum::Json(object).into_response()
}

/// Answers every request of batch `id` and ends it.
fn end_batch(shared: &Shared, id: &str, requests: &[Value], results_url: String) {
    let (mut results, mut succeeded, mut errored) = (String::new(), 0u64, 0u64);
    for entry in requests {
        let params = &entry["params"];
        let raw = serde_json::to_vec(params).expect("JSON encodes");
        let fails = shared.draw_line_failure(&raw);
        shared.record(
            &raw,
            RecordedCall {
                endpoint: "messages",
                body: params.clone(),
                judge: false,
                fault: fails.then_some("500"),
                host: None,
                batch: true,
            },
        );
        let result = match answer(&shared.config, params, 0) {
            _ if fails => json!({"type": "errored", "error": {"type": "error",
                "error": {"type": "api_error", "message": "Internal server error"}}}),
            Ok(message) => {
                shared.answered(&raw);
                json!({"type": "succeeded", "message": message})
            }
            Err(message) => json!({"type": "errored", "error": {"type": "error",
                "error": {"type": "invalid_request_error", "message": message}}}),
        };
        if result["type"] == "succeeded" {
            succeeded += 1;
        } else {
            errored += 1;
        }
        results.push_str(&json!({"custom_id": entry["custom_id"], "result": result}).to_string());
        results.push('\n');
    }
    let mut batches = shared
        .message_batches
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some((object, stored)) = batches.batches.get_mut(id) {
        object["processing_status"] = "ended".into();
        object["ended_at"] = humantime::format_rfc3339_millis(SystemTime::now())
            .to_string()
            .into();
        object["request_counts"] = json!({"processing": 0, "succeeded": succeeded,
            "errored": errored, "canceled": 0, "expired": 0});
        object["results_url"] = results_url.into();
        *stored = Some(results);
    }
}

/// `GET /v1/messages/batches`: every batch, newest first.
pub(super) async fn list_batches(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Response {
    if let Err((status, kind, message)) = check_headers(&shared.config, &headers) {
        return error(status, kind, &message);
    }
    let batches = shared
        .message_batches
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let data: Vec<Value> = batches
        .batches
        .values()
        .rev()
        .map(|(o, _)| o.clone())
        .collect();
    axum::Json(json!({"data": data, "has_more": false})).into_response()
}

/// `GET /v1/messages/batches/{id}`.
pub(super) async fn get_batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err((status, kind, message)) = check_headers(&shared.config, &headers) {
        return error(status, kind, &message);
    }
    let batches = shared
        .message_batches
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match batches.batches.get(&id) {
        Some((object, _)) => axum::Json(object.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found_error", "no such batch"),
    }
}

/// `GET /v1/messages/batches/{id}/results`: one JSON line per request, once the batch ended.
pub(super) async fn batch_results(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err((status, kind, message)) = check_headers(&shared.config, &headers) {
        return error(status, kind, &message);
    }
    let batches = shared
        .message_batches
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match batches.batches.get(&id) {
        Some((_, Some(results))) => results.clone().into_response(),
        Some((_, None)) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the batch has not ended",
        ),
        None => error(StatusCode::NOT_FOUND, "not_found_error", "no such batch"),
    }
}
