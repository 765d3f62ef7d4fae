//! The critique-revise section of the report, read from `traces.jsonl`: which principles were
//! drawn, how long the answer is after each round, and how much each round changed it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use cai_common::result::TraceStep;
use serde::{Deserialize, Serialize};

use super::plots;
use crate::ledger::DataFile;
use crate::rows::for_each_row;

/// The fields of a trace row this section reads.
#[derive(Deserialize)]
struct Trace {
    steps: Vec<TraceStep>,
}

/// The critique-revise figures, ready for the template.
#[derive(Serialize)]
pub struct RevisionSection {
    /// Rounds drawn per principle.
    pub principles_svg: String,
    /// Mean answer length (words) by round, round 0 being the initial answer.
    pub lengths_svg: String,
    /// Mean share of words each round changed.
    pub changes_svg: String,
    /// Per round: answers seen, mean words, mean change (absent for round 0).
    pub rounds: Vec<RoundFigure>,
}

/// One round's figures.
#[derive(Serialize)]
pub struct RoundFigure {
    /// 0: the initial answer; r: revision r.
    pub round: u32,
    /// Answers of that round.
    pub answers: u64,
    /// Their mean length in words.
    pub mean_words: f64,
    /// Mean [`change_ratio`] from the round before, where both are traced.
    pub mean_change: Option<f64>,
    /// Revisions whose text is exactly the answer before it.
    pub unchanged: u64,
}

#[derive(Default)]
struct Round {
    answers: u64,
    words: u64,
    changes: f64,
    compared: u64,
    unchanged: u64,
}

/// A step's name within its turn: a dialogue's `turn-2-revision-1` is its turn's
/// `revision-1`, so each assistant turn counts as one answer revised in rounds.
fn within_turn(step: &str) -> &str {
    step.strip_prefix("turn-")
        .and_then(|rest| rest.split_once('-'))
        .filter(|(turn, _)| turn.bytes().all(|b| b.is_ascii_digit()))
        .map_or(step, |(_, name)| name)
}

/// Reads the critique-revise figures of an output directory (a dialogue's too: each of its
/// assistant turns is an answer revised in rounds).
pub fn read(dir: &Path) -> std::io::Result<RevisionSection> {
    let mut principles: BTreeMap<String, f64> = BTreeMap::new();
    let mut rounds: BTreeMap<u32, Round> = BTreeMap::new();
    for_each_row(&dir.join(DataFile::Traces.name()), |trace: Trace| {
        let mut previous: Option<&str> = None;
        for step in &trace.steps {
            let name = within_turn(&step.step);
            let round = if name == "initial" {
                0
            } else if let Some(r) = name.strip_prefix("revision-") {
                r.parse().unwrap_or(0)
            } else {
                if name.starts_with("critique-") {
                    if let Some(id) = &step.principle_id {
                        *principles.entry(id.clone()).or_default() += 1.0;
                    }
                }
                continue;
            };
            let entry = rounds.entry(round).or_default();
            entry.answers += 1;
            entry.words += step.output.split_whitespace().count() as u64;
            if let Some(before) = previous.filter(|_| round > 0) {
                entry.changes += change_ratio(before, &step.output);
                entry.compared += 1;
                entry.unchanged += u64::from(before == step.output);
            }
            previous = Some(&step.output);
        }
    })?;
    let rounds: Vec<RoundFigure> = rounds
        .into_iter()
        .map(|(round, r)| RoundFigure {
            round,
            answers: r.answers,
            mean_words: r.words as f64 / r.answers.max(1) as f64,
            mean_change: (r.compared > 0).then(|| r.changes / r.compared as f64),
            unchanged: r.unchanged,
        })
        .collect();
    let name = |round: u32| {
        if round == 0 {
            "initial".to_owned()
        } else {
            format!("revision {round}")
        }
    };
    let mut drawn: Vec<(String, f64)> = principles.into_iter().collect();
    drawn.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let lengths: Vec<(String, f64)> = rounds
        .iter()
        .map(|r| (name(r.round), r.mean_words))
        .collect();
    let changes: Vec<(String, f64)> = rounds
        .iter()
        .filter_map(|r| r.mean_change.map(|c| (name(r.round), c)))
        .collect();
    Ok(RevisionSection {
        principles_svg: plots::bars(&drawn, "rounds drawn", None, |v| format!("{v:.0}")),
        lengths_svg: plots::bars(&lengths, "mean words", None, |v| format!("{v:.1}")),
        changes_svg: plots::bars(&changes, "mean share of words changed", Some(1.0), |v| {
            format!("{v:.2}")
        }),
        rounds,
    })
}

/// How much a revision changed an answer, from 0 (the same words) to 1 (no word kept): the
/// words of the longer text not matched by a word of the other, counted as multisets. A lower
/// bound of the word-level edit ratio that costs one pass, so a million traces stay cheap.
pub fn change_ratio(before: &str, after: &str) -> f64 {
    let mut counts: HashMap<&str, i64> = HashMap::new();
    let (mut n_before, mut n_after) = (0usize, 0usize);
    for word in before.split_whitespace() {
        *counts.entry(word).or_default() += 1;
        n_before += 1;
    }
    let mut common = 0usize;
    for word in after.split_whitespace() {
        n_after += 1;
        if let Some(count) = counts.get_mut(word).filter(|c| **c > 0) {
            *count -= 1;
            common += 1;
        }
    }
    let longer = n_before.max(n_after);
    if longer == 0 {
        return 0.0;
    }
    (longer - common) as f64 / longer as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_ratio_counts_words_not_kept() {
        assert_eq!(change_ratio("a b c d", "a b c d"), 0.0);
        assert_eq!(change_ratio("a b c d", "w x y z"), 1.0);
        assert_eq!(change_ratio("a b c d", "a b x d"), 0.25);
        assert_eq!(change_ratio("a b", "a b c d"), 0.5);
        assert_eq!(change_ratio("", ""), 0.0);
    }
}
