//! RL-CAI / RLAIF labels: a feedback model sees the conversation, a principle's multiple-choice
//! question and the two candidates as (A)/(B); the probability of the first-shown option is read
//! from its top log-probabilities (see [`crate::model::letters`]).
//!
//! For each of `principles_per_label` draws: with `swap`, both orders are judged and the
//! order-corrected readings `p_first(xy)` and `1 - p_first(yx)` are averaged (position-bias
//! calibration); without it, one order is drawn at random. In `cot` mode the model reasons first,
//! then the answer is read and each reading is clamped. A reading with no letter in the top
//! log-probabilities is retried once, then the sample fails: a label is never guessed. In
//! `verdict` mode the judge writes its answer instead, and the reading is the share of its
//! sampled votes for the first-shown option (`verdict`).

mod verdict;

use cai_common::constitution::Principle;
use cai_common::job::{BackendSpec, Candidates, Endpoint, JudgeMode, ModelSpec, PairwiseSpec};
use cai_common::message::{Message, Role};
use cai_common::result::{Output, PreferenceRow, Reading};

use super::{SampleRun, StepError, StepInfo, conversation_turns};
use crate::model::letters::{self, LetterReading};
use crate::model::verdicts::VerdictParser;
use crate::model::{Judgment, Prompt, Speaker, Turn};

/// The assistant's opening of a chain of thought, as in the paper.
const COT_OPENING: &str = "Let's think step-by-step:";
/// Asked of a chat judge whose reply cannot be opened with [`COT_OPENING`].
const COT_REQUEST: &str = "Let's think step-by-step, then say which option is better, (A) or (B).";

pub(super) async fn run(run: &mut SampleRun<'_>, spec: &PairwiseSpec) -> Result<Output, StepError> {
    let [x, y] = match (&run.sample.candidates, &spec.candidates) {
        (Some(candidates), _) => candidates.clone(),
        (None, Candidates::Corpus(fields)) => {
            return Err(StepError::Job(format!(
                "sample {} has no candidates although the job reads them from {fields:?}",
                run.sample.key
            )));
        }
        (None, Candidates::Generate { model }) => {
            let prompt = Prompt {
                turns: conversation_turns(&run.sample.messages),
                reply_as: Some(Speaker::Assistant),
                prefill: None,
            };
            let mut answers = Vec::with_capacity(2);
            for name in ["candidate-x", "candidate-y"] {
                let info = StepInfo {
                    name: name.into(),
                    model,
                    principle: None,
                    request: "",
                };
                answers.push(run.generate(info, &prompt).await?);
            }
            [answers.remove(0), answers.remove(0)]
        }
    };

    let parser = match &spec.verdict {
        Some(verdict) => Some(VerdictParser::new(&verdict.format).map_err(StepError::Job)?),
        None => None,
    };
    let mut readings = Vec::new();
    let mut corrected = Vec::new();
    let mut consistent = true;
    for label in 1..=spec.principles_per_label {
        let principle = run.draw_principle(&format!("principle-{label}")).clone();
        let orders: Vec<bool> = if spec.swap {
            vec![true, false]
        } else {
            vec![run.flip(&format!("order-{label}"))]
        };
        let mut firsts = Vec::new();
        for x_first in orders {
            let (order, a, b) = if x_first {
                ("xy", &x, &y)
            } else {
                ("yx", &y, &x)
            };
            let step = format!("judge-{label}-{order}");
            let mut reading = Reading {
                principle_id: principle.id.clone(),
                order: order.into(),
                p_first: 0.0,
                letter_mass: None,
                votes: None,
                parsed: None,
            };
            match (&spec.verdict, &parser) {
                (Some(settings), Some(parser)) => {
                    let tally =
                        verdict::read(run, spec, settings, parser, &step, &principle, a, b).await?;
                    reading.p_first = tally.p_first();
                    reading.votes = Some(tally.votes);
                    reading.parsed = Some(tally.parsed());
                }
                _ => {
                    let letters = read_option(run, spec, &step, &principle, a, b).await?;
                    reading.p_first = letters.p_a;
                    reading.letter_mass = Some(letters.letter_mass);
                }
            }
            let p_first = reading.p_first;
            let mut p_x = if x_first { p_first } else { 1.0 - p_first };
            if spec.mode == JudgeMode::Cot {
                p_x = p_x.clamp(spec.clamp[0], spec.clamp[1]);
            }
            corrected.push(p_x);
            firsts.push((x_first, p_first));
            readings.push(reading);
        }
        if let [(true, xy), (false, yx)] = firsts[..] {
            consistent &= (xy >= 0.5) == (yx < 0.5);
        }
    }
    let p_x = corrected.iter().sum::<f64>() / corrected.len() as f64;
    let (chosen, rejected, p_chosen) = if p_x >= 0.5 {
        (x, y, p_x)
    } else {
        (y, x, 1.0 - p_x)
    };
    Ok(Output::Preference {
        row: PreferenceRow {
            id: run.sample.id.clone(),
            prompt: run.sample.messages.clone(),
            chosen: vec![Message::assistant(chosen)],
            rejected: vec![Message::assistant(rejected)],
            p_chosen,
            readings,
            position_consistent: spec.swap.then_some(consistent),
        },
    })
}

