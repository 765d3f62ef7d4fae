//! `manifest.json`: what a run produced and how: the job's semantic spec (which holds no URLs
//! and no key names, so no secrets), the constitution hash, counts that add up, tokens, timings,
//! and for a pairwise job the label statistics.

use std::path::Path;
use std::time::SystemTime;

use cai_common::job::PipelineKind;
use serde::Serialize;

use crate::coordinate::Summary;
use crate::label_stats::{LabelStats, first_is_human};
use crate::plan::{MANIFEST_FILE, Plan};
use crate::progress::Counts;

#[derive(Serialize)]
struct Manifest<'a> {
    name: &'a str,
    version: &'a str,
    complete: bool,
    fingerprint: &'a str,
    /// The job's `license` key, for the dataset card; absent when the job sets none.
    #[serde(skip_serializing_if = "Option::is_none")]
    license: Option<&'a str>,
    constitution_hash: &'a str,
    spec: serde_json::Value,
    counts: Counts,
    tokens_in: u64,
    tokens_out: u64,
    model_calls: u64,
    /// How many of the calls went by a provider's Batch API, at the batch price.
    batch_calls: u64,
    cost_usd: f64,
    started_at: String,
    finished_at: String,
    elapsed_s: f64,
    /// Pairwise jobs: what the labels look like as a whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<LabelStats>,
}

/// The label statistics of a pairwise job's output directory, or `None` for another pipeline.
fn label_stats(plan: &Plan) -> std::io::Result<Option<LabelStats>> {
    if plan.spec().kind() != PipelineKind::Pairwise {
        return Ok(None);
    }
    let view = plan.spec().semantic_view(&plan.constitution.hash);
    LabelStats::read(plan.job.output_dir(), first_is_human(&view)).map(Some)
}

/// Writes the manifest of a run into the output directory (atomically: write, then rename),
/// with a pairwise job's label statistics read from its output, and returns those.
pub fn write(
    plan: &Plan,
    summary: &Summary,
    started_at: SystemTime,
) -> std::io::Result<Option<LabelStats>> {
    let labels = label_stats(plan)?;
    let manifest = Manifest {
        name: &plan.spec().name,
        version: env!("CARGO_PKG_VERSION"),
        complete: summary.complete,
        fingerprint: &plan.fingerprint,
        license: plan.spec().license.as_deref(),
        constitution_hash: &plan.constitution.hash,
        spec: plan.spec().semantic_view(&plan.constitution.hash),
        counts: summary.counts,
        tokens_in: summary.usage.tokens_in,
        tokens_out: summary.usage.tokens_out,
        model_calls: summary.usage.calls,
        batch_calls: summary.usage.batch_calls,
        cost_usd: summary.usage.cost_micro_usd as f64 / 1e6,
        started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
        finished_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        elapsed_s: summary.elapsed.as_secs_f64(),
        labels: labels.clone(),
    };
    let dir = plan.job.output_dir();
    let temporary = dir.join(".manifest.json.tmp");
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises") + "\n";
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, dir.join(MANIFEST_FILE))?;
    Ok(labels)
}

/// Reads a manifest's `complete` flag and counts, if the directory has one.
pub fn read(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}
