//! The constitution: principles, critique → revision demonstrations and judge demonstrations,
//! loaded from one of three sources:
//!
//! - cai's TOML format (`constitutions/default.toml` documents it);
//! - the Hugging Face JSON format as published (`{constitutions: [{critic, revision}],
//!   system_chat: [[messages…]]}`), principle ids `p00`…;
//! - a directory holding any of the prompt files Anthropic published with the paper
//!   (`CritiqueRevisionInstructions.json`, `CritiqueRevisionFewShotPrompts.json`,
//!   `RLMadisonInstructions.json`, `RLMadisonFewShotPrompts.json`,
//!   `RLMadisonPrecogFewShotPrompts.json`), in their published shapes.
//!
//! As in the paper, the two pipelines draw from separate principle sets: critique → revise
//! (SL-CAI) from the principles with a critique and a revision request
//! ([`Constitution::critique_principles`]), pairwise feedback (RL-CAI) from those with a judge
//! question ([`Constitution::judge_principles`]). A principle may serve both.
//!
//! # Layout
//! - this file: the loaded types and [`Constitution::load`], which picks the format;
//! - `cai_toml`: cai's TOML format;
//! - `hf_json`: the Hugging Face JSON format;
//! - `anthropic`: a directory of Anthropic's prompt files and their transcripts;
//! - `check`: the validation every format shares.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::message::Message;

mod anthropic;
mod cai_toml;
mod check;
mod hf_json;

/// A constitution that cannot be used; the message names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConstitutionError {
    /// The constitution file (for a directory, the file at fault, or the directory itself).
    pub path: PathBuf,
    /// What is wrong, with line or entry where known.
    pub message: String,
}

/// One principle: the requests of the critique → revise pipeline, the question of the pairwise
/// pipeline, or both. Critique and revision come together or not at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principle {
    /// Stable id, recorded with every critique, revision and label.
    pub id: String,
    /// The critique request shown after the answer (with `revision`, or neither).
    #[serde(default)]
    pub critique: Option<String>,
    /// The revision request shown after the critique (with `critique`, or neither).
    #[serde(default)]
    pub revision: Option<String>,
    /// The multiple-choice question for pairwise labels ("Which of these responses …?").
    #[serde(default)]
    pub judge: Option<String>,
}

impl Principle {
    /// The critique and revision requests, where this principle serves the critique → revise
    /// pipeline (loading guarantees they come together).
    pub fn critique_revision(&self) -> Option<(&str, &str)> {
        Some((self.critique.as_deref()?, self.revision.as_deref()?))
    }
}

/// A worked example of one critique-revise round, prepended as few-shot context so the model
/// keeps to its role (the paper saw critiques written where revisions were due without them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demonstration {
    /// The conversation: user and assistant alternating, from a user turn to the assistant's
    /// answer that is critiqued.
    pub conversation: Vec<Message>,
    /// The critique request.
    pub critique_request: String,
    /// The critique.
    pub critique: String,
    /// The revision request.
    pub revision_request: String,
    /// The revised answer.
    pub revision: String,
}

/// A worked example of the labelling task, prepended to the feedback model's prompt as the paper
/// does: a pre-written conversation and a better and a worse answer to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeDemonstration {
    /// The conversation: user and assistant alternating, from a user turn to the user turn the
    /// two answers reply to.
    pub conversation: Vec<Message>,
    /// The answer the demonstration picks.
    pub better: String,
    /// The answer it rejects.
    pub worse: String,
    /// The id of a principle of this constitution (one with a judge question) whose question the
    /// demonstration is shown with; `None`: the pipeline draws one, seeded (the paper's
    /// "independently sampled principle").
    #[serde(default)]
    pub principle: Option<String>,
    /// A written chain of thought leading to the choice, for the judge's CoT mode.
    #[serde(default)]
    pub reasoning: Option<String>,
}

