//! `cai status OUTPUT_DIR`: progress read from an output directory without changing it.

use std::path::Path;

use crate::corpus;
use crate::ledger;
use crate::manifest;
use crate::plan::read_identity;

pub(super) fn status(dir: &Path) -> u8 {
    let identity = match read_identity(dir) {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            eprintln!(
                "error: {}: not a cai output directory (no job.json)",
                dir.display()
            );
            return 2;
        }
        Err(error) => {
            eprintln!("error: {error}");
            return 2;
        }
    };
    let totals = match ledger::totals(dir) {
        Ok(totals) => totals,
        Err(error) => {
            eprintln!("error: {error}");
            return 1;
        }
    };
    let manifest = manifest::read(dir);
    let complete = manifest
        .as_ref()
        .and_then(|m| m.get("complete"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let total = corpus::count_lines(&identity.input)
        .ok()
        .map(|lines| identity.limit.map_or(lines, |limit| lines.min(limit)));
    let settled = totals.done + totals.failed + totals.rejected;
    println!(
        "job {:?}  fingerprint {}",
        identity.name,
        &identity.fingerprint[..12]
    );
    println!(
        "samples: {} done, {} failed; lines rejected: {}",
        totals.done, totals.failed, totals.rejected
    );
    match total {
        Some(total) if total > 0 => println!(
            "corpus: {total} lines; {settled} settled ({:.1} %, duplicates counted at the end of a run)",
            100.0 * settled as f64 / total as f64
        ),
        _ => println!(
            "corpus: {} (unreadable from here)",
            identity.input.display()
        ),
    }
    println!(
        "usage: {} model calls, {} tokens in, {} tokens out",
        totals.usage.calls, totals.usage.tokens_in, totals.usage.tokens_out
    );
    if let Some(counts) = manifest.as_ref().and_then(|m| m.get("counts")) {
        println!("last run: {counts}");
    }
    println!(
        "state: {}",
        if complete {
            "complete"
        } else {
            "incomplete (re-run `cai run` to resume)"
        }
    );
    0
}
