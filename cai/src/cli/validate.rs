//! `cai validate`: the planning step of `cai run` alone, plus a full read of the corpus.
//! Calls no model; reports counts, duplicates and the first bad lines with their line numbers.

use std::path::Path;

use cai_worker::model::Models;

use cai_coordinator::corpus::{self, CorpusItem};
use cai_coordinator::plan::Plan;

/// Bad lines printed in full; the rest are only counted.
const SHOWN: usize = 20;

pub(super) async fn validate(job: &Path) -> u8 {
    let plan = match Plan::load(job) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("error: {error}");
            return 2;
        }
    };
    for note in Models::preflight(&plan.spec().models) {
        println!("note: {note}");
    }
    let spec = plan.spec().clone();
    let read = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let reader = corpus::open(&spec).map_err(|e| e.to_string())?;
        let (mut lines, mut items, mut samples, mut duplicates) = (0u64, 0u64, 0u64, 0u64);
        let mut last_line = None;
        let mut rejected = Vec::new();
        for item in reader {
            items += 1;
            if last_line != Some(item.line()) {
                lines += 1;
                last_line = Some(item.line());
            }
            match item {
                CorpusItem::Sample(_) => samples += 1,
                CorpusItem::Duplicate { .. } => duplicates += 1,
                CorpusItem::Rejected(rejection) => {
                    rejected.push(rejection.message(&spec.input.path))
                }
            }
        }
        Ok((lines, items, samples, duplicates, rejected))
    })
    .await
    .expect("the corpus reader does not panic");
    let (lines, items, samples, duplicates, rejected) = match read {
        Ok(counts) => counts,
        Err(error) => {
            eprintln!("error: {error}");
            return 2;
        }
    };
    println!("job {:?} ({:?})", plan.spec().name, plan.spec().kind());
    println!(
        "constitution: {} principles ({} critique/revision, {} judge), {} demonstrations, {} judge \
         demonstrations, sha256 {}",
        plan.constitution.principles.len(),
        plan.constitution.critique_principles().len(),
        plan.constitution.judge_principles().len(),
        plan.constitution.demonstrations.len(),
        plan.constitution.judge_demonstrations.len(),
        plan.constitution.hash
    );
    if items == lines {
        println!(
            "corpus: {lines} lines = {samples} samples + {duplicates} duplicates + {} rejected",
            rejected.len()
        );
    } else {
        println!(
            "corpus: {lines} lines -> {items} items (one per human turn) = {samples} samples + {duplicates} duplicates + {} rejected",
            rejected.len()
        );
    }
    for message in rejected.iter().take(SHOWN) {
        println!("  {message}");
    }
    if rejected.len() > SHOWN {
        println!("  … and {} more rejected lines", rejected.len() - SHOWN);
    }
    if rejected.is_empty() { 0 } else { 1 }
}
