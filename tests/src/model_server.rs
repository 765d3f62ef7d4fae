//! A deterministic OpenAI-compatible model server that runs inside the test process.
//!
//! [`ModelServer::start`] binds `127.0.0.1:0`, serves `POST /v1/chat/completions` and
//! `POST /v1/completions` from a tokio task, and records every request ([`ModelServer::calls`]).
//! The same request body always gets the same reply.
//!
//! # Prompt text
//! Replies are derived from the request's *prompt text*: on the chat endpoint the `content` of
//! every message concatenated in order with no separator; on the completions endpoint the
//! `prompt` string. For a `cai_worker` prompt that is
//! `prompt.turns.iter().map(|t| t.text.as_str()).collect::<String>()` (chat) or
//! `prompt.transcript()` (completions).
//!
//! # Generation
//! A request without log-probabilities gets [`reply_for`]`(prompt_text, seed)` (the request's
//! `seed`, 0 when absent), e.g. `"reply 3fa9c2d1: seed 7, a test answer"`.
//!
//! # Judging
//! A request asking for log-probabilities (chat: `"logprobs": true`; completions: a numeric
//! `"logprobs"`) is a judge call. Its first generated position holds, whatever `top_logprobs`
//! asks (all candidates are always returned):
//!
//! | token | probability |
//! |---|---|
//! | `" A"`, `"A"`, `"(A"` | 0.9 × p × (0.60, 0.25, 0.15) |
//! | `" B"`, `"B"`, `"(B"` | 0.9 × (1 − p) × (0.60, 0.25, 0.15) |
//! | `"The"`, `" I"` | 0.06, 0.04 |
//!
//! with p = [`p_first`]`(prompt_text)`. Summing every spelling of each letter and normalising
//! over the two letters (what `cai_worker::model::letters::probability_of_a` does) gives back
//! exactly `p_first(prompt_text)` (up to floating-point rounding, well under 1e-9); a reading
//! that forgot to normalise would get 0.9 × p instead. The second position holds `")"` (0.9)
//! and `"."` (0.1); no more than `max_tokens` positions are returned. With
//! [`ServerConfig::no_letters`] the first position holds only `" The"`, `" I"` and `" ("`.
//! The reply text is the most probable token of each position, e.g. `" A)"`.
//!
//! Log-probabilities use the chat wire format (`logprobs.content[i].top_logprobs`) on the chat
//! endpoint and the legacy one (`logprobs.top_logprobs[i]`, a token → log-probability map) on the
//! completions endpoint, unless [`ServerConfig::logprob_format`] forces one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Share of the first position's probability mass held by the two letters.
const LETTER_MASS: f64 = 0.9;
/// How a letter's mass is split over its spellings.
const SPELLINGS: [(&str, f64); 3] = [(" {}", 0.60), ("{}", 0.25), ("({}", 0.15)];
/// Non-letter tokens of the first position and their fixed probabilities (sum 1 − LETTER_MASS).
const OTHERS: [(&str, f64); 2] = [("The", 0.06), (" I", 0.04)];
/// The first position when [`ServerConfig::no_letters`] is set.
const NO_LETTERS: [(&str, f64); 3] = [(" The", 0.5), (" I", 0.3), (" (", 0.2)];
/// The second position of a judgment.
const SECOND: [(&str, f64); 2] = [(")", 0.9), (".", 0.1)];

/// How log-probabilities are laid out in a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogprobFormat {
    /// `choices[0].logprobs.content[i].top_logprobs = [{"token", "logprob"}, …]`.
    Chat,
    /// `choices[0].logprobs.top_logprobs = [{"<token>": logprob, …}, …]`, one map per position.
    Legacy,
}

/// How the server behaves; everything is off by default.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    /// Wait this long before answering each request.
    pub latency: Duration,
    /// Judge replies contain no spelling of A or B.
    pub no_letters: bool,
    /// Require `Authorization: Bearer <key>`; otherwise answer 401 with an OpenAI-style error.
    pub api_key: Option<String>,
    /// Force this log-prob format on both endpoints.
    pub logprob_format: Option<LogprobFormat>,
}

