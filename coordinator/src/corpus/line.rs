//! A line's object turned into samples: its size, encoding and JSON checked, then the fields the
//! job reads taken from it; and the [`Bad`] every reader of a field returns.

use cai_common::job::{Candidates, ConversationField, JobSpec, Pipeline, Turns};
use cai_common::message::{Message, Role};
use cai_common::sample::Sample;
use serde_json::{Map, Value};

use super::MAX_LINE_BYTES;
use super::field::{conversation, id_field, text_field};
use super::turns::turn_samples;

/// A line's problem: the field at fault (if any) and the reason.
pub(super) type Bad = (Option<String>, String);

/// A problem with a named field.
pub(super) fn bad(field: &str, reason: impl Into<String>) -> Bad {
    (Some(field.to_owned()), reason.into())
}

/// Checks a line's size, encoding and JSON, and returns its object.
pub(super) fn parse_object(bytes: &[u8], length: u64) -> Result<Map<String, Value>, Bad> {
    if length > MAX_LINE_BYTES as u64 {
        let limit = MAX_LINE_BYTES >> 20;
        return Err((
            None,
            format!("line is {length} bytes, more than the {limit} MiB limit"),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|error| {
        (
            None,
            format!("invalid UTF-8 at byte offset {}", error.valid_up_to()),
        )
    })?;
    if text.trim().is_empty() {
        return Err((None, "empty line".into()));
    }
    match serde_json::from_str(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err((
            None,
            format!("expected a JSON object, found {}", kind(&other)),
        )),
        Err(error) => {
            let full = error.to_string();
            let position = format!(" at line {} column {}", error.line(), error.column());
            let message = full.strip_suffix(&position).unwrap_or(&full);
            Err((
                None,
                format!("invalid JSON at column {}: {message}", error.column()),
            ))
        }
    }
}

/// A JSON value's type, for messages ("found a number").
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The fields a job reads from each line.
pub(super) struct Fields {
    /// The conversation field, if the job sets one.
    pub(super) conversation: Option<ConversationField>,
    /// A pairwise job's two candidate fields.
    pub(super) candidates: Option<[String; 2]>,
    /// A critique-revise job's field of given first answers.
    pub(super) initial: Option<String>,
    /// The `input.id` field.
    pub(super) id: Option<String>,
    /// `input.turns` as it applies: a `prompt` field is one user turn, and candidates or a given
    /// first answer answer the whole conversation, so with any of them a line is read whole
    /// ([`JobSpec::check`] refuses `"each"` with the last two).
    pub(super) turns: Turns,
    /// A dialogue job reads only the opening of a conversation: its system messages and its
    /// first user turn (the models write the rest), so the key covers what is used.
    pub(super) opening: bool,
}

/// The opening of a line's conversation: read as with `turns = "each"` (a transcript may go on
/// after its first human turn), then cut after the first user turn.
fn opening(object: &Map<String, Value>, selector: &ConversationField) -> Result<Vec<Message>, Bad> {
    let mut messages = conversation(object, selector, Turns::Each)?;
    if let Some(first) = messages.iter().position(|m| m.role == Role::User) {
        messages.truncate(first + 1);
    }
    Ok(messages)
}

/// A readable line: its id (the `input.id` field's value, when the job sets one) and its
/// samples (one, or with `turns = "each"` one per human turn, never none).
pub(super) struct LineSamples {
    /// The `input.id` field's value.
    pub(super) id: Option<String>,
    /// The line's samples.
    pub(super) samples: Vec<Sample>,
}

impl Fields {
    /// The fields of a job: candidates only for a pairwise job, `initial` only for critique-revise.
    pub(super) fn of(spec: &JobSpec) -> Self {
        let (candidates, initial) = match &spec.pipeline {
            Pipeline::Pairwise(pairwise) => match &pairwise.candidates {
                Candidates::Corpus(fields) => (Some(fields.clone()), None),
                Candidates::Generate { .. } => (None, None),
            },
            Pipeline::CritiqueRevise(critique_revise) => (None, critique_revise.initial.clone()),
            Pipeline::Dialogue(_) => (None, None),
        };
        let conversation = spec.input.conversation_field();
        let whole = candidates.is_some()
            || initial.is_some()
            || matches!(conversation, Some(ConversationField::Prompt(_)));
        Self {
            conversation,
            candidates,
            initial,
            id: spec.input.id.clone(),
            turns: if whole {
                Turns::Whole
            } else {
                spec.input.turns
            },
            opening: matches!(spec.pipeline, Pipeline::Dialogue(_)),
        }
    }

    /// Reads a line's object into its samples.
    pub(super) fn samples(
        &self,
        object: &Map<String, Value>,
        line: u64,
    ) -> Result<LineSamples, Bad> {
        let (messages, candidates) = match &self.candidates {
            Some(fields) => {
                let (messages, pair) = self.pair(object, fields)?;
                (messages, Some(pair))
            }
            None => match &self.conversation {
                Some(selector) if self.opening => (opening(object, selector)?, None),
                Some(selector) => (conversation(object, selector, self.turns)?, None),
                None => {
                    let reason =
                        "the job sets no conversation field (prompt, messages or transcript)";
                    return Err((None, reason.into()));
                }
            },
        };
        let initial = match &self.initial {
            Some(field) => Some(text_field(object, field)?.trim().to_owned()),
            None => None,
        };
        let id = match &self.id {
            Some(field) => Some(id_field(object, field)?),
            None => None,
        };
        let samples = match (self.turns, &self.conversation) {
            (Turns::Each, Some(selector)) => {
                turn_samples(selector.name(), id.as_deref(), line, &messages)?
            }
            _ => vec![Sample::new(id.clone(), line, messages, candidates, initial)],
        };
        Ok(LineSamples { id, samples })
    }
}
