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

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::message::{Message, Role};

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

// ---------------------------------------------------------------------------------------------
// cai TOML

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaiToml {
    principles: Vec<toml::Spanned<Principle>>,
    #[serde(default)]
    demonstrations: Vec<toml::Spanned<TomlDemonstration>>,
    #[serde(default)]
    judge_demonstrations: Vec<toml::Spanned<TomlJudgeDemonstration>>,
}

/// `[[demonstrations]]`: `prompt` + `response` (one exchange) or `messages`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlDemonstration {
    prompt: Option<String>,
    response: Option<String>,
    messages: Option<Vec<Message>>,
    critique_request: String,
    critique: String,
    revision_request: String,
    revision: String,
}

/// `[[judge_demonstrations]]`: `prompt` (one user turn) or `messages`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlJudgeDemonstration {
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    better: String,
    worse: String,
    principle: Option<String>,
    reasoning: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Hugging Face JSON

#[derive(Deserialize)]
struct HfJson {
    constitutions: Vec<HfPrinciple>,
    #[serde(default)]
    system_chat: Vec<Vec<Message>>,
}

#[derive(Deserialize)]
struct HfPrinciple {
    critic: String,
    revision: String,
}

// ---------------------------------------------------------------------------------------------
// Anthropic's prompt files

const CRITIQUE_REVISION_INSTRUCTIONS: &str = "CritiqueRevisionInstructions.json";
const CRITIQUE_REVISION_FEW_SHOT: &str = "CritiqueRevisionFewShotPrompts.json";
const JUDGE_INSTRUCTIONS: &str = "RLMadisonInstructions.json";
const JUDGE_FEW_SHOT: &str = "RLMadisonFewShotPrompts.json";
const JUDGE_COT_FEW_SHOT: &str = "RLMadisonPrecogFewShotPrompts.json";

/// The files a directory constitution reads, in the order they enter its hash.
const ANTHROPIC_FILES: [&str; 5] = [
    CRITIQUE_REVISION_INSTRUCTIONS,
    CRITIQUE_REVISION_FEW_SHOT,
    JUDGE_INSTRUCTIONS,
    JUDGE_FEW_SHOT,
    JUDGE_COT_FEW_SHOT,
];

/// `CritiqueRevisionInstructions.json`: `{"harmful0": {"prompt": [critique], "edit_request": revision}, …}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnthropicCritiqueRevision {
    prompt: Vec<String>,
    edit_request: String,
}

/// `RLMadisonFewShotPrompts.json`: `[{"prompt": transcript, "corrects": [..], "incorrects": [..]}, …]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnthropicJudgeExample {
    prompt: String,
    corrects: Vec<String>,
    incorrects: Vec<String>,
}

/// `RLMadisonPrecogFewShotPrompts.json`: `[{"prompt": template}, …]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnthropicCotExample {
    prompt: String,
}

/// A JSON object's entries in file order (a `serde_json` map would sort the keys, putting
/// `harmful10` before `harmful2`).
struct Entries<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// The speaker labels of Anthropic's transcripts (`\n\nHuman: …\n\nAssistant: …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Label {
    Human,
    Assistant,
    CritiqueRequest,
    Critique,
    RevisionRequest,
    Revision,
}

impl Label {
    const ALL: [Label; 6] = [
        Label::Human,
        Label::Assistant,
        Label::CritiqueRequest,
        Label::Critique,
        Label::RevisionRequest,
        Label::Revision,
    ];

