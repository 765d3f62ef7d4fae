//! `manifest.json`: what a run produced and how: the job's semantic spec (which holds no URLs
//! and no key names, so no secrets), the constitution hash, counts that add up, tokens, timings.

use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::coordinate::Summary;
use crate::plan::{MANIFEST_FILE, Plan};
use crate::progress::Counts;

#[derive(Serialize)]
struct Manifest<'a> {
    name: &'a str,
    version: &'a str,
    complete: bool,
    fingerprint: &'a str,
    constitution_hash: &'a str,
    spec: serde_json::Value,
    counts: Counts,
    tokens_in: u64,
    tokens_out: u64,
    model_calls: u64,
    cost_usd: f64,
    started_at: String,
    finished_at: String,
    elapsed_s: f64,
}

/// Writes the manifest of a run into the output directory (atomically: write, then rename).
pub fn write(plan: &Plan, summary: &Summary, started_at: SystemTime) -> std::io::Result<()> {
    let manifest = Manifest {
        name: &plan.spec().name,
        version: env!("CARGO_PKG_VERSION"),
        complete: summary.complete,
        fingerprint: &plan.fingerprint,
        constitution_hash: &plan.constitution.hash,
        spec: plan.spec().semantic_view(&plan.constitution.hash),
        counts: summary.counts,
        tokens_in: summary.usage.tokens_in,
        tokens_out: summary.usage.tokens_out,
        model_calls: summary.usage.calls,
        cost_usd: summary.usage.cost_micro_usd as f64 / 1e6,
        started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
        finished_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        elapsed_s: summary.elapsed.as_secs_f64(),
    };
    let dir = plan.job.output_dir();
    let temporary = dir.join(".manifest.json.tmp");
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises") + "\n";
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, dir.join(MANIFEST_FILE))
}

/// Reads a manifest's `complete` flag and counts, if the directory has one.
pub fn read(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}
