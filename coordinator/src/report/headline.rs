//! The headline figures of a job, read from its output directory whether it is finished or
//! still running: what made it, where every line ended up, tokens, cost, wall time, rate, ETA,
//! failures by reason, and a pairwise job's label statistics. The report shows them and
//! `cai status` prints them, so the two never disagree.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use cai_common::result::Usage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::label_stats::{self, LabelStats};
use crate::ledger::{self, CommitPoint, DataFile};
use crate::manifest;
use crate::plan::{ConstitutionSummary, read_identity};
use crate::rows::for_each_row;

/// A pause between two commits longer than this separates two runs: the time between them is
/// not counted as running time.
const IDLE_GAP_MS: u64 = 5 * 60 * 1000;

/// Where the lines of the corpus ended up. The ledger knows samples done and failed and lines
/// rejected at any time; lines read and duplicates are known once a run has finished.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct LineCounts {
    /// Corpus lines read, from the last finished run's manifest.
    pub lines_read: Option<u64>,
    /// Samples with output rows.
    pub done: u64,
    /// Samples in `failed.jsonl`.
    pub failed: u64,
    /// Lines in `rejected.jsonl`.
    pub rejected: u64,
    /// Lines repeating an earlier line, from the last finished run's manifest.
    pub duplicates: Option<u64>,
}

/// A failure reason with the details that differ from sample to sample (numbers) taken out,
/// and how many samples failed for it.
#[derive(Clone, Debug, Serialize)]
pub struct FailureKind {
    /// The reason, numbers replaced by `N`, the step named by its kind (`judge`, `revision`).
    pub reason: String,
    /// Samples that failed so.
    pub samples: u64,
}

/// The headline figures of an output directory.
#[derive(Clone, Debug, Serialize)]
pub struct Headline {
    /// Job name.
    pub name: String,
    /// `critique-revise`, `pairwise` or `dialogue`.
    pub pipeline: String,
    /// Short fingerprint of the spec.
    pub fingerprint: String,
    /// The cai version of the last finished run.
    pub version: Option<String>,
    /// Whether the last run finished the job.
    pub complete: bool,
    /// The job's seed.
    pub seed: u64,
    /// Each model as `name: backend model`; no URLs or key names.
    pub models: Vec<String>,
    /// SHA-256 of the constitution.
    pub constitution_hash: String,
    /// The constitution's file name and principle count, when recorded.
    pub constitution: Option<ConstitutionSummary>,
    /// The job's licence (`license` key), from the last finished run's manifest.
    pub license: Option<String>,
    /// When the last finished run ended (RFC 3339).
    pub finished_at: Option<String>,
    /// Where the lines ended up.
    pub counts: LineCounts,
    /// Corpus lines to read (the limit applied), when the corpus is readable from here and
    /// each line is one sample.
    pub corpus_lines: Option<u64>,
    /// Tokens and calls of every committed sample.
    pub usage: Usage,
    /// What the calls cost, in USD.
    pub cost_usd: f64,
    /// Wall time of the last run, in seconds: from its manifest, or for a run without one yet
    /// (running) the time from its first commit to its last.
    pub wall_s: Option<f64>,
    /// Whether `wall_s` was measured from the commits (no manifest yet).
    pub wall_from_commits: bool,
    /// Samples settled per second over the last run's commits (from its first commit on: the
    /// steady rate, which leaves out the warm-up before the first commit).
    pub samples_per_s: Option<f64>,
    /// Model calls per second over the last run's commits.
    pub calls_per_s: Option<f64>,
    /// Seconds left at that rate, for an unfinished job.
    pub eta_s: Option<f64>,
    /// Failures by reason, most first.
    pub failures: Vec<FailureKind>,
    /// A pairwise job's label statistics.
    pub labels: Option<LabelStats>,
    /// The timed commits, for the throughput plot.
    #[serde(skip)]
    pub timeline: Vec<CommitPoint>,
}

/// One headline figure as both the report and `cai status` show it.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// A stable id (the report's element id is `fig-<id>`), so a reader can find it.
    pub id: &'static str,
    /// What it is, in words.
    pub label: &'static str,
    /// Its value, formatted (`n/a` where it is not known).
    pub value: String,
}

