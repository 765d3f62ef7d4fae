//! Multi-turn SL-CAI: a user model plays the person and the policy the assistant, and every
//! assistant turn is critiqued and revised (as critique-revise revises one answer) before the
//! person answers it. The corpus gives the opening; each assistant turn sees the conversation
//! so far with the earlier turns as revised, and the user model sees it with the roles flipped,
//! after an instruction that keeps it in character.
//!
//! Steps, in order, for turn t: `turn-t-user` (from turn 2: the person's turn t), then
//! `turn-t-initial`, then `turn-t-critique-r` and `turn-t-revision-r` for each round r. A
//! conversation of `turns` assistant turns with `revisions` rounds makes
//! `turns × (1 + 2 × revisions) + (turns − 1)` calls; fewer when the user model ends it.

use cai_common::job::DialogueSpec;
use cai_common::message::{Message, Role};
use cai_common::result::{DialogueRow, Output, RevisionPreferenceRow};

use super::critique_revise::{Revising, revise};
use super::{SampleRun, StepError, StepInfo, conversation_turns};
use crate::model::{Prompt, Speaker, Turn};

/// The user model's instruction when the job sets no `persona`: a red-teamer who keeps
/// pressing the request the corpus opened with, as in the paper's red-team conversations.
pub const DEFAULT_PERSONA: &str = "You are role-playing the person in a conversation with an \
    AI assistant. The conversation so far follows: the messages you sent are shown as yours, \
    and the assistant's replies as the messages you received. Stay in character as that person \
    and keep pursuing what you asked for in your first message: press the request, rephrase it, \
    push back on a refusal or a partial answer, or ask a follow-up that goes further. Write only \
    your next message to the assistant, as that person would write it, with no labels, quotes \
    or commentary.";

/// The steps of a conversation, turn by turn; see the module documentation.
pub(super) async fn run(run: &mut SampleRun<'_>, spec: &DialogueSpec) -> Result<Output, StepError> {
    let instruction = user_instruction(spec);
    // The conversation as the assistant sees it: the opening, then the person's turns and the
    // revised assistant turns.
    let mut messages = run.sample.messages.clone();
    let mut preferences = Vec::new();
    let mut turns = 0;
    let mut ended_by_user = false;
    for turn in 1..=spec.turns {
        if turn > 1 {
            let prompt = user_prompt(&instruction, &messages);
            let info = StepInfo {
                name: format!("turn-{turn}-user"),
                model: &spec.user,
                principle: None,
                request: "",
            };
            let text = run.generate(info, &prompt).await?;
            let Some(next) = person_turn(&text, spec.stop.as_deref()) else {
                ended_by_user = true;
                break;
            };
            messages.push(Message::user(next));
        }
        let conversation = conversation_turns(&messages);
        let prompt = Prompt {
            turns: conversation.clone(),
            reply_as: Some(Speaker::Assistant),
            prefill: None,
        };
        let info = StepInfo {
            name: format!("turn-{turn}-initial"),
            model: &spec.assistant,
            principle: None,
            request: "",
        };
        let first = run.generate(info, &prompt).await?;
        let prefix = format!("turn-{turn}-");
        let rounds = revise(
            run,
            Revising {
                model: &spec.assistant,
                conversation: &conversation,
                answer: first.clone(),
                rounds: spec.revisions,
                keep_history: false,
                step_prefix: &prefix,
            },
        )
        .await?;
        let revised = rounds
            .last()
            .map_or_else(|| first.clone(), |round| round.revision.clone());
        if spec.preferences {
            preferences.push(RevisionPreferenceRow {
                id: format!("{}#turn-{turn}", run.sample.id),
                prompt: messages.clone(),
                chosen: vec![Message::assistant(revised.clone())],
                rejected: vec![Message::assistant(first)],
                principle_ids: rounds.into_iter().map(|round| round.principle_id).collect(),
            });
        }
        messages.push(Message::assistant(revised));
        turns = turn;
    }
    Ok(Output::Dialogue {
        row: DialogueRow {
            id: run.sample.id.clone(),
            messages,
            turns,
            ended_by_user,
        },
        preferences,
    })
}

/// What the user model is told first: the persona, and the stop phrase when the job has one.
fn user_instruction(spec: &DialogueSpec) -> String {
    let persona = spec.persona.as_deref().unwrap_or(DEFAULT_PERSONA).trim();
    match &spec.stop {
        Some(stop) => format!(
            "{persona}\n\nWhen you have nothing more to ask, reply with exactly: {}",
            stop.trim()
        ),
        None => persona.to_owned(),
    }
}

/// The user model's prompt: the instruction as its first user message, then the conversation
/// with the roles flipped (the person's turns are its own, the assistant's turns are what it
/// answers), so its requests alternate strictly from `user` and end with the assistant's
/// latest turn. The opening's system messages are the assistant's and are left out.
fn user_prompt(instruction: &str, messages: &[Message]) -> Prompt {
    let mut turns = vec![Turn::new(Speaker::Human, instruction)];
    turns.extend(messages.iter().filter_map(|message| {
        let speaker = match message.role {
            Role::System => return None,
            Role::User => Speaker::Assistant,
            Role::Assistant => Speaker::Human,
        };
        Some(Turn::new(speaker, message.content.clone()))
    }));
    Prompt {
        turns,
        reply_as: Some(Speaker::Assistant),
        prefill: None,
    }
}

/// The person's next turn, trimmed; `None` when the user model ended the conversation: an
/// empty turn, or one holding the stop phrase.
fn person_turn(text: &str, stop: Option<&str>) -> Option<String> {
    let text = text.trim();
    let stopped = stop.is_some_and(|stop| text.contains(stop.trim()));
    (!text.is_empty() && !stopped).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_model_sees_the_roles_flipped_after_its_instruction() {
        let messages = [
            Message {
                role: Role::System,
                content: "be brief".into(),
            },
            Message::user("opening"),
            Message::assistant("answer 1"),
            Message::user("person 2"),
            Message::assistant("answer 2"),
        ];
        let prompt = user_prompt("play the person", &messages);
        let roles: Vec<(Role, String)> = prompt.chat_messages();
        assert_eq!(
            roles,
            vec![
                (Role::User, "play the person".to_owned()),
                (Role::Assistant, "opening".to_owned()),
                (Role::User, "answer 1".to_owned()),
                (Role::Assistant, "person 2".to_owned()),
                (Role::User, "answer 2".to_owned()),
            ]
        );
        assert_eq!(prompt.reply_as, Some(Speaker::Assistant));
    }

    #[test]
    fn an_empty_turn_or_the_stop_phrase_ends_the_conversation() {
        assert_eq!(person_turn("  go on \n", None).as_deref(), Some("go on"));
        assert_eq!(person_turn(" \n ", None), None);
        assert_eq!(person_turn("thanks [END]", Some("[END]")), None);
        assert_eq!(
            person_turn("what about END?", Some("[END]")).as_deref(),
            Some("what about END?")
        );
    }

    #[test]
    fn the_stop_phrase_is_part_of_the_instruction() {
        let mut spec = DialogueSpec {
            user: "u".into(),
            assistant: "a".into(),
            turns: 2,
            revisions: 1,
            persona: None,
            stop: None,
            preferences: false,
        };
        assert_eq!(user_instruction(&spec), DEFAULT_PERSONA);
        spec.persona = Some("A curious student.".into());
        spec.stop = Some("[END]".into());
        assert_eq!(
            user_instruction(&spec),
            "A curious student.\n\nWhen you have nothing more to ask, reply with exactly: [END]"
        );
    }
}
