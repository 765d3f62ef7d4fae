//! What a job will cost before it runs, for `cai validate`: the model calls, the tokens and the
//! price, per model, from the corpus's samples, the constitution and the pipeline's settings.
//!
//! The calls are exact for a run on a fresh output directory in which no call fails and no
//! reading is retried: they follow the pipeline's steps (see `docs/METHOD.md`, calls per
//! sample). The tokens are an approximation, stated as such: a token per four characters of the
//! texts each call sends (the rule the client layer's `tpm` estimate uses), or for a model
//! given a tokenizer ([`Estimator::tokenizer`], a `local` model's) the characters per token
//! its tokenizer finds in the corpus's own texts; every text a model writes is counted at its
//! `max_tokens`, so generated context and output are upper bounds.

use std::collections::BTreeMap;

use cai_common::constitution::Constitution;
use cai_common::job::{
    BackendSpec, Candidates, CritiqueReviseSpec, DialogueSpec, JobSpec, JudgeMode, PairwiseSpec,
    Pipeline,
};
use cai_common::sample::Sample;
use serde::Serialize;

/// Tokens a log-probability judgment generates (the backends' judged positions).
const JUDGE_TOKENS: u64 = 3;
/// Characters a judge prompt's fixed wording adds around its parts (the paper's question,
/// `Options:`, a verdict request, Prometheus 2's task description), a generous round figure.
const JUDGE_WORDING_CHARS: u64 = 1_000;
/// Characters per token of the approximation.
const CHARS_PER_TOKEN: u64 = 4;

/// The calls, tokens and price of one model, or of the whole job.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Cost {
    /// Model calls.
    pub calls: u64,
    /// Prompt tokens (approximate).
    pub input_tokens: u64,
    /// Generated tokens (approximate, at most `max_tokens` a generation).
    pub output_tokens: u64,
    /// USD, from the model's prices (batch prices in batch mode); absent without prices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Seconds at the model's concurrency, where the call time is known (the mock's
    /// `latency_ms`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
}

/// A job's estimate: its totals, and the same per model.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Estimate {
    /// The whole job.
    #[serde(flatten)]
    pub total: Cost,
    /// Per model, by the job file's name for it.
    pub by_model: BTreeMap<String, Cost>,
    /// How the tokens were counted.
    pub tokens: &'static str,
    /// The calls are a most, not exact: a dialogue's user model may end a conversation early.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub calls_at_most: bool,
}

/// Sums a job's calls sample by sample ([`Estimator::add`]), then prices them
/// ([`Estimator::finish`]).
pub struct Estimator<'a> {
    spec: &'a JobSpec,
    constitution: &'a Constitution,
    /// Characters of what each model is sent, characters it writes, and its calls.
    counts: BTreeMap<String, (u64, u64, u64)>,
    /// The models counted with a tokenizer of their own: it, and the characters and tokens it
    /// found in the corpus's texts so far.
    tokenizers: BTreeMap<String, (TokenCount, u64, u64)>,
}

/// Counts the tokens of a text.
pub type TokenCount = Box<dyn Fn(&str) -> u64 + Send>;

/// Characters of `max_tokens` tokens of a model's writing.
fn written(spec: &JobSpec, model: &str) -> u64 {
    u64::from(spec.models[model].sampling.max_tokens) * CHARS_PER_TOKEN
}

fn mean_len<'s>(texts: impl Iterator<Item = &'s str>) -> u64 {
    let (sum, n) = texts.fold((0u64, 0u64), |(sum, n), text| {
        (sum + text.len() as u64, n + 1)
    });
    sum.checked_div(n).unwrap_or(0)
}

impl<'a> Estimator<'a> {
    /// An estimator for a checked job and its constitution.
    pub fn new(spec: &'a JobSpec, constitution: &'a Constitution) -> Self {
        Self {
            spec,
            constitution,
            counts: BTreeMap::new(),
            tokenizers: BTreeMap::new(),
        }
    }

    /// Counts model `name`'s input tokens with its own tokenizer: at the ratio of tokens to
    /// characters it finds in the samples' texts.
    pub fn tokenizer(&mut self, name: &str, count: TokenCount) {
        self.tokenizers.insert(name.to_owned(), (count, 0, 0));
    }

    fn call(&mut self, model: &str, sent: u64, writes: u64) {
        let entry = self.counts.entry(model.to_owned()).or_default();
        entry.0 += sent;
        entry.1 += writes;
        entry.2 += 1;
    }

