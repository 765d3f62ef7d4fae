//! Resume: `cai run` killed with SIGKILL mid-run (or stopped with SIGINT) and run again finishes
//! the job with every sample exactly once and no model call repeated for a sample that was
//! done before the kill.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use cai_tests::harness::{JobDir, cai_process, ids, repo_file, signal, wait_until};
use cai_tests::model_server::{ModelServer, ServerConfig};
use cai_tests::scenario::{committed, committed_keys};
use serde_json::Value;

const PROMPTS: &str = "hh-rlhf/red-team-prompts/harmless-base_test_prompts.jsonl";
/// The first 200 lines hold 199 distinct prompts (one repeats).
const LINES: usize = 200;

fn job(dir: &JobDir, url: &str) -> std::path::PathBuf {
    dir.head(PROMPTS, LINES, "prompts.jsonl");
    dir.write(
        "job.toml",
        format!(
            r#"
name = "resume-test"
pipeline = "critique-revise"
output = "out"

[input]
path = "prompts.jsonl"
prompt = "prompt"

[constitution]
path = "{constitution}"
few_shot = false

[critique_revise]
model = "policy"
revisions = 1

[models.policy]
backend = "openai"
url = "{url}"
model = "test-model"
max_concurrency = 4
"#,
            constitution = repo_file("constitutions/default.toml").display()
        ),
    )
}

fn check_complete_output(dir: &JobDir, distinct: usize) {
    let sft = dir.rows("sft.jsonl");
    let sft_ids = ids(&sft);
    let unique: HashSet<&String> = sft_ids.iter().collect();
    assert_eq!(unique.len(), sft_ids.len(), "a sample was written twice");
    assert_eq!(sft_ids.len(), distinct);
    assert_eq!(ids(&dir.rows("traces.jsonl")).len(), distinct);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/manifest.json")).unwrap())
            .unwrap();
    let counts = &manifest["counts"];
    assert_eq!(manifest["complete"], true);
    assert_eq!(counts["lines_read"], LINES as u64);
    assert_eq!(
        counts["done"].as_u64().unwrap() + counts["duplicates"].as_u64().unwrap(),
        LINES as u64
    );
}

#[tokio::test]
async fn sigkill_mid_run_then_resume() {
    let slow = ServerConfig {
        latency: Duration::from_millis(25),
        ..ServerConfig::default()
    };
    let first_server = ModelServer::start(slow.clone()).await;
    let dir = JobDir::new();
    let job_path = job(&dir, &first_server.url());
    let out = dir.path("out");

    let mut child = cai_process()
        .arg("run")
        .arg(&job_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "40 samples are committed", || {
        committed(&out) >= 40
    })
    .await;
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success());
    let done_before = committed_keys(&out);
    assert!(
        done_before.len() >= 40 && done_before.len() < 199,
        "{}",
        done_before.len()
    );

    // The resumed run talks to another server (the URL is operational, not part of the job's
    // identity), so its calls are exactly the second server's log.
    let second_server = ModelServer::start(slow).await;
    job(&dir, &second_server.url());
    let output = cai_process()
        .arg("run")
        .arg(&job_path)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    check_complete_output(&dir, 199);

    // No call of the second run belongs to a sample done before the kill.
    let key_of_id: HashMap<String, String> = dir
        .rows("traces.jsonl")
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_owned(),
                t["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let key_of_prompt: HashMap<String, String> = dir
        .rows("sft.jsonl")
        .iter()
        .map(|row| {
            let prompt = row["messages"][0]["content"].as_str().unwrap().to_owned();
            (prompt, key_of_id[row["id"].as_str().unwrap()].clone())
        })
        .collect();
    let second_calls = second_server.calls();
    assert!(!second_calls.is_empty());
    for call in &second_calls {
        let prompt = call.body["messages"][0]["content"].as_str().unwrap();
        let key = &key_of_prompt[prompt];
        assert!(
            !done_before.contains(key),
            "a done sample was paid for again"
        );
    }
    // The steps finished before the kill are in the step log: the resumed run repeats only the
    // calls that were in flight at the kill (at most max_concurrency = 4), and between them the
    // two runs called every step of every sample.
    let first: HashSet<String> = first_server
        .calls()
        .iter()
        .map(|c| c.body.to_string())
        .collect();
    let repeated = second_calls
        .iter()
        .filter(|c| first.contains(&c.body.to_string()))
        .count();
    assert!(repeated <= 4, "{repeated} calls repeated after the kill");
    let all: HashSet<String> = first
        .into_iter()
        .chain(second_calls.iter().map(|c| c.body.to_string()))
        .collect();
    assert_eq!(all.len(), 3 * 199, "every step of every sample called");
    // What the job paid, as the manifest counts it: every step of every sample once (the
    // steps the killed run paid for and the resumed run reused included); what the servers
    // answered beyond that are the calls in flight at the kill, paid and lost.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["model_calls"], 3 * 199, "{manifest}");
    assert_eq!(
        first_server.calls().len() + second_calls.len(),
        3 * 199 + repeated,
        "the servers answered the paid steps and the repeated ones"
    );

    // A third run finds everything done and calls nothing.
    let third_server = ModelServer::start(ServerConfig::default()).await;
    job(&dir, &third_server.url());
    let output = cai_process()
        .arg("run")
        .arg(&job_path)
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    assert!(third_server.calls().is_empty());
    check_complete_output(&dir, 199);
}

#[tokio::test]
async fn sigint_stops_cleanly_and_a_rerun_completes() {
    let server = ModelServer::start(ServerConfig {
        latency: Duration::from_millis(25),
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    let job_path = job(&dir, &server.url());
    let out = dir.path("out");
    let child = cai_process()
        .arg("run")
        .arg(&job_path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "20 samples are committed", || {
        committed(&out) >= 20
    })
    .await;
    signal(&child, "INT");
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("cai exits within 30 s of SIGINT")
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("run the same command again to resume"),
        "{stderr}"
    );
    // What was in flight was finished and committed; nothing is half-written.
    let interrupted = committed(&out);
    assert_eq!(ids(&dir.rows("sft.jsonl")).len() as u64, interrupted);

    let output = cai_process()
        .arg("run")
        .arg(&job_path)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    check_complete_output(&dir, 199);
    assert_eq!(server.calls().len(), 3 * 199);
}
