//! `cai status OUTPUT_DIR`: progress read from an output directory without changing it.

use std::path::Path;

use cai_coordinator::corpus;
use cai_coordinator::ledger;
use cai_coordinator::manifest;
use cai_coordinator::plan::read_identity;
use cai_coordinator::report::headline::Headline;

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
    // With one sample per human turn the samples outnumber the lines: no percentage of lines.
    let per_turn = identity.spec["input"]["turns"] == "each";
    match total {
        Some(total) if per_turn => {
            println!("corpus: {total} lines, one sample per human turn; {settled} samples settled")
        }
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
        "usage: {} model calls ({} by batch), {} tokens in, {} tokens out, ${:.4}",
        totals.usage.calls,
        totals.usage.batch_calls,
        totals.usage.tokens_in,
        totals.usage.tokens_out,
        totals.usage.cost_micro_usd as f64 / 1e6
    );
    if let Some(counts) = manifest.as_ref().and_then(|m| m.get("counts")) {
        println!("last run: {counts}");
    }
    // The report's headline figures: rate, ETA, failures by reason, label statistics so far.
    match Headline::read(dir) {
        Ok(headline) => print_headline(&headline),
        Err(error) => eprintln!("warning: cannot read the headline figures: {error:#}"),
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

/// The figures `cai report` puts in its summary that the lines above do not already give.
fn print_headline(headline: &Headline) {
    let figures = headline.figures();
    let value = |id: &str| {
        figures
            .iter()
            .find(|figure| figure.id == id)
            .map_or("n/a", |figure| figure.value.as_str())
    };
    println!(
        "rate: {} samples/s, {} calls/s over the last run ({}); ETA {}",
        value("samples-per-s"),
        value("calls-per-s"),
        value("wall"),
        value("eta")
    );
    if headline.labels.is_some() {
        let agreement = figures
            .iter()
            .find(|figure| figure.id == "human-agreement")
            .map_or(String::new(), |figure| {
                format!(", agreement with the human order {}", figure.value)
            });
        println!(
            "labels so far: position consistency {}{agreement}, mean p_chosen {}, mean letter mass {}",
            value("position-consistency"),
            value("mean-p-chosen"),
            value("mean-letter-mass")
        );
    }
    if headline.failures.is_empty() {
        println!("failures: none");
    } else {
        println!("failures by reason:");
        for kind in &headline.failures {
            println!("  {:>6}  {}", kind.samples, kind.reason);
        }
    }
}

/// `cai status JOB --state URL`: the live counters the coordinator mirrors into Redis, and the
/// workers whose heartbeat is current. It asks once and does not wait: a Redis that is away
/// exits 1, one set up so that no wait helps (a certificate, credentials, a URL) exits 2.
pub(super) async fn live(job: &str, state_url: &str, tls: &cai_common::tls::TlsFiles) -> u8 {
    let failed = |error: cai_common::service_error::ServiceError| {
        eprintln!("error: {error}");
        if error.is_misconfigured() { 2 } else { 1 }
    };
    let state = match cai_common::state::connect_with_tls(state_url, tls).await {
        Ok(state) => state,
        Err(error) => return failed(error),
    };
    let registered = match state.get_job(job).await {
        Ok(registered) => registered,
        Err(error) => return failed(error),
    };
    let Some((_, fingerprint)) = registered else {
        eprintln!("error: no job named {job:?} in the state store");
        return 2;
    };
    let counters = state.counters(job).await.unwrap_or_default();
    let active = state
        .active_jobs()
        .await
        .unwrap_or_default()
        .iter()
        .any(|j| j == job);
    let get = |name: &str| counters.get(name).copied().unwrap_or(0);
    println!(
        "job {job:?}  fingerprint {}  {}",
        &fingerprint[..12.min(fingerprint.len())],
        if active { "active" } else { "not active" }
    );
    println!(
        "lines read {}: done {}, failed {}, rejected {}, duplicates {}",
        get("lines_read"),
        get("done"),
        get("failed"),
        get("rejected"),
        get("duplicates")
    );
    println!(
        "this run: {} model calls ({} by batch), {} tokens in, {} tokens out, ${:.4}",
        get("model_calls"),
        get("batch_calls"),
        get("tokens_in"),
        get("tokens_out"),
        get("cost_micro_usd") as f64 / 1e6
    );
    if let Ok(Some(message)) = state.fatal(job).await {
        println!("fatal: {message}");
    }
    let workers = state.workers().await.unwrap_or_default();
    println!("workers: {}", workers.len());
    for (id, info) in workers {
        println!("  {id}  {info}");
    }
    0
}
