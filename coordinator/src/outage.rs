//! The coordinator's side of a broker or state-store outage: the run pauses where it needs the
//! service (publishing a task, marking committed samples done, taking the job over) and goes on
//! when it answers, instead of failing a job that may have run for hours. Only a stop request
//! ends the wait.

use std::future::Future;

use cai_common::service_error::{ServiceError, through_outage};
use tokio_util::sync::CancellationToken;

/// Runs `operation`, waiting out an unavailable service for as long as it takes, unless
/// `shutdown` has fired or fires while waiting: then `Ok(None)`, and whatever the operation was
/// for is left to the next run (the ledger is the truth, so nothing is lost). It is always
/// tried once, so a run that is stopping still finishes what the services let it. The operation
/// must be safe to run again.
pub async fn unless_stopped<T, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut operation: F,
) -> Result<Option<T>, ServiceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ServiceError>>,
{
    match operation().await {
        Err(error) if error.is_unavailable() => {
            if shutdown.is_cancelled() {
                tracing::warn!(what, %error, "service unavailable while stopping; left to the next run");
                return Ok(None);
            }
        }
        outcome => return outcome.map(Some),
    }
    tokio::select! {
        outcome = through_outage(what, None, operation) => outcome.map(Some),
        () = shutdown.cancelled() => Ok(None),
    }
}
