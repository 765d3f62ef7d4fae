//! The two recipes people reproduce, end to end against the test model server: Hugging Face's
//! (critique → revise, then revision ≻ initial preference pairs, labelled by a feedback model
//! reading cai's own output) and the paper's one prompt per human turn of a red-team
//! conversation.

use cai_tests::harness::{JobDir, repo_file, run_job};
use cai_tests::model_server::{ModelServer, ServerConfig};

const PROMPTS: &str = "hh-rlhf/red-team-prompts/harmless-base_test_prompts.jsonl";

#[tokio::test]
async fn sl_preferences_then_ai_feedback_on_them() {
    let server = ModelServer::start(ServerConfig::default()).await;
    let dir = JobDir::new();
    dir.head(PROMPTS, 20, "prompts.jsonl");
    let constitution = repo_file("constitutions/default.toml");
    let model = |name: &str| {
        format!(
            "[models.{name}]\nbackend = \"openai\"\nurl = \"{}\"\nmodel = \"m\"\nendpoint = \"chat\"\nmax_concurrency = 8\n",
            server.url()
        )
    };
    let sl = dir.write(
        "sl.toml",
        format!(
            "name = \"sl\"\npipeline = \"critique-revise\"\noutput = \"sl\"\n[input]\npath = \"prompts.jsonl\"\nprompt = \"prompt\"\nid = \"source_line\"\n[constitution]\npath = \"{}\"\n[critique_revise]\nmodel = \"policy\"\nrevisions = 2\npreferences = true\n{}",
            constitution.display(),
            model("policy")
        ),
    );
    let summary = run_job(&sl).await.unwrap();
    assert_eq!(summary.counts.done, 20);
    let sft = cai_tests::harness::read_jsonl(&dir.path("sl/sft.jsonl"));
    let pairs = cai_tests::harness::read_jsonl(&dir.path("sl/preferences.jsonl"));
    let traces = cai_tests::harness::read_jsonl(&dir.path("sl/traces.jsonl"));
    assert_eq!(pairs.len(), 20);
    for pair in &pairs {
        let id = &pair["id"];
        let trace = traces.iter().find(|t| &t["id"] == id).unwrap();
        let step = |name: &str| {
            trace["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["step"] == name)
                .unwrap()
                .clone()
        };
        // chosen: the final revision (the SFT row's answer); rejected: the first answer.
        let row = sft.iter().find(|r| &r["id"] == id).unwrap();
        let last = row["messages"].as_array().unwrap().last().unwrap()["content"].clone();
        assert_eq!(pair["chosen"][0]["content"], last);
        assert_eq!(pair["chosen"][0]["role"], "assistant");
        assert_eq!(pair["rejected"][0]["content"], step("initial")["output"]);
        assert_eq!(pair["prompt"][0]["role"], "user");
        assert_eq!(
            pair["principle_ids"],
            serde_json::json!([
                step("critique-1")["principle_id"],
                step("critique-2")["principle_id"]
            ])
        );
    }

    // The pairwise job reads those rows as they stand.
    let rl = dir.write(
        "rl.toml",
        format!(
            "name = \"rl\"\npipeline = \"pairwise\"\noutput = \"rl\"\n[input]\npath = \"sl/preferences.jsonl\"\nmessages = \"prompt\"\nid = \"id\"\n[constitution]\npath = \"{}\"\n[pairwise]\njudge = \"feedback\"\ncandidates = [\"chosen\", \"rejected\"]\n{}",
            constitution.display(),
            model("feedback")
        ),
    );
    let summary = run_job(&rl).await.unwrap();
    assert_eq!((summary.counts.done, summary.counts.failed), (20, 0));
    let labels = cai_tests::harness::read_jsonl(&dir.path("rl/preferences.jsonl"));
    assert_eq!(labels.len(), 20);
    for label in &labels {
        let source = pairs.iter().find(|p| p["id"] == label["id"]).unwrap();
        assert_eq!(label["prompt"], source["prompt"]);
        let answers = [
            &source["chosen"][0]["content"],
            &source["rejected"][0]["content"],
        ];
        assert!(answers.contains(&&label["chosen"][0]["content"]));
        assert_eq!(label["readings"].as_array().unwrap().len(), 2);
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("rl/manifest.json")).unwrap())
            .unwrap();
    // Agreement with revision ≻ initial, the order the SL job wrote.
    assert!(manifest["labels"]["human_agreement"].as_f64().is_some());
}

#[tokio::test]
async fn one_sample_per_human_turn_of_the_red_team_conversations() {
    let server = ModelServer::start(ServerConfig::default()).await;
    let dir = JobDir::new();
    dir.head(PROMPTS, 30, "prompts.jsonl");
    let job = dir.write(
        "turns.toml",
        format!(
            "name = \"turns\"\npipeline = \"critique-revise\"\noutput = \"out\"\n[input]\npath = \"prompts.jsonl\"\ntranscript = \"conversation_prefix\"\nturns = \"each\"\nid = \"source_line\"\n[constitution]\npath = \"{}\"\n[critique_revise]\nmodel = \"policy\"\nrevisions = 1\n[models.policy]\nbackend = \"openai\"\nurl = \"{}\"\nmodel = \"m\"\nmax_concurrency = 8\n",
            repo_file("constitutions/default.toml").display(),
            server.url()
        ),
    );
    let summary = run_job(&job).await.unwrap();
    let source: Vec<serde_json::Value> = std::fs::read_to_string(dir.path("prompts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let turns: u64 = source
        .iter()
        .map(|l| l["num_human_turns"].as_u64().unwrap())
        .sum();
    assert!(turns > 30, "the corpus has multi-turn conversations");
    assert_eq!(summary.counts.done + summary.counts.duplicates, turns);
    assert_eq!(summary.counts.failed + summary.counts.rejected, 0);
    let rows = dir.rows("sft.jsonl");
    for line in &source {
        let n = line["num_human_turns"].as_u64().unwrap();
        let id = line["source_line"].as_u64().unwrap();
        for turn in 1..=n {
            let row = rows.iter().find(|r| r["id"] == format!("{id}#{turn}"));
            let Some(row) = row else { continue }; // a duplicate prefix of an earlier line
            let messages = row["messages"].as_array().unwrap();
            let users = messages.iter().filter(|m| m["role"] == "user").count() as u64;
            assert_eq!(users, turn, "{row}");
            assert_eq!(messages[messages.len() - 2]["role"], "user");
        }
    }
}
