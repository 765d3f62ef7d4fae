//! The hardened client against a test server that fails on purpose: a critique-revise job
//! completes through 500s, 429s, hangs and truncated bodies with every sample accounted for
//! exactly once; a refused API key stops `cai run` quickly with a clear message; `Retry-After`
//! and the retry budget bound the retries of a call.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use cai_common::job::ModelSpec;
use cai_tests::harness::{JobDir, cai_process, ids, read_jsonl, repo_file};
use cai_tests::model_server::{Faults, ModelServer, ServerConfig};
use cai_worker::model::{Model, ModelError, Prompt, Speaker, Turn};
use serde_json::{Value, json};

const PROMPTS: &str = "hh-rlhf/red-team-prompts/harmless-base_test_prompts.jsonl";
const SAMPLES: usize = 60;
const REVISIONS: usize = 2;
/// The variable the refused-key test names as `api_key_env`; set for the child process only.
const KEY_VAR: &str = "CAI_FAULTS_TEST_API_KEY";

/// A critique-revise job over the first [`SAMPLES`] red-team prompts with `model_lines` added to
/// its model's table. No few-shot examples, so a request's first message is the sample's prompt.
fn job(dir: &JobDir, url: &str, model_lines: &str) -> PathBuf {
    dir.head(PROMPTS, SAMPLES, "prompts.jsonl");
    dir.write(
        "job.toml",
        format!(
            r#"
name = "faults"
pipeline = "critique-revise"
seed = 9
output = "out"

[input]
path = "prompts.jsonl"
prompt = "prompt"
id = "source_line"

[constitution]
path = "{constitution}"
few_shot = false

[critique_revise]
model = "policy"
revisions = {REVISIONS}
sft = "final"

[models.policy]
backend = "openai"
url = "{url}"
model = "test-model"
max_concurrency = 16
max_tokens = 64
{model_lines}
"#,
            constitution = repo_file("constitutions/default.toml").display()
        ),
    )
}

/// The ids of the samples in the job's corpus, as the output rows spell them.
fn corpus_ids(dir: &JobDir) -> Vec<String> {
    let lines = read_jsonl(&dir.path("prompts.jsonl"));
    let rows: Vec<Value> = lines
        .iter()
        .map(|line| json!({"id": line["source_line"]}))
        .collect();
    ids(&rows)
}

/// Runs `cai run JOB` (embedded mode, as a user would) with `env` set for the child only; panics
/// unless it ends within `deadline`.
async fn cai_run(job: &Path, env: &[(&str, &str)], deadline: Duration) -> Output {
    let child = cai_process()
        .arg("run")
        .arg(job)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cai starts");
    tokio::time::timeout(deadline, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("cai run did not end within {deadline:?}"))
        .expect("cai's output is read")
}

fn ask(question: &str) -> Prompt {
    Prompt {
        turns: vec![Turn::new(Speaker::Human, question)],
        reply_as: Some(Speaker::Assistant),
        prefill: None,
    }
}

fn model(url: &str, extra: Value) -> std::sync::Arc<dyn Model> {
    let mut spec = json!({"backend": "openai", "url": url, "model": "test-model"});
    for (key, value) in extra.as_object().expect("extra fields are an object") {
        spec[key] = value.clone();
    }
    let spec: ModelSpec = serde_json::from_value(spec).expect("a valid model spec");
    cai_worker::model::build("policy", &spec).expect("the model builds")
}

