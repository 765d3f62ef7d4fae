//! Pairwise AI feedback end to end over HTTP against the test model server, on the real HH
//! preference pairs: swap arithmetic, summation over letter spellings, both endpoints and both
//! log-probability wire formats, calls per sample, and a judge that never names a letter; and
//! verdict mode: written verdicts in every format, their votes, swap and unparseable verdicts.

use cai_tests::harness::{JobDir, repo_file, run_job};
use cai_tests::model_server::{
    JudgeShape, LogprobFormat, ModelServer, ServerConfig, VerdictStyle, p_first, verdict_for,
};
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

/// A verdict job: `votes` written verdicts per order, read with `verdict`, from a judge that
/// samples at temperature 0.7.
fn verdict_job(
    dir: &JobDir,
    url: &str,
    votes: u32,
    verdict: &str,
    template: &str,
) -> std::path::PathBuf {
    dir.head(PAIRS, SAMPLES, "pairs.jsonl");
    dir.write(
        "job.toml",
        format!(
            r#"
name = "pw-verdict"
pipeline = "pairwise"
seed = 5
output = "out"

[input]
path = "pairs.jsonl"

[constitution]
path = "{constitution}"

[pairwise]
judge = "feedback"
candidates = ["chosen", "rejected"]
mode = "verdict"
votes = {votes}
verdict = "{verdict}"
judge_template = "{template}"

[models.feedback]
backend = "openai"
url = "{url}"
model = "judge"
temperature = 0.7
max_concurrency = 8
"#,
            constitution = repo_file("constitutions/default.toml").display()
        ),
    )
}

fn manifest_labels(dir: &JobDir) -> Value {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/manifest.json")).unwrap())
            .unwrap();
    manifest["labels"].clone()
}

/// Each reading's `p_first` is exactly the share of (A) among the verdicts the server wrote
/// for its prompt, and those shares estimate the server's probabilities within sampling error;
/// the label combines the readings as for log-probabilities.
fn check_votes(dir: &JobDir, server: &ModelServer, votes: u32) {
    let mut by_prompt: std::collections::BTreeMap<String, Vec<&Value>> = Default::default();
    let calls = server.calls();
    for call in &calls {
        assert!(
            !call.judge,
            "a verdict judge is asked for no log-probabilities"
        );
        assert_eq!(call.body["temperature"], 0.7);
        by_prompt
            .entry(call.prompt_text().unwrap())
            .or_default()
            .push(&call.body);
    }
    let (mut error_sum, mut variance) = (0.0, 0.0);
    let mut shares = Vec::new();
    for (prompt, bodies) in &by_prompt {
        assert_eq!(bodies.len(), votes as usize);
        let seeds: std::collections::HashSet<u64> =
            bodies.iter().map(|b| b["seed"].as_u64().unwrap()).collect();
        assert_eq!(seeds.len(), votes as usize, "every vote has its own seed");
        let first = seeds
            .iter()
            .filter(|&&seed| {
                let text = verdict_for(
                    prompt,
                    seed,
                    &ServerConfig::default(),
                    VerdictStyle::Brackets,
                );
                text.ends_with("[[A]]")
            })
            .count();
        let share = first as f64 / votes as f64;
        let p = p_first(prompt);
        error_sum += share - p;
        variance += p * (1.0 - p) / votes as f64;
        shares.push(share);
    }
    // The sum of the errors is within four standard deviations of 0.
    assert!(
        error_sum.abs() < 4.0 * variance.sqrt(),
        "{error_sum} vs sd {}",
        variance.sqrt()
    );
    let rows = dir.rows("preferences.jsonl");
    assert_eq!(rows.len(), SAMPLES);
    let mut read = Vec::new();
    for row in &rows {
        let readings = row["readings"].as_array().unwrap();
        assert_eq!(readings.len(), 2);
        let corrected: Vec<f64> = readings
            .iter()
            .map(|r| {
                assert_eq!(
                    (r["votes"].as_u64(), r["parsed"].as_u64()),
                    (Some(votes.into()), Some(votes.into()))
                );
                assert!(r.get("letter_mass").is_none());
                let p = r["p_first"].as_f64().unwrap();
                read.push(p);
                if r["order"] == "xy" { p } else { 1.0 - p }
            })
            .collect();
        let p_x = (corrected[0] + corrected[1]) / 2.0;
        assert!((row["p_chosen"].as_f64().unwrap() - p_x.max(1.0 - p_x)).abs() < 1e-12);
    }
    shares.sort_by(f64::total_cmp);
    read.sort_by(f64::total_cmp);
    assert_eq!(shares, read);
    let labels = manifest_labels(dir);
    assert_eq!(labels["parse_rate"], 1.0);
    assert!(
        labels["vote_agreement"].as_f64().unwrap() >= 0.5,
        "{labels}"
    );
}