    /// Adds the calls one sample makes.
    pub fn add(&mut self, sample: &Sample) {
        for (count, chars, tokens) in self.tokenizers.values_mut() {
            let texts = sample.messages.iter().map(|m| m.content.as_str());
            let candidates = sample.candidates.iter().flatten().map(String::as_str);
            for text in texts.chain(candidates) {
                *chars += text.len() as u64;
                *tokens += count(text);
            }
        }
        let conversation: u64 = sample
            .messages
            .iter()
            .map(|m| m.content.len() as u64 + 12)
            .sum();
        match &self.spec.pipeline {
            Pipeline::CritiqueRevise(spec) => self.critique_revise(spec, sample, conversation),
            Pipeline::Pairwise(spec) => self.pairwise(spec, sample, conversation),
            Pipeline::Dialogue(spec) => self.dialogue(spec, conversation),
        }
    }

    /// A dialogue of `turns` assistant turns, each answered and revised `revisions` times
    /// (its critique principles' requests and no demonstrations counted), the user model
    /// writing every turn after the first: as many calls as the conversation runs to its end.
    fn dialogue(&mut self, spec: &DialogueSpec, conversation: u64) {
        let (user, assistant) = (spec.user.as_str(), spec.assistant.as_str());
        let (asked, answer) = (written(self.spec, user), written(self.spec, assistant));
        let principles = self.constitution.critique_principles();
        let critique = mean_len(principles.iter().filter_map(|p| p.critique.as_deref()));
        let revision = mean_len(principles.iter().filter_map(|p| p.revision.as_deref()));
        let mut history = conversation;
        for turn in 1..=spec.turns {
            if turn > 1 {
                self.call(user, history + JUDGE_WORDING_CHARS, asked);
                history += asked;
            }
            self.call(assistant, history, answer);
            for _ in 0..spec.revisions {
                let ask = history + answer + critique;
                self.call(assistant, ask, answer);
                self.call(assistant, ask + answer + revision, answer);
            }
            history += answer;
        }
    }

    fn critique_revise(&mut self, spec: &CritiqueReviseSpec, sample: &Sample, conversation: u64) {
        let model = spec.model.as_str();
        let answer = written(self.spec, model);
        let principles = self.constitution.critique_principles();
        let critique = mean_len(principles.iter().filter_map(|p| p.critique.as_deref()));
        let revision = mean_len(principles.iter().filter_map(|p| p.revision.as_deref()));
        let demonstrations: u64 = if self.spec.constitution.few_shot {
            let demos = &self.constitution.demonstrations;
            demos
                .iter()
                .map(|d| {
                    d.conversation
                        .iter()
                        .map(|m| m.content.len() as u64)
                        .sum::<u64>()
                        + (d.critique_request.len()
                            + d.critique.len()
                            + d.revision_request.len()
                            + d.revision.len()) as u64
                })
                .sum()
        } else {
            0
        };
        let first = match &sample.initial {
            Some(given) => given.len() as u64,
            None => {
                self.call(model, conversation, answer);
                answer
            }
        };
        let mut context = first;
        for round in 1..=spec.revisions {
            if spec.keep_history && round > 1 {
                context += critique + answer + revision + answer;
            } else if round > 1 {
                context = answer;
            }
            let ask = demonstrations + conversation + context + critique;
            self.call(model, ask, answer);
            self.call(model, ask + answer + revision, answer);
        }
    }

    fn pairwise(&mut self, spec: &PairwiseSpec, sample: &Sample, conversation: u64) {
        let judge = spec.judge.as_str();
        let candidates = match (&spec.candidates, &sample.candidates) {
            (Candidates::Generate { model }, _) => {
                let answer = written(self.spec, model);
                self.call(model, conversation, answer);
                self.call(model, conversation, answer);
                2 * answer
            }
            (Candidates::Corpus(_), Some([x, y])) => (x.len() + y.len()) as u64,
            (Candidates::Corpus(_), None) => 0,
        };
        let principles = self.constitution.judge_principles();
        let question = mean_len(principles.iter().filter_map(|p| p.judge.as_deref()));
        let examples: u64 = if self.spec.constitution.few_shot {
            self.constitution
                .judge_demonstrations
                .iter()
                .filter(|d| spec.mode != JudgeMode::Cot || d.reasoning.is_some())
                .map(|d| {
                    d.conversation
                        .iter()
                        .map(|m| m.content.len() as u64)
                        .sum::<u64>()
                        + (d.better.len() + d.worse.len()) as u64
                        + d.reasoning.as_ref().map_or(0, |r| r.len() as u64)
                        + question
                        + JUDGE_WORDING_CHARS
                })
                .sum::<u64>()
                + if spec.mode == JudgeMode::Cot {
                    self.constitution
                        .cot_demonstrations
                        .iter()
                        .map(|t| t.len() as u64)
                        .sum()
                } else {
                    0
                }
        } else {
            0
        };
        let ask = examples + conversation + candidates + question + JUDGE_WORDING_CHARS;
        let orders = if spec.swap { 2 } else { 1 };
        let reasoning = written(self.spec, judge);
        for _ in 0..spec.principles_per_label * orders {
            match (spec.mode, &spec.verdict) {
                (JudgeMode::Logprobs, _) => self.call(judge, ask, JUDGE_TOKENS * CHARS_PER_TOKEN),
                (JudgeMode::Cot, _) => {
                    self.call(judge, ask, reasoning);
                    self.call(judge, ask + reasoning, JUDGE_TOKENS * CHARS_PER_TOKEN);
                }
                (JudgeMode::Verdict, verdict) => {
                    for _ in 0..verdict.as_ref().map_or(1, |v| v.votes) {
                        self.call(judge, ask, reasoning);
                    }
                }
            }
        }
    }

