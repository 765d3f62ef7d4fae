//! cai's own TOML format (`constitutions/default.toml` documents it): principles,
//! demonstrations and judge demonstrations, each error naming its entry and line.

use std::ops::Range;

use serde::Deserialize;

use super::check::{check_demonstration, check_judge_demonstration, check_principles};
use super::{Constitution, Demonstration, JudgeDemonstration, Principle};
use crate::message::Message;

/// The file: `[[principles]]`, `[[demonstrations]]` and `[[judge_demonstrations]]`, each
/// spanned so errors can name its line.
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

impl Constitution {
    /// Parses and checks a cai TOML constitution; `hash` is that of the file's bytes.
    pub(super) fn from_toml(text: &str, hash: String) -> Result<Self, String> {
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
}
