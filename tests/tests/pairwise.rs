//! Pairwise AI feedback end to end over HTTP against the test model server, on the real HH
//! preference pairs: swap arithmetic, summation over letter spellings, both endpoints and both
//! log-probability wire formats, calls per sample, and a judge that never names a letter.

use cai_tests::harness::{JobDir, repo_file, run_job};
use cai_tests::model_server::{LogprobFormat, ModelServer, ServerConfig, p_first};
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

/// Checks every preference row against the judge calls the server saw.
fn check_labels(dir: &JobDir, server: &ModelServer, readings_per_row: usize) {
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
    // Each reading is exactly the server's normalised probability, summed over spellings.
    served.sort_by(f64::total_cmp);
    read.sort_by(f64::total_cmp);
    assert_eq!(served.len(), read.len());
    for (s, r) in served.iter().zip(&read) {
        assert!((s - r).abs() < 1e-9, "server {s} vs read {r}");
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
