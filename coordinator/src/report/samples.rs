//! The report's sample browser: a deterministic sample of the job's samples (those with the
//! smallest content keys, which is a uniform draw that does not depend on the order results
//! were committed in), each with its whole chain: the prompt, every step with its principle,
//! request and output, and for a pairwise sample both candidates and every reading.

use std::collections::HashMap;
use std::path::Path;

use cai_common::message::Message;
use cai_common::result::{Reading, TraceStep};
use serde::{Deserialize, Serialize};

use crate::ledger::DataFile;
use crate::rows::for_each_row;

/// Texts longer than this are cut in the browser, so a page of long answers stays small.
const MAX_TEXT: usize = 4000;

/// One sample as the browser shows it.
#[derive(Serialize)]
pub struct SampleView {
    /// The sample's id.
    pub id: String,
    /// `done` or `failed`.
    pub status: String,
    /// The conversation, when an output row holds it.
    pub prompt: Vec<TurnView>,
    /// The principles its steps drew, each once, in order.
    pub principles: Vec<String>,
    /// Every traced step, in order.
    pub steps: Vec<StepView>,
    /// A pairwise label: both candidates and the readings.
    pub pair: Option<PairView>,
    /// Why a failed sample failed.
    pub failure: Option<String>,
}

/// A turn of the prompt.
#[derive(Serialize)]
pub struct TurnView {
    /// `user`, `assistant`, `system`.
    pub role: String,
    /// Its text.
    pub content: String,
}

/// One step of the chain.
#[derive(Serialize)]
pub struct StepView {
    /// `initial`, `critique-1`, `revision-1`, `judge-1-xy`, …
    pub step: String,
    /// The principle drawn for it.
    pub principle: Option<String>,
    /// What was asked.
    pub request: String,
    /// What the model returned.
    pub output: String,
}

/// A pairwise label.
#[derive(Serialize)]
pub struct PairView {
    /// The preferred answer.
    pub chosen: String,
    /// The other answer.
    pub rejected: String,
    /// The soft label.
    pub p_chosen: f64,
    /// Whether both orders agreed.
    pub position_consistent: Option<bool>,
    /// Every reading, with its order and principle.
    pub readings: Vec<Reading>,
}

#[derive(Deserialize)]
struct Trace {
    id: String,
    key: String,
    status: String,
    steps: Vec<TraceStep>,
}

#[derive(Deserialize)]
struct Sft {
    id: String,
    messages: Vec<Message>,
}

#[derive(Deserialize)]
struct Preference {
    id: String,
    prompt: Vec<Message>,
    chosen: Vec<Message>,
    rejected: Vec<Message>,
    #[serde(default)]
    p_chosen: Option<f64>,
    #[serde(default)]
    readings: Vec<Reading>,
    #[serde(default)]
    position_consistent: Option<bool>,
}

#[derive(Deserialize)]
struct Failed {
    id: String,
    reason: String,
}

/// Reads up to `n` samples of an output directory, smallest content key first. `pairwise`
/// says whether `preferences.jsonl` holds judged labels (rather than a critique-revise job's
/// revision-over-initial rows, whose prompt is read from `sft.jsonl`).
pub fn read(dir: &Path, n: usize, pairwise: bool) -> std::io::Result<Vec<SampleView>> {
    let mut picked: Vec<Trace> = Vec::new();
    for_each_row(&dir.join(DataFile::Traces.name()), |trace: Trace| {
        picked.push(trace);
        if picked.len() >= 2 * n.max(1) {
            picked.sort_by(|a, b| a.key.cmp(&b.key));
            picked.truncate(n);
        }
    })?;
    picked.sort_by(|a, b| a.key.cmp(&b.key));
    picked.truncate(n);
    let mut views: Vec<SampleView> = picked
        .into_iter()
        .map(|trace| SampleView {
            id: trace.id,
            status: trace.status,
            prompt: Vec::new(),
            principles: trace.steps.iter().fold(Vec::new(), |mut drawn, step| {
                if let Some(id) = step.principle_id.as_ref().filter(|id| !drawn.contains(*id)) {
                    drawn.push(id.clone());
                }
                drawn
            }),
            steps: trace
                .steps
                .into_iter()
                .map(|step| StepView {
                    step: step.step,
                    principle: step.principle_id,
                    request: cut(step.request),
                    output: cut(step.output),
                })
                .collect(),
            pair: None,
            failure: None,
        })
        .collect();
    let index: HashMap<String, usize> = views
        .iter()
        .enumerate()
        .map(|(i, view)| (view.id.clone(), i))
        .collect();
    if pairwise {
        for_each_row(
            &dir.join(DataFile::Preferences.name()),
            |row: Preference| {
                if let Some(view) = index.get(&row.id).map(|&i| &mut views[i]) {
                    view.prompt = turns(row.prompt);
                    view.pair = Some(PairView {
                        chosen: cut(text(row.chosen)),
                        rejected: cut(text(row.rejected)),
                        p_chosen: row.p_chosen.unwrap_or(f64::NAN),
                        position_consistent: row.position_consistent,
                        readings: row.readings,
                    });
                }
            },
        )?;
    } else {
        for_each_row(&dir.join(DataFile::Sft.name()), |mut row: Sft| {
            if let Some(view) = index.get(&row.id).map(|&i| &mut views[i]) {
                if view.prompt.is_empty() {
                    row.messages.pop();
                    view.prompt = turns(row.messages);
                }
            }
        })?;
    }
    for_each_row(&dir.join(DataFile::Failed.name()), |row: Failed| {
        if let Some(view) = index.get(&row.id).map(|&i| &mut views[i]) {
            view.failure = Some(cut(row.reason));
        }
    })?;
    Ok(views)
}

fn turns(messages: Vec<Message>) -> Vec<TurnView> {
    messages
        .into_iter()
        .map(|m| TurnView {
            role: m.role.as_str().to_owned(),
            content: cut(m.content),
        })
        .collect()
}

fn text(messages: Vec<Message>) -> String {
    messages
        .into_iter()
        .map(|m| m.content)
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn cut(mut text: String) -> String {
    if let Some((at, _)) = text.char_indices().nth(MAX_TEXT) {
        text.truncate(at);
        text.push_str(" …[cut]");
    }
    text
}
