//! One field of a line's object, read and checked: strings, ids, `{role, content}` lists, and
//! the conversation by the job's selector (a prompt, a message list or an HH transcript).

use cai_common::job::{ConversationField, Turns};
use cai_common::message::{Message, Role};
use serde_json::{Map, Value};

use super::line::{Bad, bad, kind};
use super::transcript::{transcript_conversation, transcript_through_last_human};

/// A string field.
fn string_field<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str, Bad> {
    match object.get(field) {
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(bad(
            field,
            format!("expected a string, found {}", kind(other)),
        )),
        None => Err(bad(field, "missing")),
    }
}

/// A string field that is not blank.
pub(super) fn text_field<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str, Bad> {
    let text = string_field(object, field)?;
    if text.trim().is_empty() {
        return Err(bad(field, "empty"));
    }
    Ok(text)
}

/// An id field: a non-blank string, or an integer as its decimal text.
pub(super) fn id_field(object: &Map<String, Value>, field: &str) -> Result<String, Bad> {
    match object.get(field) {
        Some(Value::String(text)) if text.trim().is_empty() => Err(bad(field, "empty")),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Number(number)) if number.is_i64() || number.is_u64() => Ok(number.to_string()),
        Some(Value::Number(number)) => Err(bad(
            field,
            format!("expected a string or an integer, found the number {number}"),
        )),
        Some(other) => Err(bad(
            field,
            format!("expected a string or an integer, found {}", kind(other)),
        )),
        None => Err(bad(field, "missing")),
    }
}

/// The conversation of a line, read by the job's selector. With `turns = "each"` a messages
/// or transcript conversation may end with assistant turns, which are dropped: it is returned
/// up to its last user turn.
pub(super) fn conversation(
    object: &Map<String, Value>,
    selector: &ConversationField,
    turns: Turns,
) -> Result<Vec<Message>, Bad> {
    match selector {
        ConversationField::Prompt(field) => {
            Ok(vec![Message::user(text_field(object, field)?.trim())])
        }
        ConversationField::Messages(field) => messages_field(object, field, turns),
        ConversationField::Transcript(field) => {
            let text = text_field(object, field)?;
            match turns {
                Turns::Whole => transcript_conversation(text),
                Turns::Each => transcript_through_last_human(text),
            }
            .map_err(|reason| bad(field, reason))
        }
    }
}

/// A `[{role, content}]` field: non-empty, contents trimmed and not blank, ending with a user
/// turn (with `turns = "each"`: holding one, and cut after the last).
fn messages_field(
    object: &Map<String, Value>,
    field: &str,
    turns: Turns,
) -> Result<Vec<Message>, Bad> {
    let items = match object.get(field) {
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(bad(
                field,
                format!("expected an array, found {}", kind(other)),
            ));
        }
        None => return Err(bad(field, "missing")),
    };
    if items.is_empty() {
        return Err(bad(field, "empty"));
    }
    let messages = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            message_item(item)
                .map_err(|reason| bad(field, format!("message {}: {reason}", index + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if turns == Turns::Each {
        let mut messages = messages;
        let Some(last) = messages.iter().rposition(|m| m.role == Role::User) else {
            return Err(bad(field, "no user turn"));
        };
        messages.truncate(last + 1);
        return Ok(messages);
    }
    match messages.last() {
        Some(Message {
            role: Role::User, ..
        }) => Ok(messages),
        _ => Err(bad(field, "the last message must be a user turn")),
    }
}

/// One `{role, content}` item.
pub(super) fn message_item(item: &Value) -> Result<Message, String> {
    let Value::Object(object) = item else {
        return Err(format!(
            "expected an object {{role, content}}, found {}",
            kind(item)
        ));
    };
    let role = match object.get("role") {
        Some(Value::String(role)) => match role.as_str() {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(format!("role {other:?} is not system, user or assistant")),
        },
        Some(other) => return Err(format!("role: expected a string, found {}", kind(other))),
        None => return Err("role: missing".into()),
    };
    let content = match object.get("content") {
        Some(Value::String(content)) if content.trim().is_empty() => {
            return Err("content: empty".into());
        }
        Some(Value::String(content)) => content.trim(),
        Some(other) => return Err(format!("content: expected a string, found {}", kind(other))),
        None => return Err("content: missing".into()),
    };
    Ok(Message {
        role,
        content: content.to_owned(),
    })
}