/// Every built-in format, each from a judge writing it, read by its own parser and by `auto`:
/// 2 orders × 9 votes per sample, each reading the share of its votes.
#[tokio::test]
async fn written_verdicts_are_counted_in_every_format() {
    for (style, verdict) in [
        (VerdictStyle::Brackets, "brackets"),
        (VerdictStyle::Letter, "letter"),
        (VerdictStyle::Prometheus, "prometheus"),
        (VerdictStyle::Prometheus, "auto"),
    ] {
        let server = ModelServer::start(ServerConfig {
            verdict: Some(style),
            strict_chat: true,
            ..ServerConfig::default()
        })
        .await;
        let dir = JobDir::new();
        let template = if style == VerdictStyle::Prometheus {
            "prometheus2"
        } else {
            "paper"
        };
        let summary = run_job(&verdict_job(&dir, &server.url(), 9, verdict, template))
            .await
            .unwrap();
        assert_eq!(summary.counts.done, SAMPLES as u64, "{verdict}");
        assert_eq!(server.calls().len(), SAMPLES * 2 * 9);
        check_votes(&dir, &server, 9);
        let messages = server.calls()[0].body["messages"].clone();
        if template == "prometheus2" {
            assert_eq!(messages[0]["role"], "system");
            assert!(
                messages[0]["content"]
                    .as_str()
                    .unwrap()
                    .starts_with("You are a fair judge assistant")
            );
            let task = messages[1]["content"].as_str().unwrap();
            assert!(
                task.starts_with("###Task Description:") && task.ends_with("###Feedback: "),
                "{task}"
            );
            assert!(task.contains("###Score Rubric:\n"));
        } else {
            let ask = messages.as_array().unwrap().last().unwrap()["content"]
                .as_str()
                .unwrap()
                .to_owned();
            let expected = if verdict == "letter" {
                "\"The answer is: (A)\""
            } else {
                "\"[[A]]\""
            };
            assert!(ask.contains("\n(A) ") && ask.contains("\n(B) "), "{ask}");
            assert!(
                ask.rsplit("\n\n").next().unwrap().contains(expected),
                "{ask}"
            );
        }
    }
}

