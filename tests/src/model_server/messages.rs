//! `POST /v1/messages`: Anthropic's Messages API, checked strictly. A request is refused as the
//! API refuses it, with Anthropic's error body (`{"type": "error", "error": {"type", "message"}}`):
//! without `x-api-key` when [`ServerConfig::api_key`] is set, or with another key
//! (`authentication_error`, 401); without the `anthropic-version` header, without `model` or
//! `max_tokens`, with a `system` role among the messages, with roles that do not alternate from
//! `user`, with a final assistant message ending in whitespace, or with a `temperature` above 1
//! (`invalid_request_error`, 400). The faults draw as on the other endpoints: a 500 fault is
//! answered `overloaded_error` (529), a 429 fault `rate_limit_error` (429, with `retry-after`
//! when set); a hang or a cut body is not simulated here.
//!
//! The prompt text is `system` followed by every message's content. The API takes no seed, so
//! a reply is drawn with the number of earlier requests of the same body in its place: a
//! generation is [`reply_for`]`(prompt_text, n)`, or with [`ServerConfig::verdict`]
//! [`verdict_for`]`(prompt_text, n, …)`, so that repeated votes are distinct draws.

use std::sync::{Arc, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{HOST, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::calls::{RecordedCall, Shared};
use super::faults::Fault;
use super::reply::{reply_for, verdict_for};

/// The prompt text of a Messages request: `system`, then every message's content.
pub(super) fn prompt_text(request: &Value) -> Option<String> {
    let mut text = request
        .get("system")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    for message in request.get("messages")?.as_array()? {
        text.push_str(message.get("content")?.as_str()?);
    }
    Some(text)
}

/// An Anthropic error reply.
fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// What is wrong with a request's body, as the API would say it.
fn violation(request: &Value) -> Option<String> {
    if request.get("model").and_then(Value::as_str).is_none() {
        return Some("model: Field required".into());
    }
    if request.get("max_tokens").and_then(Value::as_u64).is_none() {
        return Some("max_tokens: Field required".into());
    }
    if request
        .get("temperature")
        .and_then(Value::as_f64)
        .is_some_and(|t| !(0.0..=1.0).contains(&t))
    {
        return Some("temperature: Input should be less than or equal to 1".into());
    }
    if request
        .get("system")
        .is_some_and(|system| !system.is_string())
    {
        return Some("system: Input should be a valid string".into());
    }
    let messages = request.get("messages")?.as_array()?;
    for (index, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        if role == "system" {
            return Some(format!(
                "messages.{index}.role: Input should be 'user' or 'assistant'; use the top-level `system` parameter"
            ));
        }
        let expected = if index % 2 == 0 { "user" } else { "assistant" };
        if role != expected {
            return Some(format!(
                "messages: roles must alternate between \"user\" and \"assistant\", starting with \"user\" (message {index} is {role:?})"
            ));
        }
        if !message.get("content").is_some_and(Value::is_string) {
            return Some(format!("messages.{index}.content: a string is required"));
        }
    }
    match messages.last() {
        None => Some("messages: at least one message is required".into()),
        Some(last)
            if last["role"] == "assistant"
                && last["content"]
                    .as_str()
                    .is_some_and(|c| c.ends_with(char::is_whitespace)) =>
        {
            Some("messages: final assistant content cannot end with trailing whitespace".into())
        }
        Some(_) => None,
    }
}

/// `POST /v1/messages`.
pub(super) async fn messages(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&raw).ok();
    let authorized = shared.config.api_key.as_ref().is_none_or(|key| {
        headers.get("x-api-key").and_then(|v| v.to_str().ok()) == Some(key.as_str())
    });
    let fault = if authorized && parsed.is_some() {
        shared.draw_fault(&raw)
    } else {
        None
    };
    let body = parsed
        .clone()
        .unwrap_or_else(|| String::from_utf8_lossy(&raw).into_owned().into());
    let earlier = shared
        .calls
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|call| call.endpoint == "messages" && call.body == body && call.fault.is_none())
        .count() as u64;
    shared.record(
        &raw,
        RecordedCall {
            endpoint: "messages",
            body,
            judge: false,
            fault: fault.map(Fault::name),
            host: headers
                .get(HOST)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            batch: false,
        },
    );
    if !authorized {
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid x-api-key",
        );
    }
    if headers.get("anthropic-version").is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    let Some(request) = parsed else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "The body is not JSON.",
        );
    };
    if let Some(message) = violation(&request) {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", &message);
    }
    match fault {
        Some(Fault::Error500) => {
            return error(
                StatusCode::from_u16(529).expect("a status"),
                "overloaded_error",
                "Overloaded",
            );
        }
        Some(Fault::RateLimited429) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
            );
            let seconds = shared.config.faults.retry_after_s;
            if seconds > 0 {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, seconds.to_string().parse().expect("digits"));
            }
            return response;
        }
        Some(Fault::Hang | Fault::Truncated) | None => {}
    }
    let prompt = prompt_text(&request).unwrap_or_default();
    let text = match shared.config.verdict {
        Some(style) => verdict_for(&prompt, earlier, &shared.config, style),
        None => reply_for(&prompt, earlier),
    };
    shared.answered(&raw);
    let tokens = |text: &str| (text.chars().count() as u64 / 4).max(1);
    axum::Json(json!({
        "id": format!("msg_{earlier}"),
        "type": "message",
        "role": "assistant",
        "model": request["model"],
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": tokens(&prompt), "output_tokens": tokens(&text)},
    }))
    .into_response()
}
