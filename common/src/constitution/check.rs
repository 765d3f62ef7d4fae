//! Validation shared by every format: principles, demonstrations and judge demonstrations,
//! and the conversations they hold. Each check returns a message naming what is wrong, for the
//! caller to prefix with where it is.

use std::collections::HashMap;

use super::{Demonstration, JudgeDemonstration, Principle};
use crate::message::{Message, Role};

/// Checks each principle and that ids are unique; `locate` names a principle in messages.
pub(super) fn check_principles(
    principles: &[Principle],
    locate: impl Fn(usize) -> String,
) -> Result<(), String> {
    if principles.is_empty() {
        return Err("the constitution has no principles".into());
    }
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (index, principle) in principles.iter().enumerate() {
        check_principle(principle).map_err(|e| format!("{}: {e}", locate(index)))?;
        if let Some(first) = ids.insert(principle.id.as_str(), index) {
            return Err(format!(
                "{}: duplicate id {:?} (also {})",
                locate(index),
                principle.id,
                locate(first)
            ));
        }
    }
    Ok(())
}

/// Checks one principle: a non-empty id, critique and revision together, at least one pipeline
/// served, and no blank text.
fn check_principle(principle: &Principle) -> Result<(), String> {
    if principle.id.trim().is_empty() {
        return Err("`id` is empty".into());
    }
    match (&principle.critique, &principle.revision, &principle.judge) {
        (Some(_), None, _) => {
            return Err("`critique` without `revision`: the two come together".into());
        }
        (None, Some(_), _) => {
            return Err("`revision` without `critique`: the two come together".into());
        }
        (None, None, None) => {
            return Err(
                "serves no pipeline: give `critique` and `revision` (critique → revise), \
                 `judge` (pairwise), or all three"
                    .into(),
            );
        }
        _ => {}
    }
    for (field, text) in [
        ("critique", &principle.critique),
        ("revision", &principle.revision),
        ("judge", &principle.judge),
    ] {
        if text.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(format!("`{field}` is empty"));
        }
    }
    Ok(())
}

/// Checks a critique → revision demonstration: its conversation ends with the answer that is
/// critiqued, and no text is blank.
pub(super) fn check_demonstration(demo: &Demonstration) -> Result<(), String> {
    check_conversation(&demo.conversation, Role::Assistant)?;
    for (field, text) in [
        ("critique_request", &demo.critique_request),
        ("critique", &demo.critique),
        ("revision_request", &demo.revision_request),
        ("revision", &demo.revision),
    ] {
        if text.trim().is_empty() {
            return Err(format!("`{field}` is empty"));
        }
    }
    Ok(())
}

/// Checks a judge demonstration; a named principle must be one of `principles` with a judge
/// question.
pub(super) fn check_judge_demonstration(
    demo: &JudgeDemonstration,
    principles: &[Principle],
) -> Result<(), String> {
    check_conversation(&demo.conversation, Role::User)?;
    for (field, text) in [
        ("better", Some(&demo.better)),
        ("worse", Some(&demo.worse)),
        ("reasoning", demo.reasoning.as_ref()),
    ] {
        if text.is_some_and(|t| t.trim().is_empty()) {
            return Err(format!("`{field}` is empty"));
        }
    }
    if let Some(id) = &demo.principle {
        match principles.iter().find(|p| &p.id == id) {
            None => return Err(format!("`principle` {id:?} is not in this constitution")),
            Some(p) if p.judge.is_none() => {
                return Err(format!(
                    "`principle` {id:?} has no judge question (`judge`) to show the \
                     demonstration with"
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The role message `index` of a conversation has: user first, then alternating.
pub(super) fn expected_role(index: usize) -> Role {
    if index % 2 == 0 {
        Role::User
    } else {
        Role::Assistant
    }
}

/// "a user", "an assistant", for messages.
fn with_article(role: Role) -> &'static str {
    match role {
        Role::System => "a system",
        Role::User => "a user",
        Role::Assistant => "an assistant",
    }
}

/// A conversation alternates user and assistant from a user turn, with no empty turn, and ends
/// with a `last` turn.
fn check_conversation(messages: &[Message], last: Role) -> Result<(), String> {
    if messages.is_empty() {
        return Err("the conversation is empty".into());
    }
    for (index, message) in messages.iter().enumerate() {
        let expected = expected_role(index);
        if message.role != expected {
            return Err(format!(
                "message {index} is {} turn where {} turn belongs: the conversation \
                 alternates user and assistant, starting with user",
                with_article(message.role),
                with_article(expected)
            ));
        }
        if message.content.trim().is_empty() {
            return Err(format!(
                "message {index} ({}) is empty",
                message.role.as_str()
            ));
        }
    }
    let end = messages[messages.len() - 1].role;
    if end != last {
        return Err(format!(
            "the conversation ends with {} turn; it must end with {} turn",
            with_article(end),
            with_article(last)
        ));
    }
    Ok(())
}