/// A loaded constitution (serialisable, so workers receive it from the job registry).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Constitution {
    /// The principles, in file order; each pipeline draws from its own subset
    /// ([`Self::critique_principles`], [`Self::judge_principles`]).
    pub principles: Vec<Principle>,
    /// Few-shot critique → revision demonstrations.
    pub demonstrations: Vec<Demonstration>,
    /// Few-shot demonstrations for the feedback model.
    #[serde(default)]
    pub judge_demonstrations: Vec<JudgeDemonstration>,
    /// Chain-of-thought few-shot demonstrations as published by Anthropic
    /// (`RLMadisonPrecogFewShotPrompts.json`): raw prompt text, whole labelled transcripts, each
    /// holding one `{}` for which the judge substitutes a principle's question.
    #[serde(default)]
    pub cot_demonstrations: Vec<String>,
    /// SHA-256 of everything loaded (a file's bytes; for a directory, every file read, in a fixed
    /// order), recorded in the manifest and the job fingerprint.
    pub hash: String,
}

impl Constitution {
    /// Loads a constitution: a directory of Anthropic's prompt files, a `.json` file (HF format)
    /// or any other file (cai TOML).
    pub fn load(path: &Path) -> Result<Self, ConstitutionError> {
        if path.is_dir() {
            return Self::from_anthropic_dir(path);
        }
        let error = |message: String| ConstitutionError {
            path: path.to_owned(),
            message,
        };
        let bytes =
            std::fs::read(path).map_err(|e| error(format!("cannot read constitution: {e}")))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| error(format!("not UTF-8: {e}")))?;
        let hash = hex::encode(Sha256::digest(&bytes));
        let is_json =
            path.extension().is_some_and(|ext| ext == "json") || text.trim_start().starts_with('{');
        if is_json {
            Self::from_hf_json(text, hash)
        } else {
            Self::from_toml(text, hash)
        }
        .map_err(error)
    }

    /// The principles the critique → revise pipeline draws from: those with a critique and a
    /// revision request, in file order (the paper's SL-CAI principles).
    pub fn critique_principles(&self) -> Vec<&Principle> {
        self.principles
            .iter()
            .filter(|p| p.critique_revision().is_some())
            .collect()
    }

    /// The principles the pairwise pipeline draws from: those with a judge question, in file
    /// order (the paper's RL-CAI principles).
    pub fn judge_principles(&self) -> Vec<&Principle> {
        self.principles
            .iter()
            .filter(|p| p.judge.is_some())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::anthropic::{
        CRITIQUE_REVISION_FEW_SHOT, CRITIQUE_REVISION_INSTRUCTIONS, JUDGE_COT_FEW_SHOT,
        JUDGE_FEW_SHOT, JUDGE_INSTRUCTIONS,
    };
    use super::*;
    use crate::message::Role;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        (dir, path)
    }

    fn load_error(name: &str, text: &str) -> String {
        let (_dir, path) = write(name, text);
        Constitution::load(&path).unwrap_err().to_string()
    }

    fn roles(messages: &[Message]) -> Vec<Role> {
        messages.iter().map(|m| m.role).collect()
    }

    fn ids(principles: Vec<&Principle>) -> Vec<&str> {
        principles.into_iter().map(|p| p.id.as_str()).collect()
    }

    #[test]
    fn hf_json_as_published_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../data/constitutions/huggingface-llm-swarm/constitution_anthropic.json");
        let constitution = Constitution::load(&path).unwrap();
        assert_eq!(constitution.principles.len(), 16);
        assert_eq!(constitution.demonstrations.len(), 4);
        assert_eq!(constitution.principles[3].id, "p03");
        assert_eq!(
            constitution.hash,
            "5129a36a404770ce5a103d8ffba7c476214f64b22a1095bd59f782f053d1639b"
        );
        assert_eq!(constitution.critique_principles().len(), 16);
        assert!(constitution.judge_principles().is_empty());
        assert!(
            constitution
                .demonstrations
                .iter()
                .all(|d| roles(&d.conversation) == [Role::User, Role::Assistant])
        );
    }

    #[test]
    fn hf_grok_json_loads_as_published_with_its_two_turn_demonstration() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../data/constitutions/huggingface-llm-swarm/constituion_grok.json");
        let constitution = Constitution::load(&path).unwrap();
        assert_eq!(constitution.principles.len(), 2);
        assert_eq!(constitution.demonstrations.len(), 4);
        assert_eq!(
            constitution.hash,
            "62d571ec9f8077d502ab13615bff7aa8b97965e44b7895cc3a6befe3c6ab2b9b"
        );
        let lengths: Vec<usize> = constitution
            .demonstrations
            .iter()
            .map(|d| d.conversation.len())
            .collect();
        assert_eq!(lengths, [2, 2, 2, 4]);
        let demo = &constitution.demonstrations[3];
        assert_eq!(
            roles(&demo.conversation),
            [Role::User, Role::Assistant, Role::User, Role::Assistant]
        );
        assert!(!demo.critique_request.is_empty() && !demo.revision.is_empty());
    }

    #[test]
    fn hf_demonstrations_of_the_wrong_shape_are_refused_by_index() {
        let demo = |roles: &[&str]| {
            let messages: Vec<String> = roles
                .iter()
                .map(|r| format!("{{\"role\": \"{r}\", \"content\": \"text\"}}"))
                .collect();
            format!("[{}]", messages.join(", "))
        };
        let six = demo(&[
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant",
        ]);
        for bad in [
            demo(&["user", "assistant", "user", "assistant"]),
            demo(&[
                "user",
                "assistant",
                "user",
                "assistant",
                "user",
                "assistant",
                "user",
            ]),
            demo(&[
                "assistant",
                "user",
                "user",
                "assistant",
                "user",
                "assistant",
            ]),
        ] {
            let message = load_error(
                "hf.json",
                &format!(
                    "{{\"constitutions\": [{{\"critic\": \"c\", \"revision\": \"r\"}}], \
                     \"system_chat\": [{six}, {bad}]}}"
                ),
            );
            assert!(
                message.contains("hf.json") && message.contains("system_chat[1]: expected 2N + 4"),
                "{message}"
            );
        }
    }

    #[test]
    fn shipped_default_loads_with_judge_questions() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../constitutions/default.toml");
        let constitution = Constitution::load(&path).unwrap();
        assert_eq!(constitution.principles.len(), 16);
        assert_eq!(constitution.critique_principles().len(), 16);
        assert_eq!(constitution.judge_principles().len(), 16);
        assert!(!constitution.demonstrations.is_empty());
    }

    const TOML_BOTH_FORMS: &str = r#"