/// `n/a` for what is not known.
const UNKNOWN: &str = "n/a";

/// A share as a percentage with one decimal.
pub fn percent(share: Option<f64>) -> String {
    share.map_or(UNKNOWN.into(), |x| format!("{:.1} %", 100.0 * x))
}

/// Seconds as `1h 02m 03s`, `2m 03s` or `4.2 s`.
pub fn duration(seconds: Option<f64>) -> String {
    let Some(seconds) = seconds.filter(|s| s.is_finite()) else {
        return UNKNOWN.into();
    };
    let whole = seconds.round() as u64;
    match whole {
        0..60 => format!("{seconds:.1} s"),
        60..3600 => format!("{}m {:02}s", whole / 60, whole % 60),
        _ => format!(
            "{}h {:02}m {:02}s",
            whole / 3600,
            whole / 60 % 60,
            whole % 60
        ),
    }
}

/// What the headline reads of a manifest.
#[derive(Deserialize)]
struct ManifestHead {
    version: String,
    complete: bool,
    #[serde(default)]
    license: Option<String>,
    counts: crate::progress::Counts,
    elapsed_s: f64,
    finished_at: String,
}

impl Headline {
    /// Reads the headline figures of an output directory (one with `job.json`).
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let identity = read_identity(dir)?.with_context(|| {
            format!(
                "{}: not a cai output directory (no job.json)",
                dir.display()
            )
        })?;
        let (totals, timeline) = ledger::history(dir)?;
        let manifest: Option<ManifestHead> =
            manifest::read(dir).and_then(|value| serde_json::from_value(value).ok());
        let spec = &identity.spec;
        let complete = manifest.as_ref().is_some_and(|m| m.complete);
        let finished = manifest.as_ref().filter(|m| m.complete);
        let per_turn = spec["input"]["turns"] == "each";
        let corpus_lines = (!per_turn)
            .then(|| crate::corpus::count_lines(&identity.input).ok())
            .flatten()
            .map(|lines| identity.limit.map_or(lines, |limit| lines.min(limit)));
        let pipeline = spec["pipeline"].as_str().unwrap_or("unknown").to_owned();
        let labels = if pipeline == "pairwise" {
            Some(LabelStats::read(dir, label_stats::first_is_human(spec))?)
        } else {
            None
        };
        let (run_s, samples, calls) = last_run(&timeline);
        let rate = |n: u64| (run_s > 0.0 && n > 0).then(|| n as f64 / run_s);
        let samples_per_s = rate(samples);
        let settled = totals.done + totals.failed + totals.rejected;
        let eta_s = match (complete, corpus_lines, samples_per_s) {
            (false, Some(total), Some(rate)) => Some(total.saturating_sub(settled) as f64 / rate),
            _ => None,
        };
        Ok(Self {
            name: identity.name.clone(),
            pipeline,
            fingerprint: identity.fingerprint.chars().take(12).collect(),
            version: manifest.as_ref().map(|m| m.version.clone()),
            complete,
            seed: spec["seed"].as_u64().unwrap_or(0),
            models: models(spec),
            constitution_hash: spec["constitution"]["hash"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            constitution: identity.constitution.clone(),
            license: manifest.as_ref().and_then(|m| m.license.clone()),
            finished_at: finished.map(|m| m.finished_at.clone()),
            counts: LineCounts {
                lines_read: finished.map(|m| m.counts.lines_read),
                done: totals.done,
                failed: totals.failed,
                rejected: totals.rejected,
                duplicates: finished.map(|m| m.counts.duplicates),
            },
            corpus_lines,
            usage: totals.usage,
            cost_usd: totals.usage.cost_micro_usd as f64 / 1e6,
            wall_s: match &manifest {
                Some(m) => Some(m.elapsed_s),
                None => (run_s > 0.0).then_some(run_s),
            },
            wall_from_commits: manifest.is_none(),
            samples_per_s,
            calls_per_s: rate(calls),
            eta_s,
            failures: failures(dir)?,
            labels,
            timeline,
        })
    }
}

