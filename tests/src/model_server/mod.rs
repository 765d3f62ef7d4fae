//! A deterministic OpenAI-compatible model server that runs inside the test process.
//!
//! [`ModelServer::start`] binds `127.0.0.1:0`, serves `POST /v1/chat/completions` and
//! `POST /v1/completions` (and Anthropic's `POST /v1/messages`, see the `anthropic` module) from
//! a tokio task, and records every request ([`ModelServer::calls`]).
//! The same request body always gets the same reply. It serves the Batch API too (see
//! [`BatchConfig`] and the `batch` module): every line of a batch is answered as a direct call
//! of its body would be, and recorded as a request of its own.
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
//! `seed`, 0 when absent), e.g. `"reply 3fa9c2d1: seed 7, a test answer"`, unless
//! [`ServerConfig::replies`] scripts its reply.
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
//! # Verdicts
//! With [`ServerConfig::verdict`] set, a generation call is answered with a written verdict
//! instead ([`verdict_for`]): a vote for (A) drawn from the prompt text and the seed with
//! probability [`p_first`] (or [`ServerConfig::verdict_p_first`]), so that the share of votes
//! under distinct seeds estimates a known probability.
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
//! # Capacity
//! With [`ServerConfig::capacity`] = N, a request that arrives while N requests are being
//! served (from their arrival to their reply, hanging ones included) is answered at once with
//! a 429 (OpenAI's rate-limit error, no `Retry-After`), recorded with the fault `"capacity"`
//! and counted by [`ModelServer::over_capacity`]; it draws no fault.
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
//!
//! # Layout
//! - this file: the configuration and [`ModelServer`], which starts, records and stops;
//! - `calls`: the request log ([`RecordedCall`]), the request counts and the state the
//!   handlers share;
//! - `faults`: the injected faults ([`Faults`]) and their deterministic draw;
//! - `handler`: the two endpoints: the steps every request goes through, and the reply;
//! - `anthropic`: Anthropic's Messages API (`/v1/messages`), checked strictly;
//! - `batch`: the Batch API (files, batches), answering each line through `handler`'s reply,
//!   with `multipart` reading the file uploads;
//! - `reply`: what a reply says: the generation text ([`reply_for`]), a judgment's positions
//!   at [`p_first`] and their log-probability layouts.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod anthropic;
mod batch;
mod calls;
mod faults;
mod handler;
mod multipart;
mod reply;

pub use batch::BatchConfig;
pub use calls::RecordedCall;
pub use faults::{Faults, HANG};
pub use reply::{p_first, reply_for, verdict_for};

use calls::Shared;
use handler::{chat, completions};

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
    /// Serve at most this many requests at once: one that arrives while that many are in
    /// flight is answered at once with a 429 and no `Retry-After`, as an overloaded server
    /// does (see [`ModelServer::over_capacity`]). `None`: no limit.
    pub capacity: Option<usize>,
    /// How batches of the Batch API behave (how long they take, their faults).
    pub batch: BatchConfig,
    /// Scripted generations: a request whose prompt text contains the first string of a pair
    /// (the first pair that matches) is answered with the second instead of [`reply_for`], as
    /// a user model that ends a conversation on cue would be.
    pub replies: Vec<(String, String)>,
    /// The first requests to the Messages API stand-in (`/v1/messages`), one per entry, are
    /// answered with that HTTP status and Anthropic error type (`retry-after: 0` on a 429 or
    /// a 529) instead of a reply.
    pub anthropic_errors: Vec<(u16, String)>,
    /// Answer every generation call with a written verdict in this style ([`verdict_for`]),
    /// as a judge model trained to write one does; `None`: [`reply_for`].
    pub verdict: Option<VerdictStyle>,
    /// The probability a verdict chooses (A) whatever the prompt (a judge with a pure position
    /// bias); `None`: [`p_first`] of the prompt text.
    pub verdict_p_first: Option<f64>,
    /// The share of verdicts that name no choice, in [0, 1].
    pub verdict_unparseable: f64,
}

/// How a verdict judge writes its choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerdictStyle {
    /// Prometheus 2: `Feedback: … [RESULT] A`.
    Prometheus,
    /// MT-Bench and Auto-J: `… [[A]]`.
    Brackets,
    /// A reasoning ending in `The answer is: (A)`.
    Letter,
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
        let shared = Arc::new(Shared::new(config));
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/messages", post(anthropic::messages))
            .route(
                "/v1/messages/batches",
                post(anthropic::create_batch)
                    .get(anthropic::list_batches)
                    .layer(DefaultBodyLimit::max(256 << 20)),
            )
            .route("/v1/messages/batches/{id}", get(anthropic::get_batch))
            .route(
                "/v1/messages/batches/{id}/results",
                get(anthropic::batch_results),
            )
            // A batch input file may be far larger than a request (OpenAI takes 200 MB).
            .route(
                "/v1/files",
                post(batch::upload).layer(DefaultBodyLimit::max(256 << 20)),
            )
            .route("/v1/files/{id}/content", get(batch::content))
            .route("/v1/batches", post(batch::create).get(batch::list))
            .route("/v1/batches/{id}", get(batch::get))
            .route("/v1/batches/{id}/cancel", post(batch::cancel))
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

    /// Requests refused with a 429 because [`ServerConfig::capacity`] requests were in flight.
    pub fn over_capacity(&self) -> u64 {
        self.shared
            .counted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .over_capacity
    }

    /// Requests (direct calls or batch lines) whose body had been answered successfully
    /// before: model calls paid twice (a failed call sent again is not one).
    pub fn repeated_answers(&self) -> u64 {
        self.shared
            .counted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .repeated_answers
    }

    /// Batch input files uploaded so far.
    pub fn files_uploaded(&self) -> usize {
        self.shared
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .uploaded()
    }

    /// `(batches created, batches in progress)` so far.
    pub fn batches(&self) -> (usize, usize) {
        let batches = self
            .shared
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (batches.created(), batches.in_progress())
    }

    /// `(message batches created, message batches in progress)` so far, of the Anthropic
    /// stand-in.
    pub fn message_batches(&self) -> (usize, usize) {
        self.shared
            .message_batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counts()
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

#[cfg(test)]
mod tests {
    use super::faults::Fault;
    use super::reply::judge_positions;
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
        Shared::new(ServerConfig {
            faults,
            ..ServerConfig::default()
        })
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
