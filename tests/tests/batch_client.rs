//! Batch mode of the `openai` and `anthropic` backends against the test server's batch APIs:
//! calls are gathered into batches and answered as direct calls are, failed lines go into later
//! batches (and only they), a refused line fails its call, and a process that meets calls recorded in a batch
//! another process submitted waits for that batch instead of paying for them again.

use std::sync::Arc;
use std::time::Duration;

use cai_common::job::ModelSpec;
use cai_common::state::StateStore;
use cai_common::state::embedded::EmbeddedState;
use cai_tests::harness::wait_until;
use cai_tests::model_server::{BatchConfig, ModelServer, ServerConfig, p_first, reply_for};
use cai_worker::model::letters::probability_of_a;
use cai_worker::model::{Model, ModelError, Prompt, Speaker, Turn};
use serde_json::{Value, json};

fn spec(url: &str, endpoint: &str, extra: Value) -> ModelSpec {
    batch_spec(
        json!({"backend": "openai", "url": url, "model": "test-model", "endpoint": endpoint}),
        extra,
    )
}

/// A model in batch mode (10 lines a batch, gathered for a second, 64 tokens a call) of the
/// backend `model` sets, with the fields of `extra` over those.
fn batch_spec(mut model: Value, extra: Value) -> ModelSpec {
    let defaults = json!({"max_tokens": 64, "batch": true, "batch_size": 10, "batch_wait_s": 1});
    for fields in [defaults, extra] {
        for (key, value) in fields.as_object().expect("fields are an object") {
            model[key] = value.clone();
        }
    }
    serde_json::from_value(model).expect("a valid model spec")
}

/// Model `name` of `spec`, bound to job `job` in `state`.
fn model(spec: &ModelSpec, state: &Arc<dyn StateStore>) -> Arc<dyn Model> {
    let model = cai_worker::model::build("policy", spec).unwrap();
    model.bind("batch-job", state);
    model
}

fn prompt(n: usize) -> Prompt {
    Prompt {
        turns: vec![Turn::new(Speaker::Human, format!("question {n}"))],
        reply_as: Some(Speaker::Assistant),
        prefill: None,
    }
}

fn state() -> Arc<dyn StateStore> {
    Arc::new(EmbeddedState::default())
}

/// Runs `calls` generations at once, prompts `0..calls`, seed `n` for prompt `n`.
/// Makes calls `0..calls` at once and checks that each got the server's reply to its prompt
/// and seed.
async fn answers_all(model: &Arc<dyn Model>, calls: usize) {
    answers_all_seeded(model, calls, |n| n as u64).await;
}

/// As [`answers_all`], the server's reply being to the seed `seed(n)` of call `n`.
async fn answers_all_seeded(model: &Arc<dyn Model>, calls: usize, seed: fn(usize) -> u64) {
    for (n, result) in generate_all(model, calls).await.into_iter().enumerate() {
        assert_eq!(
            result.unwrap().text,
            reply_for(&format!("question {n}"), seed(n))
        );
    }
}

