//! The Hugging Face JSON format as published (`{constitutions: [{critic, revision}],
//! system_chat: [[messages…]]}`): critique/revision principles with ids `p00`…, and
//! demonstrations as chats ending in critique request, critique, revision request, revision.

use serde::Deserialize;

use super::check::{check_demonstration, check_principles, expected_role};
use super::{Constitution, Demonstration, Principle};
use crate::message::Message;

/// The file: the principles and the demonstration chats.
#[derive(Deserialize)]
struct HfJson {
    constitutions: Vec<HfPrinciple>,
    #[serde(default)]
    system_chat: Vec<Vec<Message>>,
}

/// One principle as published: a critique and a revision request.
#[derive(Deserialize)]
struct HfPrinciple {
    critic: String,
    revision: String,
}

impl Constitution {
    /// Parses and checks an HF JSON constitution; `hash` is that of the file's bytes.
    pub(super) fn from_hf_json(text: &str, hash: String) -> Result<Self, String> {
        let file: HfJson =
            serde_json::from_str(text).map_err(|e| format!("invalid HF constitution JSON: {e}"))?;
        let principles: Vec<Principle> = file
            .constitutions
            .into_iter()
            .enumerate()
            .map(|(index, p)| Principle {
                id: format!("p{index:02}"),
                critique: Some(p.critic),
                revision: Some(p.revision),
                judge: None,
            })
            .collect();
        check_principles(&principles, |index| format!("constitutions[{index}]"))?;
        let demonstrations = file
            .system_chat
            .into_iter()
            .enumerate()
            .map(|(index, mut chat)| {
                let roles: Vec<&str> = chat.iter().map(|m| m.role.as_str()).collect();
                let alternating = chat
                    .iter()
                    .enumerate()
                    .all(|(i, m)| m.role == expected_role(i));
                if chat.len() < 6 || chat.len() % 2 != 0 || !alternating {
                    return Err(format!(
                        "system_chat[{index}]: expected 2N + 4 messages alternating user and \
                         assistant from user (N ≥ 1 exchanges ending with the assistant's \
                         answer, then critique request, critique, revision request, revision); \
                         found roles {roles:?}"
                    ));
                }
                let tail: Vec<String> = chat
                    .split_off(chat.len() - 4)
                    .into_iter()
                    .map(|m| m.content)
                    .collect();
                let [critique_request, critique, revision_request, revision] =
                    <[String; 4]>::try_from(tail).expect("four messages split off");
                let demo = Demonstration {
                    conversation: chat,
                    critique_request,
                    critique,
                    revision_request,
                    revision,
                };
                check_demonstration(&demo).map_err(|e| format!("system_chat[{index}]: {e}"))?;
                Ok(demo)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            principles,
            demonstrations,
            judge_demonstrations: Vec::new(),
            cot_demonstrations: Vec::new(),
            hash,
        })
    }
}
