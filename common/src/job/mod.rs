//! The job file: what to compute. Parsed strictly (unknown keys are errors naming the key),
//! checked as a whole before anything touches the network, and fingerprinted so a resumed run
//! can refuse a changed spec and say what changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod fingerprint;
mod input;
mod models;
mod pipeline;

pub use fingerprint::describe_changes;
pub use input::{ConversationField, InputSpec, Turns};
pub use models::{Backend, Endpoint, ModelSpec};
pub use pipeline::{CritiqueReviseSpec, GenerateSpec, JudgeMode, PairwiseSpec, SftMode};

/// A problem with the job file; the message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The file could not be read.
    #[error("{path}: cannot read job file: {source}")]
    Read {
        /// The job file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown or mistyped key.
    #[error("{path}: {message}")]
    Parse {
        /// The job file.
        path: PathBuf,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// The TOML parsed but a value is not allowed.
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        /// The job file.
        path: PathBuf,
        /// Dotted path of the offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Which of the two CAI pipelines a job runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PipelineKind {
    /// SL-CAI: initial answer, then rounds of critique and revision.
    CritiqueRevise,
    /// RL-CAI: a feedback model labels a pair of answers under a principle.
    Pairwise,
}

/// The whole job file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Job id, `[a-z0-9-]{1,64}`; names queues, Redis keys and the default output directory.
    pub name: String,
    /// Which pipeline to run.
    pub pipeline: PipelineKind,
    /// Root of every random choice (principles, A/B order, sampling seeds).
    #[serde(default)]
    pub seed: u64,
    /// Output directory; default `out/<name>` under the current directory.
    #[serde(default)]
    pub output: Option<PathBuf>,
    /// The corpus and how to read it.
    pub input: InputSpec,
    /// The constitution file.
    pub constitution: ConstitutionSpec,
    /// Settings of the critique-revise pipeline.
    #[serde(default)]
    pub critique_revise: Option<CritiqueReviseSpec>,
    /// Settings of the pairwise pipeline.
    #[serde(default)]
    pub pairwise: Option<PairwiseSpec>,
    /// Models by the name the pipeline sections use.
    #[serde(default)]
    pub models: BTreeMap<String, ModelSpec>,
    /// The licence of the output dataset, as a Hugging Face licence identifier
    /// (`cc-by-4.0`, `mit`, …); the dataset card says `other` without it. Not part of the
    /// fingerprint: it does not change the rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
}

/// The constitution file and whether to use its demonstrations.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstitutionSpec {
    /// HF JSON or cai TOML, relative to the job file.
    pub path: PathBuf,
    /// Prepend the constitution's demonstrations to critique and revision requests.
    #[serde(default = "default_true")]
    pub few_shot: bool,
}

pub(crate) fn default_true() -> bool {
    true
}

/// A job file read and checked, with every relative path resolved.
#[derive(Clone, Debug)]
pub struct Job {
    /// The spec as written, paths resolved.
    pub spec: JobSpec,
    /// The job file it came from.
    pub path: PathBuf,
}

