//! What a worker sends back for one sample: the output rows, the trace of every step, and usage.
//! The collector writes these as they are; workers never touch the output files.

use serde::{Deserialize, Serialize};

use crate::message::Message;
use crate::sample::SampleKey;

/// Tokens and calls spent on a sample (or a job).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Generated tokens.
    pub tokens_out: u64,
    /// Model calls made (cache hits excluded).
    pub calls: u64,
    /// What the calls cost, in millionths of a US dollar, from the models' `price_in` and
    /// `price_out` (dollars per million tokens): tokens × price is exactly micro-dollars.
    #[serde(default)]
    pub cost_micro_usd: u64,
    /// How many of the calls went as lines of a provider's batch (`batch = true`), at the batch
    /// price; left out when none did, as in everything written before the field.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub batch_calls: u64,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

impl Usage {
    /// Whether nothing was used (so the field can be left out of a row).
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Self) {
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
        self.calls += other.calls;
        self.cost_micro_usd += other.cost_micro_usd;
        self.batch_calls += other.batch_calls;
    }
}

/// One SFT row (TRL conversational format), as written to `sft.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SftRow {
    /// Sample id.
    pub id: String,
    /// Prompt turns followed by the revision as the assistant turn.
    pub messages: Vec<Message>,
    /// Which revision round this is (1-based).
    pub round: u32,
}

/// One judge reading of one order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The principle under which the judge answered.
    pub principle_id: String,
    /// `xy`: candidate x shown as (A); `yx`: candidate y shown as (A).
    pub order: String,
    /// Normalised probability of the first-shown option (A).
    pub p_first: f64,
    /// The probability the two letters held at the position read (a lower bound: only the
    /// spellings the server returned count), so a label can be audited; absent in rows from
    /// workers older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub letter_mass: Option<f64>,
    /// Verdict mode: the verdicts sampled for this reading (absent in the other modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub votes: Option<u32>,
    /// Verdict mode: how many of them named a choice; `p_first` is the share of these for the
    /// first-shown answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parsed: Option<u32>,
}

/// One preference row (TRL conversational explicit-prompt format), as written to `preferences.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreferenceRow {
    /// Sample id.
    pub id: String,
    /// The conversation, ending with the user turn.
    pub prompt: Vec<Message>,
    /// The preferred answer (p ≥ 0.5 for it).
    pub chosen: Vec<Message>,
    /// The other answer.
    pub rejected: Vec<Message>,
    /// Soft label: probability that `chosen` is better (clamped in `cot` mode).
    pub p_chosen: f64,
    /// Every reading that went into the label.
    pub readings: Vec<Reading>,
    /// With swap: whether both orders preferred the same candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_consistent: Option<bool>,
}

/// A preference row of a critique-revise job (`preferences = true`): the final revision over the
/// initial answer, as Hugging Face's CAI recipe builds its preference data (no judge). TRL
/// conversational explicit-prompt format, so a pairwise job can read it back as its corpus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RevisionPreferenceRow {
    /// Sample id.
    pub id: String,
    /// The conversation, ending with the user turn.
    pub prompt: Vec<Message>,
    /// The final revision.
    pub chosen: Vec<Message>,
    /// The initial answer.
    pub rejected: Vec<Message>,
    /// The principles of the rounds that led from `rejected` to `chosen`, in order.
    pub principle_ids: Vec<String>,
}

/// One conversation of a dialogue job (TRL conversational format), as written to `sft.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DialogueRow {
    /// Sample id.
    pub id: String,
    /// The corpus's opening (any system message, then the first user turn), then the user
    /// model's turns and the revised assistant turns alternating, ending with an assistant turn.
    pub messages: Vec<Message>,
    /// Assistant turns in `messages`: the job's `turns`, or fewer when the user model ended the
    /// conversation.
    pub turns: u32,
    /// Whether the user model ended the conversation before `turns` assistant turns (an empty
    /// turn or the stop phrase), its last turn left out.
    pub ended_by_user: bool,
}

/// The output rows of a completed sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Output {
    /// Critique-revise rows.
    Sft {
        /// One row (final) or one per round (every).
        rows: Vec<SftRow>,
        /// With `preferences = true`: revision ≻ initial.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preference: Option<RevisionPreferenceRow>,
    },
    /// A pairwise label.
    Preference {
        /// The row.
        row: PreferenceRow,
    },
    /// A dialogue.
    Dialogue {
        /// The conversation.
        row: DialogueRow,
        /// With `preferences = true`: per assistant turn, revision ≻ first answer.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        preferences: Vec<RevisionPreferenceRow>,
    },
}

/// How a sample ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Completed with output rows.
    Done {
        /// The rows.
        output: Output,
    },
    /// Could not be completed.
    Failed {
        /// Why, in words.
        reason: String,
        /// Attempts made at the step that failed.
        attempts: u32,
    },
}

/// One step of a sample's chain, kept in `traces.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceStep {
    /// Step name, unique within the sample (`initial`, `critique-1`, `revision-1`, `judge-1-xy`, …).
    pub step: String,
    /// The principle drawn for this step, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principle_id: Option<String>,
    /// What was asked (the critique or revision request, or the judge question).
    pub request: String,
    /// What the model returned (for a judge step: its reading).
    pub output: String,
    /// The model's name in the job file.
    pub model: String,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Generated tokens.
    pub tokens_out: u64,
    /// Wall time of the call in milliseconds (0 when served from the step cache).
    pub latency_ms: u64,
    /// Whether the result came from the step cache rather than a new call.
    #[serde(default)]
    pub cached: bool,
    /// For a judge step, the raw top log-probabilities of every judged position as
    /// `[token, logprob]` pairs, so a reading can be checked against what the server returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<Vec<Vec<(String, f64)>>>,
}

/// A worker's result for one sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleResult {
    /// The sample's content key.
    pub key: SampleKey,
    /// The sample's id.
    pub id: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Every step, in order.
    pub steps: Vec<TraceStep>,
    /// What the calls of this run of the sample cost.
    pub usage: Usage,
    /// What the steps served from the step cache cost when an earlier run of the sample paid
    /// for them (a run that was killed or interrupted before the sample was committed): paid
    /// once, and counted in no other sample, so the ledger adds it to what the job paid.
    #[serde(default, skip_serializing_if = "Usage::is_zero")]
    pub reused: Usage,
}