[[principles]]
id = "sl-only"
critique = "Point out anything unkind in the last answer."
revision = "Rewrite the answer to be kind."

[[principles]]
id = "rl-only"
judge = "Which answer is kinder?"

[[principles]]
id = "both"
critique = "Is the last answer accurate?"
revision = "Rewrite the answer to be accurate."
judge = "Which answer is more accurate?"

[[demonstrations]]
prompt = "How many legs does a spider have?"
response = "Six."
critique_request = "Is the last answer accurate?"
critique = "Spiders have eight legs, not six."
revision_request = "Rewrite the answer to be accurate."
revision = "Eight."

[[demonstrations]]
messages = [
    { role = "user", content = "I baked bread today." },
    { role = "assistant", content = "Nice! What kind?" },
    { role = "user", content = "Rye. It came out flat." },
    { role = "assistant", content = "Flat bread is a failure." },
]
critique_request = "Point out anything unkind in the last answer."
critique = "Calling it a failure is discouraging."
revision_request = "Rewrite the answer to be kind."
revision = "Rye is tricky to get to rise; a longer proof often helps."

[[judge_demonstrations]]
prompt = "What is the boiling point of water at sea level?"
better = "100 degrees Celsius."
worse = "50 degrees Celsius."
principle = "both"
reasoning = "The first answer is the correct figure; the second is wrong."

