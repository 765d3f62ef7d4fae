//! The wire format of tasks and results: MessagePack with named fields inside an envelope
//! carrying a format version and the job id.
//!
//! Named fields let a newer struct read an older message (a missing optional field takes its
//! default) across a rolling upgrade; the version lets a worker refuse a message it cannot
//! understand instead of misreading it. Bytes in, typed values out: no broker needed to test it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::result::SampleResult;
use crate::sample::Sample;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Largest task or result a worker takes (RabbitMQ 4's default `max_message_size`): a task of
/// the default 16 samples is a few kilobytes, so anything near this was not written by a
/// coordinator, and it is dead-lettered unread.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A batch of samples for one worker to run. Samples are carried inline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Unique within a coordinator run; results name it so the coordinator can free its slot.
    pub task_id: u64,
    /// The samples.
    pub samples: Vec<Sample>,
    /// Trace context of the coordinator span that published the task, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<String>,
}

/// The results of one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultBatch {
    /// The task these results answer.
    pub task_id: u64,
    /// One result per sample the worker ran (samples it found already done are left out).
    pub results: Vec<SampleResult>,
    /// Keys of samples the worker skipped because they were already done.
    #[serde(default)]
    pub skipped: Vec<crate::sample::SampleKey>,
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    version: u16,
    job: &'a str,
    body: &'a T,
}

#[derive(Deserialize)]
struct Header {
    version: u16,
    job: String,
}

#[derive(Deserialize)]
struct Whole<T> {
    version: u16,
    job: String,
    body: T,
}

#[derive(Deserialize)]
struct EnvelopeIn<T> {
    body: T,
}

/// Why a message could not be decoded; never retried, the message is dead-lettered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a MessagePack envelope at all.
    #[error("not a cai envelope: {0}")]
    Garbage(String),
    /// Written by a build with another format version.
    #[error("format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    Version {
        /// The version in the message.
        found: u16,
    },
    /// Addressed to another job.
    #[error("message for job {found:?} arrived on a queue of job {expected:?}")]
    WrongJob {
        /// The job the queue belongs to.
        expected: String,
        /// The job in the message.
        found: String,
    },
    /// Envelope fine, body unreadable.
    #[error("body does not decode: {0}")]
    Body(String),
}

/// The format version a message says it is written in, without decoding its body; `None` for
/// bytes that are not an envelope.
pub fn version_of(bytes: &[u8]) -> Option<u16> {
    rmp_serde::from_slice::<Header>(bytes)
        .ok()
        .map(|header| header.version)
}

/// Encodes a body for `job`.
pub fn encode<T: Serialize>(job: &str, body: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(&EnvelopeOut {
        version: FORMAT_VERSION,
        job,
        body,
    })
    .expect("MessagePack encoding of owned data cannot fail")
}

/// Decodes a body, checking the version and that the message belongs to `expected_job`.
///
/// One pass over the bytes when the message is well-formed (the common case, and the hot path
/// of both the workers and the collector); only a message that does not decode is read a
/// second time, header first, to say why.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], expected_job: &str) -> Result<T, DecodeError> {
    if let Ok(whole) = rmp_serde::from_slice::<Whole<T>>(bytes) {
        if whole.version == FORMAT_VERSION && whole.job == expected_job {
            return Ok(whole.body);
        }
    }
    let header: Header =
        rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Garbage(e.to_string()))?;
    if header.version != FORMAT_VERSION {
        return Err(DecodeError::Version {
            found: header.version,
        });
    }
    if header.job != expected_job {
        return Err(DecodeError::WrongJob {
            expected: expected_job.to_owned(),
            found: header.job,
        });
    }
    let envelope: EnvelopeIn<T> =
        rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Body(e.to_string()))?;
    Ok(envelope.body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn task() -> Task {
        Task {
            task_id: 7,
            samples: vec![Sample::new(
                None,
                3,
                vec![Message::user("hello")],
                None,
                None,
            )],
            trace_context: None,
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode("job-a", &task());
        assert_eq!(decode::<Task>(&bytes, "job-a").unwrap(), task());
    }

    #[test]
    fn refuses_garbage_other_versions_and_other_jobs() {
        assert!(matches!(
            decode::<Task>(b"\xc1garbage", "j"),
            Err(DecodeError::Garbage(_))
        ));
        let future = rmp_serde::to_vec_named(&EnvelopeOut {
            version: FORMAT_VERSION + 1,
            job: "j",
            body: &task(),
        })
        .unwrap();
        assert_eq!(
            decode::<Task>(&future, "j"),
            Err(DecodeError::Version {
                found: FORMAT_VERSION + 1
            })
        );
        assert!(matches!(
            decode::<Task>(&encode("other", &task()), "j"),
            Err(DecodeError::WrongJob { .. })
        ));
    }

    #[test]
    fn a_message_from_an_older_struct_still_decodes() {
        /// The task as a build before `trace_context` existed wrote it.
        #[derive(Serialize)]
        struct OldTask {
            task_id: u64,
            samples: Vec<Sample>,
        }
        let old = OldTask {
            task_id: 7,
            samples: task().samples,
        };
        let bytes = encode("j", &old);
        assert_eq!(decode::<Task>(&bytes, "j").unwrap(), task());
    }
}
