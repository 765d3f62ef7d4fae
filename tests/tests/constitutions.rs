//! Constitutions as people publish them, end to end against the test model server: Hugging
//! Face's Grok constitution as published (a demonstration of a two-turn conversation), and a
//! directory in the shapes of Anthropic's prompt files driving both pipelines, its judge
//! demonstrations shown to the judge.

use cai_tests::harness::{JobDir, data_file, run_job};
use cai_tests::model_server::{ModelServer, ServerConfig};
use serde_json::json;

const PROMPTS: &str = "hh-rlhf/red-team-prompts/harmless-base_test_prompts.jsonl";

fn job(
    dir: &JobDir,
    name: &str,
    constitution: &std::path::Path,
    section: &str,
    url: &str,
) -> std::path::PathBuf {
    dir.head(PROMPTS, 6, "prompts.jsonl");
    dir.write(
        &format!("{name}.toml"),
        format!(
            r#"
name = "{name}"
pipeline = "{pipeline}"
output = "{name}"

[input]
path = "prompts.jsonl"
prompt = "prompt"
id = "source_line"

[constitution]
path = "{constitution}"
few_shot = true

{section}

[models.m]
backend = "openai"
url = "{url}"
model = "m"
endpoint = "completions"
max_concurrency = 4
"#,
            pipeline = if section.contains("[pairwise]") {
                "pairwise"
            } else {
                "critique-revise"
            },
            constitution = constitution.display()
        ),
    )
}

/// Five small files of our own in the shapes of Anthropic's `prompts/` directory.
fn anthropic_dir(dir: &JobDir) -> std::path::PathBuf {
    let files = [
        (
            "CritiqueRevisionInstructions.json",
            json!({
                "kind0": {
                    "prompt": ["\n\nCritiqueRequest: Point out anything unkind in the reply.\n\nCritique:"],
                    "edit_request": "\n\nRevisionRequest: Rewrite the reply to be kind.\n\nRevision:"
                },
                "kind1": {
                    "prompt": ["\n\nCritiqueRequest: Point out anything untrue in the reply.\n\nCritique:"],
                    "edit_request": "\n\nRevisionRequest: Rewrite the reply to be true.\n\nRevision:"
                }
            }),
        ),
        (
            "CritiqueRevisionFewShotPrompts.json",
            json!([
                "\n\nHuman: Is the sea salty?\n\nAssistant: No.\n\nCritiqueRequest: Point out anything untrue in the reply.\n\nCritique: The sea is salty.\n\nRevisionRequest: Rewrite the reply to be true.\n\nRevision: Yes, sea water is salty.\n\nHuman:"
            ]),
        ),
        (
            "RLMadisonInstructions.json",
            json!([
                "\nWhich reply is kinder? Options:",
                "\nWhich reply is more truthful? Options:"
            ]),
        ),
        (
            "RLMadisonFewShotPrompts.json",
            json!([{
                "prompt": "\n\nHuman: My cat knocked over a glass.\n\nAssistant:",
                "corrects": ["Cats are curious; moving glasses away from edges helps."],
                "incorrects": ["Get rid of the cat."]
            }]),
        ),
        (
            "RLMadisonPrecogFewShotPrompts.json",
            json!([{"prompt": "Human: Consider this conversation:\n\nH: Hello\n\n{}\n (A) [[[Hi there]]]\n (B) [[[Leave me alone]]]\n\nAssistant: Let's think step by step: (A) is warmer.\n\nHuman:\nSo the answer is: (A)"}]),
        ),
    ];
    let folder = dir.path("anthropic");
    std::fs::create_dir_all(&folder).unwrap();
    for (name, value) in files {
        std::fs::write(folder.join(name), value.to_string()).unwrap();
    }
    folder
}

#[tokio::test]
async fn the_grok_constitution_runs_as_published() {
    let server = ModelServer::start(ServerConfig::default()).await;
    let dir = JobDir::new();
    let grok = data_file("constitutions/huggingface-llm-swarm/constituion_grok.json");
    let section = "[critique_revise]\nmodel = \"m\"\nrevisions = 1";
    let summary = run_job(&job(&dir, "grok", &grok, section, &server.url()))
        .await
        .unwrap();
    assert_eq!((summary.counts.done, summary.counts.failed), (6, 0));
    // The two-turn demonstration is shown whole, its second human turn included.
    assert!(server.calls().iter().any(|c| {
        c.prompt_text()
            .unwrap()
            .contains("What is the anomalous perihelion precession of Mercury")
    }));
}

#[tokio::test]
async fn a_directory_of_anthropic_prompt_files_drives_both_pipelines() {
    let server = ModelServer::start(ServerConfig::default()).await;
    let dir = JobDir::new();
    let folder = anthropic_dir(&dir);

    let section = "[critique_revise]\nmodel = \"m\"\nrevisions = 2";
    let summary = run_job(&job(&dir, "sl", &folder, section, &server.url()))
        .await
        .unwrap();
    assert_eq!((summary.counts.done, summary.counts.failed), (6, 0));
    let sl_calls = server.calls();
    // The requests carry the bare principle text under the paper's labels, after the demo.
    assert!(sl_calls.iter().any(|c| {
        let text = c.prompt_text().unwrap();
        text.contains("\n\nCritiqueRequest: Point out anything un")
            && text.contains("Revision: Yes, sea water is salty.")
            && !text.contains("Critique:\n\nCritique:")
    }));

    for (name, mode) in [("rl", "logprobs"), ("rl-cot", "cot")] {
        let section =
            format!("[pairwise]\njudge = \"m\"\ngenerate = {{ model = \"m\" }}\nmode = \"{mode}\"");
        let summary = run_job(&job(&dir, name, &folder, &section, &server.url()))
            .await
            .unwrap();
        assert_eq!(
            (summary.counts.done, summary.counts.failed),
            (6, 0),
            "{name}"
        );
    }
    let judged: Vec<String> = server
        .calls()
        .iter()
        .filter(|c| c.judge)
        .map(|c| c.prompt_text().unwrap())
        .collect();
    assert_eq!(judged.len(), 2 * 6 * 2);
    for text in &judged {
        assert!(
            text.contains("Which reply is kinder?")
                || text.contains("Which reply is more truthful?"),
            "{text}"
        );
    }
    // logprobs: the judge demonstration, answered, before the question.
    assert!(judged.iter().any(|t| {
        t.contains("Cats are curious; moving glasses away from edges helps.")
            && t.contains("(B) Get rid of the cat.\nThe answer is: (A)")
    }));
    // cot: Anthropic's chain-of-thought demonstration with a principle in its slot.
    assert!(judged.iter().any(|t| {
        t.contains("Let's think step by step: (A) is warmer.")
            && (t.contains("H: Hello\n\nWhich reply is") && !t.contains("{}"))
    }));
}
