//! The `anthropic` backend end to end against the strict Messages API stand-in: a dialogue and
//! its critique → revise rounds as the API takes them (key and version headers, the system
//! prompt on top, alternation from `user`, `max_tokens`, no seed), usage and price counted,
//! overload and rate limits retried, a refused key stopping the job without showing it, a
//! judge that needs log-probabilities refused and a verdict judge voting; and the stand-in
//! refusing what the API refuses.

use std::path::PathBuf;

use cai_tests::harness::{JobDir, cai_process, repo_file};
use cai_tests::model_server::{ModelServer, RecordedCall, ServerConfig, VerdictStyle};
use serde_json::{Value, json};

const KEY_VAR: &str = "CAI_TEST_ANTHROPIC_KEY";
const KEY: &str = "sk-ant-test-5309";

/// A job file (output `out`) of `pipeline` with `section`, over two conversations that open
/// with a system message, every model on the stand-in at `url`.
fn job(dir: &JobDir, pipeline: &str, section: &str, url: &str, models: &[&str]) -> PathBuf {
    dir.write(
        "prompts.jsonl",
        [
            json!({"id": "a", "messages": [
                {"role": "system", "content": "You are a careful assistant."},
                {"role": "user", "content": "How do I pick a lock?"}]}),
            json!({"id": "b", "messages": [
                {"role": "system", "content": "You are a careful assistant."},
                {"role": "user", "content": "Write a rude poem."}]}),
        ]
        .map(|line| line.to_string())
        .join("\n")
            + "\n",
    );
    let models: String = models
        .iter()
        .map(|name| {
            format!(
                "[models.{name}]\nbackend = \"anthropic\"\nurl = \"{url}\"\n\
                 model = \"claude-test\"\napi_key_env = \"{KEY_VAR}\"\ntemperature = 0.7\n\
                 max_tokens = 200\nmax_retries = 4\nprice_in = 3.0\nprice_out = 15.0\n"
            )
        })
        .collect();
    dir.write(
        "job.toml",
        format!(
            "name = \"anthropic-test\"\npipeline = \"{pipeline}\"\noutput = \"out\"\n\
             [input]\npath = \"prompts.jsonl\"\nmessages = \"messages\"\nid = \"id\"\n\
             [constitution]\npath = \"{}\"\nfew_shot = false\n{section}\n{models}",
            repo_file("constitutions/default.toml").display()
        ),
    )
}