async fn generate_all(
    model: &Arc<dyn Model>,
    calls: usize,
) -> Vec<Result<cai_worker::model::Generation, ModelError>> {
    let tasks: Vec<_> = (0..calls)
        .map(|n| {
            let model = model.clone();
            tokio::spawn(async move { model.generate(&prompt(n), n as u64).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test]
async fn calls_are_gathered_into_batches_and_answered_as_direct_calls_are() {
    let server = ModelServer::start(ServerConfig::default()).await;
    for endpoint in ["chat", "completions"] {
        let model = model(&spec(&server.url(), endpoint, json!({})), &state());
        let results = generate_all(&model, 25).await;
        for (n, result) in results.into_iter().enumerate() {
            let text = match endpoint {
                "chat" => format!("question {n}"),
                _ => prompt(n).transcript(),
            };
            assert_eq!(result.unwrap().text, reply_for(&text, n as u64));
        }
        let judgment = model.judge(&prompt(7), 7).await.unwrap();
        let text = match endpoint {
            "chat" => "question 7".to_owned(),
            _ => prompt(7).transcript(),
        };
        let p = probability_of_a(&judgment.positions).unwrap();
        assert!((p - p_first(&text)).abs() < 1e-9, "{p}");
    }
    // 25 calls in batches of at most 10, and the judgment alone, per endpoint.
    assert_eq!(server.batches(), (8, 0));
    let calls = server.calls();
    assert_eq!(calls.len(), 52);
    assert!(calls.iter().all(|call| call.batch), "a call went direct");
    assert_eq!(calls.iter().filter(|call| call.judge).count(), 2);
    assert_eq!(server.repeated_answers(), 0);
}

#[tokio::test]
async fn failed_lines_go_into_later_batches_and_only_they() {
    let server = ModelServer::start(ServerConfig {
        batch: BatchConfig {
            failed_lines: 0.2,
            expire_first: 1,
            ..BatchConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let model = model(
        &spec(&server.url(), "chat", json!({"max_retries": 8})),
        &state(),
    );
    answers_all(&model, 30).await;
    let calls = server.calls();
    let failed = calls.iter().filter(|call| call.fault.is_some()).count();
    assert!(failed > 0, "no line failed");
    // The first batch expired with half its 10 lines answered: the other five were never
    // answered, so they were sent again without being logged twice.
    assert_eq!(calls.len(), 30 + failed);
    assert_eq!(server.repeated_answers(), 0);
}

#[tokio::test]
async fn a_refused_line_fails_its_call_for_good() {
    let server = ModelServer::start(ServerConfig {
        strict_chat: true,
        ..ServerConfig::default()
    })
    .await;
    let model = model(&spec(&server.url(), "chat", json!({})), &state());
    let ends_with_the_assistant = Prompt {
        turns: vec![
            Turn::new(Speaker::Human, "hi"),
            Turn::new(Speaker::Assistant, "hello"),
        ],
        reply_as: None,
        prefill: None,
    };
    match model.generate(&ends_with_the_assistant, 1).await {
        Err(ModelError::SampleFatal(message)) => {
            assert!(message.contains("400"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.calls().len(), 1, "a refused line is not sent again");
}

#[tokio::test]
async fn calls_recorded_in_a_batch_wait_for_it_in_another_process() {
    let server = ModelServer::start(ServerConfig {
        batch: BatchConfig {
            duration: Duration::from_secs(2),
            ..BatchConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let state = state();
    let spec = spec(&server.url(), "chat", json!({}));
    // The first process: a runtime of its own, shut down with its batch in flight, which ends
    // its batcher and every call of it.
    let first = tokio::runtime::Runtime::new().unwrap();
    let calls = {
        let (spec, state) = (spec.clone(), state.clone());
        first.spawn(async move { generate_all(&model(&spec, &state), 10).await })
    };
    wait_until(Duration::from_secs(30), "a batch is in progress", || {
        server.batches().1 == 1
    })
    .await;
    first.shutdown_background();
    assert!(calls.await.unwrap_err().is_cancelled());
    assert_eq!(state.batch_records("batch-job").await.unwrap().len(), 1);
    let second = model(&spec, &state);
    answers_all(&second, 10).await;
    assert_eq!(server.batches().0, 1, "the calls were submitted again");
    assert_eq!(server.calls().len(), 10);
    assert_eq!(server.repeated_answers(), 0);
}

#[tokio::test]
async fn a_line_that_keeps_failing_fails_its_call_after_max_retries() {
    let server = ModelServer::start(ServerConfig {
        batch: BatchConfig {
            failed_lines: 1.0,
            ..BatchConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let model = model(
        &spec(&server.url(), "chat", json!({"max_retries": 2})),
        &state(),
    );
    match model.generate(&prompt(0), 0).await {
        Err(ModelError::Retryable {
            attempts,
            unreachable: false,
            ..
        }) => assert_eq!(attempts, 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.batches().0, 3);
    assert_eq!(server.calls().len(), 3);
}

#[tokio::test]
async fn a_create_whose_reply_was_lost_is_found_not_made_again() {
    let server = ModelServer::start(ServerConfig {
        batch: BatchConfig {
            create_reply_delay: Duration::from_secs(3),
            ..BatchConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let spec = spec(&server.url(), "chat", json!({"timeout_s": 1}));
    let model = model(&spec, &state());
    answers_all(&model, 5).await;
    assert_eq!(server.batches().0, 1, "the batch was created twice");
    assert_eq!(server.calls().len(), 5);
}

#[tokio::test]
async fn a_batch_created_by_a_process_killed_before_it_recorded_it_is_found() {
    let server = ModelServer::start(ServerConfig {
        batch: BatchConfig {
            create_reply_delay: Duration::from_secs(30),
            ..BatchConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let state = state();
    let spec = spec(&server.url(), "chat", json!({}));
    let first = tokio::runtime::Runtime::new().unwrap();
    let calls = {
        let (spec, state) = (spec.clone(), state.clone());
        first.spawn(async move { generate_all(&model(&spec, &state), 10).await })
    };
    // Killed after the upload and the create, before the create's reply came back: the record
    // names the input file but no batch.
    wait_until(Duration::from_secs(30), "the batch is created", || {
        server.batches().0 == 1
    })
    .await;
    first.shutdown_background();
    assert!(calls.await.unwrap_err().is_cancelled());
    assert_eq!(server.files_uploaded(), 1);
    let second = model(&spec, &state);
    answers_all(&second, 10).await;
    assert_eq!(server.batches().0, 1, "the batch was created again");
    assert_eq!(server.calls().len(), 10);
    assert_eq!(server.repeated_answers(), 0);
}

#[tokio::test]
async fn a_batch_that_cannot_be_read_is_waited_for_later_not_submitted_again() {
    let server = ModelServer::start(ServerConfig {
        batch: BatchConfig {
            failed_polls: 2,
            ..BatchConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let model = model(
        &spec(&server.url(), "chat", json!({"max_retries": 1})),
        &state(),
    );
    // Two polls in a row fail: the call is given back as an outage, its line not resubmitted.
    match model.generate(&prompt(0), 0).await {
        Err(ModelError::Retryable {
            unreachable: true,
            message,
            ..
        }) => assert!(message.contains("waited for again later"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Run again, the call waits for the batch it is recorded in.
    let generation = model.generate(&prompt(0), 0).await.unwrap();
    assert_eq!(generation.text, reply_for("question 0", 0));
    assert_eq!(server.batches().0, 1, "the line was submitted again");
    assert_eq!(server.calls().len(), 1);
}

/// An `anthropic` model in batch mode on the Message Batches stand-in at `url`, its key the
/// value of `PATH` (always set; the stand-in takes any key when none is configured).
fn anthropic_spec(url: &str, extra: Value) -> ModelSpec {
    batch_spec(
        json!({"backend": "anthropic", "url": url, "model": "claude-test", "api_key_env": "PATH"}),
        extra,
    )
}

/// Makes calls `0..calls` at once and checks that each got the stand-in's reply to its prompt
/// (the Messages API takes no seed).
async fn answers_all_unseeded(model: &Arc<dyn Model>, calls: usize) {
    answers_all_seeded(model, calls, |_| 0).await;
}

#[tokio::test]
async fn a_message_batch_whose_create_reply_was_lost_is_found_not_made_again() {
    let server = ModelServer::start(ServerConfig {
        batch: BatchConfig {
            create_reply_delay: Duration::from_secs(3),
            ..BatchConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let spec = anthropic_spec(&server.url(), json!({"timeout_s": 1}));
    answers_all_unseeded(&model(&spec, &state()), 5).await;
    assert_eq!(server.message_batches().0, 1, "the batch was created twice");
    assert_eq!(server.calls().len(), 5);
}

#[tokio::test]
async fn a_message_batch_created_by_a_process_killed_before_it_recorded_it_is_found() {
    let server = ModelServer::start(ServerConfig {
        batch: BatchConfig {
            create_reply_delay: Duration::from_secs(30),
            ..BatchConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let state = state();
    let spec = anthropic_spec(&server.url(), json!({}));
    let first = tokio::runtime::Runtime::new().unwrap();
    let calls = {
        let (spec, state) = (spec.clone(), state.clone());
        first.spawn(async move { generate_all(&model(&spec, &state), 10).await })
    };
    // Killed after the create, before its reply came back: the record names no batch, and the
    // Message Batches API has no input file to find the batch by.
    wait_until(Duration::from_secs(30), "the batch is created", || {
        server.message_batches().0 == 1
    })
    .await;
    first.shutdown_background();
    assert!(calls.await.unwrap_err().is_cancelled());
    answers_all_unseeded(&model(&spec, &state), 10).await;
    assert_eq!(server.message_batches().0, 1, "the batch was created again");
    assert_eq!(server.calls().len(), 10);
    assert_eq!(server.repeated_answers(), 0);
}
