//! The `openai` backend against the in-process test model server.

use std::time::{Duration, Instant};

use cai_common::job::ModelSpec;
use cai_tests::model_server::{LogprobFormat, ModelServer, ServerConfig, p_first, reply_for};
use cai_worker::model::letters::probability_of_a;
use cai_worker::model::{ModelError, Prompt, Speaker, Turn};
use serde_json::{Value, json};

/// A variable cargo sets for every test process, used as an API key without touching the
/// environment (setting variables is unsafe).
const KEY_VAR: &str = "CARGO_PKG_NAME";

fn spec(url: &str, endpoint: &str, extra: Value) -> ModelSpec {
    let mut spec = json!({
        "backend": "openai",
        "url": url,
        "model": "test-model",
        "endpoint": endpoint,
        "temperature": 0.7,
        "max_tokens": 64,
        "max_retries": 1,
    });
    for (key, value) in extra.as_object().expect("extra fields are an object") {
        spec[key] = value.clone();
    }
    serde_json::from_value(spec).expect("a valid model spec")
}

fn prompt(question: &str) -> Prompt {
    Prompt {
        turns: vec![
            Turn::new(Speaker::Human, question),
            Turn::new(Speaker::Assistant, "Let me think."),
            Turn::new(
                Speaker::CritiqueRequest,
                "Which answer is better, (A) or (B)?",
            ),
        ],
        reply_as: Some(Speaker::Critique),
        prefill: None,
    }
}

/// The prompt text the server derives its replies from (see `model_server`).
fn prompt_text(prompt: &Prompt, endpoint: &str) -> String {
    match endpoint {
        "chat" => prompt.turns.iter().map(|t| t.text.as_str()).collect(),
        _ => prompt.transcript(),
    }
}

#[tokio::test]
async fn generates_on_both_endpoints() {
    let server = ModelServer::start(ServerConfig::default()).await;
    for endpoint in ["chat", "completions"] {
        let model =
            cai_worker::model::build("policy", &spec(&server.url(), endpoint, json!({}))).unwrap();
        let prompt = prompt("What is 2 + 2?");
        let generation = model.generate(&prompt, 42).await.unwrap();
        assert_eq!(
            generation.text,
            reply_for(&prompt_text(&prompt, endpoint), 42)
        );
        assert!(generation.usage.tokens_in > 0 && generation.usage.tokens_out > 0);
        let other = model
            .generate(&self::prompt("What is 3 + 3?"), 42)
            .await
            .unwrap();
        assert_ne!(other.text, generation.text);
    }

    let calls = server.calls();
    assert_eq!(calls.len(), 4);
    assert!(calls.iter().all(|call| !call.judge));
    let chat = &calls[0];
    assert_eq!(chat.endpoint, "chat");
    assert_eq!(
        chat.body["messages"],
        json!([
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "Let me think."},
            {"role": "user", "content": "Which answer is better, (A) or (B)?"},
        ])
    );
    assert_eq!(chat.body["model"], "test-model");
    assert_eq!(chat.body["max_tokens"], 64);
    assert_eq!(chat.body["temperature"], 0.7);
    assert_eq!(chat.body["seed"], 42);
    let completions = &calls[2];
    assert_eq!(completions.endpoint, "completions");
    assert_eq!(
        completions.body["prompt"],
        prompt("What is 2 + 2?").transcript()
    );
    assert_eq!(completions.body["stop"], json!(Prompt::transcript_stops()));
}

#[tokio::test]
async fn judges_on_both_endpoints_in_both_logprob_formats() {
    for format in [LogprobFormat::Chat, LogprobFormat::Legacy] {
        let server = ModelServer::start(ServerConfig {
            logprob_format: Some(format),
            ..ServerConfig::default()
        })
        .await;
        for endpoint in ["chat", "completions"] {
            let model = cai_worker::model::build(
                "judge",
                &spec(&server.url(), endpoint, json!({"top_logprobs": 5})),
            )
            .unwrap();
            for question in ["Is the sky blue?", "Is water wet?", "Name a prime."] {
                let prompt = prompt(question);
                let judgment = model.judge(&prompt, 7).await.unwrap();
                let expected = p_first(&prompt_text(&prompt, endpoint));
                let read = probability_of_a(&judgment.positions).expect("the letters are there");
                assert!(
                    (read - expected).abs() < 1e-9,
                    "{format:?} on {endpoint}: read {read}, expected {expected}"
                );
                assert!(judgment.positions[0].len() > 2);
                assert!(
                    judgment.text.starts_with([' ', 'A', 'B', '(']),
                    "{:?}",
                    judgment.text
                );
            }
        }
        let calls = server.calls();
        assert!(calls.iter().all(|call| call.judge));
        for call in &calls {
            assert_eq!(call.body["temperature"], 0.0);
            assert_eq!(call.body["max_tokens"], 3);
        }
        let chat = calls.iter().find(|c| c.endpoint == "chat").unwrap();
        assert_eq!(
            (&chat.body["logprobs"], &chat.body["top_logprobs"]),
            (&json!(true), &json!(5))
        );
        let completions = calls.iter().find(|c| c.endpoint == "completions").unwrap();
        assert_eq!(completions.body["logprobs"], 5);
    }
}

