//! What a worker needs to serve a job, as the coordinator registers it in the state store:
//! the spec, the constitution itself (workers never read the coordinator's files), the
//! fingerprint, and the format version of the job's messages. Workers need only the broker and
//! state URLs plus the API-key variables the spec names.
//!
//! The format version is read before anything else ([`format_version_of`]), so during a rolling
//! upgrade a worker that cannot serve a job says so once and leaves it to newer workers, instead
//! of taking its tasks and dead-lettering them, even when the rest of the entry is a shape it
//! does not know.

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
    /// The envelope format version of the job's tasks and results
    /// ([`crate::envelope::FORMAT_VERSION`] of the coordinator that registered it); entries
    /// written before the field existed are version 1.
    #[serde(default = "first_version")]
    pub format_version: u16,
}

/// Largest registry entry a worker reads: the spec and the constitution are a few kilobytes
/// (the corpus is never in it), so an entry this large was not written by a coordinator.
pub const MAX_ENTRY_BYTES: usize = 4 * 1024 * 1024;

fn first_version() -> u16 {
    1
}

/// The format version of a registry entry, read without the rest of it (which a build of
/// another version may not parse); `None` if the entry is not JSON at all.
pub fn format_version_of(text: &str) -> Option<u16> {
    #[derive(Deserialize)]
    struct Version {
        #[serde(default = "first_version")]
        format_version: u16,
    }
    serde_json::from_str::<Version>(text)
        .ok()
        .map(|version| version.format_version)
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
