//! Critique → revise end to end over HTTP against the test model server, on the real red-team
//! prompts: rows, principles and their reproducibility from the seed, calls per sample, both
//! endpoints.

use std::collections::HashMap;

use cai_common::constitution::Constitution;
use cai_common::sample::SampleKey;
use cai_common::seed;
use cai_tests::harness::{JobDir, ids, repo_file, run_job};
use cai_tests::model_server::{ModelServer, ServerConfig};
use rand::Rng;
use serde_json::Value;

const PROMPTS: &str = "hh-rlhf/red-team-prompts/harmless-base_test_prompts.jsonl";
const SAMPLES: usize = 60;

fn job(
    dir: &JobDir,
    url: &str,
    endpoint: &str,
    seed: u64,
    revisions: u32,
    sft: &str,
) -> std::path::PathBuf {
    dir.head(PROMPTS, SAMPLES, "prompts.jsonl");
    let constitution = repo_file("constitutions/default.toml");
    dir.write(
        "job.toml",
        format!(
            r#"
name = "cr-test"
pipeline = "critique-revise"
seed = {seed}
output = "out"

[input]
path = "prompts.jsonl"
prompt = "prompt"
id = "source_line"

[constitution]
path = "{constitution}"
few_shot = true

[critique_revise]
model = "policy"
revisions = {revisions}
sft = "{sft}"

[models.policy]
backend = "openai"
url = "{url}"
model = "test-model"
endpoint = "{endpoint}"
max_concurrency = 8
max_tokens = 64
price_in = 0.5
price_out = 2.0
"#,
            constitution = constitution.display()
        ),
    )
}

/// Principle ids per sample id, in round order, from the traces.
fn drawn_principles(dir: &JobDir) -> HashMap<String, Vec<String>> {
    dir.rows("traces.jsonl")
        .into_iter()
        .map(|trace| {
            let principles = trace["steps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|step| step["step"].as_str().unwrap().starts_with("critique-"))
                .map(|step| step["principle_id"].as_str().unwrap().to_owned())
                .collect();
            (trace["id"].as_str().unwrap().to_owned(), principles)
        })
        .collect()
}

#[tokio::test]
async fn chat_endpoint_rows_calls_and_principles() {
    let server = ModelServer::start(ServerConfig::default()).await;
    let dir = JobDir::new();
    let summary = run_job(&job(&dir, &server.url(), "chat", 42, 3, "every"))
        .await
        .unwrap();

    // 60 lines of the real file hold 60 distinct prompts: all done, counts add up.
    assert!(summary.complete);
    assert_eq!(summary.counts.done, SAMPLES as u64);
    assert_eq!(summary.counts.lines_read, summary.counts.settled());
    // sft = "every": one row per round, ids each exactly `revisions` times.
    let sft = dir.rows("sft.jsonl");
    assert_eq!(sft.len(), SAMPLES * 3);
    let mut rounds: HashMap<String, Vec<u64>> = HashMap::new();
    for row in &sft {
        let messages = row["messages"].as_array().unwrap();
        assert_eq!(messages.last().unwrap()["role"], "assistant");
        assert!(
            messages.last().unwrap()["content"]
                .as_str()
                .unwrap()
                .starts_with("reply ")
        );
        assert_eq!(messages[0]["role"], "user");
        rounds
            .entry(row["id"].as_str().unwrap().into())
            .or_default()
            .push(row["round"].as_u64().unwrap());
    }
    assert!(rounds.values().all(|r| {
        let mut r = r.clone();
        r.sort();
        r == [1, 2, 3]
    }));

    // Cost: $0.5 per million prompt tokens and $2 per million generated ones, in micro-dollars,
    // per call from its tokens, summed per sample and over the job.
    let mut job_cost = 0;
    for trace in dir.rows("traces.jsonl") {
        let expected: u64 = trace["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|step| {
                let (tokens_in, tokens_out) = (
                    step["tokens_in"].as_u64().unwrap(),
                    step["tokens_out"].as_u64().unwrap(),
                );
                (0.5 * tokens_in as f64).round() as u64 + (2.0 * tokens_out as f64).round() as u64
            })
            .sum();
        assert!(expected > 0);
        assert_eq!(trace["usage"]["cost_micro_usd"].as_u64().unwrap(), expected);
        job_cost += expected;
    }
    assert_eq!(summary.usage.cost_micro_usd, job_cost);
    // Exactly 1 + 2 × revisions calls per sample, none of them a judge call.
    let calls = server.calls();
    assert_eq!(calls.len(), SAMPLES * (1 + 2 * 3));
    assert!(calls.iter().all(|c| c.endpoint == "chat" && !c.judge));
    let traces = dir.rows("traces.jsonl");
    assert_eq!(traces.len(), SAMPLES);
    assert!(
        traces
            .iter()
            .all(|t| t["usage"]["calls"] == 7 && t["steps"].as_array().unwrap().len() == 7)
    );

    // Every principle comes from the constitution's critique principles and is the one the seed
    // draws.
    let constitution = Constitution::load(&repo_file("constitutions/default.toml")).unwrap();
    let principles = constitution.critique_principles();
    let drawn = drawn_principles(&dir);
    for trace in &traces {
        let key = SampleKey::from_hex(trace["key"].as_str().unwrap()).unwrap();
        let expected: Vec<String> = (1..=3)
            .map(|round| {
                let mut rng = seed::rng_for(42, &key, &format!("principle-{round}"));
                principles[rng.random_range(0..principles.len())].id.clone()
            })
            .collect();
        assert_eq!(drawn[trace["id"].as_str().unwrap()], expected);
    }
    // With 180 draws from 16 principles, many distinct ones appear.
    let distinct: std::collections::HashSet<&String> = drawn.values().flatten().collect();
    assert!(distinct.len() >= 12, "{distinct:?}");

    // The critique request carries the few-shot demonstrations, then the conversation.
    let first_critique = calls
        .iter()
        .find(|c| {
            let messages = c.body["messages"].as_array().unwrap();
            messages.len() > 2
        })
        .unwrap();
    let messages = first_critique.body["messages"].as_array().unwrap();
    let demo_turns: usize = constitution
        .demonstrations
        .iter()
        .map(|d| d.conversation.len() + 4)
        .sum();
    assert_eq!(messages.len(), demo_turns + 3);
    assert_eq!(
        messages[0]["content"],
        Value::from(
            constitution.demonstrations[0].conversation[0]
                .content
                .clone()
        )
    );
}

