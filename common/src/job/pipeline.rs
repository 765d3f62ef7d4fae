//! The settings of the two pipelines: critique → revise and pairwise feedback.

use serde::{Deserialize, Serialize};

use super::default_true;

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
