//! The two endpoints, `POST /v1/chat/completions` and `POST /v1/completions`: the steps every
//! request goes through (capacity, record, key, latency, body, fault), and the OpenAI-shaped
//! reply to a well-formed one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::calls::{RecordedCall, Shared};
use super::faults::{Fault, HANG};
use super::reply::{judge_positions, render, reply_for, verdict_for};
use super::{LogprobFormat, ServerConfig};

/// The two endpoints.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

impl Api {
    /// The endpoint's name in [`RecordedCall::endpoint`].
    pub(super) fn name(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Completions => "completions",
        }
    }
}

/// `POST /v1/chat/completions`.
pub(super) async fn chat(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&shared, Api::Chat, &headers, &body).await
}

/// `POST /v1/completions`.
pub(super) async fn completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&shared, Api::Completions, &headers, &body).await
}

/// Every request goes through the same steps, in order: refuse it if the server is at its
/// capacity, record it (with the fault it draws), check the key, wait the configured latency,
/// check the body, inject the fault, answer.
async fn handle(shared: &Shared, api: Api, headers: &HeaderMap, raw: &[u8]) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(raw).ok();
    let call = |fault: Option<&'static str>| RecordedCall {
        endpoint: api.name(),
        body: parsed
            .clone()
            .unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned().into()),
        judge: parsed.as_ref().is_some_and(is_judge),
        fault,
        host: headers
            .get(HOST)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        batch: false,
    };
    let Some(_in_flight) = shared.enter() else {
        shared.record_refused(call(Some("capacity")));
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "The server is at its capacity; try again later.",
            "rate_limit_exceeded",
        );
    };
    let authorized = authorized(&shared.config, headers);
    let fault = if authorized && parsed.is_some() {
        shared.draw_fault(raw)
    } else {
        None
    };
    shared.record(raw, call(fault.map(Fault::name)));
    if !authorized {
        return unauthorized();
    }
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    let Some(request) = parsed else {
        return error(
            StatusCode::BAD_REQUEST,
            "The body is not JSON.",
            "invalid_json",
        );
    };
    match fault {
        Some(Fault::Error500) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The server had an error while processing your request.",
                "server_error",
            );
        }
        Some(Fault::RateLimited429) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for requests.",
                "rate_limit_exceeded",
            );
            let seconds = shared.config.faults.retry_after_s;
            if seconds > 0 {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, seconds.to_string().parse().expect("digits"));
            }
            return response;
        }
        Some(Fault::Hang) => {
            tokio::select! {
                () = tokio::time::sleep(HANG) => {}
                () = shared.stopping.cancelled() => {}
            }
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The server gave up on this request.",
                "unavailable",
            );
        }
        Some(Fault::Truncated) | None => {}
    }
    match answer(&shared.config, api, &request) {
        Ok(reply) if fault == Some(Fault::Truncated) => {
            let text = reply.to_string();
            let mut cut = text.len() / 2;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            (
                StatusCode::OK,
                [(CONTENT_TYPE, "application/json")],
                text[..cut].to_owned(),
            )
                .into_response()
        }
        Ok(reply) => {
            shared.answered(raw);
            axum::Json(reply).into_response()
        }
        Err(message) => error(StatusCode::BAD_REQUEST, &message, "invalid_request"),
    }
}

/// Whether a request carries the configured key (any request does when none is set).
pub(super) fn authorized(config: &ServerConfig, headers: &HeaderMap) -> bool {
    config.api_key.as_ref().is_none_or(|key| {
        headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            == Some(key.as_str())
    })
}

/// The reply to a request without the configured key.
pub(super) fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "Incorrect API key provided.",
        "invalid_api_key",
    )
}

/// An OpenAI-style error body.
pub(super) fn error_body(message: &str, code: &str) -> Value {
    json!({"error": {
        "message": message,
        "type": "invalid_request_error",
        "param": null,
        "code": code,
    }})
}

/// An OpenAI-style error reply.
pub(super) fn error(status: StatusCode, message: &str, code: &str) -> Response {
    (status, axum::Json(error_body(message, code))).into_response()
}