    fn text(self) -> &'static str {
        match self {
            Label::Human => "Human:",
            Label::Assistant => "Assistant:",
            Label::CritiqueRequest => "CritiqueRequest:",
            Label::Critique => "Critique:",
            Label::RevisionRequest => "RevisionRequest:",
            Label::Revision => "Revision:",
        }
    }
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

    fn from_toml(text: &str, hash: String) -> Result<Self, String> {
        let file: CaiToml =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        let line = |span: Range<usize>| text[..span.start].matches('\n').count() + 1;

        let lines: Vec<usize> = file.principles.iter().map(|p| line(p.span())).collect();
        let principles: Vec<Principle> = file
            .principles
            .into_iter()
            .map(toml::Spanned::into_inner)
            .collect();
        check_principles(&principles, |index| {
            format!(
                "principles[{index}] (id {:?}, line {})",
                principles[index].id, lines[index]
            )
        })?;

        let demonstrations = file
            .demonstrations
            .into_iter()
            .enumerate()
            .map(|(index, spanned)| {
                let place = format!("demonstrations[{index}] (line {})", line(spanned.span()));
                let demo = spanned.into_inner();
                let conversation = match (demo.prompt, demo.response, demo.messages) {
                    (Some(prompt), Some(response), None) => {
                        vec![Message::user(prompt), Message::assistant(response)]
                    }
                    (None, None, Some(messages)) => messages,
                    (None, None, None) => {
                        return Err(format!(
                            "{place}: no conversation: give `prompt` and `response` (one \
                             exchange) or `messages` = [{{role, content}}, …]"
                        ));
                    }
                    (_, _, Some(_)) => {
                        return Err(format!(
                            "{place}: give either `prompt` and `response` or `messages`, not both"
                        ));
                    }
                    (Some(_), None, None) => {
                        return Err(format!("{place}: `prompt` without `response`"));
                    }
                    (None, Some(_), None) => {
                        return Err(format!("{place}: `response` without `prompt`"));
                    }
                };
                let demo = Demonstration {
                    conversation,
                    critique_request: demo.critique_request,
                    critique: demo.critique,
                    revision_request: demo.revision_request,
                    revision: demo.revision,
                };
                check_demonstration(&demo).map_err(|e| format!("{place}: {e}"))?;
                Ok(demo)
            })
            .collect::<Result<_, _>>()?;

        let judge_demonstrations = file
            .judge_demonstrations
            .into_iter()
            .enumerate()
            .map(|(index, spanned)| {
                let place = format!(
                    "judge_demonstrations[{index}] (line {})",
                    line(spanned.span())
                );
                let demo = spanned.into_inner();
                let conversation = match (demo.prompt, demo.messages) {
                    (Some(prompt), None) => vec![Message::user(prompt)],
                    (None, Some(messages)) => messages,
                    (None, None) => {
                        return Err(format!(
                            "{place}: no conversation: give `prompt` (one user turn) or \
                             `messages` = [{{role, content}}, …]"
                        ));
                    }
                    (Some(_), Some(_)) => {
                        return Err(format!(
                            "{place}: give either `prompt` or `messages`, not both"
                        ));
                    }
                };
                let demo = JudgeDemonstration {
                    conversation,
                    better: demo.better,
                    worse: demo.worse,
                    principle: demo.principle,
                    reasoning: demo.reasoning,
                };
                check_judge_demonstration(&demo, &principles)
                    .map_err(|e| format!("{place}: {e}"))?;
                Ok(demo)
            })
            .collect::<Result<_, _>>()?;

        Ok(Self {
            principles,
            demonstrations,
            judge_demonstrations,
            cot_demonstrations: Vec::new(),
            hash,
        })
    }

    fn from_hf_json(text: &str, hash: String) -> Result<Self, String> {
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

    /// Reads whichever of Anthropic's prompt files the directory holds (at least one of the two
    /// instruction files). Critique/revision principles take the instruction file's keys as ids;
    /// judge principles are `rl00`….
    fn from_anthropic_dir(dir: &Path) -> Result<Self, ConstitutionError> {
        let dir_error = |message: String| ConstitutionError {
            path: dir.to_owned(),
            message,
        };
        let mut hasher = Sha256::new();
        let mut files: HashMap<&str, (PathBuf, String)> = HashMap::new();
        for name in ANTHROPIC_FILES {
            let path = dir.join(name);
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(ConstitutionError {
                        path,
                        message: format!("cannot read constitution file: {e}"),
                    });
                }
            };
            // Name and length delimit each file, so the hash says which files were read.
            hasher.update(name.as_bytes());
            hasher.update([0u8]);
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
            let text = String::from_utf8(bytes).map_err(|e| ConstitutionError {
                path: path.clone(),
                message: format!("not UTF-8: {e}"),
            })?;
            files.insert(name, (path, text));
        }
        if !files.contains_key(CRITIQUE_REVISION_INSTRUCTIONS)
            && !files.contains_key(JUDGE_INSTRUCTIONS)
        {
            return Err(dir_error(format!(
                "a directory constitution holds Anthropic's prompt files and needs at least one \
                 of {CRITIQUE_REVISION_INSTRUCTIONS} (critique and revision requests) and \
                 {JUDGE_INSTRUCTIONS} (judge questions); found neither"
            )));
        }
        /// Parses one file, if present, with errors naming it.
        fn parse<T>(
            files: &HashMap<&str, (PathBuf, String)>,
            name: &str,
            convert: impl FnOnce(&str) -> Result<T, String>,
        ) -> Result<Option<T>, ConstitutionError> {
            files
                .get(name)
                .map(|(path, text)| {
                    convert(text).map_err(|message| ConstitutionError {
                        path: path.clone(),
                        message,
                    })
                })
                .transpose()
        }

        let critique_revision = parse(&files, CRITIQUE_REVISION_INSTRUCTIONS, |text| {
            let entries: Entries<AnthropicCritiqueRevision> = json(text)?;
            entries
                .0
                .into_iter()
                .map(|(key, entry)| {
                    let [critique] = <[String; 1]>::try_from(entry.prompt).map_err(|prompt| {
                        format!(
                            "{key:?}: `prompt` holds {} strings; expected one critique request",
                            prompt.len()
                        )
                    })?;
                    Ok(Principle {
                        critique: Some(strip_labels(&critique, "CritiqueRequest:", "Critique:")),
                        revision: Some(strip_labels(
                            &entry.edit_request,
                            "RevisionRequest:",
                            "Revision:",
                        )),
                        judge: None,
                        id: key,
                    })
                })
                .collect::<Result<Vec<_>, String>>()
        })?
        .unwrap_or_default();
        let judge = parse(&files, JUDGE_INSTRUCTIONS, |text| {
            let questions: Vec<String> = json(text)?;
            Ok(questions
                .iter()
                .enumerate()
                .map(|(index, question)| Principle {
                    id: format!("rl{index:02}"),
                    critique: None,
                    revision: None,
                    judge: Some(strip_labels(question, "", "Options:")),
                })
                .collect::<Vec<_>>())
        })?
        .unwrap_or_default();
        let sl_count = critique_revision.len();
        let principles: Vec<Principle> = critique_revision.into_iter().chain(judge).collect();
        check_principles(&principles, |index| {
            if index < sl_count {
                format!(
                    "{CRITIQUE_REVISION_INSTRUCTIONS} {:?}",
                    principles[index].id
                )
            } else {
                format!(
                    "{JUDGE_INSTRUCTIONS}[{}] (id {:?})",
                    index - sl_count,
                    principles[index].id
                )
            }
        })
        .map_err(dir_error)?;

        let demonstrations = parse(&files, CRITIQUE_REVISION_FEW_SHOT, |text| {
            let transcripts: Vec<String> = json(text)?;
            each_item(transcripts, |transcript| {
                demonstration_from_transcript(&transcript)
            })
        })?
        .unwrap_or_default();
        let judge_demonstrations = parse(&files, JUDGE_FEW_SHOT, |text| {
            let examples: Vec<AnthropicJudgeExample> = json(text)?;
            each_item(examples, judge_demonstration_from_example)
        })?
        .unwrap_or_default();
        let cot_demonstrations = parse(&files, JUDGE_COT_FEW_SHOT, |text| {
            let examples: Vec<AnthropicCotExample> = json(text)?;
            each_item(examples, |example| {
                match example.prompt.matches("{}").count() {
                    1 => Ok(example.prompt),
                    n => Err(format!(
                        "`prompt` holds {n} `{{}}` placeholders; expected one, where the \
                     principle's question goes"
                    )),
                }
            })
        })?
        .unwrap_or_default();

        Ok(Self {
            principles,
            demonstrations,
            judge_demonstrations,
            cot_demonstrations,
            hash: hex::encode(hasher.finalize()),
        })
    }
}