#[tokio::test]
async fn default_formats_follow_the_endpoint() {
    let server = ModelServer::start(ServerConfig::default()).await;
    for endpoint in ["chat", "completions"] {
        let model =
            cai_worker::model::build("judge", &spec(&server.url(), endpoint, json!({}))).unwrap();
        let prompt = prompt("Which is kinder?");
        let judgment = model.judge(&prompt, 1).await.unwrap();
        let read = probability_of_a(&judgment.positions).unwrap();
        assert!((read - p_first(&prompt_text(&prompt, endpoint))).abs() < 1e-9);
    }
}

#[tokio::test]
async fn a_judgment_without_letters_reads_no_option() {
    let server = ModelServer::start(ServerConfig {
        no_letters: true,
        ..ServerConfig::default()
    })
    .await;
    let model = cai_worker::model::build("judge", &spec(&server.url(), "chat", json!({}))).unwrap();
    let judgment = model.judge(&prompt("Which one?"), 3).await.unwrap();
    assert!(!judgment.positions.is_empty());
    assert_eq!(probability_of_a(&judgment.positions), None);
}

#[tokio::test]
async fn the_api_key_is_sent_and_a_refused_key_is_job_fatal_naming_the_variable() {
    let key = std::env::var(KEY_VAR).expect("cargo sets CARGO_PKG_NAME for tests");
    let server = ModelServer::start(ServerConfig {
        api_key: Some(key.clone()),
        ..ServerConfig::default()
    })
    .await;
    let model = cai_worker::model::build(
        "policy",
        &spec(&server.url(), "chat", json!({"api_key_env": KEY_VAR})),
    )
    .unwrap();
    model.generate(&prompt("hello"), 1).await.unwrap();

    let refused = ModelServer::start(ServerConfig {
        api_key: Some(format!("not-{key}")),
        ..ServerConfig::default()
    })
    .await;
    let model = cai_worker::model::build(
        "policy",
        &spec(&refused.url(), "chat", json!({"api_key_env": KEY_VAR})),
    )
    .unwrap();
    match model.generate(&prompt("hello"), 1).await {
        Err(ModelError::JobFatal(message)) => {
            assert!(
                message.contains(KEY_VAR) && message.contains("401"),
                "{message}"
            );
            assert!(!message.contains(&key), "{message}");
        }
        other => panic!("expected a job-fatal error, got {other:?}"),
    }
    assert_eq!(refused.calls().len(), 1, "a refused key is not retried");

    let unkeyed =
        cai_worker::model::build("policy", &spec(&refused.url(), "chat", json!({}))).unwrap();
    match unkeyed.generate(&prompt("hello"), 1).await {
        Err(ModelError::JobFatal(message)) => assert!(message.contains("no API key"), "{message}"),
        other => panic!("expected a job-fatal error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_that_is_down_is_retryable_and_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("http://alice:hunter2@127.0.0.1:{port}/v1");
    let model =
        cai_worker::model::build("policy", &spec(&url, "chat", json!({"max_retries": 1}))).unwrap();
    match model.generate(&prompt("anyone there?"), 1).await {
        Err(ModelError::Retryable {
            message,
            unreachable,
            ..
        }) => {
            assert!(unreachable, "{message}");
            assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
            assert!(
                !message.contains("hunter2") && !message.contains("alice"),
                "{message}"
            );
        }
        other => panic!("expected a retryable error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stopped_server_is_unreachable() {
    let server = ModelServer::start(ServerConfig::default()).await;
    let model = cai_worker::model::build(
        "policy",
        &spec(&server.url(), "completions", json!({"max_retries": 0})),
    )
    .unwrap();
    model.generate(&prompt("first"), 1).await.unwrap();
    server.stop().await;
    assert!(matches!(
        model.generate(&prompt("second"), 1).await,
        Err(ModelError::Retryable {
            unreachable: true,
            overloaded: false,
            ..
        })
    ));
}

#[tokio::test]
async fn concurrency_is_bounded_and_slow_replies_time_out() {
    let latency = Duration::from_millis(100);
    let server = ModelServer::start(ServerConfig {
        latency,
        ..ServerConfig::default()
    })
    .await;
    let model = cai_worker::model::build(
        "policy",
        &spec(&server.url(), "chat", json!({"max_concurrency": 1})),
    )
    .unwrap();
    let started = Instant::now();
    let (one, two, three) = (prompt("one"), prompt("two"), prompt("three"));
    let (one, two, three) = tokio::join!(
        model.generate(&one, 1),
        model.generate(&two, 1),
        model.generate(&three, 1)
    );
    assert!(one.is_ok() && two.is_ok() && three.is_ok());
    assert!(started.elapsed() >= 3 * latency, "{:?}", started.elapsed());

    let slow = ModelServer::start(ServerConfig {
        latency: Duration::from_millis(1500),
        ..ServerConfig::default()
    })
    .await;
    let model = cai_worker::model::build(
        "policy",
        &spec(
            &slow.url(),
            "chat",
            json!({"timeout_s": 1, "max_retries": 0}),
        ),
    )
    .unwrap();
    match model.generate(&prompt("slow"), 1).await {
        Err(ModelError::Retryable {
            message,
            unreachable: false,
            overloaded: true,
            ..
        }) => assert!(message.contains("no reply within 1 s"), "{message}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
}
