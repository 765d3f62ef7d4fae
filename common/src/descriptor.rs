//! What a worker needs to serve a job, as the coordinator registers it in the state store:
//! the spec, the constitution itself (workers never read the coordinator's files) and the
//! fingerprint. Workers need only the broker and state URLs plus the API-key variables the
//! spec names.

use serde::{Deserialize, Serialize};

use crate::constitution::Constitution;
use crate::job::JobSpec;

/// A job as registered for workers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobDescriptor {
    /// The job spec, paths resolved on the coordinator's machine.
    pub spec: JobSpec,
    /// The constitution.
    pub constitution: Constitution,
    /// The spec's fingerprint.
    pub fingerprint: String,
}

impl JobDescriptor {
    /// The JSON stored in the job registry.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("descriptors serialise")
    }

    /// Reads a registry entry.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}
