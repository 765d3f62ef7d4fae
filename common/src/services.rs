//! Connecting to the broker and the state store of a distributed run, as a coordinator and a
//! worker both do at start: each chosen by its URL, and waited for while it is away (as in the
//! middle of a run) instead of failing the process.

use std::sync::Arc;

use crate::broker::{self, Broker};
use crate::service_error::{ServiceError, through_outage};
use crate::state::{self, StateStore};
use crate::tls::TlsFiles;

/// The broker at `broker_url` and the state store at `state_url`, each connected once it
/// answers; fails only for what waiting cannot mend (a bad URL, refused credentials).
pub async fn connect_waiting(
    broker_url: &str,
    state_url: &str,
    tls: &TlsFiles,
) -> Result<(Arc<dyn Broker>, Arc<dyn StateStore>), ServiceError> {
    let broker = through_outage("connecting to the broker", None, || {
        broker::connect_with_tls(broker_url, tls)
    })
    .await?;
    let state = through_outage("connecting to the state store", None, || {
        state::connect_with_tls(state_url, tls)
    })
    .await?;
    Ok((broker, state))
}
