//! A directory of the prompt files Anthropic published with the paper, in their published
//! shapes: the file names, the shapes of their entries, the splitting of a transcript into
//! labelled segments, and the conversion of each file into principles and demonstrations.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::check::{check_demonstration, check_judge_demonstration, check_principles};
use super::{Constitution, ConstitutionError, Demonstration, JudgeDemonstration, Principle};
use crate::message::Message;

/// The critique and revision requests (the SL-CAI principles), keyed `harmful0`….
pub(super) const CRITIQUE_REVISION_INSTRUCTIONS: &str = "CritiqueRevisionInstructions.json";
/// Critique → revision few-shot transcripts.
pub(super) const CRITIQUE_REVISION_FEW_SHOT: &str = "CritiqueRevisionFewShotPrompts.json";
/// The judge questions (the RL-CAI principles).
pub(super) const JUDGE_INSTRUCTIONS: &str = "RLMadisonInstructions.json";
/// Judge few-shot examples: a transcript with correct and incorrect answers.
pub(super) const JUDGE_FEW_SHOT: &str = "RLMadisonFewShotPrompts.json";
/// Chain-of-thought judge few-shot templates, each with one `{}` for the question.
pub(super) const JUDGE_COT_FEW_SHOT: &str = "RLMadisonPrecogFewShotPrompts.json";

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
    /// Reads whichever of Anthropic's prompt files the directory holds (at least one of the two
    /// instruction files). Critique/revision principles take the instruction file's keys as ids;
    /// judge principles are `rl00`….
    pub(super) fn from_anthropic_dir(dir: &Path) -> Result<Self, ConstitutionError> {
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
