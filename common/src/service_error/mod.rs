//! Failures of the two services a run depends on (the broker and the state store), typed by
//! what the caller should do next: a RabbitMQ or Redis that is away for a minute must pause a
//! run, not end it, while a refused password must end it at once instead of retrying forever.
//!
//! Every broker and state-store error is a [`ServiceError`], its kind given by the one
//! classification ([`classify`]); [`through_outage`] is the one place that waits out an
//! unavailable service (the coordinator's commits and take-over, a worker's step writes), so
//! the backoff and its log lines are the same everywhere.

use std::fmt;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

mod classify;

pub(crate) use classify::is_broken;
pub use classify::{Failure, Verdict, classify};

/// Which service failed; part of the message, so a log line says where to look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// RabbitMQ, or the in-process queue of embedded runs.
    Broker,
    /// Redis, or the in-process state of embedded runs.
    State,
}

impl Service {
    /// An error of this service that waiting can cure.
    pub fn unavailable(self, message: impl Into<String>) -> ServiceError {
        self.error(FailureKind::Unavailable, message)
    }

    /// An error of this service for a request it will never accept.
    pub fn rejected(self, message: impl Into<String>) -> ServiceError {
        self.error(FailureKind::Rejected, message)
    }

    /// An error of this service that ends the job.
    pub fn fatal(self, message: impl Into<String>) -> ServiceError {
        self.error(FailureKind::Fatal, message)
    }

    /// The error for `failure`, described by `message` (which names the URL, redacted), of the
    /// kind [`classify`] gives it and followed by what to fix when waiting cannot cure it.
    pub fn failed(self, failure: Failure<'_>, message: impl Into<String>) -> ServiceError {
        let verdict = classify(failure);
        let message = message.into();
        let message = match verdict.fix {
            Some(fix) => format!("{message}; {fix}"),
            None => message,
        };
        self.error(verdict.kind, message)
    }

    pub(crate) fn error(self, kind: FailureKind, message: impl Into<String>) -> ServiceError {
        ServiceError {
            service: self,
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Broker => "broker",
            Service::State => "state store",
        })
    }
}

/// What a failure asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The service cannot be reached or is not ready (refused, reset, timed out, restarting):
    /// pause, back off and try again; nothing is lost by waiting. A worker requeues its task and
    /// probes, as it does for a model endpoint that is down.
    Unavailable,
    /// The service refused this request (a message it will not store, a command it rejects):
    /// the same request will never succeed.
    Rejected,
    /// The service's setup is wrong and no wait will change it (a certificate this process
    /// will never trust, refused credentials or permissions, a URL that does not parse, an
    /// unreadable TLS file): the process stops with exit code 2 and says what to fix.
    Misconfigured,
    /// The URL's host name does not resolve. DNS in a starting cluster lags, so it is waited
    /// for, as an outage is; at start only for a bounded time ([`crate::services`]), after
    /// which it counts as a misconfiguration.
    UnknownHost,
    /// The job cannot go on (a step log that cannot be written, a broker that broke its
    /// protocol): stop it and say why.
    Fatal,
}

/// A failed call to the broker or the state store. Never carries a URL's password.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{service}: {message}")]
pub struct ServiceError {
    service: Service,
    kind: FailureKind,
    message: String,
}

impl ServiceError {
    /// What the caller should do.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// Whether waiting can cure it (an outage, or a host name that does not resolve yet).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.kind,
            FailureKind::Unavailable | FailureKind::UnknownHost
        )
    }

    /// Whether the setup must change: the process stops with exit code 2.
    pub fn is_misconfigured(&self) -> bool {
        self.kind == FailureKind::Misconfigured
    }

    /// The same failure, given up on after waiting `waited` for it: a host that never resolved
    /// becomes a misconfiguration to report.
    pub fn given_up(self, waited: Duration) -> ServiceError {
        let kind = match self.kind {
            FailureKind::UnknownHost => FailureKind::Misconfigured,
            kind => kind,
        };
        ServiceError {
            kind,
            message: format!("gave up after {} s: {}", waited.as_secs(), self.message),
            service: self.service,
        }
    }
}

/// Longest pause between two attempts while a service is unavailable.
pub const OUTAGE_MAX_DELAY: Duration = Duration::from_secs(30);

/// Runs `operation` until it succeeds or fails other than by unavailability, waiting out an
/// unavailable service with backoff (1 s doubling to [`OUTAGE_MAX_DELAY`], jittered) for up
/// to `patience` (`None`: for as long as it takes). Logs the outage once when it starts and once
/// when it ends, not at every attempt. The operation must be safe to run again.
pub async fn through_outage<T, F, Fut>(
    what: &str,
    patience: Option<Duration>,
    operation: F,
) -> Result<T, ServiceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ServiceError>>,
{
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(OUTAGE_MAX_DELAY)
        .with_jitter();
    backoff = backoff.with_total_delay(patience).without_max_times();
    let mut waited = false;
    let outcome = operation
        .retry(backoff)
        .when(ServiceError::is_unavailable)
        .notify(|error, wait| {
            if !waited {
                tracing::warn!(what, %error, ?wait, "service unavailable; pausing until it answers");
                waited = true;
            } else {
                tracing::debug!(what, %error, ?wait, "service still unavailable");
            }
        })
        .await;
    if waited && outcome.is_ok() {
        tracing::info!(what, "service answers again; resuming");
    }
    outcome
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_service_is_waited_out_and_the_operation_succeeds() {
        let attempts = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let value = through_outage("test", None, || async {
            match attempts.fetch_add(1, Ordering::SeqCst) {
                0..5 => Err(Service::State.unavailable("connection refused")),
                _ => Ok(7),
            }
        })
        .await
        .unwrap();
        assert_eq!((value, attempts.load(Ordering::SeqCst)), (7, 6));
        assert!(started.elapsed() >= Duration::from_secs(5), "it backed off");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_or_rejected_error_is_returned_at_once() {
        for error in [
            Service::Broker.fatal("ACCESS_REFUSED"),
            Service::Broker.rejected("message refused"),
        ] {
            let attempts = AtomicU32::new(0);
            let outcome: Result<(), _> = through_outage("test", None, || async {
                attempts.fetch_add(1, Ordering::SeqCst);
                Err(error.clone())
            })
            .await;
            assert_eq!(outcome.unwrap_err().kind(), error.kind());
            assert_eq!(attempts.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn patience_bounds_the_wait() {
        let started = tokio::time::Instant::now();
        let outcome: Result<(), _> =
            through_outage("test", Some(Duration::from_secs(60)), || async {
                Err(Service::State.unavailable("connection refused"))
            })
            .await;
        assert!(outcome.unwrap_err().is_unavailable());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited <= Duration::from_secs(90),
            "{waited:?}"
        );
    }

    #[test]
    fn the_message_names_the_service() {
        assert_eq!(
            Service::State.unavailable("PING: refused").to_string(),
            "state store: PING: refused"
        );
        assert_eq!(Service::Broker.fatal("x").to_string(), "broker: x");
    }
}