#[tokio::test]
async fn a_job_completes_through_500s_429s_hangs_and_truncated_bodies() {
    let server = ModelServer::start(ServerConfig {
        faults: Faults {
            error_500: 0.20,
            rate_limited_429: 0.10,
            retry_after_s: 1,
            hang: 0.05,
            truncated: 0.05,
        },
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    let job = job(&dir, &server.url(), "timeout_s = 2\nmax_retries = 12");
    let output = cai_run(&job, &[], Duration::from_secs(600)).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Every kind of fault was injected, and often.
    let calls = server.calls();
    let mut faults: HashMap<Option<&str>, usize> = HashMap::new();
    for call in &calls {
        *faults.entry(call.fault).or_default() += 1;
    }
    for kind in ["500", "429", "hang", "truncated"] {
        assert!(
            faults.get(&Some(kind)).is_some_and(|n| *n >= 3),
            "{faults:?}"
        );
    }

    // Every sample is done or failed with its reason, none twice, none both.
    let done = ids(&dir.rows("sft.jsonl"));
    let failed_rows = dir.rows("failed.jsonl");
    let failed = ids(&failed_rows);
    for outcome in [&done, &failed] {
        let unique: HashSet<&String> = outcome.iter().collect();
        assert_eq!(unique.len(), outcome.len(), "a sample was written twice");
    }
    let mut all: Vec<String> = done.iter().chain(&failed).cloned().collect();
    all.sort();
    assert_eq!(all, corpus_ids(&dir));
    assert!(
        failed_rows
            .iter()
            .all(|row| row["reason"].as_str().is_some_and(|r| !r.is_empty())),
        "{failed_rows:?}"
    );

    // The manifest's counts add up and match the files.
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/manifest.json")).unwrap())
            .unwrap();
    let counts = &manifest["counts"];
    assert_eq!(manifest["complete"], true);
    assert_eq!(counts["lines_read"], SAMPLES);
    assert_eq!(counts["done"], done.len());
    assert_eq!(counts["failed"], failed.len());
    let settled: u64 = ["done", "failed", "rejected", "duplicates"]
        .iter()
        .map(|field| counts[*field].as_u64().unwrap())
        .sum();
    assert_eq!(settled, SAMPLES as u64);

    // No request was answered twice, and every done sample was answered exactly its
    // 1 + 2 × revisions calls: nothing was paid for twice.
    let answered: Vec<&Value> = calls
        .iter()
        .filter(|call| call.fault.is_none())
        .map(|call| &call.body)
        .collect();
    let distinct: HashSet<String> = answered.iter().map(|body| body.to_string()).collect();
    assert_eq!(
        distinct.len(),
        answered.len(),
        "a request was answered twice"
    );
    let mut per_prompt: HashMap<&str, usize> = HashMap::new();
    for body in &answered {
        *per_prompt
            .entry(body["messages"][0]["content"].as_str().unwrap())
            .or_default() += 1;
    }
    for row in dir.rows("sft.jsonl") {
        let prompt = row["messages"][0]["content"].as_str().unwrap();
        assert_eq!(
            per_prompt.get(prompt),
            Some(&(1 + 2 * REVISIONS)),
            "{prompt}"
        );
    }
}

#[tokio::test]
async fn a_refused_key_stops_the_job_quickly_naming_the_model_and_the_variable() {
    let server = ModelServer::start(ServerConfig {
        api_key: Some("the-right-key".into()),
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    let job = job(&dir, &server.url(), &format!("api_key_env = \"{KEY_VAR}\""));
    let output = cai_run(&job, &[(KEY_VAR, "a-wrong-key")], Duration::from_secs(30)).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        matches!(output.status.code(), Some(1 | 2)),
        "{:?}: {stderr}",
        output.status
    );
    assert!(
        stderr.contains("model policy") && stderr.contains(KEY_VAR) && stderr.contains("401"),
        "{stderr}"
    );
    assert!(!stderr.contains("a-wrong-key"), "{stderr}");
    // The corpus was not burned: few calls, and no sample marked failed for a job-wide error.
    let calls = server.calls().len();
    assert!(calls < SAMPLES, "{calls} calls after a refused key");
    assert!(dir.rows("failed.jsonl").is_empty());
}

#[tokio::test]
async fn the_retry_budget_ends_a_call_that_keeps_failing() {
    let server = ModelServer::start(ServerConfig {
        faults: Faults {
            error_500: 1.0,
            ..Faults::default()
        },
        ..ServerConfig::default()
    })
    .await;
    // Without the budget, 1,000 retries would take hours.
    let model = model(
        &server.url(),
        json!({"max_retries": 1000, "retry_budget_s": 3}),
    );
    let result = tokio::time::timeout(Duration::from_secs(60), model.generate(&ask("hi"), 1))
        .await
        .expect("the retry budget ends the call");
    match result {
        Err(ModelError::Retryable { message, .. }) => assert!(
            message.contains("HTTP 500") && message.contains("retry budget of 3 s"),
            "{message}"
        ),
        other => panic!("expected a retryable error, got {other:?}"),
    }
    assert!(server.calls().len() >= 2, "the call was retried");
}

#[tokio::test]
async fn retry_after_spaces_the_retries_of_a_rate_limited_call() {
    let server = ModelServer::start(ServerConfig {
        faults: Faults {
            rate_limited_429: 1.0,
            retry_after_s: 1,
            ..Faults::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let model = model(
        &server.url(),
        json!({"max_retries": 1000, "retry_budget_s": 3}),
    );
    let result = tokio::time::timeout(Duration::from_secs(60), model.generate(&ask("hi"), 1))
        .await
        .expect("the retry budget ends the call");
    assert!(
        matches!(&result, Err(ModelError::Retryable { message, .. }) if message.contains("HTTP 429")),
        "{result:?}"
    );
    // Every wait lasts at least the 1 s the server asked for, so a 3 s budget allows at most
    // four attempts (without `Retry-After`, full jitter's first waits are well under a second).
    let calls = server.calls();
    assert!((2..=4).contains(&calls.len()), "{} attempts", calls.len());
    assert!(calls.iter().all(|call| call.fault == Some("429")));
}
