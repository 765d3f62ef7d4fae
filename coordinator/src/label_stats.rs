//! Label statistics of a pairwise job's output, for the manifest and the run's last lines: how
//! often the judge agreed with itself when the order was swapped, how much probability the
//! letters held, how many labels were refused for faint letters, and, for a corpus whose
//! candidates come as (chosen, rejected), how often the labels agree with the human order.
//! Read from the output files, so they describe the whole job, resumed runs included.

use std::path::Path;

use cai_common::result::Reading;
use serde::{Deserialize, Serialize};

use crate::ledger::DataFile;
use crate::rows::for_each_row;

/// What a pairwise job's labels look like as a whole.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LabelStats {
    /// Preference rows written.
    pub labels: u64,
    /// Share of swapped labels whose two orders preferred the same candidate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position_consistency: Option<f64>,
    /// Mean probability the letters held at the positions read, over every reading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_letter_mass: Option<f64>,
    /// The smallest letter mass any label was made from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_letter_mass: Option<f64>,
    /// Mean of `p_chosen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_p_chosen: Option<f64>,
    /// Samples failed because the letters held less than `min_letter_mass`.
    pub failed_low_letter_mass: u64,
    /// Samples failed because no letter was among the top log-probabilities.
    pub failed_no_letter: u64,
    /// Verdict mode: share of the votes of the labels written that named a choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parse_rate: Option<f64>,
    /// Verdict mode: mean over readings of the share of parsed votes that agree with the
    /// reading's majority (1 when every vote of a reading chose the same answer, 0.5 at a tie).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vote_agreement: Option<f64>,
    /// Verdict mode: samples failed because fewer than half of a reading's votes parsed.
    #[serde(skip_serializing_if = "is_zero")]
    pub failed_unparsed: u64,
    /// With candidates `["chosen", "rejected"]` (a human-labelled corpus): share of labels that
    /// prefer the corpus's `chosen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub human_agreement: Option<f64>,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// The fields of a preference row the statistics read: a million rows are scanned without
/// keeping their conversations.
#[derive(Deserialize)]
struct LabelRow {
    p_chosen: f64,
    readings: Vec<Reading>,
    #[serde(default)]
    position_consistent: Option<bool>,
}

/// A failed row's reason.
#[derive(Deserialize)]
struct FailedReason {
    reason: String,
}

impl LabelStats {
    /// Reads the statistics from an output directory. `first_is_human` says the first
    /// candidate field is the human-preferred answer (candidates `["chosen", "rejected"]`).
    pub fn read(dir: &Path, first_is_human: bool) -> std::io::Result<Self> {
        let mut stats = Self::default();
        let (mut consistent, mut swapped) = (0u64, 0u64);
        let (mut mass_sum, mut masses) = (0.0f64, 0u64);
        let (mut p_sum, mut agree) = (0.0f64, 0u64);
        let (mut votes, mut parsed) = (0u64, 0u64);
        let (mut agreement_sum, mut voted) = (0.0f64, 0u64);
        for_each_row(&dir.join(DataFile::Preferences.name()), |row: LabelRow| {
            stats.labels += 1;
            p_sum += row.p_chosen;
            if let Some(same) = row.position_consistent {
                swapped += 1;
                consistent += u64::from(same);
            }
            for mass in row.readings.iter().filter_map(|r| r.letter_mass) {
                mass_sum += mass;
                masses += 1;
                stats.min_letter_mass = Some(stats.min_letter_mass.map_or(mass, |m| m.min(mass)));
            }
            for reading in &row.readings {
                if let (Some(cast), Some(read)) = (reading.votes, reading.parsed) {
                    votes += u64::from(cast);
                    parsed += u64::from(read);
                    agreement_sum += reading.p_first.max(1.0 - reading.p_first);
                    voted += 1;
                }
            }
            agree += u64::from(prefers_first(&row));
        })?;
        for_each_row(&dir.join(DataFile::Failed.name()), |row: FailedReason| {
            if row.reason.contains("min_letter_mass") {
                stats.failed_low_letter_mass += 1;
            } else if row.reason.contains("neither (A) nor (B)") {
                stats.failed_no_letter += 1;
            } else if row.reason.contains("votes parsed") {
                stats.failed_unparsed += 1;
            }
        })?;
        let share = |part: u64, whole: u64| (whole > 0).then(|| part as f64 / whole as f64);
        stats.position_consistency = share(consistent, swapped);
        stats.mean_letter_mass = (masses > 0).then(|| mass_sum / masses as f64);
        stats.mean_p_chosen = (stats.labels > 0).then(|| p_sum / stats.labels as f64);
        stats.parse_rate = share(parsed, votes);
        stats.vote_agreement = (voted > 0).then(|| agreement_sum / voted as f64);
        if first_is_human {
            stats.human_agreement = share(agree, stats.labels);
        }
        Ok(stats)
    }

