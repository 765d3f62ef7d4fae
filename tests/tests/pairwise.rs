//! Pairwise AI feedback end to end over HTTP against the test model server, on the real HH
//! preference pairs: swap arithmetic, summation over letter spellings, both endpoints and both
//! log-probability wire formats, calls per sample, and a judge that never names a letter.

use cai_tests::harness::{JobDir, repo_file, run_job};
use cai_tests::model_server::{JudgeShape, LogprobFormat, ModelServer, ServerConfig, p_first};
use serde_json::Value;

const PAIRS: &str = "hh-rlhf/harmless-base/test.jsonl";
const SAMPLES: usize = 40;

fn job(dir: &JobDir, url: &str, endpoint: &str, swap: bool, principles: u32) -> std::path::PathBuf {
    dir.head(PAIRS, SAMPLES, "pairs.jsonl");
    dir.write(
        "job.toml",
        format!(
            r#"
name = "pw-test"
pipeline = "pairwise"
seed = 3
output = "out"

[input]
path = "pairs.jsonl"

[constitution]
path = "{constitution}"

[pairwise]
judge = "feedback"
candidates = ["chosen", "rejected"]
principles_per_label = {principles}
swap = {swap}

[models.feedback]
backend = "openai"
url = "{url}"
model = "judge"
endpoint = "{endpoint}"
max_concurrency = 8
"#,
            constitution = repo_file("constitutions/default.toml").display()
        ),
    )
}

/// The prompt text the server derives its probabilities from.
fn prompt_text(body: &Value) -> String {
    match body.get("messages") {
        Some(messages) => messages
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap())
            .collect(),
        None => body["prompt"].as_str().unwrap().to_owned(),
    }
}

/// Checks every preference row against the judge calls the server saw, each reading within
/// `tolerance` of the probability the server meant.
fn check_labels(dir: &JobDir, server: &ModelServer, readings_per_row: usize) {
    check_labels_within(dir, server, readings_per_row, 1e-9);
}