impl Headline {
    /// The headline figures in the order they are shown.
    pub fn figures(&self) -> Vec<Figure> {
        let known = |x: Option<u64>| x.map_or(UNKNOWN.into(), |x| x.to_string());
        let rate = |x: Option<f64>| x.map_or(UNKNOWN.into(), |x| format!("{x:.2}"));
        let constitution = match &self.constitution {
            Some(c) => format!(
                "{}, {} principles, sha256 {}",
                c.file,
                c.principles,
                short(&self.constitution_hash)
            ),
            None => format!("sha256 {}", short(&self.constitution_hash)),
        };
        let settled = self.counts.done + self.counts.failed + self.counts.rejected;
        let progress = match self.corpus_lines {
            Some(total) if total > 0 => format!(
                "{settled} of {total} lines settled ({})",
                percent(Some(settled as f64 / total as f64))
            ),
            _ => format!("{settled} settled"),
        };
        let state = if self.complete {
            "complete"
        } else {
            "incomplete (running, or stopped: re-run `cai run` to resume)"
        };
        let mut figures = vec![
            figure(
                "job",
                "job",
                format!("{} (fingerprint {})", self.name, self.fingerprint),
            ),
            figure("pipeline", "pipeline", self.pipeline.clone()),
            figure("state", "state", state),
            figure(
                "version",
                "cai version",
                self.version.clone().unwrap_or_else(|| UNKNOWN.into()),
            ),
            figure("models", "models", self.models.join("; ")),
            figure("constitution", "constitution", constitution),
            figure("seed", "seed", self.seed.to_string()),
            figure("lines-read", "lines read", known(self.counts.lines_read)),
            figure("done", "samples done", self.counts.done.to_string()),
            figure("failed", "samples failed", self.counts.failed.to_string()),
            figure(
                "rejected",
                "lines rejected",
                self.counts.rejected.to_string(),
            ),
            figure(
                "duplicates",
                "duplicate lines",
                known(self.counts.duplicates),
            ),
            figure("progress", "progress", progress),
            figure("calls", "model calls", self.usage.calls.to_string()),
            figure(
                "tokens",
                "tokens in / out",
                format!("{} / {}", self.usage.tokens_in, self.usage.tokens_out),
            ),
            figure("cost", "cost", format!("${:.4}", self.cost_usd)),
            figure(
                "wall",
                "wall time (last run)",
                match self.wall_s {
                    Some(_) if self.wall_from_commits => {
                        format!("{} since its first commit", duration(self.wall_s))
                    }
                    _ => duration(self.wall_s),
                },
            ),
            figure("samples-per-s", "samples/s", rate(self.samples_per_s)),
            figure("calls-per-s", "calls/s", rate(self.calls_per_s)),
            figure(
                "eta",
                "ETA",
                if self.complete {
                    "done".into()
                } else {
                    duration(self.eta_s)
                },
            ),
        ];
        if let Some(labels) = &self.labels {
            let number = |x: Option<f64>| x.map_or(UNKNOWN.into(), |x| format!("{x:.3}"));
            figures.extend([
                figure(
                    "position-consistency",
                    "position consistency",
                    percent(labels.position_consistency),
                ),
                figure(
                    "mean-p-chosen",
                    "mean p_chosen",
                    number(labels.mean_p_chosen),
                ),
                figure(
                    "mean-letter-mass",
                    "mean letter mass (lowest)",
                    match labels.mean_letter_mass {
                        Some(mean) => format!("{mean:.3} ({})", number(labels.min_letter_mass)),
                        None => UNKNOWN.into(),
                    },
                ),
            ]);
        }
        if let Some(labels) = self.labels.as_ref().filter(|l| l.parse_rate.is_some()) {
            let percent =
                |x: Option<f64>| x.map_or(UNKNOWN.into(), |x| format!("{:.1} %", 100.0 * x));
            figures.extend([
                figure("parse-rate", "votes parsed", percent(labels.parse_rate)),
                figure(
                    "vote-agreement",
                    "vote agreement",
                    percent(labels.vote_agreement),
                ),
            ]);
        }
        if let Some(agreement) = self.labels.as_ref().and_then(|l| l.human_agreement) {
            figures.push(figure(
                "human-agreement",
                "agreement with the human order",
                percent(Some(agreement)),
            ));
        }
        figures
    }
}