/// A judge that picks the first-shown answer 80 % of the time whatever it is shown: each order
/// alone reads about 0.8 for (A), and swapping turns that into labels near 0.5, as it does for
/// log-probabilities.
#[tokio::test]
async fn swapped_votes_cancel_a_position_bias() {
    let server = ModelServer::start(ServerConfig {
        verdict: Some(VerdictStyle::Brackets),
        verdict_p_first: Some(0.8),
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    run_job(&verdict_job(&dir, &server.url(), 15, "brackets", "paper"))
        .await
        .unwrap();
    let rows = dir.rows("preferences.jsonl");
    assert_eq!(rows.len(), SAMPLES);
    let (mut first, mut p_x, mut readings) = (0.0, 0.0, 0.0);
    for row in &rows {
        for r in row["readings"].as_array().unwrap() {
            let p = r["p_first"].as_f64().unwrap();
            first += p;
            readings += 1.0;
            p_x += if r["order"] == "xy" { p } else { 1.0 - p };
        }
    }
    let (first, p_x) = (first / readings, p_x / readings);
    // 1200 votes: the standard deviation of each mean is about 0.012.
    assert!(
        (first - 0.8).abs() < 0.05,
        "the bias shows in each order: {first}"
    );
    assert!((p_x - 0.5).abs() < 0.05, "and cancels across orders: {p_x}");
}

/// Verdicts that name no choice are counted apart: a reading with at least half of them
/// readable is the share among those; a judge that never names one fails every sample with a
/// reason, after the votes of the first order.
#[tokio::test]
async fn unparseable_verdicts_are_counted_apart_and_fail_a_label_below_half() {
    let server = ModelServer::start(ServerConfig {
        verdict: Some(VerdictStyle::Brackets),
        verdict_unparseable: 0.25,
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    let summary = run_job(&verdict_job(&dir, &server.url(), 8, "auto", "paper"))
        .await
        .unwrap();
    let (mut votes, mut parsed) = (0, 0);
    for row in dir.rows("preferences.jsonl") {
        for r in row["readings"].as_array().unwrap() {
            votes += r["votes"].as_u64().unwrap();
            parsed += r["parsed"].as_u64().unwrap();
            assert!(r["parsed"].as_u64().unwrap() * 2 >= 8);
        }
    }
    assert!(parsed < votes, "some verdicts named no choice");
    let labels = manifest_labels(&dir);
    assert!((labels["parse_rate"].as_f64().unwrap() - parsed as f64 / votes as f64).abs() < 1e-12);
    assert_eq!(
        labels["failed_unparsed"].as_u64().unwrap_or(0),
        summary.counts.failed
    );

    let server = ModelServer::start(ServerConfig {
        verdict: Some(VerdictStyle::Brackets),
        verdict_unparseable: 1.0,
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    let summary = run_job(&verdict_job(&dir, &server.url(), 3, "brackets", "paper"))
        .await
        .unwrap();
    assert_eq!(
        (summary.counts.done, summary.counts.failed),
        (0, SAMPLES as u64)
    );
    assert_eq!(server.calls().len(), SAMPLES * 3);
    for failed in dir.rows("failed.jsonl") {
        let reason = failed["reason"].as_str().unwrap();
        assert!(
            reason.contains("only 0 of 3 verdicts named a choice (3 named none"),
            "{reason}"
        );
        assert_eq!(failed["attempts"], 3);
    }
    assert_eq!(manifest_labels(&dir)["failed_unparsed"], SAMPLES);
}

/// The mock writes verdicts too, so a verdict job runs without a server: every vote parses,
/// and each reading is the share of its votes.
#[tokio::test]
async fn the_mock_judge_writes_verdicts() {
    let dir = JobDir::new();
    let text = std::fs::read_to_string(verdict_job(&dir, "http://unused/v1", 4, "letter", "paper"))
        .unwrap();
    let mock = text.split("[models.feedback]").next().unwrap().to_owned()
        + "[models.feedback]\nbackend = \"mock\"\n";
    let summary = run_job(&dir.write("job.toml", mock)).await.unwrap();
    assert_eq!(summary.counts.done, SAMPLES as u64);
    for row in dir.rows("preferences.jsonl") {
        for r in row["readings"].as_array().unwrap() {
            assert_eq!(
                (r["votes"].as_u64(), r["parsed"].as_u64()),
                (Some(4), Some(4))
            );
            let quarters = r["p_first"].as_f64().unwrap() * 4.0;
            assert_eq!(quarters, quarters.round(), "{r}");
        }
    }
    assert_eq!(summary.usage.calls, (SAMPLES * 2 * 4) as u64);
}
