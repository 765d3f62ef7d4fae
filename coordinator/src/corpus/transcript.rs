//! HH transcripts (`\n\nHuman: …\n\nAssistant: …`): split into turns, and read as a
//! conversation whole or up to its last Human turn.

use cai_common::message::{Message, Role};

/// Turn markers of an HH transcript and the roles they open.
const MARKERS: [(&str, Role); 2] = [
    ("\n\nHuman:", Role::User),
    ("\n\nAssistant:", Role::Assistant),
];

/// The turns of an HH transcript: speaker and trimmed content.
pub(super) type TurnList<'a> = Vec<(Role, &'a str)>;

/// Whether a string is an HH transcript: it starts with `Human:` after optional whitespace.
pub(super) fn is_transcript(text: &str) -> bool {
    text.trim_start().starts_with("Human:")
}

/// Splits an HH transcript into turns with trimmed contents (empty ones kept). The leading
/// `"\n\n"` is optional; the first turn must be a Human one.
pub(super) fn transcript_turns(text: &str) -> Result<TurnList<'_>, String> {
    let Some(mut rest) = text.trim_start().strip_prefix("Human:") else {
        return Err("expected an HH transcript starting with \"\\n\\nHuman:\"".into());
    };
    let mut role = Role::User;
    let mut turns = Vec::new();
    loop {
        let next = MARKERS
            .iter()
            .filter_map(|&(marker, next_role)| {
                rest.find(marker)
                    .map(|at| (at, next_role, at + marker.len()))
            })
            .min_by_key(|&(at, _, _)| at);
        let Some((at, next_role, after)) = next else {
            turns.push((role, rest.trim()));
            return Ok(turns);
        };
        turns.push((role, rest[..at].trim()));
        (role, rest) = (next_role, &rest[after..]);
    }
}

/// Turns into messages, rejecting an empty one (counted from 1).
pub(super) fn turn_messages(turns: &[(Role, &str)]) -> Result<Vec<Message>, String> {
    turns
        .iter()
        .enumerate()
        .map(|(index, &(role, content))| {
            if content.is_empty() {
                let speaker = if role == Role::User {
                    "Human"
                } else {
                    "Assistant"
                };
                Err(format!("turn {} ({speaker}) is empty", index + 1))
            } else {
                Ok(Message {
                    role,
                    content: content.to_owned(),
                })
            }
        })
        .collect()
}

/// The conversation of a transcript: it must end with a Human turn or an empty final
/// `Assistant:`, which is dropped.
pub(super) fn transcript_conversation(text: &str) -> Result<Vec<Message>, String> {
    let mut turns = transcript_turns(text)?;
    match turns.last() {
        Some((Role::Assistant, "")) => {
            turns.pop();
        }
        Some((Role::Assistant, _)) => {
            let reason = "ends with an Assistant answer; expected a final Human turn or an empty \
                          \"Assistant:\"";
            return Err(reason.into());
        }
        _ => {}
    }
    turn_messages(&turns)
}

/// The conversation of a transcript read with `turns = "each"`: its turns up to its last Human
/// one; the Assistant turns after it (answered or empty) are in no sample and not checked.
pub(super) fn transcript_through_last_human(text: &str) -> Result<Vec<Message>, String> {
    let mut turns = transcript_turns(text)?;
    let last = turns.iter().rposition(|&(role, _)| role == Role::User);
    turns.truncate(last.map_or(0, |index| index + 1));
    turn_messages(&turns)
}
