//! The two candidates of a pairwise line: each a text, an HH transcript or a one-message
//! assistant list; two transcripts must share every turn but their final answers, which then
//! give the conversation.

use cai_common::job::Turns;
use cai_common::message::{Message, Role};
use serde_json::{Map, Value};

use super::field::{conversation, message_item, text_field};
use super::line::{Bad, Fields, bad, kind};
use super::transcript::{TurnList, is_transcript, transcript_turns, turn_messages};

impl Fields {
    /// A pairwise line's conversation and its two candidates `[x, y]`, in that order.
    pub(super) fn pair(
        &self,
        object: &Map<String, Value>,
        [x, y]: &[String; 2],
    ) -> Result<(Vec<Message>, [String; 2]), Bad> {
        let (x_answer, y_answer) = (candidate_field(object, x)?, candidate_field(object, y)?);
        let (shared, pair) = match (&x_answer, &y_answer) {
            (Candidate::Text(x_text), Candidate::Text(y_text))
                if is_transcript(x_text) && is_transcript(y_text) =>
            {
                let (shared, pair) = transcript_pair([x, y], [x_text, y_text])?;
                (Some(shared), pair)
            }
            _ => (None, [x_answer.plain(), y_answer.plain()]),
        };
        let messages = match (&self.conversation, shared) {
            (Some(selector), _) => conversation(object, selector, Turns::Whole)?,
            (None, Some(shared)) => shared,
            (None, None) => {
                let (field, answer) = if x_answer.is_transcript() {
                    (y, &y_answer)
                } else {
                    (x, &x_answer)
                };
                let reason = match answer {
                    Candidate::Text(_) => {
                        "expected an HH transcript (\"\\n\\nHuman: …\\n\\nAssistant: …\"), \
                         as the job sets no conversation field"
                    }
                    Candidate::Message(_) => {
                        "a message list holds only the answer, and the job sets no conversation \
                         field (for TRL preference rows: `messages = \"prompt\"`)"
                    }
                };
                return Err(bad(field, reason));
            }
        };
        if pair[0] == pair[1] {
            return Err((None, format!("candidates {x:?} and {y:?} are identical")));
        }
        Ok((messages, pair))
    }
}

/// A candidate field's value: text (plain, or an HH transcript), or the content of a
/// one-message assistant list.
enum Candidate<'a> {
    /// A string field, as written.
    Text(&'a str),
    /// The (trimmed) content of `[{"role": "assistant", "content": …}]`.
    Message(String),
}

impl Candidate<'_> {
    /// Whether it is an HH transcript.
    fn is_transcript(&self) -> bool {
        matches!(self, Self::Text(text) if is_transcript(text))
    }

    /// The answer as it stands: trimmed text, or the message's content.
    fn plain(&self) -> String {
        match self {
            Self::Text(text) => text.trim().to_owned(),
            Self::Message(content) => content.clone(),
        }
    }
}

/// A candidate field: a non-blank string, or a list of one assistant message with non-blank
/// content, as TRL preference rows (and cai's `preferences.jsonl`) hold `chosen` and `rejected`.
fn candidate_field<'a>(object: &'a Map<String, Value>, field: &str) -> Result<Candidate<'a>, Bad> {
    match object.get(field) {
        Some(Value::Array(items)) => {
            let [item] = items.as_slice() else {
                let reason = match items.len() {
                    0 => "empty".to_owned(),
                    n => format!("expected one assistant message, found {n} messages"),
                };
                return Err(bad(field, reason));
            };
            let message =
                message_item(item).map_err(|reason| bad(field, format!("message 1: {reason}")))?;
            if message.role == Role::Assistant {
                return Ok(Candidate::Message(message.content));
            }
            Err(bad(
                field,
                format!(
                    "message 1: role {:?} is not assistant (a candidate is an answer)",
                    message.role.as_str()
                ),
            ))
        }
        Some(Value::String(_)) | None => text_field(object, field).map(Candidate::Text),
        Some(other) => Err(bad(
            field,
            format!(
                "expected a string or a [{{role, content}}] list, found {}",
                kind(other)
            ),
        )),
    }
}

/// A transcript's turns before its final, non-empty Assistant answer, and that answer.
fn final_answer<'a>(field: &str, text: &'a str) -> Result<(TurnList<'a>, String), Bad> {
    let mut turns = transcript_turns(text).map_err(|reason| bad(field, reason))?;
    match turns.pop() {
        Some((Role::Assistant, "")) => Err(bad(field, "the final Assistant turn is empty")),
        Some((Role::Assistant, answer)) => Ok((turns, answer.to_owned())),
        _ => Err(bad(field, "does not end with an Assistant turn")),
    }
}

/// Two transcripts that share every turn but a final Assistant one: the shared turns and the two
/// final answers.
fn transcript_pair(
    [x, y]: [&str; 2],
    [x_text, y_text]: [&str; 2],
) -> Result<(Vec<Message>, [String; 2]), Bad> {
    let (x_turns, x_answer) = final_answer(x, x_text)?;
    let (y_turns, y_answer) = final_answer(y, y_text)?;
    if x_turns != y_turns {
        let detail = match x_turns.iter().zip(&y_turns).position(|(a, b)| a != b) {
            Some(index) => format!("turn {} differs", index + 1),
            None => format!("{} and {} turns", x_turns.len(), y_turns.len()),
        };
        let reason = format!(
            "candidates {x:?} and {y:?} differ before their final Assistant turn ({detail})"
        );
        return Err((None, reason));
    }
    let shared = turn_messages(&x_turns).map_err(|reason| bad(x, reason))?;
    if shared.last().map(|message| message.role) != Some(Role::User) {
        return Err(bad(
            x,
            "the turn before the final Assistant one must be a Human turn",
        ));
    }
    Ok((shared, [x_answer, y_answer]))
}