/// One request the server received.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedCall {
    /// `"chat"` or `"completions"`.
    pub endpoint: &'static str,
    /// The JSON body (a JSON string holding the raw text if it was not JSON).
    pub body: Value,
    /// Whether log-probabilities were requested.
    pub judge: bool,
}

/// A running test server; dropping it shuts it down.
pub struct ModelServer {
    url: String,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ModelServer {
    /// Starts a server on `127.0.0.1:0` in a task of the current tokio runtime.
    pub async fn start(config: ServerConfig) -> ModelServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr: SocketAddr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Arc::new(Shared {
            config,
            calls: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .with_state(shared.clone());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .expect("the test model server failed");
        });
        ModelServer {
            url: format!("http://{addr}/v1"),
            shared,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// The base URL, `http://127.0.0.1:<port>/v1`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Every request received so far, in order of arrival.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.shared
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Shuts the server down and waits until it has stopped listening and its connections have
    /// closed (in-flight requests are answered first).
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the test model server task panicked");
        }
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// The probability of option A a judge call on `prompt_text` reports, in (0.05, 0.95): the
/// first 8 bytes of SHA-256(`prompt_text`) as a big-endian u64 `v`, then
/// `0.05 + 0.9 × ((v >> 11) + 0.5) / 2^53`.
pub fn p_first(prompt_text: &str) -> f64 {
    let digest = Sha256::digest(prompt_text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let unit = ((u64::from_be_bytes(first) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    0.05 + 0.9 * unit
}

/// The reply a generation call gets: `"reply <h>: seed <seed>, a test answer"` where `<h>` is
/// the first 8 hex digits of SHA-256(`prompt_text`).
pub fn reply_for(prompt_text: &str, seed: u64) -> String {
    let digest = hex::encode(Sha256::digest(prompt_text.as_bytes()));
    format!("reply {}: seed {seed}, a test answer", &digest[..8])
}

/// State shared by the handlers and the [`ModelServer`].
struct Shared {
    config: ServerConfig,
    calls: Mutex<Vec<RecordedCall>>,
}

/// The two endpoints.
#[derive(Clone, Copy)]
enum Api {
    Chat,
    Completions,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Completions => "completions",
        }
    }
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(&shared, Api::Chat, &headers, &body).await
}

async fn completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&shared, Api::Completions, &headers, &body).await
}

/// Every request goes through the same steps, in order: record it, check the key, wait the
/// configured latency, answer.
async fn handle(shared: &Shared, api: Api, headers: &HeaderMap, raw: &[u8]) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(raw).ok();
    shared
        .calls
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(RecordedCall {
            endpoint: api.name(),
            body: parsed
                .clone()
                .unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned().into()),
            judge: parsed.as_ref().is_some_and(is_judge),
        });
    if let Some(key) = &shared.config.api_key {
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if bearer != Some(key.as_str()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "Incorrect API key provided.",
                "invalid_api_key",
            );
        }
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
    match answer(&shared.config, api, &request) {
        Ok(reply) => axum::Json(reply).into_response(),
        Err(message) => error(StatusCode::BAD_REQUEST, &message, "invalid_request"),
    }
}

/// An OpenAI-style error reply.
fn error(status: StatusCode, message: &str, code: &str) -> Response {
    let body = json!({"error": {
        "message": message,
        "type": "invalid_request_error",
        "param": null,
        "code": code,
    }});
    (status, axum::Json(body)).into_response()
}

/// Whether a request asks for log-probabilities.
fn is_judge(request: &Value) -> bool {
    matches!(
        request.get("logprobs"),
        Some(Value::Bool(true) | Value::Number(_))
    )
}

