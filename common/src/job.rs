//! The job file: what to compute. Parsed strictly (unknown keys are errors naming the key),
//! checked as a whole before anything touches the network, and fingerprinted so a resumed run
//! can refuse a changed spec and say what changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

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

/// Where the corpus is and which fields to read.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// `.jsonl`, `.jsonl.gz` or `.jsonl.zst`, relative to the job file.
    pub path: PathBuf,
    /// A string field holding one user turn.
    #[serde(default)]
    pub prompt: Option<String>,
    /// A `[{role, content}]` field holding the conversation.
    #[serde(default)]
    pub messages: Option<String>,
    /// An HH-style `"\n\nHuman: …\n\nAssistant: …"` field.
    #[serde(default)]
    pub transcript: Option<String>,
    /// A field holding the sample id (string or integer); default: the content key.
    #[serde(default)]
    pub id: Option<String>,
    /// Read only the first N lines.
    #[serde(default)]
    pub limit: Option<u64>,
    /// One sample per line (`"whole"`, the default) or one per human turn (`"each"`), as the
    /// Constitutional AI paper takes one prompt per human turn of its red-team conversations.
    /// Left out of the serialised spec when `"whole"`, so the fingerprints of jobs written
    /// before this setting existed do not change.
    #[serde(default, skip_serializing_if = "Turns::is_whole")]
    pub turns: Turns,
}

/// How many samples a corpus line with a multi-turn conversation becomes (`input.turns`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Turns {
    /// One sample: the whole conversation, which must end with a user turn.
    #[default]
    Whole,
    /// One sample per user turn, its conversation being everything up to and including that
    /// turn; assistant turns after the last user turn are in no sample. The ids are the line's
    /// id with `#<n>` appended (n counts the user turns from 1). A `prompt` field holds one user
    /// turn, so it reads as `"whole"` (same sample, same id).
    Each,
}

impl Turns {
    /// Whether this is the default, `"whole"` (which is not serialised).
    pub fn is_whole(&self) -> bool {
        *self == Self::Whole
    }
}

/// How the conversation of a corpus line is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConversationField {
    /// A string field: one user turn.
    Prompt(String),
    /// A `[{role, content}]` field.
    Messages(String),
    /// An HH transcript field.
    Transcript(String),
}

impl ConversationField {
    /// The corpus field it reads, to name it in a rejection.
    pub fn name(&self) -> &str {
        match self {
            Self::Prompt(field) | Self::Messages(field) | Self::Transcript(field) => field,
        }
    }
}

impl InputSpec {
    /// The conversation selector that is set ([`JobSpec::check`] allows at most one). `None`
    /// only for a pairwise job whose candidates are HH transcripts: their shared prefix is
    /// the conversation.
    pub fn conversation_field(&self) -> Option<ConversationField> {
        match (&self.prompt, &self.messages, &self.transcript) {
            (Some(field), _, _) => Some(ConversationField::Prompt(field.clone())),
            (_, Some(field), _) => Some(ConversationField::Messages(field.clone())),
            (_, _, Some(field)) => Some(ConversationField::Transcript(field.clone())),
            (None, None, None) => None,
        }
    }
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

/// Which revisions become SFT rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SftMode {
    /// One row per prompt: the last revision (the HF replication).
    Final,
    /// One row per round (the paper: every revision is a target).
    Every,
}

/// Settings of the critique-revise pipeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CritiqueReviseSpec {
    /// The model that answers, critiques and revises.
    pub model: String,
    /// Rounds of critique and revision; a principle is drawn with replacement for each.
    #[serde(default = "default_revisions")]
    pub revisions: u32,
    /// Which revisions become SFT rows.
    #[serde(default = "default_sft")]
    pub sft: SftMode,
    /// A corpus field with an existing first answer; otherwise the model writes it.
    #[serde(default)]
    pub initial: Option<String>,
    /// Keep earlier rounds' critiques and revisions in the context (default: each round
    /// restarts from the conversation and the latest revision, as the paper's reading suggests).
    #[serde(default)]
    pub keep_history: bool,
    /// Also write `preferences.jsonl`: the final revision as `chosen` over the initial answer
    /// as `rejected` (Hugging Face's CAI recipe: revision ≻ initial, no judge). Left out of the
    /// spec when off, so jobs from before the setting keep their fingerprint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preferences: bool,
}

/// How the feedback model's answer is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JudgeMode {
    /// Read option probabilities straight from the next-token log-probabilities.
    Logprobs,
    /// Reason step by step first, then read the answer; the result is clamped.
    Cot,
}