/// A figure of the headline.
fn figure(id: &'static str, label: &'static str, value: impl Into<String>) -> Figure {
    Figure {
        id,
        label,
        value: value.into(),
    }
}

/// The first 12 characters of a hash.
fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// The running time, samples and calls of the last run: the commits after the last pause
/// longer than [`IDLE_GAP_MS`]. A run's first commit has no start time to measure from, so
/// its samples are not counted.
fn last_run(timeline: &[CommitPoint]) -> (f64, u64, u64) {
    let start = timeline
        .windows(2)
        .rposition(|pair| pair[1].at_ms.saturating_sub(pair[0].at_ms) > IDLE_GAP_MS)
        .map_or(0, |gap| gap + 1);
    let run = &timeline[start..];
    let Some((first, rest)) = run.split_first() else {
        return (0.0, 0, 0);
    };
    let last = run.last().map_or(first.at_ms, |point| point.at_ms);
    let seconds = last.saturating_sub(first.at_ms) as f64 / 1000.0;
    (
        seconds,
        rest.iter().map(|p| p.samples).sum(),
        rest.iter().map(|p| p.calls).sum(),
    )
}

/// The job's models as `name: backend model-or-file`, from the semantic view (which holds no
/// URLs and no key names).
fn models(spec: &Value) -> Vec<String> {
    let Some(models) = spec["models"].as_object() else {
        return Vec::new();
    };
    models
        .iter()
        .map(|(name, model)| {
            let backend = model["backend"].as_str().unwrap_or("?");
            match model["model"].as_str().or(model["file"].as_str()) {
                Some(which) => format!("{name}: {backend} {which}"),
                None => format!("{name}: {backend}"),
            }
        })
        .collect()
}

/// `failed.jsonl` grouped by [`reason_kind`], most first.
fn failures(dir: &Path) -> std::io::Result<Vec<FailureKind>> {
    #[derive(Deserialize)]
    struct Failed {
        reason: String,
    }
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for_each_row(&dir.join(DataFile::Failed.name()), |row: Failed| {
        *kinds.entry(reason_kind(&row.reason)).or_default() += 1;
    })?;
    let mut kinds: Vec<FailureKind> = kinds
        .into_iter()
        .map(|(reason, samples)| FailureKind { reason, samples })
        .collect();
    kinds.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.reason.cmp(&b.reason)));
    Ok(kinds)
}

