//! Every chat request the pipelines can send, through a strict chat template (Mistral's refuses
//! two user turns in a row, an assistant turn first, or a system turn in the middle): every
//! mode of both pipelines (verdict mode's templates included), with few-shot demonstrations, kept history, a given first answer,
//! system turns and multi-turn conversations; and round 1 of `keep_history` critiques the
//! first answer.

use cai_tests::harness::{JobDir, read_jsonl, repo_file, run_job};
use cai_tests::model_server::{ModelServer, RecordedCall, ServerConfig, VerdictStyle};
use serde_json::{Value, json};

/// Conversations of every shape a corpus line can hold, with two candidate answers.
fn corpus(dir: &JobDir) {
    let lines = [
        json!({"messages": [{"role": "user", "content": "How do I sharpen a knife?"}]}),
        json!({"messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a safe household cleaner."}
        ]}),
        json!({"messages": [
            {"role": "user", "content": "I need a gift idea."},
            {"role": "assistant", "content": "For whom?"},
            {"role": "user", "content": "My sister, she likes hiking."}
        ]}),
    ];
    let text: String = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let mut line = line.clone();
            line["id"] = Value::from(i);
            line["good"] = Value::from(format!("a careful answer {i}"));
            line["bad"] = Value::from(format!("a careless answer {i}"));
            line["first"] = Value::from(format!("an existing first answer {i}"));
            format!("{line}\n")
        })
        .collect();
    dir.write("corpus.jsonl", text);
}

fn job(
    dir: &JobDir,
    url: &str,
    name: &str,
    pipeline_section: &str,
    prefill: bool,
) -> std::path::PathBuf {
    dir.write(
        &format!("{name}.toml"),
        format!(
            r#"
name = "{name}"
pipeline = "{pipeline}"
output = "{name}"

[input]
path = "corpus.jsonl"
messages = "messages"
id = "id"

[constitution]
path = "{constitution}"
few_shot = true

{pipeline_section}

[models.m]
backend = "openai"
url = "{url}"
model = "strict"
endpoint = "chat"
prefill = {prefill}
max_concurrency = 4
"#,
            pipeline = if pipeline_section.contains("[pairwise]") {
                "pairwise"
            } else {
                "critique-revise"
            },
            constitution = repo_file("constitutions/default.toml").display()
        ),
    )
}

/// Checks a request alternates as a strict template wants; returns its roles.
fn roles(call: &RecordedCall) -> Vec<String> {
    call.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_chat_request_passes_a_strict_chat_template() {
    // Every generation is answered with a verdict, so verdict mode's votes parse; the other
    // modes take it as any text.
    let server = ModelServer::start(ServerConfig {
        strict_chat: true,
        verdict: Some(VerdictStyle::Prometheus),
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    corpus(&dir);
    let modes = [
        (
            "cr-fresh",
            "[critique_revise]\nmodel = \"m\"\nrevisions = 2\nsft = \"every\"",
            false,
        ),
        (
            "cr-history",
            "[critique_revise]\nmodel = \"m\"\nrevisions = 3\nkeep_history = true",
            false,
        ),
        (
            "cr-given",
            "[critique_revise]\nmodel = \"m\"\nrevisions = 2\ninitial = \"first\"\nkeep_history = true\npreferences = true",
            false,
        ),
        (
            "pw-logprobs",
            "[pairwise]\njudge = \"m\"\ncandidates = [\"good\", \"bad\"]",
            false,
        ),
        (
            "pw-prefill",
            "[pairwise]\njudge = \"m\"\ncandidates = [\"good\", \"bad\"]",
            true,
        ),
        (
            "pw-cot",
            "[pairwise]\njudge = \"m\"\ncandidates = [\"good\", \"bad\"]\nmode = \"cot\"",
            false,
        ),
        (
            "pw-cot-prefill",
            "[pairwise]\njudge = \"m\"\nmode = \"cot\"\ngenerate = { model = \"m\" }",
            true,
        ),
        (
            "pw-verdict",
            "[pairwise]\njudge = \"m\"\ncandidates = [\"good\", \"bad\"]\nmode = \"verdict\"\nvotes = 2",
            false,
        ),
        (
            "pw-prometheus2",
            "[pairwise]\njudge = \"m\"\ngenerate = { model = \"m\" }\nmode = \"verdict\"\njudge_template = \"prometheus2\"",
            false,
        ),
    ];
    for (name, section, prefill) in modes {
        let summary = run_job(&job(&dir, &server.url(), name, section, prefill))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(
            (summary.counts.done, summary.counts.failed),
            (3, 0),
            "{name}: {:?}",
            read_jsonl(&dir.path(&format!("{name}/failed.jsonl")))
        );
    }
    let calls = server.calls();
    assert!(calls.len() > 50);
    for call in &calls {
        let roles = roles(call);
        let continues = call.body.get("continue_final_message") == Some(&Value::Bool(true));
        assert!(!roles.is_empty());
        // What the server enforced, stated once more for the reader.
        let body = if roles[0] == "system" {
            &roles[1..]
        } else {
            &roles[..]
        };
        for (i, role) in body.iter().enumerate() {
            assert_eq!(
                role,
                if i % 2 == 0 { "user" } else { "assistant" },
                "{}",
                call.body
            );
        }
        assert!(continues || body.last().unwrap() == "user", "{}", call.body);
        assert!(!roles[1..].contains(&"system".to_owned()), "{}", call.body);
    }
    // The prefilled judge continues " (" on the assistant's turn; the others do not.
    assert!(calls.iter().any(|c| {
        c.body.get("continue_final_message") == Some(&Value::Bool(true))
            && c.body["messages"].as_array().unwrap().last().unwrap()["content"] == " ("
    }));
}

#[tokio::test]
async fn keep_history_round_one_critiques_the_first_answer() {
    let server = ModelServer::start(ServerConfig {
        strict_chat: true,
        ..ServerConfig::default()
    })
    .await;
    let dir = JobDir::new();
    corpus(&dir);
    let section = "[critique_revise]\nmodel = \"m\"\nrevisions = 2\nkeep_history = true";
    run_job(&job(&dir, &server.url(), "history", section, false))
        .await
        .unwrap();
    let traces = read_jsonl(&dir.path("history/traces.jsonl"));
    assert_eq!(traces.len(), 3);
    for trace in traces {
        let steps = trace["steps"].as_array().unwrap();
        let output = |name: &str| {
            steps.iter().find(|s| s["step"] == name).unwrap()["output"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let (initial, critique_request) = (output("initial"), steps[1]["request"].clone());
        // The critique-1 request: ... the first answer as the assistant, then the request.
        let request = server
            .calls()
            .into_iter()
            .find(|c| {
                let messages = c.body["messages"].as_array().unwrap();
                messages.last().unwrap()["content"] == critique_request
                    && messages.iter().any(|m| m["content"] == initial.as_str())
            })
            .unwrap_or_else(|| panic!("no critique request shows the first answer {initial:?}"));
        let messages = request.body["messages"].as_array().unwrap();
        let n = messages.len();
        assert_eq!(messages[n - 2]["role"], "assistant");
        assert_eq!(messages[n - 2]["content"], initial.as_str());
        // Round 2 sees round 1's critique and revision after the first answer.
        let revision_1 = output("revision-1");
        assert!(server.calls().iter().any(|c| {
            let messages = c.body["messages"].as_array().unwrap();
            let at = |text: &str| messages.iter().position(|m| m["content"] == text);
            matches!((at(&initial), at(&revision_1)), (Some(i), Some(r)) if i < r)
        }));
    }
}