/// Where the two candidate answers come from: two models samples.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSpec {
    /// The policy model that samples the candidates.
    pub model: String,
    /// How many candidates; must be 2.
    #[serde(default = "default_two")]
    pub n: u32,
}

/// Settings of the pairwise pipeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairwiseSpec {
    /// The feedback model.
    pub judge: String,
    /// Two corpus fields holding the candidates: strings, HH transcripts sharing the prompt, or
    /// one-message lists `[{"role": "assistant", "content": …}]` (TRL preference rows).
    #[serde(default)]
    pub candidates: Option<[String; 2]>,
    /// Or: sample the two candidates from a model.
    #[serde(default)]
    pub generate: Option<GenerateSpec>,
    /// Principles drawn per label; their readings are averaged.
    #[serde(default = "default_one")]
    pub principles_per_label: u32,
    /// Judge both orders and average the order-corrected readings.
    #[serde(default = "default_true")]
    pub swap: bool,
    /// How the answer is read.
    #[serde(default = "default_mode")]
    pub mode: JudgeMode,
    /// Clamp for `cot` labels, `[low, high]`.
    #[serde(default = "default_clamp")]
    pub clamp: [f64; 2],
    /// Least probability the letters (A) and (B) must hold at the position read for the
    /// reading to be trusted; below it the reading is retried once, then the sample fails.
    #[serde(default = "default_min_letter_mass")]
    pub min_letter_mass: f64,
}

/// Which backend serves a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Any OpenAI-compatible HTTP server (vLLM, SGLang, TGI, llama.cpp, Ollama, hosted APIs).
    Openai,
    /// Deterministic in-process model for dry runs, tests and benchmarks.
    Mock,
    /// A GGUF model run in-process on the CPU.
    Local,
}

/// Which OpenAI-compatible endpoint to call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `/chat/completions` with messages.
    Chat,
    /// `/completions` with a rendered transcript.
    Completions,
}

/// One model.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Which backend serves it.
    pub backend: Backend,
    /// Base URL of an OpenAI-compatible API, e.g. `http://127.0.0.1:8000/v1`.
    #[serde(default)]
    pub url: Option<String>,
    /// The model name the server knows.
    #[serde(default)]
    pub model: Option<String>,
    /// Chat or completions endpoint.
    #[serde(default = "default_endpoint")]
    pub endpoint: Endpoint,
    /// Chat endpoints only: the server continues a final assistant message (vLLM's
    /// `continue_final_message`, llama.cpp's server), so a judge's answer can be started with
    /// ` (` and the next token is the letter. Left out of the spec when off, so jobs from
    /// before the setting keep their fingerprint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefill: bool,
    /// Name of the environment variable holding the API key (the key itself is never stored).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Most calls in flight to this model from one process.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Sampling temperature.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Most tokens generated per call.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Per-request timeout in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// How many top log-probabilities to request when judging (20 is OpenAI's cap).
    #[serde(default = "default_top_logprobs")]
    pub top_logprobs: u32,
    /// Transient failures retried per call before the sample fails.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// The most time one call may take across its retries, in seconds: no retry starts whose
    /// wait would end past it (so a call ends within `retry_budget_s + timeout_s`). Unset: only
    /// `max_retries` bounds a call.
    #[serde(default)]
    pub retry_budget_s: Option<u64>,
    /// Most requests a minute sent to this model from one process (retries included).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Most tokens (prompt and completion) a minute sent to this model from one process.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Price of a million prompt tokens in USD, for cost accounting.
    #[serde(default)]
    pub price_in: Option<f64>,
    /// Price of a million generated tokens in USD, for cost accounting.
    #[serde(default)]
    pub price_out: Option<f64>,
    /// Mock only: simulated latency per call in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Local only: the GGUF file, relative to the job file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Local only: CPU threads for inference (default: every physical core).
    #[serde(default)]
    pub threads: Option<usize>,
}

