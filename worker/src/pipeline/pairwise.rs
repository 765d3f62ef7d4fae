//! RL-CAI / RLAIF labels: a feedback model sees the conversation, a principle's multiple-choice
//! question and the two candidates as (A)/(B); the probability of the first-shown option is read
//! from its top log-probabilities (see [`crate::model::letters`]).
//!
//! For each of `principles_per_label` draws: with `swap`, both orders are judged and the
//! order-corrected readings `p_first(xy)` and `1 - p_first(yx)` are averaged (position-bias
//! calibration); without it, one order is drawn at random. In `cot` mode the model reasons first,
//! then the answer is read and each reading is clamped. A reading with no letter in the top
//! log-probabilities is retried once, then the sample fails: a label is never guessed.

use cai_common::constitution::Principle;
use cai_common::job::{Backend, Endpoint, JudgeMode, ModelSpec, PairwiseSpec};
use cai_common::message::{Message, Role};
use cai_common::result::{Output, PreferenceRow, Reading};

use super::{SampleRun, StepError, StepInfo};
use crate::model::letters::{self, LetterReading};
use crate::model::{Judgment, Prompt, Speaker, Turn};

/// The assistant's opening of a chain of thought, as in the paper.
const COT_OPENING: &str = "Let's think step-by-step:";
/// Asked of a chat judge whose reply cannot be opened with [`COT_OPENING`].
const COT_REQUEST: &str = "Let's think step-by-step, then say which option is better, (A) or (B).";

pub(super) async fn run(run: &mut SampleRun<'_>) -> Result<Output, StepError> {
    let spec = run
        .ctx
        .spec
        .pairwise
        .as_ref()
        .expect("checked: pairwise job has its section")
        .clone();
    let [x, y] = match &run.sample.candidates {
        Some(candidates) => candidates.clone(),
        None => {
            let generate = spec
                .generate
                .as_ref()
                .expect("checked: candidates or generate");
            let prompt = Prompt {
                turns: conversation_turns(&run.sample.messages),
                reply_as: Some(Speaker::Assistant),
                prefill: None,
            };
            let mut answers = Vec::with_capacity(2);
            for name in ["candidate-x", "candidate-y"] {
                let info = StepInfo {
                    name: name.into(),
                    model: &generate.model,
                    principle: None,
                    request: "",
                };
                answers.push(run.generate(info, &prompt).await?);
            }
            [answers.remove(0), answers.remove(0)]
        }
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
            let reading = read_option(run, &spec, &step, &principle, a, b).await?;
            let p_first = reading.p_a;
            let mut p_x = if x_first { p_first } else { 1.0 - p_first };
            if spec.mode == JudgeMode::Cot {
                p_x = p_x.clamp(spec.clamp[0], spec.clamp[1]);
            }
            corrected.push(p_x);
            firsts.push((x_first, p_first));
            readings.push(Reading {
                principle_id: principle.id.clone(),
                order: order.into(),
                p_first,
                letter_mass: Some(reading.letter_mass),
            });
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
        JudgeMode::Cot => format!(
            "Consider the following conversation between a human and an assistant:\n\n{conversation}\n\n{question}\n(A) {a}\n(B) {b}"
        ),
    }
}

/// Whether the model's reply can be started for it (a completions transcript, the in-process
/// model, or a chat server set to continue an assistant message).
fn continues_reply(spec: &ModelSpec) -> bool {
    spec.backend != Backend::Openai || spec.endpoint == Endpoint::Completions || spec.prefill
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
        .expect("checked: every principle has a judge question");
    let body = multiple_choice(&run.sample.messages, question, a, b, spec.mode);
    let prompt = match spec.mode {
        // As the paper's pretrained feedback model reads it: plain text, the answer started
        // with " (" so that the next token is the letter.
        JudgeMode::Logprobs => Prompt {
            turns: vec![Turn::new(Speaker::Text, body)],
            reply_as: None,
            prefill: Some(" (".into()),
        },
        // The paper's dialogue form: the assistant's turn opens with "Let's think
        // step-by-step:"; a chat server that cannot be given that opening is asked for it.
        JudgeMode::Cot => {
            let ask = if continues_reply(&run.ctx.spec.models[judge]) {
                body
            } else {
                format!("{body}\n\n{COT_REQUEST}")
            };
            let prompt = Prompt {
                turns: vec![Turn::new(Speaker::Human, ask.clone())],
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
            Prompt {
                turns: vec![
                    Turn::new(Speaker::Human, ask),
                    Turn::new(Speaker::Assistant, format!("{COT_OPENING} {reasoning}")),
                    Turn::new(Speaker::Human, "So the answer is:"),
                ],
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

fn conversation_turns(messages: &[Message]) -> Vec<Turn> {
    messages
        .iter()
        .map(|m| Turn::new(Speaker::from_role(m.role), m.content.clone()))
        .collect()
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