impl Job {
    /// Reads, parses and checks a job file. Relative `input.path`, `constitution.path`, models'
    /// `path` and `output` are taken from the job file's directory; the default output is
    /// `out/<name>`.
    pub fn load(path: &Path) -> Result<Self, JobError> {
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks job-file text; `path` is used for messages and to resolve paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, JobError> {
        let mut spec: JobSpec = toml::from_str(text).map_err(|error| JobError::Parse {
            path: path.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })?;
        spec.check().map_err(|(field, message)| JobError::Invalid {
            path: path.to_owned(),
            field,
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        spec.input.path = base.join(&spec.input.path);
        spec.constitution.path = base.join(&spec.constitution.path);
        for model in spec.models.values_mut() {
            if let Some(file) = model.path.take() {
                model.path = Some(base.join(file));
            }
        }
        spec.output = Some(match spec.output.take() {
            Some(output) => base.join(output),
            None => Path::new("out").join(&spec.name),
        });
        Ok(Self {
            spec,
            path: path.to_owned(),
        })
    }

    /// The output directory.
    pub fn output_dir(&self) -> &Path {
        self.spec
            .output
            .as_deref()
            .expect("output resolved in Job::parse")
    }
}

impl JobSpec {
    /// Checks the values the types alone cannot; the error is (dotted field, message).
    pub fn check(&self) -> Result<(), (String, String)> {
        let fail = |field: &str, message: String| Err((field.to_owned(), message));
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return fail(
                "name",
                format!("{:?} must match [a-z0-9-]{{1,64}}", self.name),
            );
        }
        if let Some(license) = &self.license
            && (license.is_empty()
                || !license
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._+".contains(&b)))
        {
            return fail(
                "license",
                format!(
                    "{license:?} must be a Hugging Face licence identifier such as \"cc-by-4.0\" \
                     or \"other\" (lowercase letters, digits, `-`, `.`, `_`, `+`)"
                ),
            );
        }
        let selectors = [
            &self.input.prompt,
            &self.input.messages,
            &self.input.transcript,
        ];
        let pairs_from_corpus = self.pipeline == PipelineKind::Pairwise
            && self
                .pairwise
                .as_ref()
                .is_some_and(|p| p.candidates.is_some());
        match selectors.iter().filter(|s| s.is_some()).count() {
            0 if !pairs_from_corpus => {
                return fail(
                    "input",
                    "set one of `prompt`, `messages`, `transcript` (the conversation field)".into(),
                );
            }
            0 | 1 => {}
            _ => {
                return fail(
                    "input",
                    "set only one of `prompt`, `messages`, `transcript`".into(),
                );
            }
        }
        if self.input.turns == Turns::Each {
            if pairs_from_corpus {
                return fail(
                    "input.turns",
                    "\"each\" cannot be used with `pairwise.candidates`: a candidate pair answers \
                     the whole conversation, not each human turn (use `turns = \"whole\"`, or \
                     `pairwise.generate` to sample answers for every turn)"
                        .into(),
                );
            }
            let initial = self.pipeline == PipelineKind::CritiqueRevise
                && self
                    .critique_revise
                    .as_ref()
                    .is_some_and(|c| c.initial.is_some());
            if initial {
                return fail(
                    "input.turns",
                    "\"each\" cannot be used with `critique_revise.initial`: a given first answer \
                     answers the whole conversation, not each human turn"
                        .into(),
                );
            }
        }
        if self.input.limit == Some(0) {
            return fail("input.limit", "must be at least 1".into());
        }
        for (name, model) in &self.models {
            let field = format!("models.{name}");
            if let Err(message) = model.check() {
                return fail(&field, message);
            }
        }
        let model_exists = |field: &str, name: &str| -> Result<(), (String, String)> {
            if self.models.contains_key(name) {
                Ok(())
            } else {
                let known: Vec<&str> = self.models.keys().map(String::as_str).collect();
                Err((
                    field.to_owned(),
                    format!("no model named {name:?} in [models] (defined: {known:?})"),
                ))
            }
        };
        match self.pipeline {
            PipelineKind::CritiqueRevise => {
                let Some(cr) = &self.critique_revise else {
                    return fail(
                        "critique_revise",
                        "pipeline \"critique-revise\" needs a [critique_revise] section".into(),
                    );
                };
                model_exists("critique_revise.model", &cr.model)?;
                if !(1..=64).contains(&cr.revisions) {
                    return fail(
                        "critique_revise.revisions",
                        "must be between 1 and 64".into(),
                    );
                }
            }
            PipelineKind::Pairwise => {
                let Some(pw) = &self.pairwise else {
                    return fail(
                        "pairwise",
                        "pipeline \"pairwise\" needs a [pairwise] section".into(),
                    );
                };
                model_exists("pairwise.judge", &pw.judge)?;
                match (&pw.candidates, &pw.generate) {
                    (Some(_), Some(_)) | (None, None) => {
                        return fail(
                            "pairwise",
                            "set exactly one of `candidates` (two corpus fields) or `generate`"
                                .into(),
                        );
                    }
                    (Some([x, y]), None) if x == y => {
                        return fail("pairwise.candidates", "the two fields must differ".into());
                    }
                    (None, Some(generate)) => {
                        model_exists("pairwise.generate.model", &generate.model)?;
                        if generate.n != 2 {
                            return fail("pairwise.generate.n", "must be 2".into());
                        }
                    }
                    _ => {}
                }
                if !(1..=16).contains(&pw.principles_per_label) {
                    return fail(
                        "pairwise.principles_per_label",
                        "must be between 1 and 16".into(),
                    );
                }
                let [low, high] = pw.clamp;
                if !(0.0..=0.5).contains(&low) || !(0.5..=1.0).contains(&high) {
                    return fail(
                        "pairwise.clamp",
                        "must be a range around 0.5: [low, high] with 0 <= low <= 0.5 <= high <= 1"
                            .into(),
                    );
                }
                if !(0.0..1.0).contains(&pw.min_letter_mass) {
                    return fail(
                        "pairwise.min_letter_mass",
                        "must be at least 0 and below 1".into(),
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "harmless-sl"
pipeline = "critique-revise"
seed = 42

[input]
path = "prompts.jsonl"
prompt = "prompt"
id = "source_line"
limit = 1000

[constitution]
path = "constitution.json"

[critique_revise]
model = "policy"
revisions = 4

[models.policy]
backend = "openai"
url = "http://127.0.0.1:8000/v1"
model = "mistral-7b-instruct"
api_key_env = "OPENAI_API_KEY"
"#;

    fn parse(text: &str) -> Result<Job, JobError> {
        Job::parse(text, Path::new("jobs/job.toml"))
    }

    #[test]
    fn example_parses_with_defaults_and_resolved_paths() {
        let job = parse(EXAMPLE).unwrap();
        assert_eq!(job.spec.input.path, Path::new("jobs/prompts.jsonl"));
        assert_eq!(job.output_dir(), Path::new("out/harmless-sl"));
        let model = &job.spec.models["policy"];
        assert_eq!(model.endpoint, Endpoint::Chat);
        assert_eq!(model.top_logprobs, 20);
        assert!(job.spec.constitution.few_shot);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = EXAMPLE.replace("revisions = 4", "revison = 4");
        let message = parse(&text).unwrap_err().to_string();
        assert!(message.contains("jobs/job.toml"), "{message}");
        assert!(message.contains("revison"), "{message}");
        assert!(message.contains("line 17"), "{message}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (EXAMPLE.replace("harmless-sl", "Harmless SL"), "name"),
            (
                EXAMPLE.replace("model = \"policy\"", "model = \"nope\""),
                "critique_revise.model",
            ),
            (
                EXAMPLE.replace("revisions = 4", "revisions = 0"),
                "critique_revise.revisions",
            ),
            (
                EXAMPLE.replace("url = \"http://127.0.0.1:8000/v1\"", ""),
                "models.policy",
            ),
        ];
        for (text, field) in cases {
            match parse(&text) {
                Err(JobError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn fingerprint_ignores_operations_and_names_semantic_changes() {
        let job = parse(EXAMPLE).unwrap();
        let faster = parse(&EXAMPLE.replace("limit = 1000", "limit = 5")).unwrap();
        assert_eq!(job.spec.fingerprint("c1"), faster.spec.fingerprint("c1"));
        assert_ne!(job.spec.fingerprint("c1"), job.spec.fingerprint("c2"));
        let changed = parse(&EXAMPLE.replace("revisions = 4", "revisions = 2")).unwrap();
        let changes = describe_changes(
            &job.spec.semantic_view("c1"),
            &changed.spec.semantic_view("c1"),
        );
        assert_eq!(changes, vec!["critique_revise.revisions: 4 → 2".to_owned()]);
    }

    const PAIRWISE: &str = r#"
name = "harmless-rl"
pipeline = "pairwise"

[input]
path = "pairs.jsonl"
messages = "prompt"

[constitution]
path = "constitution.toml"

[pairwise]
judge = "feedback"
candidates = ["chosen", "rejected"]

[models.feedback]
backend = "mock"
"#;

    fn invalid(text: &str) -> (String, String) {
        match parse(text) {
            Err(JobError::Invalid { field, message, .. }) => (field, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn turns_default_to_whole_and_each_is_allowed_without_candidates() {
        assert_eq!(parse(EXAMPLE).unwrap().spec.input.turns, Turns::Whole);
        let each = EXAMPLE.replace("limit = 1000", "limit = 1000\nturns = \"each\"");
        assert_eq!(parse(&each).unwrap().spec.input.turns, Turns::Each);
        let transcript = each.replace("prompt = \"prompt\"", "transcript = \"conversation\"");
        assert_eq!(parse(&transcript).unwrap().spec.input.turns, Turns::Each);
        // Pairs sampled from a model answer each turn's conversation.
        let generate = PAIRWISE
            .replace(
                "messages = \"prompt\"",
                "messages = \"prompt\"\nturns = \"each\"",
            )
            .replace(
                "candidates = [\"chosen\", \"rejected\"]",
                "generate = { model = \"feedback\" }",
            );
        assert_eq!(parse(&generate).unwrap().spec.input.turns, Turns::Each);
        // TRL rows: `messages` and `candidates` together.
        let trl = parse(PAIRWISE).unwrap();
        assert_eq!(
            trl.spec.input.conversation_field(),
            Some(ConversationField::Messages("prompt".into()))
        );
    }

    #[test]
    fn each_is_refused_with_candidates_or_a_given_answer_and_unknown_values_are_errors() {
        let pairs = PAIRWISE.replace(
            "messages = \"prompt\"",
            "messages = \"prompt\"\nturns = \"each\"",
        );
        let (field, message) = invalid(&pairs);
        assert_eq!(field, "input.turns");
        assert!(message.contains("pairwise.candidates"), "{message}");
        let transcripts = pairs.replace("messages = \"prompt\"\n", "");
        assert_eq!(invalid(&transcripts).0, "input.turns");
        let initial = EXAMPLE
            .replace("limit = 1000", "turns = \"each\"")
            .replace("revisions = 4", "revisions = 4\ninitial = \"response\"");
        let (field, message) = invalid(&initial);
        assert_eq!(field, "input.turns");
        assert!(message.contains("critique_revise.initial"), "{message}");
        let unknown = EXAMPLE.replace("limit = 1000", "turns = \"all\"");
        match parse(&unknown) {
            Err(JobError::Parse { message, .. }) => {
                assert!(message.contains("unknown variant `all`"), "{message}");
                assert!(
                    message.contains("`whole`") && message.contains("`each`"),
                    "{message}"
                );
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn turns_whole_leaves_the_fingerprint_as_it_was() {
        let job = parse(EXAMPLE).unwrap();
        let view = job.spec.semantic_view("c1");
        assert!(view["input"].get("turns").is_none(), "{view}");
        let explicit = parse(&EXAMPLE.replace("limit = 1000", "turns = \"whole\"")).unwrap();
        assert_eq!(job.spec.fingerprint("c1"), explicit.spec.fingerprint("c1"));
        let each = parse(&EXAMPLE.replace("limit = 1000", "turns = \"each\"")).unwrap();
        let changes = describe_changes(&view, &each.spec.semantic_view("c1"));
        assert_eq!(changes, vec!["input.turns: (unset) → \"each\"".to_owned()]);
    }

    #[test]
    fn settings_left_off_leave_the_fingerprint_as_it_was() {
        let job = parse(EXAMPLE).unwrap();
        let view = job.spec.semantic_view("c1");
        assert!(
            view["critique_revise"].get("preferences").is_none(),
            "{view}"
        );
        assert!(view["models"]["policy"].get("prefill").is_none(), "{view}");
        let on =
            parse(&EXAMPLE.replace("revisions = 4", "revisions = 4\npreferences = true")).unwrap();
        let changes = describe_changes(&view, &on.spec.semantic_view("c1"));
        assert_eq!(
            changes,
            vec!["critique_revise.preferences: (unset) → true".to_owned()]
        );
    }

    #[test]
    fn license_is_optional_checked_and_outside_the_fingerprint() {
        let job = parse(EXAMPLE).unwrap();
        assert_eq!(job.spec.license, None);
        let text = EXAMPLE.replace("seed = 42", "seed = 42\nlicense = \"cc-by-4.0\"");
        let licensed = parse(&text).unwrap();
        assert_eq!(licensed.spec.license.as_deref(), Some("cc-by-4.0"));
        assert_eq!(job.spec.fingerprint("c1"), licensed.spec.fingerprint("c1"));
        assert!(licensed.spec.semantic_view("c1").get("license").is_none());
        let (field, message) = invalid(&EXAMPLE.replace("seed = 42", "license = \"CC BY 4.0\""));
        assert_eq!(field, "license");
        assert!(message.contains("cc-by-4.0"), "{message}");
    }
}