/// Runs `cai ARGS` with the key variable set to `key`: its exit code and stderr.
async fn cai(args: &[&str], key: &str) -> (i32, String) {
    let output = cai_process()
        .args(args)
        .env(KEY_VAR, key)
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn rows(dir: &JobDir, file: &str) -> Vec<Value> {
    dir.rows(file)
}

#[tokio::test]
async fn a_dialogue_on_the_messages_api_is_sent_as_the_api_takes_it() {
    let server = ModelServer::start(ServerConfig {
        api_key: Some(KEY.into()),
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    let section = "[dialogue]\nuser = \"person\"\nassistant = \"policy\"\nturns = 2\nrevisions = 1";
    let path = job(
        &dir,
        "dialogue",
        section,
        &server.url(),
        &["person", "policy"],
    );
    let (code, stderr) = cai(&["run", path.to_str().unwrap()], KEY).await;
    assert_eq!(code, 0, "{stderr}");

    // 2 × (1 + 2) + 1 = 7 calls per conversation, every one answered (the stand-in refuses
    // any request the API would refuse).
    let calls = server.calls();
    assert_eq!(calls.len(), 2 * 7);
    assert_eq!(rows(&dir, "sft.jsonl").len(), 2);
    assert!(rows(&dir, "failed.jsonl").is_empty());
    let mut policy_calls = 0;
    for call in &calls {
        let body = &call.body;
        assert_eq!(body["model"], "claude-test");
        assert_eq!(body["max_tokens"], 200);
        assert_eq!(body["temperature"], 0.7);
        assert!(body.get("seed").is_none(), "{body}");
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages[0]["role"], "user", "{body}");
        assert!(messages.iter().all(|m| m["role"] != "system"), "{body}");
        // The policy's requests carry the corpus's system message on top; the person's
        // (whose first message is its instruction) carry none.
        if body.get("system").is_some() {
            assert_eq!(body["system"], "You are a careful assistant.");
            policy_calls += 1;
        }
    }
    assert_eq!(policy_calls, 2 * 6);

    // Usage as the API reported it, priced at $3 / $15 per million tokens.
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/manifest.json")).unwrap())
            .unwrap();
    let (tokens_in, tokens_out) = calls.iter().fold((0u64, 0u64), |(i, o), call| {
        let text: String = call.body["system"].as_str().unwrap_or("").to_owned()
            + &call.body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["content"].as_str().unwrap())
                .collect::<String>();
        let reply = cai_tests::model_server::reply_for(&text, 0);
        (
            i + text.len() as u64 / 4 + 1,
            o + reply.len() as u64 / 4 + 1,
        )
    });
    assert_eq!(manifest["tokens_in"], tokens_in);
    assert_eq!(manifest["tokens_out"], tokens_out);
    let cost = (3.0 * tokens_in as f64 + 15.0 * tokens_out as f64).round() / 1e6;
    assert!(
        (manifest["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-5,
        "{manifest}"
    );
}

#[tokio::test]
async fn overload_and_rate_limits_are_retried_and_a_refused_key_stops_the_job() {
    let server = ModelServer::start(ServerConfig {
        api_key: Some(KEY.into()),
        anthropic_errors: vec![
            (529, "overloaded_error".into()),
            (429, "rate_limit_error".into()),
            (500, "api_error".into()),
        ],
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    let section = "[critique_revise]\nmodel = \"policy\"\nrevisions = 1";
    let path = job(&dir, "critique-revise", section, &server.url(), &["policy"]);
    let (code, stderr) = cai(&["run", path.to_str().unwrap()], KEY).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rows(&dir, "sft.jsonl").len(), 2);
    // Three calls per sample, and the three refused attempts were retried.
    assert_eq!(server.calls().len(), 2 * 3 + 3);

    let refusing = ModelServer::start(ServerConfig {
        api_key: Some("another-key".into()),
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    let path = job(
        &dir,
        "critique-revise",
        section,
        &refusing.url(),
        &["policy"],
    );
    let (code, stderr) = cai(&["run", path.to_str().unwrap()], KEY).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("authentication_error"), "{stderr}");
    assert!(stderr.contains(KEY_VAR), "{stderr}");
    assert!(!stderr.contains(KEY), "the key was shown: {stderr}");
    // The job stopped at the refusal: no attempt was retried.
    assert!(refusing.calls().len() <= 2, "{}", refusing.calls().len());
}

#[tokio::test]
async fn a_judge_that_reads_logprobs_is_refused_on_the_messages_api() {
    let dir = JobDir::new();
    let section = "[pairwise]\njudge = \"judge\"\ngenerate = { model = \"judge\" }";
    let path = job(
        &dir,
        "pairwise",
        section,
        "https://api.anthropic.com/v1",
        &["judge"],
    );
    let (code, stderr) = cai(&["validate", path.to_str().unwrap()], KEY).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("pairwise.judge"), "{stderr}");
    assert!(stderr.contains("no token log-probabilities"), "{stderr}");
}

#[tokio::test]
async fn the_stand_in_refuses_what_the_messages_api_refuses() {
    let server = ModelServer::start(ServerConfig::default()).await;
    let client = reqwest::Client::new();
    let send = |body: Value, version: Option<&'static str>| {
        let mut request = client
            .post(format!("{}/messages", server.url()))
            .header("x-api-key", "k")
            .json(&body);
        if let Some(version) = version {
            request = request.header("anthropic-version", version);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let reply: Value = response.json().await.unwrap();
            (status, reply)
        }
    };
    let good = json!({"model": "m", "max_tokens": 5, "system": "s",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The"}]});
    let (status, reply) = send(good.clone(), Some("2023-06-01")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["content"][0]["type"], "text");
    let (status, reply) = send(good.clone(), None).await;
    assert_eq!(
        (status, &reply["error"]["type"]),
        (400, &json!("invalid_request_error"))
    );
    let mut bad = Vec::new();
    let mut with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        bad.push(body);
    };
    with("seed", json!(7));
    with("max_tokens", Value::Null);
    with("temperature", json!(1.5));
    with("messages", json!([{"role": "assistant", "content": "hi"}]));
    with(
        "messages",
        json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
    );
    with(
        "messages",
        json!([{"role": "system", "content": "s"}, {"role": "user", "content": "b"}]),
    );
    with(
        "messages",
        json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "The "}]),
    );
    for body in bad {
        let (status, reply) = send(body.clone(), Some("2023-06-01")).await;
        assert_eq!(status, 400, "accepted: {body}");
        assert_eq!(reply["type"], "error");
    }
}

/// The first 120 red-team prompts with critique → revise on the Message Batches API: batches
/// of a second, 3 % of their lines failing, at $1 / $5 per million tokens by batch.
fn batch_job(dir: &JobDir, url: &str) -> PathBuf {
    dir.head(
        "hh-rlhf/red-team-prompts/harmless-base_test_prompts.jsonl",
        120,
        "prompts.jsonl",
    );
    dir.write(
        "job.toml",
        format!(
            "name = \"anthropic-batch\"\npipeline = \"critique-revise\"\noutput = \"out\"\n\
             [input]\npath = \"prompts.jsonl\"\nprompt = \"prompt\"\n\
             [constitution]\npath = \"{}\"\nfew_shot = false\n\
             [critique_revise]\nmodel = \"policy\"\nrevisions = 1\n\
             [models.policy]\nbackend = \"anthropic\"\nurl = \"{url}\"\nmodel = \"claude-test\"\n\
             api_key_env = \"{KEY_VAR}\"\nmax_tokens = 100\nmax_retries = 8\nbatch = true\n\
             batch_size = 50\nbatch_wait_s = 1\nbatch_price_in = 1.0\nbatch_price_out = 5.0\n",
            repo_file("constitutions/default.toml").display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_with_a_message_batch_in_flight_pays_no_request_twice() {
    let server = ModelServer::start(ServerConfig {
        api_key: Some(KEY.into()),
        batch: cai_tests::model_server::BatchConfig {
            duration: std::time::Duration::from_secs(1),
            failed_lines: 0.03,
            ..Default::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    let path = batch_job(&dir, &server.url());
    let mut child = cai_process()
        .arg("run")
        .arg(&path)
        .env(KEY_VAR, KEY)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    cai_tests::harness::wait_until(
        std::time::Duration::from_secs(120),
        "a batch is in flight after two finished",
        || {
            let (created, in_progress) = server.message_batches();
            created >= 3 && in_progress >= 1
        },
    )
    .await;
    child.start_kill().unwrap();
    assert!(!child.wait().await.unwrap().success());
    let (code, stderr) = cai(&["run", path.to_str().unwrap()], KEY).await;
    assert_eq!(code, 0, "{stderr}");

    // The first 120 prompts are distinct; three calls each, all by batch, none
    // answered twice, and every failed line sent again.
    let out = dir.path("out");
    cai_tests::scenario::check_exactly_once(&out, "sft.jsonl", 120);
    let calls = server.calls();
    assert!(calls.iter().all(|call| call.batch), "a call went direct");
    assert_eq!(server.repeated_answers(), 0, "a request was answered twice");
    let answered: std::collections::HashSet<String> = calls
        .iter()
        .filter(|call| call.fault.is_none())
        .map(|call| call.body.to_string())
        .collect();
    assert_eq!(answered.len(), 120 * 3);
    let failed: Vec<&RecordedCall> = calls.iter().filter(|call| call.fault.is_some()).collect();
    assert!(!failed.is_empty(), "no line failed");
    assert!(
        failed
            .iter()
            .all(|call| answered.contains(&call.body.to_string()))
    );
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let count = |field: &str| manifest[field].as_u64().unwrap();
    assert_eq!(
        (count("model_calls"), count("batch_calls")),
        (120 * 3, 120 * 3)
    );
    let price = (count("tokens_in") as f64 + count("tokens_out") as f64 * 5.0) / 1e6;
    assert!(
        (manifest["cost_usd"].as_f64().unwrap() - price).abs() < 1e-5,
        "{manifest}"
    );
}

/// A verdict judge on the Messages API: Prometheus 2's prompt with its system prompt on top,
/// three written verdicts per order (independent draws, the API taking no seed), each parsed.
#[tokio::test]
async fn a_verdict_judge_votes_on_the_messages_api() {
    let server = ModelServer::start(ServerConfig {
        api_key: Some(KEY.into()),
        verdict: Some(VerdictStyle::Prometheus),
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    let section = "[pairwise]\njudge = \"judge\"\ngenerate = { model = \"judge\" }\n\
                   mode = \"verdict\"\nvotes = 3\njudge_template = \"prometheus2\"";
    let path = job(&dir, "pairwise", section, &server.url(), &["judge"]);
    let (code, stderr) = cai(&["run", path.to_str().unwrap()], KEY).await;
    assert_eq!(code, 0, "{stderr}");
    // 2 candidates and 2 orders × 3 votes per conversation.
    assert_eq!(server.calls().len(), 2 * (2 + 2 * 3));
    let votes = server
        .calls()
        .iter()
        .filter(|c| {
            c.body["system"]
                .as_str()
                .is_some_and(|s| s.starts_with("You are a fair judge"))
        })
        .count();
    assert_eq!(
        votes,
        2 * 2 * 3,
        "Prometheus 2's system prompt on top of every vote"
    );
    let rows = rows(&dir, "preferences.jsonl");
    assert_eq!(rows.len(), 2);
    for row in &rows {
        for reading in row["readings"].as_array().unwrap() {
            assert_eq!(
                (reading["votes"].as_u64(), reading["parsed"].as_u64()),
                (Some(3), Some(3))
            );
        }
    }
}
