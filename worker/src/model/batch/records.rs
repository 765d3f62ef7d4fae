//! The durable record of each batch submitted: which input file, which batch (once created),
//! which calls, kept in the job's state store ([`StateStore::batch_put`]) under the input file's
//! id. It is written after the upload and again after the create, before anything waits on the
//! batch, so a process that meets one of its calls again can wait for that batch (or create it
//! from the uploaded file, if the create never happened) instead of paying for the call again.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cai_common::state::{StateError, StateStore};
use serde::{Deserialize, Serialize};

use super::super::ModelError;

/// One batch's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Record {
    /// The batch, once its create was answered.
    pub(super) batch_id: Option<String>,
    /// When the lines were uploaded, in Unix milliseconds: a call retried is in several
    /// records, and the newest is the one to wait for.
    pub(super) created_ms: u64,
    /// The `custom_id` of every line.
    pub(super) custom_ids: Vec<String>,
}

impl Record {
    /// A record of lines uploaded now, before their batch is created.
    pub(super) fn uploaded(custom_ids: Vec<String>) -> Self {
        let created_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        Self {
            batch_id: None,
            created_ms,
            custom_ids,
        }
    }
}

/// The batch records of one job.
#[derive(Clone)]
pub(super) struct Records {
    pub(super) job: String,
    pub(super) state: Arc<dyn StateStore>,
}

impl Records {
    /// Writes the record of input file `file`.
    pub(super) async fn put(&self, file: &str, record: &Record) -> Result<(), ModelError> {
        let bytes = rmp_serde::to_vec_named(record).expect("a batch record encodes");
        self.state
            .batch_put(&self.job, file, bytes)
            .await
            .map_err(state_error)
    }

    /// Every record of the job, by input file id; one that does not decode is left out.
    pub(super) async fn all(&self) -> Result<Vec<(String, Record)>, ModelError> {
        let records = self
            .state
            .batch_records(&self.job)
            .await
            .map_err(state_error)?;
        Ok(records
            .into_iter()
            .filter_map(|(file, bytes)| Some((file, rmp_serde::from_slice(&bytes).ok()?)))
            .collect())
    }

    /// Forgets the record of input file `file`.
    pub(super) async fn remove(&self, file: &str) -> Result<(), ModelError> {
        self.state
            .batch_remove(&self.job, file)
            .await
            .map_err(state_error)
    }
}

/// A state store that is away is an outage (the sample waits for it); any other failure of it
/// stops the job, as elsewhere.
fn state_error(error: StateError) -> ModelError {
    if error.is_unavailable() {
        ModelError::Retryable {
            message: error.to_string(),
            retry_after: None,
            unreachable: true,
            overloaded: false,
            attempts: 1,
        }
    } else {
        ModelError::JobFatal(error.to_string())
    }
}
