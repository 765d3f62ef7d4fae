//! The settings of the three pipelines: critique → revise, pairwise feedback and dialogue, as a
//! [`Pipeline`] with one variant per pipeline. The job file writes `pipeline = "…"` and a section
//! per pipeline; [`super::JobSpec`]'s conversion keeps the one section the pipeline reads and
//! refuses the rest, so a pipeline's code never finds its section missing.

use serde::{Deserialize, Serialize};

use super::default_true;
use super::verdict::VerdictSpec;

/// The pipeline a job runs, with its settings. A new pipeline is a new variant: the compiler
/// then names every place that must handle it (the worker's steps, the corpus reader, the plan's
/// principle set, the output files).
#[derive(Clone, Debug, PartialEq)]
pub enum Pipeline {
    /// SL-CAI: initial answer, then rounds of critique and revision.
    CritiqueRevise(CritiqueReviseSpec),
    /// RL-CAI: a feedback model labels a pair of answers under a principle.
    Pairwise(PairwiseSpec),
    /// Multi-turn SL-CAI: a user model and the policy grow a conversation, and every assistant
    /// turn is critiqued and revised before the conversation goes on.
    Dialogue(DialogueSpec),
}

impl Pipeline {
    /// Which pipeline this is (the `pipeline` key).
    pub fn kind(&self) -> PipelineKind {
        match self {
            Self::CritiqueRevise(_) => PipelineKind::CritiqueRevise,
            Self::Pairwise(_) => PipelineKind::Pairwise,
            Self::Dialogue(_) => PipelineKind::Dialogue,
        }
    }
}

/// Which of the CAI pipelines a job runs: the `pipeline` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PipelineKind {
    /// SL-CAI: initial answer, then rounds of critique and revision.
    CritiqueRevise,
    /// RL-CAI: a feedback model labels a pair of answers under a principle.
    Pairwise,
    /// Multi-turn SL-CAI between a user model and the policy.
    Dialogue,
}

impl PipelineKind {
    /// The `pipeline` value as written in a job file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CritiqueRevise => "critique-revise",
            Self::Pairwise => "pairwise",
            Self::Dialogue => "dialogue",
        }
    }

    /// The job file section this pipeline reads its settings from.
    pub fn section(self) -> &'static str {
        match self {
            Self::CritiqueRevise => "critique_revise",
            Self::Pairwise => "pairwise",
            Self::Dialogue => "dialogue",
        }
    }

    /// Whether the pipeline draws critique principles (rather than judge questions).
    pub fn critiques(self) -> bool {
        !matches!(self, Self::Pairwise)
    }
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

/// Settings of the critique-revise pipeline (the `[critique_revise]` section as written).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

/// Settings of the dialogue pipeline (the `[dialogue]` section as written).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialogueSpec {
    /// The model that plays the person: it writes every user turn after the corpus's opening.
    pub user: String,
    /// The policy: it answers, critiques and revises every assistant turn.
    pub assistant: String,
    /// Assistant turns per conversation (fewer when the user model ends it early).
    #[serde(default = "default_dialogue_turns")]
    pub turns: u32,
    /// Critique → revision rounds on each assistant turn, a principle drawn for each.
    #[serde(default = "default_dialogue_revisions")]
    pub revisions: u32,
    /// The instruction the user model is given as the first message of its conversation, in
    /// place of the built-in red-teamer that presses the opening request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persona: Option<String>,
    /// A phrase that, in a user turn, ends the conversation (as an empty user turn does); the
    /// user model is told to write it when it has nothing more to ask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    /// Also write `preferences.jsonl`: per assistant turn, its final revision as `chosen` over
    /// its first answer as `rejected`, the conversation up to that turn as the prompt.
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
    /// The judge writes its verdict (reasoning allowed), the choice is parsed from the text,
    /// and the share of sampled votes for the first-shown answer is the reading: for judge
    /// models trained to write a verdict, and APIs without log-probabilities.
    Verdict,
}

/// The prompt the judge is sent: the form the judge model was trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JudgeTemplate {
    /// The paper's multiple-choice feedback question (Bai et al. 2022, section 4.1).
    Paper,
    /// Prometheus 2's relative-grading prompt, the drawn principle as its rubric (verdict mode).
    Prometheus2,
}

/// `pairwise.generate` as written: the model that samples the two candidates.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GenerateFile {
    pub(super) model: String,
    /// Must be 2; kept as a key so that a job file says what it asks.
    #[serde(default = "default_two")]
    pub(super) n: u32,
}

/// Where the two answers a judge compares come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Candidates {
    /// Two corpus fields holding the candidates: strings, HH transcripts sharing the prompt, or
    /// one-message lists `[{"role": "assistant", "content": …}]` (TRL preference rows).
    Corpus([String; 2]),
    /// Two answers sampled from this model of `[models]`.
    Generate {
        /// The policy model that samples the candidates.
        model: String,
    },
}

/// Settings of the pairwise pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct PairwiseSpec {
    /// The feedback model.
    pub judge: String,
    /// Where the two candidates come from.
    pub candidates: Candidates,
    /// Principles drawn per label; their readings are averaged.
    pub principles_per_label: u32,
    /// Judge both orders and average the order-corrected readings.
    pub swap: bool,
    /// How the answer is read.
    pub mode: JudgeMode,
    /// Clamp for `cot` labels, `[low, high]`.
    pub clamp: [f64; 2],
    /// Least probability the letters (A) and (B) must hold at the position read for the
    /// reading to be trusted; below it the reading is retried once, then the sample fails.
    pub min_letter_mass: f64,
    /// Verdict mode's votes and parser: set exactly when `mode` is [`JudgeMode::Verdict`].
    pub verdict: Option<VerdictSpec>,
    /// The judge prompt's form.
    pub template: JudgeTemplate,
}

/// The `[pairwise]` section as written: `candidates` or `generate`, which the conversion to
/// [`PairwiseSpec`] turns into one [`Candidates`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PairwiseFile {
    /// The feedback model.
    pub(super) judge: String,
    #[serde(default)]
    pub(super) candidates: Option<[String; 2]>,
    #[serde(default)]
    pub(super) generate: Option<GenerateFile>,
    /// Principles drawn per label; their readings are averaged.
    #[serde(default = "default_one")]
    pub(super) principles_per_label: u32,
    /// Judge both orders and average the order-corrected readings.
    #[serde(default = "default_true")]
    pub(super) swap: bool,
    /// How the answer is read.
    #[serde(default = "default_mode")]
    pub(super) mode: JudgeMode,
    /// Clamp for `cot` labels, `[low, high]`.
    #[serde(default = "default_clamp")]
    pub(super) clamp: [f64; 2],
    /// Least probability the letters (A) and (B) must hold at the position read for the
    /// reading to be trusted; below it the reading is retried once, then the sample fails.
    #[serde(default = "default_min_letter_mass")]
    pub(super) min_letter_mass: f64,
    /// Verdict mode: votes per judged order. The three keys below are left out when unset, so
    /// jobs from before them keep their fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) votes: Option<u32>,
    /// Verdict mode: how a verdict is read (a built-in's name or a regular expression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) verdict: Option<String>,
    /// The judge prompt's form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) judge_template: Option<JudgeTemplate>,
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
fn default_dialogue_turns() -> u32 {
    3
}
fn default_dialogue_revisions() -> u32 {
    1
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
