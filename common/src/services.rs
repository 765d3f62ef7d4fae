//! Connecting to the broker and the state store of a distributed run, as a coordinator and a
//! worker both do at start: each chosen by its URL, and waited for while it is away (as in the
//! middle of a run) instead of failing the process. What waiting cannot mend (a certificate
//! this process will never trust, refused credentials, a bad URL: see
//! [`crate::service_error::classify`]) fails at once; a host name that does not resolve is
//! waited for a bounded time, since DNS in a starting cluster lags behind the pods.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use crate::broker::{self, Broker};
use crate::service_error::{FailureKind, ServiceError};
use crate::state::{self, StateStore};
use crate::tls::TlsFiles;

/// How long a host name that does not resolve is waited for at start unless told otherwise
/// (`--connect-timeout-s`): long enough for a cluster's DNS to catch up with a new Service.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest pause between two connection attempts at start: each failed attempt is logged, so
/// an operator watching the log learns every few seconds what the process waits for.
const START_MAX_DELAY: Duration = Duration::from_secs(5);

/// The broker at `broker_url` and the state store at `state_url`, each connected once it
/// answers. An outage is waited for as long as it takes, a host that does not resolve for
/// `unknown_host_timeout`; anything else that waiting cannot mend fails at once. `waiting` is
/// told every failure that is waited for (a readiness probe shows it).
pub async fn connect_waiting(
    broker_url: &str,
    state_url: &str,
    tls: &TlsFiles,
    unknown_host_timeout: Duration,
    waiting: &(dyn Fn(&ServiceError) + Send + Sync),
) -> Result<(Arc<dyn Broker>, Arc<dyn StateStore>), ServiceError> {
    let broker = wait_for(
        "connecting to the broker",
        unknown_host_timeout,
        waiting,
        || broker::connect_with_tls(broker_url, tls),
    )
    .await?;
    let state = wait_for(
        "connecting to the state store",
        unknown_host_timeout,
        waiting,
        || state::connect_with_tls(state_url, tls),
    )
    .await?;
    Ok((broker, state))
}

/// Runs `connect` until it succeeds, waiting out an outage for as long as it takes and a host
/// that does not resolve for `unknown_host_timeout` from the first attempt that found it
/// unknown. Every failed attempt is logged; they are at most [`START_MAX_DELAY`] apart.
async fn wait_for<T, F, Fut>(
    what: &str,
    unknown_host_timeout: Duration,
    waiting: &(dyn Fn(&ServiceError) + Send + Sync),
    mut connect: F,
) -> Result<T, ServiceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ServiceError>>,
{
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(START_MAX_DELAY)
        .with_jitter()
        .without_max_times()
        .build();
    let started = Instant::now();
    let mut unresolved_since: Option<Instant> = None;
    let mut attempts = 0u32;
    loop {
        let error = match connect().await {
            Ok(value) => {
                if attempts > 0 {
                    tracing::info!(
                        what,
                        waited_s = started.elapsed().as_secs(),
                        "service answers; starting"
                    );
                }
                return Ok(value);
            }
            Err(error) if error.is_unavailable() => error,
            Err(error) => return Err(error),
        };
        attempts += 1;
        // Jitter may add up to the delay itself: the cap holds after it.
        let mut delay = delays
            .next()
            .unwrap_or(START_MAX_DELAY)
            .min(START_MAX_DELAY);
        if error.kind() == FailureKind::UnknownHost {
            let since = *unresolved_since.get_or_insert_with(Instant::now);
            let left = unknown_host_timeout.saturating_sub(since.elapsed());
            if left.is_zero() {
                return Err(error.given_up(since.elapsed()));
            }
            delay = delay.min(left);
        } else {
            unresolved_since = None;
        }
        waiting(&error);
        let waited_s = started.elapsed().as_secs();
        if attempts == 1 {
            tracing::warn!(what, %error, "service unavailable; pausing until it answers");
        } else {
            tracing::warn!(what, %error, waited_s, "still waiting for the service");
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::service_error::Service;

    fn nothing(_: &ServiceError) {}

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_waited_out_and_every_attempt_is_reported() {
        let attempts = AtomicU32::new(0);
        let seen = Mutex::new(Vec::new());
        let report = |error: &ServiceError| seen.lock().unwrap().push(error.to_string());
        let value = wait_for("test", Duration::from_secs(1), &report, || async {
            match attempts.fetch_add(1, Ordering::SeqCst) {
                0..10 => Err(Service::State.unavailable("connection refused")),
                _ => Ok(7),
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 7);
        assert_eq!(seen.lock().unwrap().len(), 10, "each wait is reported");
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_at_most_a_few_seconds_apart() {
        let last = Mutex::new(Instant::now());
        let longest = Mutex::new(Duration::ZERO);
        let attempts = AtomicU32::new(0);
        wait_for("test", Duration::from_secs(1), &nothing, || async {
            let now = Instant::now();
            let gap = now - std::mem::replace(&mut *last.lock().unwrap(), now);
            let mut longest = longest.lock().unwrap();
            *longest = (*longest).max(gap);
            match attempts.fetch_add(1, Ordering::SeqCst) {
                0..20 => Err(Service::Broker.unavailable("connection refused")),
                _ => Ok(()),
            }
        })
        .await
        .unwrap();
        assert!(*longest.lock().unwrap() <= START_MAX_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_host_is_waited_for_its_timeout_then_reported_as_misconfigured() {
        let started = Instant::now();
        let unknown = || {
            Service::State.error(
                FailureKind::UnknownHost,
                "connecting to Redis at redis://nohost:6379: failed to lookup address information",
            )
        };
        let error = wait_for("test", Duration::from_secs(20), &nothing, || async {
            Err::<(), _>(unknown())
        })
        .await
        .unwrap_err();
        assert_eq!(error.kind(), FailureKind::Misconfigured);
        assert!(error.to_string().contains("redis://nohost:6379"), "{error}");
        assert!(error.to_string().contains("gave up after 20 s"), "{error}");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(20),
            "no later than its timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_misconfiguration_fails_at_once() {
        let attempts = AtomicU32::new(0);
        let error = wait_for("test", Duration::from_secs(60), &nothing, || async {
            attempts.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Service::State.error(
                FailureKind::Misconfigured,
                "invalid peer certificate: UnknownIssuer",
            ))
        })
        .await
        .unwrap_err();
        assert!(error.is_misconfigured());
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }
}
