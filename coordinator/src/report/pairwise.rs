//! The pairwise section of the report, read from `preferences.jsonl`: the soft labels, each
//! order's probability of the first slot and the position bias it shows, the letter mass where
//! workers recorded it, and the mean label under each principle.

use std::collections::BTreeMap;
use std::path::Path;

use cai_common::result::Reading;
use serde::{Deserialize, Serialize};

use super::plots;
use crate::label_stats::LabelStats;
use crate::ledger::DataFile;
use crate::rows::for_each_row;

/// The fields of a preference row this section reads.
#[derive(Deserialize)]
struct Row {
    p_chosen: f64,
    readings: Vec<Reading>,
}

/// The pairwise figures, ready for the template.
#[derive(Serialize)]
pub struct PairwiseSection {
    /// Histogram of `p_chosen`.
    pub p_chosen_svg: String,
    /// Per order (`xy`, `yx`): readings, mean `p_first`, histogram.
    pub orders: Vec<OrderFigure>,
    /// How much the first slot gains: the mean `p_first` over both orders less one half (0
    /// without position bias, since swapping turns `p` into `1 − p`); with both orders read.
    pub position_bias: Option<f64>,
    /// Readings that carried a letter mass, and their histogram (none when no worker
    /// recorded it: the figure is left out, not faked).
    pub letter_masses: usize,
    /// Histogram of the letter mass.
    pub letter_mass_svg: Option<String>,
    /// Mean probability of the first candidate field under each principle.
    pub principles_svg: String,
    /// The label statistics of the whole output (consistency, agreement).
    pub labels: LabelStats,
}

/// One order's readings.
#[derive(Serialize)]
pub struct OrderFigure {
    /// `xy` (first candidate field shown first) or `yx`.
    pub order: String,
    /// Readings in that order.
    pub readings: usize,
    /// Their mean `p_first`.
    pub mean_p_first: f64,
    /// Histogram of `p_first`.
    pub svg: String,
}

/// Reads the pairwise figures of an output directory.
pub fn read(dir: &Path, labels: LabelStats) -> std::io::Result<PairwiseSection> {
    let mut p_chosen = Vec::new();
    let mut by_order: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut masses = Vec::new();
    let mut principles: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for_each_row(&dir.join(DataFile::Preferences.name()), |row: Row| {
        p_chosen.push(row.p_chosen);
        for reading in row.readings {
            let p_x = if reading.order == "xy" {
                reading.p_first
            } else {
                1.0 - reading.p_first
            };
            let entry = principles.entry(reading.principle_id).or_default();
            entry.0 += p_x;
            entry.1 += 1;
            masses.extend(reading.letter_mass);
            by_order
                .entry(reading.order)
                .or_default()
                .push(reading.p_first);
        }
    })?;
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len().max(1) as f64;
    let orders: Vec<OrderFigure> = by_order
        .iter()
        .map(|(order, values)| OrderFigure {
            order: order.clone(),
            readings: values.len(),
            mean_p_first: mean(values),
            svg: plots::histogram(
                values,
                20,
                &format!("p_first, order {order}"),
                order != "xy",
            ),
        })
        .collect();
    let position_bias = match (by_order.get("xy"), by_order.get("yx")) {
        (Some(xy), Some(yx)) if !xy.is_empty() && !yx.is_empty() => {
            Some((mean(xy) + mean(yx)) / 2.0 - 0.5)
        }
        _ => None,
    };
    let mut per_principle: Vec<(String, f64)> = principles
        .into_iter()
        .map(|(id, (sum, n))| (format!("{id} ({n})"), sum / n as f64))
        .collect();
    per_principle.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(PairwiseSection {
        p_chosen_svg: plots::histogram(&p_chosen, 20, "p_chosen", false),
        orders,
        position_bias,
        letter_masses: masses.len(),
        letter_mass_svg: (!masses.is_empty())
            .then(|| plots::histogram(&masses, 20, "letter mass", false)),
        principles_svg: plots::bars(
            &per_principle,
            "mean P(first candidate field) over its readings",
            Some(1.0),
            |v| format!("{v:.2}"),
        ),
        labels,
    })
}