#[tokio::test]
async fn the_same_seed_draws_the_same_principles_and_another_seed_does_not() {
    let server = ModelServer::start(ServerConfig::default()).await;
    let (a, b, c) = (JobDir::new(), JobDir::new(), JobDir::new());
    run_job(&job(&a, &server.url(), "completions", 7, 2, "final"))
        .await
        .unwrap();
    run_job(&job(&b, &server.url(), "completions", 7, 2, "final"))
        .await
        .unwrap();
    run_job(&job(&c, &server.url(), "completions", 8, 2, "final"))
        .await
        .unwrap();
    assert_eq!(drawn_principles(&a), drawn_principles(&b));
    assert_ne!(drawn_principles(&a), drawn_principles(&c));
    // sft = "final": one row per sample, the last round.
    let rows = a.rows("sft.jsonl");
    assert_eq!(ids(&rows).len(), SAMPLES);
    assert!(rows.iter().all(|r| r["round"] == 2));
    // Same requests, same replies: the outputs of the two same-seed runs are identical as sets.
    let sorted = |dir: &JobDir| {
        let mut rows: Vec<String> = dir.rows("sft.jsonl").iter().map(Value::to_string).collect();
        rows.sort();
        rows
    };
    assert_eq!(sorted(&a), sorted(&b));
}

#[tokio::test]
async fn completions_endpoint_sends_the_paper_transcript() {
    let server = ModelServer::start(ServerConfig::default()).await;
    let dir = JobDir::new();
    let summary = run_job(&job(&dir, &server.url(), "completions", 1, 1, "final"))
        .await
        .unwrap();
    assert_eq!(summary.counts.done, SAMPLES as u64);
    let calls = server.calls();
    assert_eq!(calls.len(), SAMPLES * 3);
    let prompts: Vec<&str> = calls
        .iter()
        .map(|c| c.body["prompt"].as_str().unwrap())
        .collect();
    assert!(
        prompts
            .iter()
            .any(|p| p.ends_with("\n\nAssistant:") && p.starts_with("\n\nHuman: "))
    );
    assert!(
        prompts
            .iter()
            .any(|p| p.ends_with("\n\nCritique:") && p.contains("\n\nCritiqueRequest: "))
    );
    assert!(
        prompts
            .iter()
            .any(|p| p.ends_with("\n\nRevision:") && p.contains("\n\nRevisionRequest: "))
    );
    assert!(
        calls
            .iter()
            .all(|c| c.body["stop"].as_array().is_some_and(|s| !s.is_empty()))
    );
}
