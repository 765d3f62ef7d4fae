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
use cai_common::job::JudgeMode;
use cai_common::message::{Message, Role};
use cai_common::result::{Output, PreferenceRow, Reading};

use super::{SampleRun, StepError, StepInfo};
use crate::model::letters::probability_of_a;
use crate::model::{Judgment, Prompt, Speaker, Turn};

/// What is asked after the conversation in `cot` mode.
const COT_INSTRUCTION: &str =
    "Think it through step by step, then say which option is better, (A) or (B).";
/// The assistant's opening of a chain of thought, as in the paper.
const COT_OPENING: &str = "Let's think step-by-step:";

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
            let p_first = read_option(run, &spec.judge, spec.mode, &step, &principle, a, b).await?;
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

/// One reading: the normalised probability of the first-shown option, retried once when the
/// model's top log-probabilities hold neither letter.
async fn read_option(
    run: &mut SampleRun<'_>,
    judge: &str,
    mode: JudgeMode,
    step: &str,
    principle: &Principle,
    a: &str,
    b: &str,
) -> Result<f64, StepError> {
    let question = principle
        .judge
        .as_deref()
        .expect("drawn from the judge principles");
    let body = format!(
        "Consider the following conversation between a human and an assistant:\n\n{}\n\n{question}\n\nOptions:\n(A) {a}\n(B) {b}",
        render_conversation(&run.sample.messages)
    );
    let mut turns = Vec::new();
    match mode {
        JudgeMode::Logprobs => turns.push(Turn::new(
            Speaker::Human,
            format!("{body}\n\nThe answer is:"),
        )),
        JudgeMode::Cot => {
            let ask = format!("{body}\n\n{COT_INSTRUCTION}");
            let prompt = Prompt {
                turns: vec![Turn::new(Speaker::Human, ask.clone())],
                reply_as: Some(Speaker::Assistant),
            };
            let info = StepInfo {
                name: format!("{step}-reasoning"),
                model: judge,
                principle: Some(principle),
                request: COT_INSTRUCTION,
            };
            let reasoning = run.generate(info, &prompt).await?;
            turns.push(Turn::new(Speaker::Human, ask));
            turns.push(Turn::new(
                Speaker::Assistant,
                format!("{COT_OPENING} {reasoning}"),
            ));
            turns.push(Turn::new(Speaker::Human, "So the answer is:"));
        }
    }
    let prompt = Prompt {
        turns,
        reply_as: None,
    };
    let describe = |judgment: &Judgment| match probability_of_a(&judgment.positions) {
        Some(p) => format!("p_first={p:.6} text={:?}", judgment.text),
        None => format!(
            "no option letter in the top log-probabilities; text={:?}",
            judgment.text
        ),
    };
    for attempt in ["", "-retry"] {
        let info = StepInfo {
            name: format!("{step}{attempt}"),
            model: judge,
            principle: Some(principle),
            request: question,
        };
        let judgment = run.judge(info, &prompt, describe).await?;
        if let Some(p) = probability_of_a(&judgment.positions) {
            return Ok(p);
        }
    }
    Err(StepError::Sample {
        reason: format!(
            "step {step}: neither (A) nor (B) was among the judge's top log-probabilities, twice"
        ),
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
