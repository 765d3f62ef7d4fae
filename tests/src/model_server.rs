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
//! [`ServerConfig::judge_shape`] moves the letters: [`JudgeShape::ParenFirst`] puts a `" ("`
//! position (with a faint `"B"` in its tail) before them, as a chat judge answering `" (A)"`
//! does; [`JudgeShape::Faint`] leaves them only 0.03 of the first position.
//! [`ServerConfig::top_n`] cuts every position to its most probable candidates, as TGI does.
//!
//! # Strict chat
//! With [`ServerConfig::strict_chat`] a chat request is refused with a 400, as Mistral's chat
//! template refuses it, unless its roles alternate user/assistant after an optional leading
//! system message and it ends with the user's message (or continues the assistant's).
//!
//! Log-probabilities use the chat wire format (`logprobs.content[i].top_logprobs`) on the chat
//! endpoint and the legacy one (`logprobs.top_logprobs[i]`, a token → log-probability map) on the
//! completions endpoint, unless [`ServerConfig::logprob_format`] forces one.
//!
//! # Faults
//! [`ServerConfig::faults`] makes some requests fail, each kind with its probability
//! ([`Faults`]): a 500, a 429 (with `Retry-After` when [`Faults::retry_after_s`] is set), a hang
//! (no reply for [`HANG`], or until the server stops) or a 200 whose body is cut in the middle
//! of the JSON. Which request fails is decided deterministically: the n-th arrival of a body
//! (n = 0, 1, …, counted per distinct body) draws a number in [0, 1) from SHA-256(SHA-256(body),
//! n) and the kinds take consecutive intervals of it in the order above. A retried request, being
//! the same body again, draws anew and can succeed. Every request's fault is in its
//! [`RecordedCall::fault`]; a request refused for its key or its body gets none. With all
//! probabilities zero (the default) the server behaves as if there were no fault injection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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
/// The first position of a [`JudgeShape::ParenFirst`] judgment.
const PAREN_FIRST: [(&str, f64); 4] = [(" (", 0.93), (" The", 0.04), ("\n", 0.02), ("B", 0.01)];
/// The non-letter tokens of a [`JudgeShape::Faint`] judgment's first position (sum 0.97).
const FAINT_OTHERS: [(&str, f64); 3] = [("I", 0.6), (" The", 0.3), (" It", 0.07)];
/// Share of a faint position held by the letters.
const FAINT_MASS: f64 = 0.03;
/// How long a hanging request goes unanswered (unless the server stops first): longer than any
/// sane client timeout.
pub const HANG: Duration = Duration::from_secs(60);

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
    /// Requests that fail on purpose (see the module documentation).
    pub faults: Faults,
    /// Keep no request log (for benchmarks of millions of calls, whose bodies would fill the
    /// memory): only count the requests and how many repeat an earlier body
    /// ([`ModelServer::counts`]).
    pub count_only: bool,
    /// Where a judgment puts its letters (see [`JudgeShape`]).
    pub judge_shape: JudgeShape,
    /// Return at most this many candidates per position, as TGI's `--max-top-n-tokens`
    /// (default 5) does; `None` returns them all.
    pub top_n: Option<usize>,
    /// Refuse (400, with Mistral's template's message) a chat request whose roles do not
    /// alternate user/assistant after an optional leading system message, or that does not end
    /// with a user message (unless it asks to continue the final assistant message).
    pub strict_chat: bool,
}

/// Where a judgment's letters are, at the probability [`p_first`] gives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JudgeShape {
    /// The first position holds the letters (0.9 of its mass).
    #[default]
    LettersFirst,
    /// A chat judge answering `" (A)"`: the first position is mostly `" ("` with a faint `"B"`
    /// (0.01) in its tail; the letters (0.9 of the mass) are at the second position.
    ParenFirst,
    /// The letters hold only 0.03 of the first position and appear nowhere else.
    Faint,
}

/// The probability of each kind of injected fault per request; their sum is at most 1.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Answer 500 with an OpenAI-style error.
    pub error_500: f64,
    /// Answer 429 with an OpenAI-style error.
    pub rate_limited_429: f64,
    /// The `Retry-After` seconds a 429 carries; 0 sends no `Retry-After`.
    pub retry_after_s: u64,
    /// Do not answer for [`HANG`].
    pub hang: f64,
    /// Answer 200 with the reply's JSON cut off in the middle.
    pub truncated: f64,
}

impl Faults {
    /// The kinds in the order they take their intervals of the draw, with their probabilities.
    fn kinds(&self) -> [(Fault, f64); 4] {
        [
            (Fault::Error500, self.error_500),
            (Fault::RateLimited429, self.rate_limited_429),
            (Fault::Hang, self.hang),
            (Fault::Truncated, self.truncated),
        ]
    }
}

/// One kind of injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Error500,
    RateLimited429,
    Hang,
    Truncated,
}

impl Fault {
    /// The name in [`RecordedCall::fault`].
    fn name(self) -> &'static str {
        match self {
            Fault::Error500 => "500",
            Fault::RateLimited429 => "429",
            Fault::Hang => "hang",
            Fault::Truncated => "truncated",
        }
    }
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
    /// The fault injected into the reply: `"500"`, `"429"`, `"hang"` or `"truncated"`.
    pub fault: Option<&'static str>,
}

