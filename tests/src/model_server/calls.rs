//! What the server keeps of the requests it received: the log of [`RecordedCall`]s, the counts
//! of requests, repeated bodies, repeated answers and requests refused for the server's
//! capacity, the requests in flight, and the state every handler shares.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::ServerConfig;
use super::handler::{Api, prompt_text};

/// One request the server received.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedCall {
    /// `"chat"` or `"completions"`.
    pub endpoint: &'static str,
    /// The JSON body (a JSON string holding the raw text if it was not JSON).
    pub body: Value,
    /// Whether log-probabilities were requested.
    pub judge: bool,
    /// The fault injected into the reply: `"500"`, `"429"`, `"hang"` or `"truncated"`; or
    /// `"capacity"`: a 429 because [`ServerConfig::capacity`] requests were already in flight;
    /// for a batch line, `"500"` when it was answered with an error in the batch's error file.
    pub fault: Option<&'static str>,
    /// The request's `Host` header: the name a client connected to an address by asked for
    /// (`None` for a batch line).
    pub host: Option<String>,
    /// Whether it came as a line of a batch (the Batch API) rather than as a direct call.
    pub batch: bool,
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

/// Requests counted by [`ModelServer::counts`](super::ModelServer::counts).
#[derive(Default)]
pub(super) struct Counted {
    /// Requests received.
    pub(super) requests: u64,
    /// Requests whose body had arrived before (a request refused for the capacity is not
    /// counted as having arrived: it was not served, so its retry is no repeat).
    pub(super) repeats: u64,
    /// Requests refused with a 429 because the server was at its capacity.
    pub(super) over_capacity: u64,
    /// The first 16 bytes of SHA-256 of every body seen.
    pub(super) seen: HashSet<[u8; 16]>,
    /// Requests (direct or batch lines) whose body had been answered successfully before: a
    /// model call paid twice, where a failed one retried is not.
    pub(super) repeated_answers: u64,
    /// The first 16 bytes of SHA-256 of every body answered successfully.
    pub(super) answered: HashSet<[u8; 16]>,
}

/// The first 16 bytes of SHA-256 of a body.
fn digest(raw: &[u8]) -> [u8; 16] {
    Sha256::digest(raw)[..16].try_into().expect("16 bytes")
}

/// State shared by the handlers and the [`ModelServer`](super::ModelServer).
pub(super) struct Shared {
    /// How the server behaves.
    pub(super) config: ServerConfig,
    /// Every request received, in order of arrival (none with `count_only`).
    pub(super) calls: Mutex<Vec<RecordedCall>>,
    /// How often each body (by SHA-256) has arrived, for the fault draw.
    pub(super) arrivals: Mutex<HashMap<[u8; 32], u64>>,
    /// Requests and repeated bodies.
    pub(super) counted: Mutex<Counted>,
    /// The Batch API's files and batches.
    pub(super) batches: Mutex<super::batch::Batches>,
    /// The Message Batches of the Anthropic stand-in.
    pub(super) message_batches: Mutex<super::anthropic::MessageBatches>,
    /// Cancelled when the server stops: ends hanging requests.
    pub(super) stopping: CancellationToken,
    /// Requests being served now (refused ones not counted).
    pub(super) in_flight: AtomicUsize,
}

impl Shared {
    /// The state of a server that has received nothing yet.
    pub(super) fn new(config: ServerConfig) -> Self {
        Self {
            config,
            calls: Mutex::new(Vec::new()),
            arrivals: Mutex::new(HashMap::new()),
            counted: Mutex::new(Counted::default()),
            batches: Mutex::new(super::batch::Batches::default()),
            message_batches: Mutex::new(super::anthropic::MessageBatches::default()),
            stopping: CancellationToken::new(),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Counts a request in flight until the returned guard is dropped, unless
    /// [`ServerConfig::capacity`] requests already are (then `None`).
    pub(super) fn enter(&self) -> Option<InFlight<'_>> {
        let capacity = self.config.capacity.unwrap_or(usize::MAX);
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < capacity).then_some(n + 1)
            })
            .ok()?;
        Some(InFlight(&self.in_flight))
    }

    /// Counts a request of body `raw` (and whether that body came before) and logs it unless
    /// `count_only`.
    pub(super) fn record(&self, raw: &[u8], call: RecordedCall) {
        {
            let mut counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
            counted.requests += 1;
            if !counted.seen.insert(digest(raw)) {
                counted.repeats += 1;
            }
        }
        self.log(call);
    }

    /// Counts and logs a request refused because the server was at its capacity; its body
    /// does not count as having arrived.
    pub(super) fn record_refused(&self, call: RecordedCall) {
        {
            let mut counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
            counted.requests += 1;
            counted.over_capacity += 1;
        }
        self.log(call);
    }

    /// Counts a successful answer to `raw`, and whether that body had been answered before.
    pub(super) fn answered(&self, raw: &[u8]) {
        let mut counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        if !counted.answered.insert(digest(raw)) {
            counted.repeated_answers += 1;
        }
    }

    fn log(&self, call: RecordedCall) {
        if !self.config.count_only {
            self.calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(call);
        }
    }
}

/// One request in flight, counted in [`Shared::in_flight`] while it lives.
pub(super) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