fn check_labels_within(
    dir: &JobDir,
    server: &ModelServer,
    readings_per_row: usize,
    tolerance: f64,
) {
    let rows = dir.rows("preferences.jsonl");
    assert_eq!(rows.len(), SAMPLES);
    let mut served: Vec<f64> = server
        .calls()
        .iter()
        .filter(|c| c.judge)
        .map(|c| p_first(&prompt_text(&c.body)))
        .collect();
    let mut read: Vec<f64> = Vec::new();
    let source: Vec<Value> = std::fs::read_to_string(dir.path("pairs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for row in &rows {
        let readings = row["readings"].as_array().unwrap();
        assert_eq!(readings.len(), readings_per_row);
        // Order-corrected average: p_first for xy, 1 - p_first for yx.
        let corrected: Vec<f64> = readings
            .iter()
            .map(|r| {
                let p = r["p_first"].as_f64().unwrap();
                read.push(p);
                if r["order"] == "xy" { p } else { 1.0 - p }
            })
            .collect();
        let p_x = corrected.iter().sum::<f64>() / corrected.len() as f64;
        let p_chosen = row["p_chosen"].as_f64().unwrap();
        assert!((p_chosen - p_x.max(1.0 - p_x)).abs() < 1e-12, "{row}");
        assert!((0.5..1.0).contains(&p_chosen));
        // `chosen` is x (the corpus' "chosen" answer) exactly when p_x >= 0.5.
        let chosen_text = row["chosen"][0]["content"].as_str().unwrap();
        let x_wins = p_x >= 0.5;
        let original = source
            .iter()
            .find(|s| {
                s["chosen"].as_str().unwrap().ends_with(chosen_text)
                    || s["rejected"].as_str().unwrap().ends_with(chosen_text)
            })
            .unwrap();
        assert_eq!(
            original["chosen"].as_str().unwrap().ends_with(chosen_text),
            x_wins
        );
        assert_eq!(
            row["prompt"].as_array().unwrap().last().unwrap()["role"],
            "user"
        );
    }
    // Each reading is the server's normalised probability, summed over spellings. (If every
    // reading is within the tolerance of its call's probability, so are the sorted lists.)
    served.sort_by(f64::total_cmp);
    read.sort_by(f64::total_cmp);
    assert_eq!(served.len(), read.len());
    for (s, r) in served.iter().zip(&read) {
        assert!((s - r).abs() < tolerance, "server {s} vs read {r}");
    }
    let labels: std::collections::HashSet<u64> = rows
        .iter()
        .map(|r| r["p_chosen"].as_f64().unwrap().to_bits())
        .collect();
    assert!(labels.len() > SAMPLES / 2, "labels should vary");
}

#[tokio::test]
async fn chat_endpoint_with_swap() {
    let server = ModelServer::start(ServerConfig::default()).await;
    let dir = JobDir::new();
    let summary = run_job(&job(&dir, &server.url(), "chat", true, 1))
        .await
        .unwrap();
    assert_eq!(summary.counts.done, SAMPLES as u64);
    // Two judge calls per sample: both orders, one principle.
    assert_eq!(server.calls().len(), 2 * SAMPLES);
    assert!(
        server
            .calls()
            .iter()
            .all(|c| c.judge && c.body["top_logprobs"] == 20)
    );
    check_labels(&dir, &server, 2);
    let rows = dir.rows("preferences.jsonl");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/manifest.json")).unwrap())
            .unwrap();
    let labels = &manifest["labels"];
    assert_eq!(labels["labels"], SAMPLES);
    let consistent = rows
        .iter()
        .filter(|r| r["position_consistent"] == true)
        .count();
    assert!(
        (labels["position_consistency"].as_f64().unwrap() - consistent as f64 / SAMPLES as f64)
            .abs()
            < 1e-12
    );
    assert!((labels["mean_letter_mass"].as_f64().unwrap() - 0.9).abs() < 1e-9);
    assert!(labels["human_agreement"].as_f64().is_some(), "{labels}");
    for row in &rows {
        let readings = row["readings"].as_array().unwrap();
        assert_eq!(readings[0]["order"], "xy");
        assert_eq!(readings[1]["order"], "yx");
        assert_eq!(readings[0]["principle_id"], readings[1]["principle_id"]);
        let (xy, yx) = (
            readings[0]["p_first"].as_f64().unwrap(),
            readings[1]["p_first"].as_f64().unwrap(),
        );
        assert_eq!(
            row["position_consistent"],
            Value::from((xy >= 0.5) == (yx < 0.5))
        );
    }
}

#[tokio::test]
async fn completions_endpoint_legacy_format_with_two_principles() {
    let server = ModelServer::start(ServerConfig::default()).await;
    let dir = JobDir::new();
    run_job(&job(&dir, &server.url(), "completions", true, 2))
        .await
        .unwrap();
    assert_eq!(server.calls().len(), 4 * SAMPLES);
    assert!(
        server
            .calls()
            .iter()
            .all(|c| c.endpoint == "completions" && c.body["logprobs"] == 20)
    );
    check_labels(&dir, &server, 4);
}

#[tokio::test]
async fn chat_format_on_completions_and_legacy_on_chat_without_swap() {
    for (endpoint, format) in [
        ("completions", LogprobFormat::Chat),
        ("chat", LogprobFormat::Legacy),
    ] {
        let server = ModelServer::start(ServerConfig {
            logprob_format: Some(format),
            ..ServerConfig::default()
        })
        .await;
        let dir = JobDir::new();
        run_job(&job(&dir, &server.url(), endpoint, false, 1))
            .await
            .unwrap();
        assert_eq!(server.calls().len(), SAMPLES);
        check_labels(&dir, &server, 1);
        // Without swap the shown order is drawn per sample: both orders occur.
        let orders: std::collections::HashSet<String> = dir
            .rows("preferences.jsonl")
            .iter()
            .map(|r| r["readings"][0]["order"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(orders.len(), 2, "{endpoint}");
        assert!(
            dir.rows("preferences.jsonl")
                .iter()
                .all(|r| r.get("position_consistent").is_none())
        );
    }
}

#[tokio::test]
async fn a_judge_without_letters_is_retried_once_then_the_sample_fails() {
    let server = ModelServer::start(ServerConfig {
        no_letters: true,
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    let summary = run_job(&job(&dir, &server.url(), "chat", true, 1))
        .await
        .unwrap();
    assert_eq!(
        (summary.counts.done, summary.counts.failed),
        (0, SAMPLES as u64)
    );
    assert_eq!(summary.counts.lines_read, summary.counts.settled());
    // The first order is asked twice, then the sample fails without a guessed label.
    assert_eq!(server.calls().len(), 2 * SAMPLES);
    let failed = dir.rows("failed.jsonl");
    assert_eq!(failed.len(), SAMPLES);
    assert!(failed.iter().all(|f| {
        f["attempts"] == 2
            && f["reason"]
                .as_str()
                .unwrap()
                .contains("neither (A) nor (B)")
    }));
    assert!(dir.rows("preferences.jsonl").is_empty());
}

/// Every judged position's raw top log-probabilities are in the trace, and every reading says
/// how much probability its letters held.
fn check_audit_trail(dir: &JobDir, letter_mass: f64) {
    for row in dir.rows("preferences.jsonl") {
        for reading in row["readings"].as_array().unwrap() {
            let mass = reading["letter_mass"].as_f64().unwrap();
            assert!((mass - letter_mass).abs() < 1e-9, "{reading}");
        }
    }
    for trace in dir.rows("traces.jsonl") {
        for step in trace["steps"].as_array().unwrap() {
            let positions = step["top_logprobs"].as_array().unwrap();
            assert!(!positions.is_empty() && positions[0].as_array().unwrap().len() >= 2);
        }
    }
}

/// A chat judge that answers " (A)": its first position is " (" with a faint "B" in the tail.
/// The reading is taken where the letters are, on both endpoints: the true probability, not the
/// hard 0 the faint tail letter would give.
#[tokio::test]
async fn a_paren_first_judge_is_read_where_the_letters_are() {
    for endpoint in ["chat", "completions"] {
        let server = ModelServer::start(ServerConfig {
            judge_shape: JudgeShape::ParenFirst,
            ..ServerConfig::default()
        })
        .await;
        let dir = JobDir::new();
        let summary = run_job(&job(&dir, &server.url(), endpoint, true, 1))
            .await
            .unwrap();
        assert_eq!(summary.counts.done, SAMPLES as u64, "{endpoint}");
        check_labels_within(&dir, &server, 2, 0.02);
        check_audit_trail(&dir, 0.9);
    }
}

/// TGI returns 5 candidates a position: away from 0.5 the rarer letter's spellings fall out of
/// the list, some or all of them. A letter with none returned gets the rarest returned token's
/// probability (0.04 here) in place of its unknown share, so no label is a hard 0 or 1. The
/// spellings that were cut are lost (this server spreads each letter over three spellings, so a
/// cut can hide 40 % of a letter): readings stay within 0.1 of the truth, not exact.
#[tokio::test]
async fn a_letter_cut_from_a_top_5_list_gives_no_hard_label() {
    let server = ModelServer::start(ServerConfig {
        top_n: Some(5),
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    run_job(&job(&dir, &server.url(), "chat", true, 1))
        .await
        .unwrap();
    let extreme = server
        .calls()
        .iter()
        .map(|c| p_first(&c.prompt_text().unwrap()))
        .filter(|p| !(0.07..=0.93).contains(p))
        .count();
    assert!(extreme > 0, "some call must lose a letter from its top 5");
    check_labels_within(&dir, &server, 2, 0.1);
    for row in dir.rows("preferences.jsonl") {
        for reading in row["readings"].as_array().unwrap() {
            let p = reading["p_first"].as_f64().unwrap();
            assert!(p > 0.0 && p < 1.0, "{reading}");
        }
    }
}

/// Letters holding 0.03 of the probability are noise, not a judgment: retried once, then the
/// sample fails with a reason naming the mass, and the manifest counts it.
#[tokio::test]
async fn faint_letters_fail_the_sample_with_a_reason() {
    let server = ModelServer::start(ServerConfig {
        judge_shape: JudgeShape::Faint,
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    let summary = run_job(&job(&dir, &server.url(), "completions", true, 1))
        .await
        .unwrap();
    assert_eq!(
        (summary.counts.done, summary.counts.failed),
        (0, SAMPLES as u64)
    );
    assert_eq!(server.calls().len(), 2 * SAMPLES);
    for failed in dir.rows("failed.jsonl") {
        let reason = failed["reason"].as_str().unwrap();
        assert!(
            reason.contains("held only 0.0300") && reason.contains("min_letter_mass 0.1"),
            "{reason}"
        );
    }
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["labels"]["failed_low_letter_mass"], SAMPLES);
    assert_eq!(manifest["labels"]["labels"], 0);
}