impl RecordedCall {
    /// The prompt text the server derived the reply from (see the module documentation).
    pub fn prompt_text(&self) -> Option<String> {
        let api = if self.endpoint == "chat" {
            Api::Chat
        } else {
            Api::Completions
        };
        prompt_text(api, &self.body).ok()
    }
}

/// A running test server; dropping it shuts it down.
pub struct ModelServer {
    url: String,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ModelServer {
    /// Starts a server on `127.0.0.1:0` in a task of the current tokio runtime. Panics when the
    /// fault probabilities are not each in [0, 1] or add up to more than 1.
    pub async fn start(config: ServerConfig) -> ModelServer {
        Self::start_at("127.0.0.1:0", config).await
    }

    /// Starts a server on a given address, e.g. the address of a server that was stopped, to
    /// end a simulated outage.
    pub async fn start_at(address: &str, config: ServerConfig) -> ModelServer {
        let kinds = config.faults.kinds();
        assert!(
            kinds.iter().all(|(_, p)| (0.0..=1.0).contains(p))
                && kinds.iter().map(|(_, p)| p).sum::<f64>() <= 1.0,
            "fault probabilities must be in [0, 1] and add up to at most 1: {:?}",
            config.faults
        );
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .unwrap_or_else(|e| panic!("bind {address}: {e}"));
        let addr: SocketAddr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Arc::new(Shared {
            config,
            calls: Mutex::new(Vec::new()),
            arrivals: Mutex::new(HashMap::new()),
            counted: Mutex::new(Counted::default()),
            stopping: CancellationToken::new(),
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

    /// `(requests, requests whose body had arrived before)` since the start, in any mode:
    /// a repeated body is a model call paid twice.
    pub fn counts(&self) -> (u64, u64) {
        let counted = self
            .shared
            .counted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (counted.requests, counted.repeats)
    }

    /// Shuts the server down and waits until it has stopped listening and its connections have
    /// closed (in-flight requests are answered first; hanging ones at once, with a 503).
    pub async fn stop(mut self) {
        self.shared.stopping.cancel();
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
        self.shared.stopping.cancel();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// The probability of option A a judge call on `prompt_text` reports, in (0.05, 0.95): the
/// first 8 bytes of SHA-256(`prompt_text`) as a big-endian u64 `v`, then
/// `0.05 + 0.9 × ((v >> 11) + 0.5) / 2^53`.
pub fn p_first(prompt_text: &str) -> f64 {
    0.05 + 0.9 * unit(&Sha256::digest(prompt_text.as_bytes()))
}

/// A number in (0, 1) from the first 8 bytes of a digest: `((v >> 11) + 0.5) / 2^53`.
fn unit(digest: &[u8]) -> f64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    ((u64::from_be_bytes(first) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// The reply a generation call gets: `"reply <h>: seed <seed>, a test answer"` where `<h>` is
/// the first 8 hex digits of SHA-256(`prompt_text`).
pub fn reply_for(prompt_text: &str, seed: u64) -> String {
    let digest = hex::encode(Sha256::digest(prompt_text.as_bytes()));
    format!("reply {}: seed {seed}, a test answer", &digest[..8])
}

/// Requests counted by [`ModelServer::counts`].
#[derive(Default)]
struct Counted {
    requests: u64,
    repeats: u64,
    /// The first 16 bytes of SHA-256 of every body seen.
    seen: std::collections::HashSet<[u8; 16]>,
}

/// State shared by the handlers and the [`ModelServer`].
struct Shared {
    config: ServerConfig,
    calls: Mutex<Vec<RecordedCall>>,
    /// How often each body (by SHA-256) has arrived, for the fault draw.
    arrivals: Mutex<HashMap<[u8; 32], u64>>,
    /// Requests and repeated bodies.
    counted: Mutex<Counted>,
    /// Cancelled when the server stops: ends hanging requests.
    stopping: CancellationToken,
}

impl Shared {
    /// The fault this arrival of `raw` gets (see the module documentation).
    fn draw_fault(&self, raw: &[u8]) -> Option<Fault> {
        let kinds = self.config.faults.kinds();
        if kinds.iter().all(|(_, p)| *p == 0.0) {
            return None;
        }
        let body: [u8; 32] = Sha256::digest(raw).into();
        let arrival = {
            let mut arrivals = self.arrivals.lock().unwrap_or_else(PoisonError::into_inner);
            let count = arrivals.entry(body).or_default();
            *count += 1;
            *count - 1
        };
        let draw = unit(
            &Sha256::new()
                .chain_update(body)
                .chain_update(arrival.to_be_bytes())
                .finalize(),
        );
        let mut bound = 0.0;
        for (fault, probability) in kinds {
            bound += probability;
            if draw < bound {
                return Some(fault);
            }
        }
        None
    }
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

/// Every request goes through the same steps, in order: record it (with the fault it draws),
/// check the key, wait the configured latency, check the body, inject the fault, answer.
async fn handle(shared: &Shared, api: Api, headers: &HeaderMap, raw: &[u8]) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(raw).ok();
    let authorized = shared.config.api_key.as_ref().is_none_or(|key| {
        headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            == Some(key.as_str())
    });
    let fault = if authorized && parsed.is_some() {
        shared.draw_fault(raw)
    } else {
        None
    };
    {
        let digest = Sha256::digest(raw);
        let mut counted = shared
            .counted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counted.requests += 1;
        if !counted
            .seen
            .insert(digest[..16].try_into().expect("16 bytes"))
        {
            counted.repeats += 1;
        }
    }
    if !shared.config.count_only {
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
                fault: fault.map(Fault::name),
            });
    }
    if !authorized {
        return error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            "invalid_api_key",
        );
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
fn judge_positions(
    prompt: &str,
    config: &ServerConfig,
    max_tokens: u64,
) -> Vec<Vec<(String, f64)>> {
    let owned = |candidates: &[(&str, f64)]| -> Vec<(String, f64)> {
        candidates.iter().map(|&(t, p)| (t.to_owned(), p)).collect()
    };
    let letters = |mass: f64| -> Vec<(String, f64)> {
        let p = p_first(prompt);
        let mut spelled = Vec::new();
        for (letter, share_of_mass) in [("A", p), ("B", 1.0 - p)] {
            for (spelling, share) in SPELLINGS {
                spelled.push((spelling.replace("{}", letter), mass * share_of_mass * share));
            }
        }
        spelled
    };
    let mut positions = if config.no_letters {
        vec![owned(&NO_LETTERS), owned(&SECOND)]
    } else {
        match config.judge_shape {
            JudgeShape::LettersFirst => {
                let mut first = owned(&OTHERS);
                first.extend(letters(LETTER_MASS));
                vec![first, owned(&SECOND)]
            }
            JudgeShape::ParenFirst => {
                let mut second = owned(&OTHERS);
                second.extend(letters(LETTER_MASS));
                vec![owned(&PAREN_FIRST), second, owned(&SECOND)]
            }
            JudgeShape::Faint => {
                let mut first = owned(&FAINT_OTHERS);
                first.extend(letters(FAINT_MASS));
                vec![first, owned(&SECOND)]
            }
        }
    };
    for position in &mut positions {
        position.sort_by(|a, b| b.1.total_cmp(&a.1));
    }
    positions.truncate(max_tokens.max(1) as usize);
    positions
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
        let positions = judge_positions("prompt 1", &ServerConfig::default(), 3);
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
        let no_letters = ServerConfig {
            no_letters: true,
            ..ServerConfig::default()
        };
        assert_eq!(judge_positions("x", &no_letters, 1).len(), 1);
    }

    fn shared(faults: Faults) -> Shared {
        Shared {
            config: ServerConfig {
                faults,
                ..ServerConfig::default()
            },
            calls: Mutex::new(Vec::new()),
            arrivals: Mutex::new(HashMap::new()),
            counted: Mutex::new(Counted::default()),
            stopping: CancellationToken::new(),
        }
    }

    #[test]
    fn faults_are_drawn_per_arrival_deterministically_at_their_rates() {
        let faults = Faults {
            error_500: 0.2,
            rate_limited_429: 0.1,
            retry_after_s: 1,
            hang: 0.05,
            truncated: 0.05,
        };
        // 10 arrivals each of 1,000 bodies.
        let draws = |server: &Shared| -> Vec<Option<Fault>> {
            (0..10_000)
                .map(|i| server.draw_fault(format!("body {}", i % 1000).as_bytes()))
                .collect()
        };
        let first = draws(&shared(faults));
        assert_eq!(
            first,
            draws(&shared(faults)),
            "the same arrivals draw the same"
        );
        let share = |fault: Option<Fault>| {
            first.iter().filter(|drawn| **drawn == fault).count() as f64 / first.len() as f64
        };
        for (fault, expected) in [
            (Some(Fault::Error500), 0.2),
            (Some(Fault::RateLimited429), 0.1),
            (Some(Fault::Hang), 0.05),
            (Some(Fault::Truncated), 0.05),
            (None, 0.6),
        ] {
            let drawn = share(fault);
            assert!((drawn - expected).abs() < 0.02, "{fault:?}: {drawn}");
        }
        // A body's later arrivals draw anew: most bodies that failed first succeed later.
        let recovered = (0..1000)
            .filter(|&body| first[body].is_some())
            .filter(|&body| (1..10).any(|arrival| first[arrival * 1000 + body].is_none()))
            .count();
        let failed_first = (0..1000).filter(|&body| first[body].is_some()).count();
        assert!(
            recovered > failed_first * 9 / 10,
            "{recovered} of {failed_first}"
        );
    }

    #[test]
    fn without_faults_nothing_is_drawn_or_counted() {
        let server = shared(Faults::default());
        assert!((0..100).all(|_| server.draw_fault(b"body").is_none()));
        assert!(server.arrivals.lock().unwrap().is_empty());
    }
}