/// The reply to a well-formed request, or what is wrong with it.
fn answer(config: &ServerConfig, api: Api, request: &Value) -> Result<Value, String> {
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .ok_or("`model` is required")?;
    let prompt = prompt_text(api, request)?;
    let (text, logprobs, finish_reason) = if is_judge(request) {
        let max_tokens = request
            .get("max_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(16);
        let positions = judge_positions(&prompt, config.no_letters, max_tokens);
        let text: String = positions.iter().map(|top| top[0].0.as_str()).collect();
        let format = config.logprob_format.unwrap_or(match api {
            Api::Chat => LogprobFormat::Chat,
            Api::Completions => LogprobFormat::Legacy,
        });
        (text, render(format, &positions), "length")
    } else {
        let seed = request.get("seed").and_then(Value::as_u64).unwrap_or(0);
        (reply_for(&prompt, seed), Value::Null, "stop")
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
fn prompt_text(api: Api, request: &Value) -> Result<String, String> {
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

/// The candidates of each generated position of a judgment, most probable first.
fn judge_positions(prompt: &str, no_letters: bool, max_tokens: u64) -> Vec<Vec<(String, f64)>> {
    let owned = |candidates: &[(&str, f64)]| -> Vec<(String, f64)> {
        candidates.iter().map(|&(t, p)| (t.to_owned(), p)).collect()
    };
    let mut first = if no_letters {
        owned(&NO_LETTERS)
    } else {
        let p = p_first(prompt);
        let mut first = owned(&OTHERS);
        for (letter, mass) in [("A", p), ("B", 1.0 - p)] {
            for (spelling, share) in SPELLINGS {
                first.push((spelling.replace("{}", letter), LETTER_MASS * mass * share));
            }
        }
        first
    };
    first.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut positions = vec![first, owned(&SECOND)];
    positions.truncate(max_tokens.max(1) as usize);
    positions
}

/// The `logprobs` object of a choice in `format`.
fn render(format: LogprobFormat, positions: &[Vec<(String, f64)>]) -> Value {
    match format {
        LogprobFormat::Chat => {
            let content: Vec<Value> = positions
                .iter()
                .map(|top| {
                    let candidate =
                        |(token, p): &(String, f64)| json!({"token": token, "logprob": p.ln()});
                    let mut entry = candidate(&top[0]);
                    entry["top_logprobs"] = top.iter().map(candidate).collect();
                    entry
                })
                .collect();
            json!({"content": content})
        }
        LogprobFormat::Legacy => {
            let mut offset = 0;
            let mut text_offset = Vec::new();
            for top in positions {
                text_offset.push(offset);
                offset += top[0].0.len();
            }
            let top_logprobs: Vec<Value> = positions
                .iter()
                .map(|top| {
                    top.iter()
                        .map(|(token, p)| (token.clone(), Value::from(p.ln())))
                        .collect::<serde_json::Map<String, Value>>()
                        .into()
                })
                .collect();
            json!({
                "tokens": positions.iter().map(|top| top[0].0.clone()).collect::<Vec<_>>(),
                "token_logprobs": positions.iter().map(|top| top[0].1.ln()).collect::<Vec<_>>(),
                "top_logprobs": top_logprobs,
                "text_offset": text_offset,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_first_is_spread_and_the_letters_normalise_back_to_it() {
        let ps: Vec<f64> = (0..200).map(|i| p_first(&format!("prompt {i}"))).collect();
        assert!(ps.iter().all(|p| (0.05..0.95).contains(p)));
        assert!(ps.iter().any(|&p| p < 0.3) && ps.iter().any(|&p| p > 0.7));
        let positions = judge_positions("prompt 1", false, 3);
        assert_eq!(positions.len(), 2);
        let total: f64 = positions[0].iter().map(|c| c.1).sum();
        assert!((total - 1.0).abs() < 1e-12);
        let mass = |letter: char| -> f64 {
            positions[0]
                .iter()
                .filter(|c| c.0.trim_start_matches([' ', '(']) == letter.to_string())
                .map(|c| c.1)
                .sum()
        };
        let p = mass('A') / (mass('A') + mass('B'));
        assert!((p - p_first("prompt 1")).abs() < 1e-12);
        assert_eq!(judge_positions("x", true, 1).len(), 1);
    }
}
