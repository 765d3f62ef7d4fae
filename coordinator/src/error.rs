//! Why a run ended without finishing, typed by what the operator does next, so that the
//! command line chooses its exit code from the variant instead of reading messages.

use cai_common::service_error::ServiceError;

/// A run that could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The services hold the job in a shape this build would misread or destroy (a registry
    /// entry or queued messages of a newer format): run it with the cai that wrote them. The
    /// command line exits 2, as for a changed spec: the command, not the run, must change.
    #[error("{0}")]
    Refused(String),
    /// A worker found that nothing can work (a bad API key, an unknown model): fix the job or
    /// its environment, then run the same command again.
    #[error("job {job:?} stopped: a worker reported: {message}")]
    JobFatal {
        /// The job.
        job: String,
        /// The worker's message.
        message: String,
    },
    /// Stopped (a signal) while it waited for the broker or the state store at the start,
    /// before anything was published: run the same command again.
    #[error("stopped before the job was taken over; run the same command again to resume")]
    Interrupted,
    /// The broker or the state store refused a request or failed for good (an outage is waited
    /// out, not returned): check the service, then run the same command again. A setup that no
    /// wait mends (a certificate, credentials, a URL) exits 2, as a bad command line does.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// Anything else at run time: an unreadable corpus, a full output volume (its message says
    /// how much to free). Running again resumes.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl RunError {
    /// The exit code the command line documents for it.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Refused(_) => 2,
            Self::Service(error) if error.is_misconfigured() => 2,
            Self::JobFatal { .. } | Self::Service(_) | Self::Failed(_) => 1,
            Self::Interrupted => 130,
        }
    }
}