/// The feedback prompt of the paper (Bai et al. 2022, section 4.1): the conversation, the
/// principle's question, the two options; `Options:` and `The answer is:` only in the
/// multiple-choice form, not in the chain-of-thought one.
fn multiple_choice(
    conversation: &[Message],
    question: &str,
    a: &str,
    b: &str,
    mode: JudgeMode,
) -> String {
    let conversation = render_conversation(conversation);
    match mode {
        JudgeMode::Logprobs => format!(
            "Consider the following conversation between a human and an assistant:\n\n{conversation}\n\n{question}\nOptions:\n(A) {a}\n(B) {b}\nThe answer is:"
        ),
        JudgeMode::Cot | JudgeMode::Verdict => format!(
            "Consider the following conversation between a human and an assistant:\n\n{conversation}\n\n{question}\n(A) {a}\n(B) {b}"
        ),
    }
}

/// One of the feedback model's few-shot examples, as its own question and answer.
struct Example {
    /// The multiple-choice question (in the mode's form).
    ask: String,
    /// `" (A)"` or `" (B)"`: where the better answer was put.
    answer: &'static str,
    /// The written chain of thought (cot mode).
    reasoning: Option<String>,
}

/// The constitution's judge demonstrations as examples "formatted in the same manner, with an
/// independently sampled principle" (the paper, section 4.1): a demonstration's own principle,
/// or one drawn for this sample and step; the better answer alternately (A) and (B), so the
/// examples teach no position. Cot mode shows only those with a written chain of thought
/// (verdict mode shows every one, with its reasoning where it has one). None
/// when the job sets `few_shot = false`.
fn examples(run: &SampleRun<'_>, mode: JudgeMode, step: &str) -> Vec<Example> {
    if !run.ctx.spec.constitution.few_shot {
        return Vec::new();
    }
    let constitution = &run.ctx.constitution;
    constitution
        .judge_demonstrations
        .iter()
        .enumerate()
        .filter(|(_, demo)| mode != JudgeMode::Cot || demo.reasoning.is_some())
        .map(|(index, demo)| {
            let principle = demo
                .principle
                .as_ref()
                .and_then(|id| constitution.principles.iter().find(|p| &p.id == id))
                .unwrap_or_else(|| run.draw_principle(&format!("{step}-example-{index}")));
            let question = principle
                .judge
                .as_deref()
                .expect("checked: a demonstration's principle has a judge question");
            let (a, b, answer) = if index % 2 == 0 {
                (&demo.better, &demo.worse, " (A)")
            } else {
                (&demo.worse, &demo.better, " (B)")
            };
            Example {
                ask: multiple_choice(&demo.conversation, question, a, b, mode),
                answer,
                reasoning: demo.reasoning.clone(),
            }
        })
        .collect()
}

/// Anthropic's chain-of-thought demonstrations (whole transcripts with a `{}` where the
/// principle goes), each with a principle drawn for this sample and step, shown as text before
/// the question in cot mode. None when the job sets `few_shot = false`.
fn cot_templates(run: &SampleRun<'_>, step: &str) -> Vec<Turn> {
    if !run.ctx.spec.constitution.few_shot {
        return Vec::new();
    }
    run.ctx
        .constitution
        .cot_demonstrations
        .iter()
        .enumerate()
        .map(|(index, template)| {
            let principle = run.draw_principle(&format!("{step}-cot-example-{index}"));
            let question = principle.judge.as_deref().unwrap_or_default();
            Turn::new(Speaker::Text, template.replacen("{}", question, 1))
        })
        .collect()
}

/// Whether the model's reply can be started for it (a completions transcript, the in-process
/// model, a chat server set to continue an assistant message, or the Messages API, which
/// always continues a final assistant message).
fn continues_reply(spec: &ModelSpec) -> bool {
    match &spec.backend {
        BackendSpec::Openai(openai) => openai.endpoint == Endpoint::Completions || openai.prefill,
        BackendSpec::Local(_) | BackendSpec::Mock(_) | BackendSpec::Anthropic(_) => true,
    }
}