/// A JSON file in the shape `T`, with serde's message (line and column) on failure.
fn json<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("not in this file's published shape: {e}"))
}

/// Drops an instruction's leading and trailing labels (`\n\nCritiqueRequest: ` … `\n\nCritique:`),
/// where present, and the whitespace around them.
fn strip_labels(text: &str, start: &str, end: &str) -> String {
    let text = text.trim();
    let text = text.strip_prefix(start).unwrap_or(text);
    let text = text.strip_suffix(end).unwrap_or(text);
    text.trim().to_owned()
}

/// Splits a transcript into labelled segments. A label opens the text or follows a blank line
/// (`\n\n`); each segment's text is trimmed. A last segment without text (the `\n\nHuman:` stop
/// sequence of a demonstration, the `\n\nAssistant:` a judge prompt ends with) is dropped.
fn split_transcript(text: &str) -> Result<Vec<(Label, &str)>, String> {
    let text = text.trim_start();
    let label_at = |at: usize| {
        Label::ALL
            .into_iter()
            .find(|label| text[at..].starts_with(label.text()))
    };
    let mut starts: Vec<(usize, Label)> = Vec::new();
    let mut at = 0;
    loop {
        match label_at(at) {
            Some(label) => starts.push((at, label)),
            None if at == 0 => {
                return Err("does not start with a speaker label such as `Human:`".into());
            }
            None => {}
        }
        let Some(offset) = text[at..].find("\n\n") else {
            break;
        };
        at += offset + 2;
        at += text[at..].len() - text[at..].trim_start_matches('\n').len();
    }
    let mut segments: Vec<(Label, &str)> = starts
        .iter()
        .enumerate()
        .map(|(i, &(start, label))| {
            let end = starts.get(i + 1).map_or(text.len(), |next| next.0);
            (label, text[start + label.text().len()..end].trim())
        })
        .collect();
    if segments.last().is_some_and(|(_, text)| text.is_empty()) {
        segments.pop();
    }
    if let Some(index) = segments.iter().position(|(_, text)| text.is_empty()) {
        return Err(format!(
            "segment {index} (`{}`) has no text",
            segments[index].0.text()
        ));
    }
    Ok(segments)
}