fn default_true() -> bool {
    true
}
fn default_one() -> u32 {
    1
}
fn default_two() -> u32 {
    2
}
fn default_revisions() -> u32 {
    4
}
fn default_sft() -> SftMode {
    SftMode::Final
}
fn default_mode() -> JudgeMode {
    JudgeMode::Logprobs
}
fn default_clamp() -> [f64; 2] {
    [0.4, 0.6]
}
fn default_min_letter_mass() -> f64 {
    0.1
}
fn default_endpoint() -> Endpoint {
    Endpoint::Chat
}
fn default_concurrency() -> usize {
    16
}
fn default_temperature() -> f32 {
    1.0
}
fn default_max_tokens() -> u32 {
    512
}
fn default_timeout() -> u64 {
    120
}
fn default_top_logprobs() -> u32 {
    20
}
fn default_max_retries() -> u32 {
    4
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

    /// The settings that decide what a job computes, as JSON: everything but how this run is
    /// operated and published (output place, licence, `limit`, endpoints' URLs, concurrency, timeouts, latency, retries,
    /// rate limits, prices). Two specs with the same view (and the same constitution) produce the
    /// same rows.
    pub fn semantic_view(&self, constitution_hash: &str) -> Value {
        let mut view = serde_json::to_value(self).expect("job spec serialises");
        let object = view.as_object_mut().expect("job spec is an object");
        object.remove("output");
        object.remove("license");
        if let Some(input) = object.get_mut("input").and_then(Value::as_object_mut) {
            input.remove("limit");
            input.remove("path");
        }
        if let Some(constitution) = object
            .get_mut("constitution")
            .and_then(Value::as_object_mut)
        {
            constitution.remove("path");
            constitution.insert("hash".into(), Value::from(constitution_hash));
        }
        if let Some(models) = object.get_mut("models").and_then(Value::as_object_mut) {
            for model in models.values_mut().filter_map(Value::as_object_mut) {
                for operational in [
                    "url",
                    "api_key_env",
                    "max_concurrency",
                    "timeout_s",
                    "max_retries",
                    "retry_budget_s",
                    "rpm",
                    "tpm",
                    "price_in",
                    "price_out",
                    "latency_ms",
                    "threads",
                ] {
                    model.remove(operational);
                }
                // Where the GGUF file lies is operational; which file it is, is not.
                if let Some(Value::String(file)) = model.remove("path") {
                    let name = Path::new(&file)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned());
                    model.insert("file".into(), Value::from(name.unwrap_or(file)));
                }
            }
        }
        view
    }

    /// SHA-256 of the semantic view: equal fingerprints mean a run may resume another.
    pub fn fingerprint(&self, constitution_hash: &str) -> String {
        let view = self.semantic_view(constitution_hash);
        hex::encode(Sha256::digest(view.to_string().as_bytes()))
    }
}

impl ModelSpec {
    fn check(&self) -> Result<(), String> {
        if self.max_concurrency == 0 {
            return Err("`max_concurrency` must be at least 1".into());
        }
        if self.max_tokens == 0 {
            return Err("`max_tokens` must be at least 1".into());
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err("`temperature` must be between 0 and 2".into());
        }
        if !(1..=20).contains(&self.top_logprobs) {
            return Err("`top_logprobs` must be between 1 and 20".into());
        }
        if self.retry_budget_s == Some(0) {
            return Err("`retry_budget_s` must be at least 1".into());
        }
        if self.rpm == Some(0) {
            return Err("`rpm` must be at least 1 (leave it out for no limit)".into());
        }
        if self.tpm == Some(0) {
            return Err("`tpm` must be at least 1 (leave it out for no limit)".into());
        }
        for (field, price) in [("price_in", self.price_in), ("price_out", self.price_out)] {
            if price.is_some_and(|usd| !(usd.is_finite() && usd >= 0.0)) {
                return Err(format!(
                    "`{field}` must be a non-negative number of USD per million tokens"
                ));
            }
        }
        if self.backend == Backend::Openai {
            let url = self
                .url
                .as_deref()
                .ok_or("`url` is required for backend \"openai\"")?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err("`url` must start with http:// or https://".into());
            }
            if self.model.is_none() {
                return Err("`model` is required for backend \"openai\"".into());
            }
        }
        if self.backend == Backend::Local {
            if self.path.is_none() {
                return Err("`path` (the GGUF file) is required for backend \"local\"".into());
            }
            if self.threads == Some(0) {
                return Err("`threads` must be at least 1".into());
            }
        }
        Ok(())
    }
}

/// Lists what differs between two semantic views, one `field: old → new` per line.
pub fn describe_changes(old: &Value, new: &Value) -> Vec<String> {
    fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    flatten(&path, inner, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
    flatten("", old, &mut before);
    flatten("", new, &mut after);
    let mut fields: Vec<&String> = before.keys().chain(after.keys()).collect();
    fields.sort();
    fields.dedup();
    fields
        .into_iter()
        .filter(|field| before.get(*field) != after.get(*field))
        .map(|field| {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
            format!(
                "{field}: {} → {}",
                show(before.get(field)),
                show(after.get(field))
            )
        })
        .collect()
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
