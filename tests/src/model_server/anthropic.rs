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
//! [`ServerConfig::replies`] scripts it, and whose usage counts a token per four characters.
//! [`ServerConfig::anthropic_errors`] answers the first requests with given errors instead
//! (`retry-after: 0` on 429 and 529). Requests are recorded with the endpoint `"messages"`.

use std::sync::{Arc, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{HOST, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ServerConfig;
use super::calls::{RecordedCall, Shared};
use super::reply::reply_for;

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
    match answer(&shared.config, &request) {
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
fn answer(config: &ServerConfig, request: &Value) -> Result<Value, String> {
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
        .map_or_else(|| reply_for(&text, 0), |(_, reply)| reply.clone());
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
