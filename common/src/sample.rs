//! A unit of work: one corpus line, read into the conversation the pipelines need.
//!
//! Invariant: a sample's [`SampleKey`] is a hash of exactly what a pipeline reads from it
//! (conversation, candidate answers, given first answer), so two lines that would produce the
//! same work share a key and are processed once.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::message::Message;

/// Content hash of what a pipeline reads from a sample (128 bits of SHA-256).
///
/// Used for deduplication, the done set, the step cache and per-sample randomness.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleKey(pub [u8; 16]);

impl SampleKey {
    /// Hashes the pipeline-visible content of a sample.
    pub fn of(
        messages: &[Message],
        candidates: Option<&[String; 2]>,
        initial: Option<&str>,
    ) -> Self {
        let mut hasher = Sha256::new();
        for message in messages {
            hasher.update(format!("{:?}", message.role).as_bytes());
            hasher.update((message.content.len() as u64).to_le_bytes());
            hasher.update(message.content.as_bytes());
        }
        for (tag, text) in [
            ("candidate-x", candidates.map(|c| c[0].as_str())),
            ("candidate-y", candidates.map(|c| c[1].as_str())),
            ("initial", initial),
        ] {
            if let Some(text) = text {
                hasher.update(tag.as_bytes());
                hasher.update((text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
            }
        }
        let digest = hasher.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        Self(key)
    }

    /// The key as 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 32 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut key = [0u8; 16];
        hex::decode_to_slice(text, &mut key).ok()?;
        Some(Self(key))
    }
}

impl fmt::Debug for SampleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SampleKey({})", self.to_hex())
    }
}

impl fmt::Display for SampleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for SampleKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for SampleKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("sample key: expected 32 hex digits"))
    }
}

/// One corpus line, read and ready for a pipeline. Carried inline in tasks: workers never read the corpus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Content hash of what the pipeline reads.
    pub key: SampleKey,
    /// The user-facing id: the corpus `id` field, or the key in hex.
    pub id: String,
    /// 1-based line number in the corpus, for messages.
    pub line: u64,
    /// The conversation so far, ending with a user turn.
    pub messages: Vec<Message>,
    /// Pairwise: the two candidate answers, in input order (x, y).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<[String; 2]>,
    /// Critique-revise: an existing first answer to start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
}

impl Sample {
    /// Builds a sample, computing its key; `id` defaults to the key in hex.
    pub fn new(
        id: Option<String>,
        line: u64,
        messages: Vec<Message>,
        candidates: Option<[String; 2]>,
        initial: Option<String>,
    ) -> Self {
        let key = SampleKey::of(&messages, candidates.as_ref(), initial.as_deref());
        Self {
            key,
            id: id.unwrap_or_else(|| key.to_hex()),
            line,
            messages,
            candidates,
            initial,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_content_not_id_or_line() {
        let a = Sample::new(Some("a".into()), 1, vec![Message::user("hi")], None, None);
        let b = Sample::new(Some("b".into()), 7, vec![Message::user("hi")], None, None);
        let c = Sample::new(None, 1, vec![Message::user("hi!")], None, None);
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key);
        assert_eq!(c.id, c.key.to_hex());
    }

    #[test]
    fn key_separates_fields() {
        let with_initial = SampleKey::of(&[Message::user("q")], None, Some("a"));
        let with_pair = SampleKey::of(&[Message::user("q")], Some(&["a".into(), "b".into()]), None);
        assert_ne!(with_initial, with_pair);
    }

    #[test]
    fn key_hex_round_trips() {
        let key = SampleKey::of(&[Message::user("q")], None, None);
        assert_eq!(SampleKey::from_hex(&key.to_hex()), Some(key));
        assert_eq!(SampleKey::from_hex("zz"), None);
    }
}