    /// The statistics in one sentence, for the end of a run.
    pub fn describe(&self) -> String {
        let percent = |x: Option<f64>| x.map_or("n/a".into(), |x| format!("{:.1} %", 100.0 * x));
        let number = |x: Option<f64>| x.map_or("n/a".into(), |x| format!("{x:.3}"));
        let mut text = format!(
            "{} labels: position consistency {}, mean letter mass {} (lowest {}), mean p_chosen {}",
            self.labels,
            percent(self.position_consistency),
            number(self.mean_letter_mass),
            number(self.min_letter_mass),
            number(self.mean_p_chosen),
        );
        if self.human_agreement.is_some() {
            text.push_str(&format!(
                ", agreement with the human order {}",
                percent(self.human_agreement)
            ));
        }
        if self.parse_rate.is_some() {
            text.push_str(&format!(
                ", votes parsed {}, vote agreement {}",
                percent(self.parse_rate),
                percent(self.vote_agreement)
            ));
        }
        text.push_str(&format!(
            "; failed for faint letters {}, for no letter {}",
            self.failed_low_letter_mass, self.failed_no_letter
        ));
        if self.failed_unparsed > 0 {
            text.push_str(&format!(", for unparsed votes {}", self.failed_unparsed));
        }
        text
    }
}

/// Whether a job's candidates come from a human-labelled corpus as (chosen, rejected), from its
/// semantic view: then the first candidate field is the human-preferred answer.
pub fn first_is_human(view: &serde_json::Value) -> bool {
    view["pairwise"]["candidates"] == serde_json::json!(["chosen", "rejected"])
}

/// Whether a label prefers candidate x (the first candidate field): the mean of its
/// order-corrected readings is at least 0.5, as the pipeline decides `chosen`.
fn prefers_first(row: &LabelRow) -> bool {
    if row.readings.is_empty() {
        return false;
    }
    let p_x: f64 = row
        .readings
        .iter()
        .map(|r| {
            if r.order == "xy" {
                r.p_first
            } else {
                1.0 - r.p_first
            }
        })
        .sum::<f64>()
        / row.readings.len() as f64;
    p_x >= 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_labels_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let row = |id: &str, xy: f64, yx: f64, mass: f64| {
            let p_x = (xy + 1.0 - yx) / 2.0;
            serde_json::json!({
                "id": id, "prompt": [], "chosen": [], "rejected": [],
                "p_chosen": p_x.max(1.0 - p_x),
                "readings": [
                    {"principle_id": "p", "order": "xy", "p_first": xy, "letter_mass": mass},
                    {"principle_id": "p", "order": "yx", "p_first": yx, "letter_mass": mass},
                ],
                "position_consistent": (xy >= 0.5) == (yx < 0.5),
            })
            .to_string()
        };
        let rows = [
            row("1", 0.9, 0.2, 0.8),
            row("2", 0.7, 0.6, 0.6),
            row("3", 0.2, 0.9, 0.4),
        ];
        std::fs::write(dir.path().join("preferences.jsonl"), rows.join("\n") + "\n").unwrap();
        std::fs::write(
            dir.path().join("failed.jsonl"),
            "{\"id\":\"4\",\"key\":\"k\",\"reason\":\"step judge-1-xy: the letters (A) and (B) held only 0.0200 of the judge's probability (min_letter_mass 0.1), twice\",\"attempts\":2}\n",
        )
        .unwrap();
        let stats = LabelStats::read(dir.path(), true).unwrap();
        assert_eq!(stats.labels, 3);
        assert!((stats.position_consistency.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((stats.mean_letter_mass.unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(stats.min_letter_mass, Some(0.4));
        // Rows 1 and 2 prefer x (0.85, 0.55); row 3 prefers y.
        assert!((stats.human_agreement.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(stats.failed_low_letter_mass, 1);
        assert_eq!(stats.failed_no_letter, 0);
        assert!(stats.describe().contains("position consistency 66.7 %"));
        assert_eq!(
            LabelStats::read(dir.path(), false).unwrap().human_agreement,
            None
        );
        assert_eq!((stats.parse_rate, stats.vote_agreement), (None, None));
    }

    #[test]
    fn verdict_readings_give_the_parse_rate_and_the_vote_agreement() {
        let dir = tempfile::tempdir().unwrap();
        let reading = |order: &str, p: f64, votes: u32, parsed: u32| {
            serde_json::json!({"principle_id": "p", "order": order, "p_first": p,
                "votes": votes, "parsed": parsed})
        };
        let row = serde_json::json!({
            "id": "1", "prompt": [], "chosen": [], "rejected": [], "p_chosen": 0.7,
            "readings": [reading("xy", 0.75, 5, 4), reading("yx", 0.5, 5, 2)],
            "position_consistent": false,
        });
        std::fs::write(dir.path().join("preferences.jsonl"), format!("{row}\n")).unwrap();
        std::fs::write(
            dir.path().join("failed.jsonl"),
            "{\"id\":\"2\",\"key\":\"k\",\"reason\":\"step judge-1-xy: only 1 of 5 verdicts named a choice (4 named none, 0 named both; verdict = \\\"auto\\\"): fewer than half of the votes parsed, not a trustworthy label\",\"attempts\":5}\n",
        )
        .unwrap();
        let stats = LabelStats::read(dir.path(), false).unwrap();
        assert!((stats.parse_rate.unwrap() - 0.6).abs() < 1e-12);
        assert!((stats.vote_agreement.unwrap() - 0.625).abs() < 1e-12);
        assert_eq!(stats.failed_unparsed, 1);
        assert_eq!(stats.mean_letter_mass, None);
        assert!(
            stats
                .describe()
                .contains("votes parsed 60.0 %, vote agreement 62.5 %")
        );
        assert!(stats.describe().contains("for unparsed votes 1"));
    }
}