/// The labels of a transcript, for messages.
fn labels(segments: &[(Label, &str)]) -> String {
    let labels: Vec<&str> = segments.iter().map(|(label, _)| label.text()).collect();
    format!("[{}]", labels.join(" "))
}

/// `Human:`/`Assistant:` segments as messages.
fn conversation_from(segments: &[(Label, &str)]) -> Option<Vec<Message>> {
    segments
        .iter()
        .map(|&(label, text)| match label {
            Label::Human => Some(Message::user(text)),
            Label::Assistant => Some(Message::assistant(text)),
            _ => None,
        })
        .collect()
}

/// Converts every item of a JSON list, naming the index of the one that fails.
fn each_item<T, U>(
    items: Vec<T>,
    convert: impl Fn(T) -> Result<U, String>,
) -> Result<Vec<U>, String> {
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| convert(item).map_err(|e| format!("[{index}]: {e}")))
        .collect()
}

/// A demonstration from a `CritiqueRevisionFewShotPrompts.json` transcript.
fn demonstration_from_transcript(transcript: &str) -> Result<Demonstration, String> {
    const SHAPE: &str = "expected `Human:`/`Assistant:` exchanges, then `CritiqueRequest:`, \
                         `Critique:`, `RevisionRequest:`, `Revision:` (and optionally an empty \
                         `Human:`)";
    let segments = split_transcript(transcript)?;
    let n = segments.len();
    let tail = [
        Label::CritiqueRequest,
        Label::Critique,
        Label::RevisionRequest,
        Label::Revision,
    ];
    let shaped = n >= 6 && segments[n - 4..].iter().map(|(label, _)| *label).eq(tail);
    let conversation = shaped
        .then(|| conversation_from(&segments[..n - 4]))
        .flatten()
        .ok_or_else(|| format!("{SHAPE}; found {}", labels(&segments)))?;
    let text = |i: usize| segments[n - 4 + i].1.to_owned();
    let demo = Demonstration {
        conversation,
        critique_request: text(0),
        critique: text(1),
        revision_request: text(2),
        revision: text(3),
    };
    check_demonstration(&demo).map_err(|e| format!("{e}; {SHAPE}, found {}", labels(&segments)))?;
    Ok(demo)
}

/// A judge demonstration from an `RLMadisonFewShotPrompts.json` entry.
fn judge_demonstration_from_example(
    example: AnthropicJudgeExample,
) -> Result<JudgeDemonstration, String> {
    let segments = split_transcript(&example.prompt).map_err(|e| format!("`prompt` {e}"))?;
    let conversation = conversation_from(&segments).ok_or_else(|| {
        format!(
            "`prompt` holds labels other than `Human:` and `Assistant:`: {}",
            labels(&segments)
        )
    })?;
    let first = |answers: Vec<String>, field: &str| {
        answers
            .into_iter()
            .next()
            .map(|answer| answer.trim().to_owned())
            .ok_or_else(|| format!("`{field}` is empty"))
    };
    let demo = JudgeDemonstration {
        conversation,
        better: first(example.corrects, "corrects")?,
        worse: first(example.incorrects, "incorrects")?,
        principle: None,
        reasoning: None,
    };
    check_judge_demonstration(&demo, &[])?;
    Ok(demo)
}

/// Checks each principle and that ids are unique; `locate` names a principle in messages.
fn check_principles(
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

fn check_demonstration(demo: &Demonstration) -> Result<(), String> {
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
fn check_judge_demonstration(
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
fn expected_role(index: usize) -> Role {
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

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
