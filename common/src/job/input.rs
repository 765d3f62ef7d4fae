//! Where the corpus is and which of its fields a job reads.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the corpus is and which fields to read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// `.jsonl`, `.jsonl.gz` or `.jsonl.zst`, relative to the job file.
    pub path: PathBuf,
    /// A string field holding one user turn.
    #[serde(default)]
    pub prompt: Option<String>,
    /// A `[{role, content}]` field holding the conversation.
    #[serde(default)]
    pub messages: Option<String>,
    /// An HH-style `"\n\nHuman: …\n\nAssistant: …"` field.
    #[serde(default)]
    pub transcript: Option<String>,
    /// A field holding the sample id (string or integer); default: the content key.
    #[serde(default)]
    pub id: Option<String>,
    /// Read only the first N lines.
    #[serde(default)]
    pub limit: Option<u64>,
    /// One sample per line (`"whole"`, the default) or one per human turn (`"each"`), as the
    /// Constitutional AI paper takes one prompt per human turn of its red-team conversations.
    /// Left out of the serialised spec when `"whole"`, so the fingerprints of jobs written
    /// before this setting existed do not change.
    #[serde(default, skip_serializing_if = "Turns::is_whole")]
    pub turns: Turns,
}

/// How many samples a corpus line with a multi-turn conversation becomes (`input.turns`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Turns {
    /// One sample: the whole conversation, which must end with a user turn.
    #[default]
    Whole,
    /// One sample per user turn, its conversation being everything up to and including that
    /// turn; assistant turns after the last user turn are in no sample. The ids are the line's
    /// id with `#<n>` appended (n counts the user turns from 1). A `prompt` field holds one user
    /// turn, so it reads as `"whole"` (same sample, same id).
    Each,
}

impl Turns {
    /// Whether this is the default, `"whole"` (which is not serialised).
    pub fn is_whole(&self) -> bool {
        *self == Self::Whole
    }
}

/// How the conversation of a corpus line is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConversationField {
    /// A string field: one user turn.
    Prompt(String),
    /// A `[{role, content}]` field.
    Messages(String),
    /// An HH transcript field.
    Transcript(String),
}

impl ConversationField {
    /// The corpus field it reads, to name it in a rejection.
    pub fn name(&self) -> &str {
        match self {
            Self::Prompt(field) | Self::Messages(field) | Self::Transcript(field) => field,
        }
    }
}

impl InputSpec {
    /// The conversation selector that is set ([`JobSpec::check`] allows at most one). `None`
    /// only for a pairwise job whose candidates are HH transcripts: their shared prefix is
    /// the conversation.
    pub fn conversation_field(&self) -> Option<ConversationField> {
        match (&self.prompt, &self.messages, &self.transcript) {
            (Some(field), _, _) => Some(ConversationField::Prompt(field.clone())),
            (_, Some(field), _) => Some(ConversationField::Messages(field.clone())),
            (_, _, Some(field)) => Some(ConversationField::Transcript(field.clone())),
            (None, None, None) => None,
        }
    }
}