/// A failure reason with what differs between samples taken out: the step (`step judge-2-yx:`)
/// named by its kind (`judge:`), every number replaced by `N`, cut at 120 characters.
pub fn reason_kind(reason: &str) -> String {
    let (step, rest) = match reason
        .strip_prefix("step ")
        .and_then(|r| r.split_once(": "))
    {
        Some((step, rest)) => (step.split('-').next().unwrap_or(step), rest),
        None => ("", reason),
    };
    let mut text = String::new();
    if !step.is_empty() {
        text.push_str(step);
        text.push_str(": ");
    }
    let mut in_number = false;
    for c in rest.chars() {
        let numeric = c.is_ascii_digit() || (in_number && c == '.');
        if numeric && !in_number {
            text.push('N');
        } else if !numeric {
            text.push(c);
        }
        in_number = numeric;
    }
    if text.chars().count() > 120 {
        text = text.chars().take(119).collect::<String>() + "…";
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_group_across_steps_and_numbers() {
        let a = reason_kind(
            "step judge-1-xy: the letters held only 0.0200 (min_letter_mass 0.1), twice",
        );
        let b = reason_kind(
            "step judge-2-yx: the letters held only 0.0310 (min_letter_mass 0.1), twice",
        );
        assert_eq!(a, b);
        assert_eq!(
            a,
            "judge: the letters held only N (min_letter_mass N), twice"
        );
        assert_eq!(reason_kind("model gone"), "model gone");
    }

    #[test]
    fn the_last_run_starts_after_the_last_long_pause() {
        let at = |at_ms, samples| CommitPoint {
            at_ms,
            samples,
            calls: 2 * samples,
        };
        let timeline = [
            at(0, 5),
            at(1_000, 5),
            at(10_000_000, 4),
            at(10_002_000, 6),
            at(10_004_000, 10),
        ];
        assert_eq!(last_run(&timeline), (4.0, 16, 32));
        assert_eq!(last_run(&timeline[..1]), (0.0, 0, 0));
        assert_eq!(last_run(&[]), (0.0, 0, 0));
    }

    #[test]
    fn a_running_job_has_a_rate_an_eta_failures_and_consistency_so_far() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let corpus = out.join("corpus.jsonl");
        std::fs::write(&corpus, "{}\n".repeat(12)).unwrap();
        let identity = serde_json::json!({
            "name": "running", "fingerprint": "0123456789abcdef",
            "spec": {"pipeline": "pairwise", "seed": 1, "input": {},
                     "pairwise": {"candidates": ["chosen", "rejected"]},
                     "models": {"judge": {"backend": "openai", "model": "m"}},
                     "constitution": {"hash": "feed"}},
            "input": corpus, "limit": 10,
        });
        std::fs::write(out.join("job.json"), identity.to_string()).unwrap();
        let commit = |at_ms: u64, keys: std::ops::Range<u8>, status: &str| {
            let samples: Vec<Value> = keys
                .map(|k| {
                    serde_json::json!({"key": format!("{k:032x}"), "status": status,
                    "tokens_in": 1, "tokens_out": 1, "calls": 2})
                })
                .collect();
            serde_json::json!({"at_ms": at_ms, "offsets": {}, "samples": samples}).to_string()
        };
        let ledger = [
            commit(1_000, 0..1, "done"),
            commit(3_000, 1..3, "done"),
            commit(5_000, 3..4, "done"),
            commit(5_000, 4..5, "failed"),
        ];
        std::fs::write(out.join("ledger.jsonl"), ledger.join("\n") + "\n").unwrap();
        let row = |consistent: bool| {
            serde_json::json!({"p_chosen": 0.7, "position_consistent": consistent,
                "readings": [{"principle_id": "p", "order": "xy", "p_first": 0.7}]})
            .to_string()
        };
        let rows = [row(true), row(true), row(false), row(true)];
        std::fs::write(out.join("preferences.jsonl"), rows.join("\n") + "\n").unwrap();
        std::fs::write(
            out.join("failed.jsonl"),
            "{\"id\":\"5\",\"reason\":\"step judge-1-yx: no letter at 3 positions\"}\n",
        )
        .unwrap();

        let headline = Headline::read(out).unwrap();
        assert!(!headline.complete);
        assert_eq!((headline.counts.done, headline.counts.failed), (4, 1));
        assert_eq!(headline.counts.lines_read, None);
        assert_eq!(headline.corpus_lines, Some(10));
        // 4 samples settled in the 4 s after the first commit: 1 a second, 5 lines to go.
        assert_eq!(headline.samples_per_s, Some(1.0));
        assert_eq!(headline.calls_per_s, Some(2.0));
        assert_eq!(headline.eta_s, Some(5.0));
        assert_eq!(headline.failures.len(), 1);
        assert_eq!(
            headline.failures[0].reason,
            "judge: no letter at N positions"
        );
        let figures = headline.figures();
        let value = |id: &str| figures.iter().find(|f| f.id == id).unwrap().value.clone();
        assert_eq!(value("position-consistency"), "75.0 %");
        assert_eq!(value("eta"), "5.0 s");
        assert_eq!(value("models"), "judge: openai m");
        assert_eq!(value("progress"), "5 of 10 lines settled (50.0 %)");
        assert!(
            figures.iter().all(|f| f.id != "parse-rate"),
            "no votes, no parse rate"
        );
        let mut verdicts = headline;
        verdicts.labels = Some(crate::label_stats::LabelStats {
            parse_rate: Some(0.75),
            vote_agreement: Some(0.9),
            ..Default::default()
        });
        let figures = verdicts.figures();
        let value = |id: &str| figures.iter().find(|f| f.id == id).unwrap().value.clone();
        assert_eq!(value("parse-rate"), "75.0 %");
        assert_eq!(value("vote-agreement"), "90.0 %");
    }
}
