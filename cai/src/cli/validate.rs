//! `cai validate`: the planning step of `cai run` alone, plus a full read of the corpus.
//! Calls no model; reports counts, duplicates and the first bad lines with their line numbers,
//! and an estimate of the calls, tokens and price of running the job
//! ([`cai_coordinator::estimate`]), readable or as JSON (`--json`).

use std::path::Path;

use cai_common::job::BackendSpec;
use cai_worker::model::Models;
use cai_worker::model::local::TokenCounter;

use cai_coordinator::corpus::{self, CorpusItem};
use cai_coordinator::estimate::{Cost, Estimate, Estimator};
use cai_coordinator::plan::Plan;
use serde_json::json;

/// Bad lines printed in full; the rest are only counted.
const SHOWN: usize = 20;

/// What reading the corpus found.
struct Read {
    lines: u64,
    items: u64,
    samples: u64,
    duplicates: u64,
    rejected: Vec<String>,
    estimate: Estimate,
}

pub(super) async fn validate(job: &Path, as_json: bool) -> u8 {
    let plan = match Plan::load(job) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("error: {error}");
            return 2;
        }
    };
    for note in Models::preflight(&plan.spec().models) {
        if as_json {
            eprintln!("note: {note}");
        } else {
            println!("note: {note}");
        }
    }
    let spec = plan.spec().clone();
    let constitution = plan.constitution.clone();
    let read = tokio::task::spawn_blocking(move || -> Result<Read, String> {
        let reader = corpus::open(&spec).map_err(|e| e.to_string())?;
        let mut estimator = Estimator::new(&spec, &constitution);
        // A local model's tokens are counted with its own tokenizer, read from the file's
        // header (no weights); without the file here, with the four-character rule.
        for (name, model) in &spec.models {
            if let BackendSpec::Local(local) = &model.backend
                && let Ok(counter) = TokenCounter::open(&local.path)
            {
                estimator.tokenizer(name, Box::new(move |text| counter.count(text)));
            }
        }
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
                CorpusItem::Sample(sample) => {
                    samples += 1;
                    estimator.add(&sample);
                }
                CorpusItem::Duplicate { .. } => duplicates += 1,
                CorpusItem::Rejected(rejection) => {
                    rejected.push(rejection.message(&spec.input.path))
                }
            }
        }
        Ok(Read {
            lines,
            items,
            samples,
            duplicates,
            rejected,
            estimate: estimator.finish(),
        })
    })
    .await
    .expect("the corpus reader does not panic");
    let read = match read {
        Ok(read) => read,
        Err(error) => {
            eprintln!("error: {error}");
            return 2;
        }
    };
    if as_json {
        let report = json!({
            "job": plan.spec().name,
            "pipeline": plan.spec().kind(),
            "lines": read.lines,
            "samples": read.samples,
            "duplicates": read.duplicates,
            "rejected": read.rejected.len(),
            "rejected_lines": read.rejected.iter().take(SHOWN).collect::<Vec<_>>(),
            "estimate": read.estimate,
        });
        println!("{report:#}");
    } else {
        print_summary(&plan, &read);
    }
    if read.rejected.is_empty() { 0 } else { 1 }
}

fn print_summary(plan: &Plan, read: &Read) {
    let Read {
        lines,
        items,
        samples,
        duplicates,
        rejected,
        estimate,
    } = read;
    println!(
        "job {:?} ({})",
        plan.spec().name,
        plan.spec().kind().as_str()
    );
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
    println!(
        "estimate: {}{}",
        describe(&estimate.total),
        if estimate.calls_at_most {
            " (calls at most: a user model may end a conversation early)"
        } else {
            ""
        }
    );
    for (name, cost) in &estimate.by_model {
        println!("  model {name}: {}", describe(cost));
    }
    println!("  tokens are {}", estimate.tokens);
}

/// One line of the estimate.
fn describe(cost: &Cost) -> String {
    let mut text = format!(
        "{} calls, ~{} tokens in, ~{} tokens out",
        cost.calls, cost.input_tokens, cost.output_tokens
    );
    match cost.cost_usd {
        Some(usd) => text.push_str(&format!(", ~${usd:.4}")),
        None => text.push_str(", no price set"),
    }
    if let Some(seconds) = cost.duration_s {
        text.push_str(&format!(", ~{seconds:.1} s"));
    }
    text
}