/// Whether a request asks for log-probabilities.
pub(super) fn is_judge(request: &Value) -> bool {
    matches!(
        request.get("logprobs"),
        Some(Value::Bool(true) | Value::Number(_))
    )
}

/// The reply to a well-formed request, or what is wrong with it.
pub(super) fn answer(config: &ServerConfig, api: Api, request: &Value) -> Result<Value, String> {
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .ok_or("`model` is required")?;
    if let (Api::Chat, true) = (api, config.strict_chat)
        && let Some(violation) = strict_chat_violation(request)
    {
        return Err(violation);
    }
    let prompt = prompt_text(api, request)?;
    let (text, logprobs, finish_reason) = if is_judge(request) {
        let max_tokens = request
            .get("max_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(16);
        let mut positions = judge_positions(&prompt, config, max_tokens);
        if let Some(top_n) = config.top_n {
            for position in &mut positions {
                position.truncate(top_n.max(1));
            }
        }
        let text: String = positions.iter().map(|top| top[0].0.as_str()).collect();
        let format = config.logprob_format.unwrap_or(match api {
            Api::Chat => LogprobFormat::Chat,
            Api::Completions => LogprobFormat::Legacy,
        });
        (text, render(format, &positions), "length")
    } else {
        let seed = request.get("seed").and_then(Value::as_u64).unwrap_or(0);
        let scripted = config
            .replies
            .iter()
            .find(|(marker, _)| prompt.contains(marker.as_str()));
        let text = match (scripted, config.verdict) {
            (Some((_, reply)), _) => reply.clone(),
            (None, Some(style)) => verdict_for(&prompt, seed, config, style),
            (None, None) => reply_for(&prompt, seed),
        };
        (text, Value::Null, "stop")
    };
    let choice = match api {
        Api::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }),
        Api::Completions => json!({
            "index": 0,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }),
    };
    let (tokens_in, tokens_out) = (tokens(&prompt), tokens(&text));
    let digest = hex::encode(Sha256::digest(prompt.as_bytes()));
    Ok(json!({
        "id": format!("cmpl-{}", &digest[..16]),
        "object": match api {
            Api::Chat => "chat.completion",
            Api::Completions => "text_completion",
        },
        "created": 0,
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": tokens_in,
            "completion_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
        },
    }))
}

/// The prompt text of a request (see the module documentation).
pub(super) fn prompt_text(api: Api, request: &Value) -> Result<String, String> {
    match api {
        Api::Chat => request
            .get("messages")
            .and_then(Value::as_array)
            .ok_or("`messages` must be a list")?
            .iter()
            .map(|message| {
                message
                    .get("content")
                    .and_then(Value::as_str)
                    .ok_or_else(|| "every message needs a string `content`".to_owned())
            })
            .collect(),
        Api::Completions => request
            .get("prompt")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| "`prompt` must be a string".to_owned()),
    }
}

/// A plausible token count: a token per four characters, at least one.
fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64 / 4).max(1)
}

/// Why a chat request breaks a strict chat template, if it does: roles must alternate user,
/// assistant, user, … after an optional leading system message, and the last message must be
/// the user's unless the request continues the final assistant message.
fn strict_chat_violation(request: &Value) -> Option<String> {
    let messages = request.get("messages")?.as_array()?;
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m.get("role").and_then(Value::as_str).unwrap_or(""))
        .collect();
    let body = match roles.first() {
        Some(&"system") => &roles[1..],
        _ => &roles[..],
    };
    let alternates = body
        .iter()
        .enumerate()
        .all(|(i, role)| *role == if i % 2 == 0 { "user" } else { "assistant" });
    if !alternates || body.is_empty() {
        return Some(
            "Conversation roles must alternate user/assistant/user/assistant/... (after an optional system message)"
                .into(),
        );
    }
    let continues = request.get("continue_final_message") == Some(&Value::Bool(true));
    if body.last() != Some(&"user") && !continues {
        return Some("the last message must be the user's".into());
    }
    None
}
