//! Signed jobs and tasks. A worker runs whatever job it finds registered in Redis and whatever
//! task it finds in that job's queue, so anyone who may write to either could make the workers
//! run prompts of their own on the operator's models and keys. With a job key (`CAI_JOB_KEY`
//! or `--job-key-file`), the coordinator signs the registry entry of its job and every task it
//! publishes, and a worker holding the key runs only what verifies.
//!
//! Each signature is an HMAC-SHA256 under the key over a domain tag (`cai/job/v1` or
//! `cai/task/v1`), the job's name and, for a task, the fingerprint of the job's spec, then the
//! exact bytes as stored: a signature made for one job, or for another spec of the same job,
//! does not verify on another. A task replayed within its own job and spec runs samples of that
//! same job, which the done set and the leases already make harmless.
//!
//! Where the signatures live, so that a worker without a key (or a build that predates them)
//! reads signed messages as before:
//! - a registry entry is the descriptor's JSON with a final `"signature"` member; the signed
//!   text is the entry with that member removed, byte for byte;
//! - a task is its envelope followed by a second MessagePack value, `{signature}`; decoders
//!   read the first value and ignore what follows it.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Fewest bytes a job key may have: 32 bytes (256 bits), e.g. `openssl rand -hex 32`.
pub const MIN_KEY_BYTES: usize = 32;

const JOB_DOMAIN: &[u8] = b"cai/job/v1";
const TASK_DOMAIN: &[u8] = b"cai/task/v1";
/// What precedes a registry entry's signature; the entry ends with it, the hex and `"}`.
const ENTRY_MEMBER: &str = ",\"signature\":\"";

/// A secret shared by a coordinator and its workers. Its bytes never reach a log or a message.
#[derive(Clone)]
pub struct JobKey(Vec<u8>);

impl fmt::Debug for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobKey(***)")
    }
}

/// Why a job or a task was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// It carries no signature, and this process holds a key.
    #[error("it is not signed, and this worker runs only signed jobs (it holds a job key)")]
    Unsigned,
    /// Its signature verifies with none of the keys held.
    #[error(
        "its signature does not verify with this worker's job key (CAI_JOB_KEY / \
         --job-key-file): the coordinator signs with another key, or it was changed after signing"
    )]
    Mismatch,
}

impl JobKey {
    /// A key from its bytes; at least [`MIN_KEY_BYTES`] of them.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, String> {
        let bytes = bytes.into();
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "a job key needs at least {MIN_KEY_BYTES} bytes (this one has {}); make one with \
                 `openssl rand -hex 32`",
                bytes.len()
            ));
        }
        Ok(Self(bytes))
    }

    /// The key in `path` (its contents without a final newline).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("--job-key-file {}: {e}", path.display()))?;
        let text_end = bytes
            .iter()
            .rposition(|byte| !byte.is_ascii_whitespace())
            .map_or(0, |end| end + 1);
        Self::new(&bytes[..text_end]).map_err(|e| format!("--job-key-file {}: {e}", path.display()))
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for part in parts {
            // Each part is length-prefixed, so no two different splits sign the same bytes.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The registry entry `json` (a descriptor's JSON object) of `job`, signed.
    pub fn sign_entry(&self, job: &str, json: &str) -> String {
        let signature = self.mac(&[JOB_DOMAIN, job.as_bytes(), json.as_bytes()]);
        let hex = hex::encode(signature.finalize().into_bytes());
        let open = json
            .strip_suffix('}')
            .expect("a descriptor is a JSON object");
        format!("{open}{ENTRY_MEMBER}{hex}\"}}")
    }

    /// The task message `payload` (an envelope) of `job` with spec `fingerprint`, signed.
    pub fn sign_task(&self, job: &str, fingerprint: &str, mut payload: Vec<u8>) -> Vec<u8> {
        let signature = self.mac(&[
            TASK_DOMAIN,
            job.as_bytes(),
            fingerprint.as_bytes(),
            &payload,
        ]);
        let trailer = TaskSignature {
            signature: hex::encode(signature.finalize().into_bytes()),
        };
        payload.extend(rmp_serde::to_vec_named(&trailer).expect("a signature encodes"));
        payload
    }
}

#[derive(Serialize, Deserialize)]
struct TaskSignature {
    signature: String,
}

/// The keys a worker verifies with: the current one and, during a rotation, the previous one.
#[derive(Clone, Debug, Default)]
pub struct JobKeys(Vec<JobKey>);

impl JobKeys {
    /// Verifies with any of `keys`; none at all means nothing is checked.
    pub fn new(keys: Vec<JobKey>) -> Self {
        Self(keys)
    }

    /// Whether this process checks signatures at all.
    pub fn enforced(&self) -> bool {
        !self.0.is_empty()
    }

    fn verifies(&self, signature_hex: &str, parts: &[&[u8]]) -> bool {
        let Ok(signature) = hex::decode(signature_hex) else {
            return false;
        };
        self.0
            .iter()
            .any(|key| key.mac(parts).verify_slice(&signature).is_ok())
    }

