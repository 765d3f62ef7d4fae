//! The constitution: principles (critique request, revision request, judge question) and
//! demonstrations, from cai's TOML format or the Hugging Face JSON format as published.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A constitution that cannot be used; the message names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConstitutionError {
    /// The constitution file.
    pub path: PathBuf,
    /// What is wrong, with line or entry where known.
    pub message: String,
}

/// One principle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principle {
    /// Stable id, recorded with every critique, revision and label.
    pub id: String,
    /// The critique request shown after the answer.
    pub critique: String,
    /// The revision request shown after the critique.
    pub revision: String,
    /// The multiple-choice question for pairwise labels ("Which of these responses …?").
    #[serde(default)]
    pub judge: Option<String>,
}

/// A worked example of one critique-revise round, prepended as few-shot context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demonstration {
    /// The human's request.
    pub prompt: String,
    /// The first answer.
    pub response: String,
    /// The critique request.
    pub critique_request: String,
    /// The critique.
    pub critique: String,
    /// The revision request.
    pub revision_request: String,
    /// The revised answer.
    pub revision: String,
}

/// A loaded constitution (serialisable, so workers receive it from the job registry).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Constitution {
    /// The principles, in file order (draws index into this list).
    pub principles: Vec<Principle>,
    /// Few-shot demonstrations.
    pub demonstrations: Vec<Demonstration>,
    /// SHA-256 of the file's bytes, recorded in the manifest and the job fingerprint.
    pub hash: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaiToml {
    principles: Vec<Principle>,
    #[serde(default)]
    demonstrations: Vec<Demonstration>,
}

#[derive(Deserialize)]
struct HfJson {
    constitutions: Vec<HfPrinciple>,
    #[serde(default)]
    system_chat: Vec<Vec<HfMessage>>,
}

#[derive(Deserialize)]
struct HfPrinciple {
    critic: String,
    revision: String,
}

#[derive(Deserialize)]
struct HfMessage {
    role: String,
    content: String,
}

impl Constitution {
    /// Loads a `.toml` (cai format) or `.json` (HF format) constitution.
    pub fn load(path: &Path) -> Result<Self, ConstitutionError> {
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
        let constitution = if is_json {
            Self::from_hf_json(text, hash)
        } else {
            Self::from_toml(text, hash)
        }
        .map_err(error)?;
        constitution.check().map_err(error)?;
        Ok(constitution)
    }

    fn from_toml(text: &str, hash: String) -> Result<Self, String> {
        let file: CaiToml =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        Ok(Self {
            principles: file.principles,
            demonstrations: file.demonstrations,
            hash,
        })
    }

    fn from_hf_json(text: &str, hash: String) -> Result<Self, String> {
        let file: HfJson =
            serde_json::from_str(text).map_err(|e| format!("invalid HF constitution JSON: {e}"))?;
        let principles = file
            .constitutions
            .into_iter()
            .enumerate()
            .map(|(index, p)| Principle {
                id: format!("p{index:02}"),
                critique: p.critic,
                revision: p.revision,
                judge: None,
            })
            .collect();
        let demonstrations = file
            .system_chat
            .into_iter()
            .enumerate()
            .map(|(index, chat)| {
                let roles: Vec<&str> = chat.iter().map(|m| m.role.as_str()).collect();
                let expected = ["user", "assistant", "user", "assistant", "user", "assistant"];
                if roles != expected {
                    return Err(format!(
                        "system_chat[{index}]: expected 6 messages with roles {expected:?}, found {roles:?}"
                    ));
                }
                let mut texts = chat.into_iter().map(|m| m.content);
                let mut next = || texts.next().expect("six messages checked above");
                Ok(Demonstration {
                    prompt: next(),
                    response: next(),
                    critique_request: next(),
                    critique: next(),
                    revision_request: next(),
                    revision: next(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            principles,
            demonstrations,
            hash,
        })
    }

    fn check(&self) -> Result<(), String> {
        if self.principles.is_empty() {
            return Err("the constitution has no principles".into());
        }
        let mut ids = HashSet::new();
        for (index, principle) in self.principles.iter().enumerate() {
            if principle.id.trim().is_empty() {
                return Err(format!("principle {index}: `id` is empty"));
            }
            if !ids.insert(principle.id.as_str()) {
                return Err(format!(
                    "principle {index}: duplicate id {:?}",
                    principle.id
                ));
            }
            for (field, text) in [
                ("critique", Some(&principle.critique)),
                ("revision", Some(&principle.revision)),
                ("judge", principle.judge.as_ref()),
            ] {
                if text.is_some_and(|t| t.trim().is_empty()) {
                    return Err(format!("principle {:?}: `{field}` is empty", principle.id));
                }
            }
        }
        Ok(())
    }

    /// Whether every principle has a judge question, as the pairwise pipeline needs.
    pub fn judge_questions_missing(&self) -> Vec<&str> {
        self.principles
            .iter()
            .filter(|p| p.judge.is_none())
            .map(|p| p.id.as_str())
            .collect()
    }
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
        assert_eq!(constitution.judge_questions_missing().len(), 16);
    }

    #[test]
    fn shipped_default_loads_with_judge_questions() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../constitutions/default.toml");
        let constitution = Constitution::load(&path).unwrap();
        assert_eq!(constitution.principles.len(), 16);
        assert!(constitution.judge_questions_missing().is_empty());
        assert!(!constitution.demonstrations.is_empty());
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
        assert!(message.contains("duplicate id \"a\""), "{message}");

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
}
