//! The test server's Batch API, spoken to as a client of OpenAI's would: a line is answered as
//! a direct call of its body is, failed lines land in the error file, batches expire and are
//! cancelled, and the request log and counts see every line.

use std::time::Duration;

use cai_tests::harness::eventually;
use cai_tests::model_server::{BatchConfig, ModelServer, ServerConfig};
use serde_json::{Value, json};

/// Uploads `lines` as a batch input file and creates a batch on `endpoint`; returns its id.
async fn submit(client: &reqwest::Client, url: &str, endpoint: &str, lines: &[Value]) -> String {
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(text.into_bytes()).file_name("batch.jsonl"),
        );
    let file: Value = client
        .post(format!("{url}/files"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (file["object"].clone(), file["purpose"].clone()),
        (json!("file"), json!("batch"))
    );
    let batch: Value = client
        .post(format!("{url}/batches"))
        .json(&json!({
            "input_file_id": file["id"],
            "endpoint": endpoint,
            "completion_window": "24h",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(batch["status"], "in_progress");
    batch["id"].as_str().unwrap().to_owned()
}

/// Polls batch `id` until it is in a final state; returns it.
async fn finished(client: &reqwest::Client, url: &str, id: &str) -> Value {
    eventually(Duration::from_secs(30), "the batch finishes", || async {
        let batch: Value = client
            .get(format!("{url}/batches/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let done = ["completed", "expired", "cancelled", "failed"];
        done.contains(&batch["status"].as_str().unwrap())
            .then_some(batch)
    })
    .await
}

/// The lines of a file (none for a null id).
async fn file_lines(client: &reqwest::Client, url: &str, id: &Value) -> Vec<Value> {
    let Some(id) = id.as_str() else {
        return Vec::new();
    };
    let text = client
        .get(format!("{url}/files/{id}/content"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn chat_line(n: usize, judge: bool) -> Value {
    let mut body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": format!("question {n}")}],
        "max_tokens": 16,
        "seed": n,
    });
    if judge {
        body["logprobs"] = true.into();
        body["top_logprobs"] = 5.into();
    }
    json!({"custom_id": format!("c-{n}"), "method": "POST", "url": "/v1/chat/completions", "body": body})
}

#[tokio::test]
async fn a_line_gets_the_answer_a_direct_call_of_its_body_gets() {
    let server = ModelServer::start(ServerConfig::default()).await;
    let (url, client) = (server.url(), reqwest::Client::new());
    let mut lines = vec![chat_line(0, false), chat_line(1, true)];
    lines.push(
        json!({"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
        "body": {"messages": []}}),
    );
    let id = submit(&client, &url, "/v1/chat/completions", &lines).await;
    let batch = finished(&client, &url, &id).await;
    assert_eq!(batch["status"], "completed");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 3, "completed": 2, "failed": 1})
    );
    let output = file_lines(&client, &url, &batch["output_file_id"]).await;
    assert_eq!(output.len(), 2);
    for line in &output {
        let n: usize = line["custom_id"].as_str().unwrap()[2..].parse().unwrap();
        assert_eq!(line["response"]["status_code"], 200);
        assert!(line["error"].is_null() && line["response"]["request_id"].is_string());
        let direct: Value = client
            .post(format!("{url}/chat/completions"))
            .json(&lines[n]["body"])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(line["response"]["body"], direct, "line {n}");
    }
    let errors = file_lines(&client, &url, &batch["error_file_id"]).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (
            errors[0]["custom_id"].clone(),
            errors[0]["response"]["status_code"].clone()
        ),
        (json!("bad"), json!(400))
    );
    let calls = server.calls();
    assert_eq!(calls.iter().filter(|call| call.batch).count(), 3);
    assert_eq!(calls.iter().filter(|call| !call.batch).count(), 2);
    assert!(
        calls
            .iter()
            .filter(|call| call.batch)
            .any(|call| call.judge)
    );
    // The direct calls repeated the two bodies the batch had answered.
    assert_eq!(server.repeated_answers(), 2);
}

#[tokio::test]
async fn failed_lines_go_to_the_error_file_and_succeed_when_sent_again() {
    let server = ModelServer::start(ServerConfig {
        batch: BatchConfig {
            failed_lines: 0.3,
            ..BatchConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let (url, client) = (server.url(), reqwest::Client::new());
    let mut pending: Vec<Value> = (0..60).map(|n| chat_line(n, n % 2 == 0)).collect();
    let mut rounds = 0;
    let mut answered = 0;
    while !pending.is_empty() {
        rounds += 1;
        assert!(rounds <= 10, "lines keep failing: {}", pending.len());
        let id = submit(&client, &url, "/v1/chat/completions", &pending).await;
        let batch = finished(&client, &url, &id).await;
        answered += file_lines(&client, &url, &batch["output_file_id"])
            .await
            .len();
        let failed: Vec<String> = file_lines(&client, &url, &batch["error_file_id"])
            .await
            .iter()
            .map(|line| {
                assert_eq!(line["response"]["status_code"], 500);
                line["custom_id"].as_str().unwrap().to_owned()
            })
            .collect();
        if rounds == 1 {
            assert!((5..30).contains(&failed.len()), "{}", failed.len());
        }
        pending.retain(|line| failed.iter().any(|id| line["custom_id"] == id.as_str()));
    }
    assert!(rounds >= 2);
    assert_eq!(answered, 60);
    let faults = server
        .calls()
        .iter()
        .filter(|call| call.fault == Some("500"))
        .count();
    assert_eq!(server.calls().len(), 60 + faults);
    assert_eq!(server.repeated_answers(), 0);
}

#[tokio::test]
async fn a_batch_expires_with_half_its_lines_and_one_is_cancelled_with_none() {
    let server = ModelServer::start(ServerConfig {
        batch: BatchConfig {
            expire_first: 1,
            duration: Duration::from_millis(200),
            ..BatchConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let (url, client) = (server.url(), reqwest::Client::new());
    let lines: Vec<Value> = (0..10).map(|n| chat_line(n, false)).collect();
    let id = submit(&client, &url, "/v1/chat/completions", &lines).await;
    assert_eq!(server.batches(), (1, 1));
    let batch = finished(&client, &url, &id).await;
    assert_eq!(batch["status"], "expired");
    assert_eq!(
        file_lines(&client, &url, &batch["output_file_id"])
            .await
            .len(),
        5
    );
    let errors = file_lines(&client, &url, &batch["error_file_id"]).await;
    assert_eq!(errors.len(), 5);
    assert!(
        errors
            .iter()
            .all(|line| line["error"]["code"] == "batch_expired")
    );

    let id = submit(&client, &url, "/v1/chat/completions", &lines).await;
    let cancelled: Value = client
        .post(format!("{url}/batches/{id}/cancel"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelling");
    let batch = finished(&client, &url, &id).await;
    assert_eq!(batch["status"], "cancelled");
    assert!(batch["output_file_id"].is_null());
    let errors = file_lines(&client, &url, &batch["error_file_id"]).await;
    assert!(
        errors.len() == 10
            && errors
                .iter()
                .all(|line| line["error"]["code"] == "batch_cancelled")
    );
    let listed: Value = client
        .get(format!("{url}/batches"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"][0]["id"], id.as_str(), "newest first");
    // Only the five lines of the expired batch were answered, each once.
    assert_eq!(server.calls().len(), 5);
    assert_eq!(server.batches(), (2, 0));
}