    /// The estimate, priced.
    pub fn finish(self) -> Estimate {
        let mut estimate = Estimate {
            tokens: if self.tokenizers.is_empty() {
                "approximate: a token per 4 characters of what each call sends, every text a model writes counted at its max_tokens"
            } else {
                "approximate: a token per 4 characters of what each call sends (for a local model, its tokenizer's characters per token on the corpus), every text a model writes counted at its max_tokens"
            },
            ..Estimate::default()
        };
        estimate.calls_at_most = matches!(self.spec.pipeline, Pipeline::Dialogue(_));
        let mut priced = false;
        let mut durations = Vec::new();
        for (name, (sent, writes, calls)) in self.counts {
            let model = &self.spec.models[&name];
            let prices = model.prices();
            let input_tokens = match self.tokenizers.get(&name) {
                Some((_, chars, tokens)) if *chars > 0 => {
                    (sent as f64 * *tokens as f64 / *chars as f64).ceil() as u64
                }
                _ => sent.div_ceil(CHARS_PER_TOKEN),
            };
            let output_tokens = writes.div_ceil(CHARS_PER_TOKEN);
            let cost_usd = (prices.price_in.is_some() || prices.price_out.is_some()).then(|| {
                (prices.price_in.unwrap_or(0.0) * input_tokens as f64
                    + prices.price_out.unwrap_or(0.0) * output_tokens as f64)
                    / 1e6
            });
            let duration_s = match &model.backend {
                BackendSpec::Mock(mock) if mock.latency_ms > 0 => Some(
                    calls as f64 * mock.latency_ms as f64
                        / 1e3
                        / model.policy.max_concurrency.most_in_flight() as f64,
                ),
                _ => None,
            };
            priced |= cost_usd.is_some();
            durations.push(duration_s);
            let total = &mut estimate.total;
            total.calls += calls;
            total.input_tokens += input_tokens;
            total.output_tokens += output_tokens;
            if let Some(usd) = cost_usd {
                *total.cost_usd.get_or_insert(0.0) += usd;
            }
            estimate.by_model.insert(
                name,
                Cost {
                    calls,
                    input_tokens,
                    output_tokens,
                    cost_usd,
                    duration_s,
                },
            );
        }
        if !priced {
            estimate.total.cost_usd = None;
        }
        // The models are called in turn within a sample, so the job takes as long as its
        // models' calls together, where each is known.
        if !durations.is_empty() && durations.iter().all(Option::is_some) {
            estimate.total.duration_s = Some(durations.iter().flatten().sum());
        }
        estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cai_common::job::Job;
    use cai_common::message::Message;

    #[test]
    fn a_tokenizer_counts_the_input_at_its_own_ratio() {
        let text = r#"
name = "e"
pipeline = "critique-revise"
[input]
path = "c.jsonl"
prompt = "prompt"
[constitution]
path = "c.toml"
few_shot = false
[critique_revise]
model = "policy"
revisions = 1
[models.policy]
backend = "mock"
max_tokens = 10
"#;
        let job = Job::parse(text, std::path::Path::new("job.toml")).unwrap();
        let constitution = Constitution::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../constitutions/default.toml"),
        )
        .unwrap();
        let sample = Sample::new(None, 0, vec![Message::user("x".repeat(4000))], None, None);
        let estimate = |tokenizer: Option<TokenCount>| {
            let mut estimator = Estimator::new(&job.spec, &constitution);
            if let Some(count) = tokenizer {
                estimator.tokenizer("policy", count);
            }
            estimator.add(&sample);
            estimator.finish()
        };
        let plain = estimate(None);
        // One token per two characters: about twice the tokens of the four-character rule.
        let counted = estimate(Some(Box::new(|text: &str| text.len() as u64 / 2)));
        assert_eq!((plain.total.calls, counted.total.calls), (3, 3));
        let (plain_in, counted_in) = (plain.total.input_tokens, counted.total.input_tokens);
        assert!(
            counted_in.abs_diff(2 * plain_in) <= 3,
            "{plain_in} vs {counted_in}"
        );
        assert_eq!(
            (plain.total.output_tokens, counted.total.output_tokens),
            (30, 30)
        );
        assert!(counted.tokens.contains("tokenizer") && !plain.tokens.contains("tokenizer"));
    }
}
