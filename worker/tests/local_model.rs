//! The local backend (`backend = "local"`): job-file handling, and generation and judging on
//! the real test model named by `CAI_TEST_MODEL` (fetched by `scripts/fetch-model.sh`; CI
//! always sets it). Tests that need the model say so and pass when it is unset.

use std::path::{Path, PathBuf};

use cai_common::job::{BackendSpec, Job, JobError, ModelSpec};
use cai_worker::model::letters::probability_of_a;
use cai_worker::model::local::LocalModel;
use cai_worker::model::{Model, ModelError, Prompt, Speaker, Turn};

/// The test model, or `None` (saying so) when `CAI_TEST_MODEL` is unset.
fn test_model() -> Option<PathBuf> {
    match std::env::var_os("CAI_TEST_MODEL") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            eprintln!(
                "skipped: CAI_TEST_MODEL is unset (scripts/fetch-model.sh fetches the model)"
            );
            None
        }
    }
}

/// The local model of the GGUF file at `path`, as a job file with these settings builds it.
fn load(
    name: &str,
    path: &Path,
    temperature: f32,
    max_tokens: u32,
) -> Result<LocalModel, ModelError> {
    let spec: ModelSpec = serde_json::from_value(serde_json::json!({
        "backend": "local",
        "path": path,
        "temperature": temperature,
        "max_tokens": max_tokens,
    }))
    .unwrap();
    let BackendSpec::Local(local) = &spec.backend else {
        panic!("a local model: {spec:?}");
    };
    LocalModel::new(name, local, &spec.sampling)
}

fn ask(question: &str) -> Prompt {
    Prompt {
        turns: vec![Turn::new(Speaker::Human, question)],
        reply_as: Some(Speaker::Assistant),
        prefill: None,
    }
}

const JOB: &str = r#"
name = "local-sl"
pipeline = "critique-revise"

[input]
path = "prompts.jsonl"
prompt = "prompt"

[constitution]
path = "constitution.json"

[critique_revise]
model = "policy"

[models.policy]
backend = "local"
path = "../models/smol.gguf"
threads = 2
"#;

#[test]
fn job_file_resolves_the_model_path_and_fingerprints_the_file_not_its_place() {
    let job = Job::parse(JOB, Path::new("jobs/job.toml")).unwrap();
    let BackendSpec::Local(policy) = &job.spec.models["policy"].backend else {
        panic!("a local model");
    };
    assert_eq!(policy.path, Path::new("jobs/../models/smol.gguf"));
    assert_eq!(policy.threads, Some(2));

    let moved = Job::parse(
        &JOB.replace("threads = 2", "threads = 1"),
        Path::new("elsewhere/job.toml"),
    )
    .unwrap();
    assert_eq!(job.spec.fingerprint("c"), moved.spec.fingerprint("c"));
    let other = Job::parse(
        &JOB.replace("smol.gguf", "other.gguf"),
        Path::new("jobs/job.toml"),
    )
    .unwrap();
    assert_ne!(job.spec.fingerprint("c"), other.spec.fingerprint("c"));

    match Job::parse(
        &JOB.replace("path = \"../models/smol.gguf\"", ""),
        Path::new("job.toml"),
    ) {
        Err(JobError::Invalid { field, message, .. }) => {
            assert_eq!(field, "models.policy");
            assert!(message.contains("path"), "{message}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn a_missing_model_file_is_job_fatal_and_names_the_file() {
    match load("policy", Path::new("/nonexistent/model.gguf"), 0.0, 8) {
        Err(ModelError::JobFatal(message)) => {
            assert!(message.contains("/nonexistent/model.gguf"), "{message}")
        }
        Err(other) => panic!("expected JobFatal, got {other:?}"),
        Ok(_) => panic!("expected JobFatal, got a model"),
    }
}

#[tokio::test]
async fn generate_returns_text_with_usage_and_repeats_for_a_seed() {
    let Some(path) = test_model() else {
        return;
    };
    let prompt = ask("What is the capital of France?");
    let sampled = load("policy", &path, 0.8, 8).unwrap();
    let first = sampled.generate(&prompt, 7).await.unwrap();
    assert!(!first.text.is_empty());
    assert!(first.usage.tokens_in > 10, "{:?}", first.usage);
    assert!(
        (1..=8).contains(&first.usage.tokens_out),
        "{:?}",
        first.usage
    );
    assert_eq!(sampled.generate(&prompt, 7).await.unwrap(), first);
    let mut others = Vec::new();
    for seed in [8, 9] {
        others.push(sampled.generate(&prompt, seed).await.unwrap().text);
    }
    assert!(
        others.iter().any(|text| *text != first.text),
        "seeds change samples: {others:?}"
    );

    let greedy = load("greedy", &path, 0.0, 8).unwrap();
    let reply = greedy.generate(&prompt, 1).await.unwrap();
    assert!(!reply.text.is_empty());
    assert_eq!(greedy.generate(&prompt, 2).await.unwrap(), reply);
}

#[tokio::test]
async fn judge_reads_option_probabilities_from_the_next_token_logprobs() {
    let Some(path) = test_model() else {
        return;
    };
    let judge = load("judge", &path, 0.0, 16).unwrap();
    let prompt = Prompt {
        turns: vec![Turn::new(
            Speaker::Human,
            "Which of these animals is a mammal?\n\nOptions:\n(A) The dog\n(B) The trout\n\nThe answer is:",
        )],
        reply_as: None,
        prefill: None,
    };
    let judgment = judge.judge(&prompt, 0).await.unwrap();
    assert!((1..=3).contains(&judgment.positions.len()), "{judgment:?}");
    for candidates in &judgment.positions {
        assert_eq!(candidates.len(), 20);
        assert!(candidates.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert!(candidates.iter().all(|c| c.logprob <= 0.0));
    }
    let p = probability_of_a(&judgment.positions)
        .unwrap_or_else(|| panic!("no option letter: {judgment:?}"));
    assert!(p > 0.0 && p < 1.0, "{p}");
    assert!(judgment.usage.tokens_in > 20, "{:?}", judgment.usage);
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_fails_the_sample() {
    let Some(path) = test_model() else {
        return;
    };
    let model = load("policy", &path, 0.0, 8).unwrap();
    match model.generate(&ask(&"word ".repeat(9000)), 0).await {
        Err(ModelError::SampleFatal(message)) => assert!(message.contains("context"), "{message}"),
        other => panic!("expected SampleFatal, got {other:?}"),
    }
}
