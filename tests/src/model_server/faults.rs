//! Injected faults: their probabilities ([`Faults`]), their kinds, and the deterministic draw
//! of each request's fault from its body and its arrival (see the module documentation of
//! [`super`]).

use std::sync::PoisonError;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::calls::Shared;
use super::reply::unit;

/// How long a hanging request goes unanswered (unless the server stops first): longer than any
/// sane client timeout.
pub const HANG: Duration = Duration::from_secs(60);

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
    pub(super) fn kinds(&self) -> [(Fault, f64); 4] {
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
pub(super) enum Fault {
    /// [`Faults::error_500`].
    Error500,
    /// [`Faults::rate_limited_429`].
    RateLimited429,
    /// [`Faults::hang`].
    Hang,
    /// [`Faults::truncated`].
    Truncated,
}

impl Fault {
    /// The name in [`RecordedCall::fault`](super::RecordedCall::fault).
    pub(super) fn name(self) -> &'static str {
        match self {
            Fault::Error500 => "500",
            Fault::RateLimited429 => "429",
            Fault::Hang => "hang",
            Fault::Truncated => "truncated",
        }
    }
}

impl Shared {
    /// The fault this arrival of `raw` gets (see the module documentation).
    pub(super) fn draw_fault(&self, raw: &[u8]) -> Option<Fault> {
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