    /// Checks the registry entry `text` of `job`. Without keys, anything passes.
    pub fn verify_entry(&self, job: &str, text: &str) -> Result<(), SignatureError> {
        if !self.enforced() {
            return Ok(());
        }
        let (signed, signature) = split_entry(text).ok_or(SignatureError::Unsigned)?;
        let signed = format!("{signed}}}");
        if self.verifies(signature, &[JOB_DOMAIN, job.as_bytes(), signed.as_bytes()]) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }

    /// Checks the task message `payload` of `job` with spec `fingerprint` and returns its
    /// envelope. Without keys, the whole payload is returned unchecked.
    pub fn verify_task<'a>(
        &self,
        job: &str,
        fingerprint: &str,
        payload: &'a [u8],
    ) -> Result<&'a [u8], SignatureError> {
        if !self.enforced() {
            return Ok(payload);
        }
        let (envelope, trailer) = split_task(payload).ok_or(SignatureError::Unsigned)?;
        let trailer: TaskSignature =
            rmp_serde::from_slice(trailer).map_err(|_| SignatureError::Unsigned)?;
        let parts: [&[u8]; 4] = [
            TASK_DOMAIN,
            job.as_bytes(),
            fingerprint.as_bytes(),
            envelope,
        ];
        if self.verifies(&trailer.signature, &parts) {
            Ok(envelope)
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// A signed entry's text without its signature member (and without the closing brace), and
/// the signature's hex; `None` when the entry does not end with a signature member.
fn split_entry(text: &str) -> Option<(&str, &str)> {
    let body = text.strip_suffix("\"}")?;
    let at = body.rfind(ENTRY_MEMBER)?;
    let signature = &body[at + ENTRY_MEMBER.len()..];
    signature
        .bytes()
        .all(|byte| byte.is_ascii_hexdigit())
        .then_some((&body[..at], signature))
}

/// A task message's envelope (its first MessagePack value) and what follows it; `None` when
/// nothing follows.
fn split_task(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut skip = rmp_serde::Deserializer::new(std::io::Cursor::new(payload));
    serde::de::IgnoredAny::deserialize(&mut skip).ok()?;
    let end = usize::try_from(skip.position()).ok()?;
    (end < payload.len()).then(|| payload.split_at(end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{self, Task};

    fn key(byte: u8) -> JobKey {
        JobKey::new(vec![byte; MIN_KEY_BYTES]).unwrap()
    }

    #[test]
    fn short_keys_are_refused_and_never_shown() {
        assert!(JobKey::new(b"short".to_vec()).is_err());
        assert_eq!(format!("{:?}", key(7)), "JobKey(***)");
    }

    #[test]
    fn an_entry_verifies_only_unchanged_under_its_job_and_a_held_key() {
        let json = r#"{"spec":{"name":"a"},"fingerprint":"f","format_version":1}"#;
        let signed = key(1).sign_entry("a", json);
        let parsed: serde_json::Value = serde_json::from_str(&signed).expect("still JSON");
        assert_eq!(parsed["fingerprint"], "f");
        assert!(parsed["signature"].is_string());

        let current = JobKeys::new(vec![key(1)]);
        assert_eq!(current.verify_entry("a", &signed), Ok(()));
        let rotated = JobKeys::new(vec![key(2), key(1)]);
        assert_eq!(
            rotated.verify_entry("a", &signed),
            Ok(()),
            "the previous key"
        );
        assert_eq!(
            JobKeys::new(vec![key(2)]).verify_entry("a", &signed),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            current.verify_entry("b", &signed),
            Err(SignatureError::Mismatch),
            "not on another job"
        );
        let edited = signed.replace("\"f\"", "\"g\"");
        assert_eq!(
            current.verify_entry("a", &edited),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            current.verify_entry("a", json),
            Err(SignatureError::Unsigned)
        );
        assert_eq!(JobKeys::default().verify_entry("a", json), Ok(()));
    }

    #[test]
    fn a_task_verifies_only_unchanged_and_unsigned_decoders_still_read_it() {
        let task = Task {
            task_id: 7,
            samples: Vec::new(),
            trace_context: None,
        };
        let payload = envelope::encode("a", &task);
        let signed = key(1).sign_task("a", "fp", payload.clone());
        assert_eq!(
            envelope::decode::<Task>(&signed, "a").unwrap(),
            task,
            "a decoder that ignores the signature reads the task"
        );

        let keys = JobKeys::new(vec![key(1)]);
        assert_eq!(keys.verify_task("a", "fp", &signed), Ok(&payload[..]));
        assert_eq!(
            keys.verify_task("a", "another spec", &signed),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            keys.verify_task("b", "fp", &signed),
            Err(SignatureError::Mismatch)
        );
        let mut edited = envelope::encode(
            "a",
            &Task {
                task_id: 8,
                ..task.clone()
            },
        );
        edited.extend_from_slice(&signed[payload.len()..]);
        assert_eq!(
            keys.verify_task("a", "fp", &edited),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            keys.verify_task("a", "fp", &payload),
            Err(SignatureError::Unsigned)
        );
        assert_eq!(
            JobKeys::new(vec![key(2)]).verify_task("a", "fp", &signed),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            JobKeys::default().verify_task("a", "fp", &payload),
            Ok(&payload[..])
        );
    }
}