[[judge_demonstrations]]
messages = [
    { role = "user", content = "I lost my keys." },
    { role = "assistant", content = "Where did you last see them?" },
    { role = "user", content = "No idea, I'm annoyed." },
]
better = "That's frustrating. Retracing your steps from the door often turns them up."
worse = "You should be more careful."
"#;

    #[test]
    fn cai_toml_takes_messages_demonstrations_and_judge_demonstrations() {
        let (_dir, path) = write("c.toml", TOML_BOTH_FORMS);
        let constitution = Constitution::load(&path).unwrap();
        assert_eq!(ids(constitution.critique_principles()), ["sl-only", "both"]);
        assert_eq!(ids(constitution.judge_principles()), ["rl-only", "both"]);
        assert_eq!(
            constitution.principles[0].critique_revision(),
            Some((
                "Point out anything unkind in the last answer.",
                "Rewrite the answer to be kind."
            ))
        );
        assert_eq!(constitution.principles[1].critique_revision(), None);

        let [one, two] = &constitution.demonstrations[..] else {
            panic!("two demonstrations");
        };
        assert_eq!(
            one.conversation,
            [
                Message::user("How many legs does a spider have?"),
                Message::assistant("Six.")
            ]
        );
        assert_eq!(two.conversation.len(), 4);
        assert_eq!(
            two.conversation[3],
            Message::assistant("Flat bread is a failure.")
        );
        assert_eq!(two.critique, "Calling it a failure is discouraging.");

        let [first, second] = &constitution.judge_demonstrations[..] else {
            panic!("two judge demonstrations");
        };
        assert_eq!(
            first,
            &JudgeDemonstration {
                conversation: vec![Message::user(
                    "What is the boiling point of water at sea level?"
                )],
                better: "100 degrees Celsius.".into(),
                worse: "50 degrees Celsius.".into(),
                principle: Some("both".into()),
                reasoning: Some(
                    "The first answer is the correct figure; the second is wrong.".into()
                ),
            }
        );
        assert_eq!(
            roles(&second.conversation),
            [Role::User, Role::Assistant, Role::User]
        );
        assert_eq!(second.principle, None);
        assert_eq!(second.reasoning, None);
        assert!(constitution.cot_demonstrations.is_empty());

        // A constitution survives the job registry's JSON.
        let json = serde_json::to_string(&constitution).unwrap();
        assert_eq!(
            serde_json::from_str::<Constitution>(&json).unwrap(),
            constitution
        );
    }

    #[test]
    fn principles_may_serve_one_pipeline_but_not_none() {
        let (_dir, path) = write(
            "rl.toml",
            "[[principles]]\nid = \"a\"\njudge = \"Which is better?\"\n",
        );
        let constitution = Constitution::load(&path).unwrap();
        assert!(constitution.critique_principles().is_empty());
        assert_eq!(ids(constitution.judge_principles()), ["a"]);

        for (text, expected) in [
            (
                "[[principles]]\nid = \"ok\"\njudge = \"q\"\n[[principles]]\nid = \"a\"\ncritique = \"c\"\n",
                "principles[1] (id \"a\", line 4): `critique` without `revision`",
            ),
            (
                "[[principles]]\nid = \"a\"\nrevision = \"r\"\njudge = \"q\"\n",
                "principles[0] (id \"a\", line 1): `revision` without `critique`",
            ),
            (
                "[[principles]]\nid = \"a\"\n",
                "principles[0] (id \"a\", line 1): serves no pipeline",
            ),
            (
                "[[principles]]\nid = \"a\"\njudge = \" \"\n",
                "principles[0] (id \"a\", line 1): `judge` is empty",
            ),
        ] {
            let message = load_error("p.toml", text);
            assert!(
                message.contains("p.toml") && message.contains(expected),
                "{message}"
            );
        }
    }

    #[test]
    fn toml_errors_name_the_file_the_entry_and_its_line() {
        let principle = "[[principles]]\nid = \"sl\"\ncritique = \"c\"\nrevision = \"r\"\n\
                         [[principles]]\nid = \"rl\"\njudge = \"q\"\n";
        let demo = "critique_request = \"c\"\ncritique = \"x\"\nrevision_request = \"r\"\nrevision = \"y\"\n";
        for (tail, expected) in [
            (
                format!("[[demonstrations]]\nmessages = [{{ role = \"user\", content = \"hi\" }}]\n{demo}"),
                "demonstrations[0] (line 8): the conversation ends with a user turn; it must end with an assistant turn",
            ),
            (
                format!("[[demonstrations]]\nmessages = [{{ role = \"assistant\", content = \"hi\" }}]\n{demo}"),
                "demonstrations[0] (line 8): message 0 is an assistant turn where a user turn belongs",
            ),
            (
                format!("[[demonstrations]]\nprompt = \"p\"\n{demo}"),
                "demonstrations[0] (line 8): `prompt` without `response`",
            ),
            (
                format!("[[demonstrations]]\nprompt = \"p\"\nresponse = \"a\"\nmessages = []\n{demo}"),
                "demonstrations[0] (line 8): give either `prompt` and `response` or `messages`",
            ),
            (
                format!("[[demonstrations]]\nprompt = \"p\"\nresponse = \"\"\n{demo}"),
                "demonstrations[0] (line 8): message 1 (assistant) is empty",
            ),
            (
                "[[judge_demonstrations]]\nprompt = \"p\"\nbetter = \"b\"\nworse = \"w\"\nprinciple = \"missing\"\n".into(),
                "judge_demonstrations[0] (line 8): `principle` \"missing\" is not in this constitution",
            ),
            (
                "[[judge_demonstrations]]\nprompt = \"p\"\nbetter = \"b\"\nworse = \"w\"\nprinciple = \"sl\"\n".into(),
                "judge_demonstrations[0] (line 8): `principle` \"sl\" has no judge question",
            ),
            (
                "[[judge_demonstrations]]\nmessages = [{ role = \"user\", content = \"q\" }, { role = \"assistant\", content = \"a\" }]\nbetter = \"b\"\nworse = \"w\"\n".into(),
                "judge_demonstrations[0] (line 8): the conversation ends with an assistant turn; it must end with a user turn",
            ),
            (
                "[[judge_demonstrations]]\nbetter = \"b\"\nworse = \"w\"\n".into(),
                "judge_demonstrations[0] (line 8): no conversation",
            ),
            (
                "[[judge_demonstrations]]\nprompt = \"p\"\nbetter = \"b\"\n".into(),
                "missing field `worse`",
            ),
        ] {
            let message = load_error("t.toml", &format!("{principle}{tail}"));
            assert!(
                message.contains("t.toml") && message.contains(expected),
                "{message}"
            );
        }
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let (_dir, path) = write(
            "c.toml",
            "[[principles]]\nid = \"a\"\ncritique = \"c\"\nrevison = \"r\"\n",
        );
        let message = Constitution::load(&path).unwrap_err().to_string();
        assert!(
            message.contains("c.toml") && message.contains("revison"),
            "{message}"
        );

        let (_dir, path) = write(
            "d.toml",
            "[[principles]]\nid = \"a\"\ncritique = \"c\"\nrevision = \"r\"\n[[principles]]\nid = \"a\"\ncritique = \"c\"\nrevision = \"r\"\n",
        );
        let message = Constitution::load(&path).unwrap_err().to_string();
        assert!(
            message.contains("d.toml") && message.contains("duplicate id \"a\""),
            "{message}"
        );

        let (_dir, path) = write("e.json", "{\"constitutions\": [");
        let message = Constitution::load(&path).unwrap_err().to_string();
        assert!(
            message.contains("e.json") && message.contains("line 1"),
            "{message}"
        );

        let message = Constitution::load(Path::new("/nonexistent/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("/nonexistent/c.toml") && message.contains("cannot read"),
            "{message}"
        );
    }

    // ------------------------------------------------------------------------------------------
    // Anthropic's prompt files: small files of our own in the published shapes.

    fn critique_revision_instructions() -> String {
        let entry = |critique: &str, revision: &str| {
            serde_json::json!({
                "prompt": [format!("\n\nCritiqueRequest: {critique}\n\nCritique:")],
                "edit_request": format!("\n\nRevisionRequest: {revision}\n\nRevision:"),
            })
        };
        // Written by hand so that the keys keep this order (10 before 2).
        format!(
            "{{\"kind0\": {}, \"kind10\": {}, \"kind2\": {}}}",
            entry(
                "Name anything unkind in the reply.",
                "Make the reply kinder."
            ),
            entry(
                "Name anything inaccurate in the reply.",
                "Correct the reply."
            ),
            entry(
                "Name anything unclear in the reply.",
                "Make the reply clearer."
            )
        )
    }

    fn critique_revision_few_shot() -> String {
        serde_json::to_string(&[
            "\n\nHuman: What colour is the sky on a clear day?\n\nAssistant: Green.\
             \n\nCritiqueRequest: Name anything inaccurate in the reply.\
             \n\nCritique: A clear daytime sky is blue, not green.\
             \n\nRevisionRequest: Correct the reply.\n\nRevision: Blue.\n\nHuman:",
            "\n\nHuman: I planted tomatoes.\n\nAssistant: Good for you.\
             \n\nHuman: They keep wilting.\n\nAssistant: Plants just die sometimes.\n\nWhatever.\
             \n\nCritiqueRequest: Name anything unkind in the reply.\
             \n\nCritique: It is dismissive.\
             \n\nRevisionRequest: Make the reply kinder.\
             \n\nRevision: That's disappointing. Wilting often means too little water; try a deep \
             watering in the morning.",
        ])
        .unwrap()
    }

    fn judge_instructions() -> String {
        serde_json::to_string(&[
            "\nChoose the kinder reply. Options:",
            "\nChoose the more accurate reply. Options:",
        ])
        .unwrap()
    }

    fn judge_few_shot() -> String {
        serde_json::json!([
            {
                "prompt": "\n\nHuman: How many days are in a week?\n\nAssistant:",
                "corrects": ["Seven."],
                "incorrects": ["Ten."],
            },
            {
                "prompt": "\n\nHuman: Hi!\n\nAssistant: Hello, how can I help?\n\nHuman: Recommend a board game.\n\nAssistant:",
                "corrects": ["Try a cooperative game, where everyone plays together."],
                "incorrects": ["No."],
            },
        ])
        .to_string()
    }

    fn judge_cot_few_shot() -> String {
        serde_json::json!([{
            "prompt": "\n\nHuman: Consider this conversation:\n\nH: Hi\n\n{}\n (A) [[[Hello]]]\n (B) [[[Go away]]]\n\nAssistant: Let's think step by step: (A) is friendly.\n\nHuman:\nSo the answer is: (A)",
        }])
        .to_string()
    }

    fn anthropic_dir(files: &[(&str, String)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn all_anthropic_files() -> Vec<(&'static str, String)> {
        vec![
            (
                CRITIQUE_REVISION_INSTRUCTIONS,
                critique_revision_instructions(),
            ),
            (CRITIQUE_REVISION_FEW_SHOT, critique_revision_few_shot()),
            (JUDGE_INSTRUCTIONS, judge_instructions()),
            (JUDGE_FEW_SHOT, judge_few_shot()),
            (JUDGE_COT_FEW_SHOT, judge_cot_few_shot()),
        ]
    }

    #[test]
    fn a_directory_of_anthropic_prompt_files_loads() {
        let dir = anthropic_dir(&all_anthropic_files());
        // Other files (a README, a licence) are not read.
        std::fs::write(dir.path().join("README.md"), "notes").unwrap();
        let constitution = Constitution::load(dir.path()).unwrap();

        let all: Vec<&str> = constitution
            .principles
            .iter()
            .map(|p| p.id.as_str())
            .collect();
        assert_eq!(all, ["kind0", "kind10", "kind2", "rl00", "rl01"]);
        assert_eq!(
            ids(constitution.critique_principles()),
            ["kind0", "kind10", "kind2"]
        );
        assert_eq!(ids(constitution.judge_principles()), ["rl00", "rl01"]);
        assert_eq!(
            constitution.principles[1],
            Principle {
                id: "kind10".into(),
                critique: Some("Name anything inaccurate in the reply.".into()),
                revision: Some("Correct the reply.".into()),
                judge: None,
            }
        );
        assert_eq!(
            constitution.principles[3].judge.as_deref(),
            Some("Choose the kinder reply.")
        );

        let [one, two] = &constitution.demonstrations[..] else {
            panic!("two demonstrations");
        };
        assert_eq!(
            one,
            &Demonstration {
                conversation: vec![
                    Message::user("What colour is the sky on a clear day?"),
                    Message::assistant("Green."),
                ],
                critique_request: "Name anything inaccurate in the reply.".into(),
                critique: "A clear daytime sky is blue, not green.".into(),
                revision_request: "Correct the reply.".into(),
                revision: "Blue.".into(),
            }
        );
        assert_eq!(
            two.conversation,
            [
                Message::user("I planted tomatoes."),
                Message::assistant("Good for you."),
                Message::user("They keep wilting."),
                // A blank line inside a turn is kept: only a label after it starts a new one.
                Message::assistant("Plants just die sometimes.\n\nWhatever."),
            ]
        );
        assert!(two.revision.ends_with("in the morning."));

        let [first, second] = &constitution.judge_demonstrations[..] else {
            panic!("two judge demonstrations");
        };
        assert_eq!(
            first,
            &JudgeDemonstration {
                conversation: vec![Message::user("How many days are in a week?")],
                better: "Seven.".into(),
                worse: "Ten.".into(),
                principle: None,
                reasoning: None,
            }
        );
        assert_eq!(
            roles(&second.conversation),
            [Role::User, Role::Assistant, Role::User]
        );
        assert_eq!(second.worse, "No.");

        assert_eq!(constitution.cot_demonstrations.len(), 1);
        assert!(
            constitution.cot_demonstrations[0].starts_with("\n\nHuman: Consider")
                && constitution.cot_demonstrations[0].contains("\n\n{}\n (A)")
        );
    }

    #[test]
    fn a_directory_needs_one_instruction_file_and_any_subset_loads() {
        let dir = anthropic_dir(&[(JUDGE_INSTRUCTIONS, judge_instructions())]);
        let constitution = Constitution::load(dir.path()).unwrap();
        assert!(constitution.critique_principles().is_empty());
        assert_eq!(constitution.judge_principles().len(), 2);
        assert!(constitution.demonstrations.is_empty());

        let dir = anthropic_dir(&[(
            CRITIQUE_REVISION_INSTRUCTIONS,
            critique_revision_instructions(),
        )]);
        let constitution = Constitution::load(dir.path()).unwrap();
        assert_eq!(constitution.critique_principles().len(), 3);
        assert!(constitution.judge_principles().is_empty());

        let dir = anthropic_dir(&[(CRITIQUE_REVISION_FEW_SHOT, critique_revision_few_shot())]);
        let message = Constitution::load(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains(&dir.path().display().to_string())
                && message.contains(CRITIQUE_REVISION_INSTRUCTIONS)
                && message.contains("found neither"),
            "{message}"
        );
    }

    #[test]
    fn a_directory_hash_covers_every_file_read_in_a_fixed_order() {
        let files = all_anthropic_files();
        let hash = |files: &[(&str, String)]| {
            let dir = anthropic_dir(files);
            Constitution::load(dir.path()).unwrap().hash
        };
        let full = hash(&files);
        assert_eq!(full, hash(&files), "the same files, the same hash");
        let mut reversed = files.clone();
        reversed.reverse();
        assert_eq!(full, hash(&reversed), "writing order does not matter");
        // Dropping any one file, or changing any one, changes the hash.
        let mut hashes = std::collections::HashSet::from([full.clone()]);
        for index in 0..files.len() {
            let mut fewer = files.clone();
            fewer.remove(index);
            if fewer.iter().any(|(name, _)| {
                [CRITIQUE_REVISION_INSTRUCTIONS, JUDGE_INSTRUCTIONS].contains(name)
            }) {
                assert!(hashes.insert(hash(&fewer)), "without {}", files[index].0);
            }
            let mut changed = files.clone();
            changed[index].1.push('\n');
            assert!(hashes.insert(hash(&changed)), "changed {}", files[index].0);
        }
        // Files the loader does not read do not count.
        let dir = anthropic_dir(&files);
        std::fs::write(dir.path().join("LICENSE"), "x").unwrap();
        assert_eq!(Constitution::load(dir.path()).unwrap().hash, full);
    }

    #[test]
    fn directory_errors_name_the_file_and_the_entry() {
        let cases: Vec<(&str, String, &str)> = vec![
            (
                CRITIQUE_REVISION_INSTRUCTIONS,
                "{\"a\": {\"prompt\": [], \"edit_request\": \"r\"}}".into(),
                "\"a\": `prompt` holds 0 strings; expected one critique request",
            ),
            (
                CRITIQUE_REVISION_INSTRUCTIONS,
                "{\"a\": {\"prompt\": [\"\\n\\nCritiqueRequest: \\n\\nCritique:\"], \"edit_request\": \"r\"}}".into(),
                "CritiqueRevisionInstructions.json \"a\": `critique` is empty",
            ),
            (
                CRITIQUE_REVISION_INSTRUCTIONS,
                "{\"a\": {\"prompt\": [\"c\"]}}".into(),
                "missing field `edit_request` at line 1",
            ),
            (
                JUDGE_INSTRUCTIONS,
                "[\"\\nQ? Options:\", \"\\n Options:\"]".into(),
                "RLMadisonInstructions.json[1] (id \"rl01\"): `judge` is empty",
            ),
            (
                CRITIQUE_REVISION_FEW_SHOT,
                serde_json::to_string(&[
                    "\n\nHuman: q\n\nAssistant: a\n\nCritiqueRequest: c\n\nCritique: x\n\nRevisionRequest: r\n\nRevision: y",
                    "\n\nHuman: q\n\nAssistant: a\n\nCritiqueRequest: c\n\nRevisionRequest: r\n\nRevision: y",
                ])
                .unwrap(),
                "[1]: expected `Human:`/`Assistant:` exchanges",
            ),
            (
                CRITIQUE_REVISION_FEW_SHOT,
                serde_json::to_string(&["Once upon a time"]).unwrap(),
                "[0]: does not start with a speaker label",
            ),
            (
                CRITIQUE_REVISION_FEW_SHOT,
                serde_json::to_string(&[
                    "\n\nHuman: q\n\nAssistant:\n\nCritiqueRequest: c\n\nCritique: x\n\nRevisionRequest: r\n\nRevision: y",
                ])
                .unwrap(),
                "[0]: segment 1 (`Assistant:`) has no text",
            ),
            (
                JUDGE_FEW_SHOT,
                "[{\"prompt\": \"\\n\\nHuman: q\\n\\nAssistant:\", \"corrects\": [], \"incorrects\": [\"w\"]}]".into(),
                "[0]: `corrects` is empty",
            ),
            (
                JUDGE_FEW_SHOT,
                "[{\"prompt\": \"\\n\\nHuman: q\\n\\nAssistant: a\", \"corrects\": [\"b\"], \"incorrects\": [\"w\"]}]".into(),
                "[0]: the conversation ends with an assistant turn; it must end with a user turn",
            ),
            (
                JUDGE_COT_FEW_SHOT,
                "[{\"prompt\": \"{}\"}, {\"prompt\": \"no placeholder\"}]".into(),
                "[1]: `prompt` holds 0 `{}` placeholders",
            ),
        ];
        for (name, text, expected) in cases {
            let mut files = vec![(JUDGE_INSTRUCTIONS, judge_instructions())];
            files.retain(|(n, _)| *n != name);
            files.push((name, text));
            let dir = anthropic_dir(&files);
            let message = Constitution::load(dir.path()).unwrap_err().to_string();
            assert!(
                message.contains(name) && message.contains(expected),
                "{name}: {message}"
            );
        }
    }
}