/// One reading of the first-shown option, retried once when the letters are missing from the
/// judge's top log-probabilities or hold less than `min_letter_mass` there: a label is never
/// made from noise.
async fn read_option(
    run: &mut SampleRun<'_>,
    spec: &PairwiseSpec,
    step: &str,
    principle: &Principle,
    a: &str,
    b: &str,
) -> Result<LetterReading, StepError> {
    let judge = spec.judge.as_str();
    let question = principle
        .judge
        .as_deref()
        .expect("drawn from the judge principles");
    let body = multiple_choice(&run.sample.messages, question, a, b, spec.mode);
    let examples = examples(run, spec.mode, step);
    let prompt = match spec.mode {
        // As the paper's pretrained feedback model reads it: plain text (its few-shot examples
        // first, each answered), the answer started with " (" so that the next token is the
        // letter.
        JudgeMode::Logprobs => {
            let text = examples
                .iter()
                .map(|example| format!("{}{}", example.ask, example.answer))
                .chain([body])
                .collect::<Vec<_>>()
                .join("\n\n");
            Prompt {
                turns: vec![Turn::new(Speaker::Text, text)],
                reply_as: None,
                prefill: Some(" (".into()),
            }
        }
        JudgeMode::Verdict => {
            return Err(StepError::Job(
                "verdict mode counts written votes; it reads no log-probabilities".into(),
            ));
        }
        // The paper's dialogue form: the assistant's turn opens with "Let's think
        // step-by-step:"; a chat server that cannot be given that opening is asked for it.
        JudgeMode::Cot => {
            let ask = if continues_reply(&run.ctx.spec.models[judge]) {
                body
            } else {
                format!("{body}\n\n{COT_REQUEST}")
            };
            let mut shown = cot_templates(run, step);
            for example in &examples {
                shown.extend([
                    Turn::new(Speaker::Human, example.ask.clone()),
                    Turn::new(
                        Speaker::Assistant,
                        format!(
                            "{COT_OPENING} {}",
                            example.reasoning.as_deref().unwrap_or("")
                        ),
                    ),
                    Turn::new(Speaker::Human, "So the answer is:"),
                    Turn::new(Speaker::Assistant, example.answer.trim()),
                ]);
            }
            shown.push(Turn::new(Speaker::Human, ask.clone()));
            let prompt = Prompt {
                turns: shown.clone(),
                reply_as: Some(Speaker::Assistant),
                prefill: Some(format!(" {COT_OPENING}")),
            };
            let info = StepInfo {
                name: format!("{step}-reasoning"),
                model: judge,
                principle: Some(principle),
                request: COT_OPENING,
            };
            let reasoning = run.generate(info, &prompt).await?;
            shown.extend([
                Turn::new(Speaker::Assistant, format!("{COT_OPENING} {reasoning}")),
                Turn::new(Speaker::Human, "So the answer is:"),
            ]);
            Prompt {
                turns: shown,
                reply_as: Some(Speaker::Assistant),
                prefill: Some(" (".into()),
            }
        }
    };
    let min_mass = spec.min_letter_mass;
    let describe = |judgment: &Judgment| match letters::read(&judgment.positions) {
        Some(reading) => format!(
            "p_first={:.6} letter_mass={:.6} position={} text={:?}",
            reading.p_a, reading.letter_mass, reading.position, judgment.text
        ),
        None => format!(
            "no option letter in the top log-probabilities; text={:?}",
            judgment.text
        ),
    };
    let mut last = None;
    for attempt in ["", "-retry"] {
        let info = StepInfo {
            name: format!("{step}{attempt}"),
            model: judge,
            principle: Some(principle),
            request: question,
        };
        let judgment = run.judge(info, &prompt, describe).await?;
        last = letters::read(&judgment.positions);
        if let Some(reading) = last
            && reading.letter_mass >= min_mass
        {
            return Ok(reading);
        }
    }
    let reason = match last {
        Some(reading) => format!(
            "step {step}: the letters (A) and (B) held only {:.4} of the judge's probability (min_letter_mass {min_mass}), twice: not a trustworthy label",
            reading.letter_mass
        ),
        None => format!(
            "step {step}: neither (A) nor (B) was among the judge's top log-probabilities, twice"
        ),
    };
    Err(StepError::Sample {
        reason,
        attempts: 2,
    })
}

/// The conversation as the judge reads it: `Human: …` / `Assistant: …` paragraphs.
fn render_conversation(messages: &[Message]) -> String {
    messages
        .iter()
        .map(|m| {
            let speaker = match m.role {
                Role::System => "System",
                Role::User => "Human",
                Role::Assistant => "Assistant",
            };
            format!("{speaker}: {}", m.content)
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}
