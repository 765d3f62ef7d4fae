//! `cai status OUTPUT_DIR`: progress read from an output directory without changing it, and
//! `cai status JOB --state URL`: the live progress a distributed run mirrors into Redis. Lines
//! for a person by default, one JSON object with `--json` for a program.

use std::path::Path;

use serde_json::{Value, json};

use cai_coordinator::corpus;
use cai_coordinator::ledger;
use cai_coordinator::manifest;
use cai_coordinator::plan::read_identity;
use cai_coordinator::report::headline::Headline;

pub(super) fn status(dir: &Path, as_json: bool) -> u8 {
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
    let last_run = manifest.as_ref().and_then(|m| m.get("counts")).cloned();
    if as_json {
        let usage = &totals.usage;
        let headline = Headline::read(dir).ok();
        let report = json!({
            "job": identity.name,
            "fingerprint": identity.fingerprint,
            "samples": {"done": totals.done, "failed": totals.failed},
            "lines_rejected": totals.rejected,
            "corpus_lines": total,
            "settled": settled,
            "usage": {
                "calls": usage.calls,
                "batch_calls": usage.batch_calls,
                "tokens_in": usage.tokens_in,
                "tokens_out": usage.tokens_out,
                "cost_usd": usage.cost_micro_usd as f64 / 1e6,
            },
            "last_run": last_run,
            "headline": headline,
            "complete": complete,
        });
        println!("{report:#}");
        return 0;
    }
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
    if let Some(counts) = &last_run {
        println!("last run: {}", describe_counts(counts));
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

/// A manifest's `counts` as the run's own last line says them.
fn describe_counts(counts: &Value) -> String {
    let count = |name: &str| counts.get(name).and_then(Value::as_u64).unwrap_or(0);
    format!(
        "{} lines read = {} done + {} failed + {} rejected + {} duplicates",
        count("lines_read"),
        count("done"),
        count("failed"),
        count("rejected"),
        count("duplicates")
    )
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
pub(super) async fn live(
    job: &str,
    state_url: &str,
    tls: &cai_common::tls::TlsFiles,
    as_json: bool,
) -> u8 {
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
    let fatal = state.fatal(job).await.ok().flatten();
    let workers = state.workers().await.unwrap_or_default();
    if as_json {
        let workers: Vec<Value> = workers
            .iter()
            .map(|(id, info)| {
                let info: Value = serde_json::from_str(info).unwrap_or(Value::Null);
                json!({"id": id, "heartbeat": info})
            })
            .collect();
        let report = json!({
            "job": job,
            "fingerprint": fingerprint,
            "active": active,
            "counters": counters,
            "fatal": fatal,
            "workers": workers,
        });
        println!("{report:#}");
        return 0;
    }
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
    if let Some(message) = fatal {
        println!("fatal: {message}");
    }
    println!("workers: {}", workers.len());
    for (id, info) in workers {
        println!("  {id}  {}", describe_heartbeat(&info));
    }
    0
}

/// A worker's heartbeat (`{"jobs": [...], "pid": N, "up_s": N}`) in words.
fn describe_heartbeat(info: &str) -> String {
    let Ok(info) = serde_json::from_str::<Value>(info) else {
        return info.to_owned();
    };
    let jobs: Vec<&str> = info["jobs"]
        .as_array()
        .map(|jobs| jobs.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let serving = if jobs.is_empty() {
        "idle".to_owned()
    } else {
        format!("serving {}", jobs.join(", "))
    };
    format!(
        "pid {}, up {} s, {serving}",
        info["pid"]
            .as_u64()
            .map_or("?".into(), |pid| pid.to_string()),
        info["up_s"]
            .as_u64()
            .map_or("?".into(), |up| up.to_string()),
    )
}
