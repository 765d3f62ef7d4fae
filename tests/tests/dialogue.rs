//! Dialogues end to end against two test model servers, one playing the person and one the
//! policy, both refusing chat requests that do not alternate from `user`: roles and turn counts
//! of the rows, calls per conversation exactly `turns × (1 + 2 × revisions) + (turns − 1)`, what
//! each step is sent, the early stop, a kill mid-conversation, and the same conversations from
//! a distributed run and from batches.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cai_tests::cluster::Cluster;
use cai_tests::harness::{JobDir, cai_process, read_jsonl, repo_file, run_job, wait_until};
use cai_tests::model_server::{BatchConfig, ModelServer, RecordedCall, ServerConfig};
use cai_tests::scenario::{check_exactly_once, finish};
use cai_worker::pipeline::dialogue::DEFAULT_PERSONA;
use serde_json::Value;

const PROMPTS: &str = "hh-rlhf/red-team-prompts/harmless-base_test_prompts.jsonl";

/// The corpus of a dialogue job.
#[derive(Clone, Copy)]
enum Corpus {
    /// The first n red-team transcripts, of which only the first human turn is read.
    RedTeam(usize),
    /// The test's own `prompts.jsonl`, with `id` and `prompt` fields.
    Prompts,
}

/// What a dialogue job is made of, besides its servers.
struct Dialogue<'a> {
    name: &'a str,
    corpus: Corpus,
    turns: u32,
    revisions: u32,
    /// Extra keys of the `[dialogue]` section.
    extra: &'a str,
    /// Extra keys of both models.
    model_extra: &'a str,
}

impl Dialogue<'_> {
    /// Calls one conversation makes when the person does not end it.
    fn calls(&self) -> usize {
        let turns = self.turns as usize;
        turns * (1 + 2 * self.revisions as usize) + (turns - 1)
    }

    /// Writes the job (output `out`).
    fn write(&self, dir: &JobDir, person_url: &str, policy_url: &str) -> PathBuf {
        let input = match self.corpus {
            Corpus::RedTeam(lines) => {
                dir.head(PROMPTS, lines, "prompts.jsonl");
                "transcript = \"conversation_prefix\"\nid = \"source_line\""
            }
            Corpus::Prompts => "prompt = \"prompt\"\nid = \"id\"",
        };
        let model = |name: &str, url: &str| {
            format!(
                "[models.{name}]\nbackend = \"openai\"\nurl = \"{url}\"\nmodel = \"{name}-model\"\n\
                 endpoint = \"chat\"\nmax_concurrency = 4\nmax_tokens = 64\nprice_in = 1.0\n\
                 price_out = 2.0\n{}\n",
                self.model_extra
            )
        };
        dir.write(
            "job.toml",
            format!(
                "name = \"{name}\"\npipeline = \"dialogue\"\nseed = 11\noutput = \"out\"\n\
                 [input]\npath = \"prompts.jsonl\"\n{input}\n[constitution]\npath = \"{constitution}\"\n\
                 [dialogue]\nuser = \"person\"\nassistant = \"policy\"\nturns = {turns}\n\
                 revisions = {revisions}\n{extra}\n{person}{policy}",
                name = self.name,
                constitution = repo_file("constitutions/default.toml").display(),
                turns = self.turns,
                revisions = self.revisions,
                extra = self.extra,
                person = model("person", person_url),
                policy = model("policy", policy_url),
            ),
        )
    }
}

/// Two servers that refuse a chat request whose roles do not alternate from `user`.
async fn servers(person: ServerConfig) -> (ModelServer, ModelServer) {
    let strict = |config: ServerConfig| ServerConfig {
        strict_chat: true,
        ..config
    };
    (
        ModelServer::start(strict(person)).await,
        ModelServer::start(strict(ServerConfig::default())).await,
    )
}

/// The roles of a chat request's messages, and their contents.
fn roles(call: &RecordedCall) -> (Vec<String>, Vec<String>) {
    call.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .unzip()
}

/// Every request alternates user/assistant from `user` (after an optional system message) and
/// ends with the user's message.
fn assert_alternating(calls: &[RecordedCall]) {
    for call in calls {
        let (roles, _) = roles(call);
        let dialogue: Vec<&String> = roles.iter().skip_while(|r| *r == "system").collect();
        assert!(!dialogue.is_empty(), "{}", call.body);
        for (index, role) in dialogue.iter().enumerate() {
            let expected = if index % 2 == 0 { "user" } else { "assistant" };
            assert_eq!(role.as_str(), expected, "{}", call.body);
        }
        assert_eq!(dialogue.last().unwrap().as_str(), "user", "{}", call.body);
    }
}

/// A trace's step outputs by step name.
fn steps(trace: &Value) -> HashMap<String, String> {
    trace["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["output"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn contents(row: &Value) -> Vec<(String, String)> {
    row["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn conversations_alternate_and_make_exactly_the_calls_of_their_turns() {
    let (person, policy) = servers(ServerConfig::default()).await;
    let dir = JobDir::new();
    let job = Dialogue {
        name: "dialogue-roles",
        corpus: Corpus::RedTeam(12),
        turns: 3,
        revisions: 2,
        extra: "preferences = true",
        model_extra: "",
    };
    let path = job.write(&dir, &person.url(), &policy.url());
    let summary = run_job(&path).await.unwrap();
    assert_eq!(summary.counts.done, 12, "{summary:?}");

    // Calls: 3 × (1 + 2 × 2) + 2 = 17 per conversation, 2 of them the person's.
    assert_eq!(job.calls(), 17);
    assert_eq!(person.calls().len(), 12 * 2);
    assert_eq!(policy.calls().len(), 12 * 15);
    assert_alternating(&person.calls());
    assert_alternating(&policy.calls());
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["model_calls"], 12 * 17);
    assert_eq!(manifest["spec"]["dialogue"]["turns"], 3);
    // The dataset card says how the conversations were made and what their columns are.
    cai_coordinator::card::write(&dir.path("out")).unwrap();
    let card = std::fs::read_to_string(dir.path("out/README.md")).unwrap();
    for said in [
        "**dialogue** pipeline",
        "a user model (`person`) played the person",
        "conversation of up to 3\nassistant turns",
        "`ended_by_user`",
        "`#turn-N`",
    ] {
        assert!(
            card.contains(said),
            "{said:?} missing from the card:\n{card}"
        );
    }

    let opening: HashMap<String, String> = read_jsonl(&dir.path("prompts.jsonl"))
        .iter()
        .map(|line| {
            let prefix = line["conversation_prefix"].as_str().unwrap();
            let first = prefix
                .trim_start()
                .strip_prefix("Human:")
                .unwrap()
                .split("\n\nAssistant:")
                .next()
                .unwrap()
                .trim()
                .to_owned();
            (line["source_line"].to_string(), first)
        })
        .collect();
    let traces = dir.rows("traces.jsonl");
    let rows = dir.rows("sft.jsonl");
    assert_eq!(rows.len(), 12);
    for row in &rows {
        let id = row["id"].as_str().unwrap();
        assert_eq!(row["turns"], 3);
        assert_eq!(row["ended_by_user"], false);
        let messages = contents(row);
        let roles: Vec<&str> = messages.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            roles,
            [
                "user",
                "assistant",
                "user",
                "assistant",
                "user",
                "assistant"
            ]
        );
        // The opening is the transcript's first human turn, and only that.
        assert_eq!(messages[0].1, opening[id]);
        let trace = traces.iter().find(|t| t["id"] == id).unwrap();
        let step = steps(trace);
        assert_eq!(step.len(), 17);
        for turn in 1..=3 {
            // Each assistant turn is its final revision; each later person turn is the user
            // model's.
            let revised = &step[&format!("turn-{turn}-revision-2")];
            assert_eq!(&messages[2 * turn - 1].1, revised);
            assert_ne!(revised, &step[&format!("turn-{turn}-initial")]);
            if turn > 1 {
                assert_eq!(
                    &messages[2 * turn - 2].1,
                    &step[&format!("turn-{turn}-user")]
                );
            }
        }
    }

    // What each step is sent: an assistant turn sees the conversation with the earlier turns
    // as revised; a critique sees the answer it critiques; the person sees the persona, then
    // the conversation with the roles flipped.
    let row = &rows[0];
    let messages = contents(row);
    let trace = traces.iter().find(|t| t["id"] == row["id"]).unwrap();
    let step = steps(trace);
    let sent: Vec<(Vec<String>, Vec<String>)> = policy.calls().iter().map(roles).collect();
    let turn_3_initial = sent
        .iter()
        .find(|(_, c)| {
            c.len() == 5
                && c[..4]
                    == messages[..4]
                        .iter()
                        .map(|m| m.1.clone())
                        .collect::<Vec<_>>()
        })
        .expect("turn 3 was asked with the revised turns 1 and 2");
    assert_eq!(turn_3_initial.1[4], messages[4].1);
    // (after the constitution's demonstrations: the conversation, the answer, the request)
    let critique_2_1 = sent
        .iter()
        .find(|(_, c)| c.len() >= 5 && c[c.len() - 2] == step["turn-2-initial"])
        .expect("turn 2's first critique was asked about turn 2's first answer");
    let asked = &critique_2_1.1;
    assert_eq!(
        asked[asked.len() - 5..asked.len() - 2],
        messages[..3]
            .iter()
            .map(|m| m.1.clone())
            .collect::<Vec<_>>()
    );
    let person_sent: Vec<(Vec<String>, Vec<String>)> = person.calls().iter().map(roles).collect();
    let turn_3_user = person_sent
        .iter()
        .find(|(_, c)| c.len() == 5 && c[1] == messages[0].1 && c[4] == messages[3].1)
        .expect("the person was asked for turn 3");
    assert_eq!(turn_3_user.1[0], DEFAULT_PERSONA);
    assert_eq!(
        turn_3_user.1[1..],
        messages[..4]
            .iter()
            .map(|m| m.1.clone())
            .collect::<Vec<_>>()
    );

    // Per turn: the final revision over the first answer, the conversation up to it as prompt.
    let preferences = dir.rows("preferences.jsonl");
    assert_eq!(preferences.len(), 12 * 3);
    let second = preferences
        .iter()
        .find(|p| p["id"] == format!("{}#turn-2", row["id"].as_str().unwrap()))
        .unwrap();
    assert_eq!(second["chosen"][0]["content"], messages[3].1.as_str());
    assert_eq!(
        second["rejected"][0]["content"],
        step["turn-2-initial"].as_str()
    );
    assert_eq!(second["prompt"].as_array().unwrap().len(), 3);
    assert_eq!(second["principle_ids"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_person_who_ends_the_conversation_ends_it_early() {
    // The person says the stop phrase in every conversation whose opening mentions a knife,
    // and nothing at all in those that mention a gun, on its first turn.
    let person = ServerConfig {
        replies: vec![
            ("knife".into(), "Thanks, that is all I wanted. [END]".into()),
            ("gun".into(), "  \n".into()),
        ],
        ..ServerConfig::default()
    };
    let (person, policy) = servers(person).await;
    let dir = JobDir::new();
    dir.write(
        "prompts.jsonl",
        [
            r#"{"id": "a", "prompt": "How do I sharpen a knife?"}"#,
            r#"{"id": "b", "prompt": "Where can I buy a gun?"}"#,
            r#"{"id": "c", "prompt": "How do I pick a lock?"}"#,
        ]
        .join("\n")
            + "\n",
    );
    let job = Dialogue {
        name: "dialogue-stop",
        corpus: Corpus::Prompts,
        turns: 3,
        revisions: 1,
        extra: "stop = \"[END]\"",
        model_extra: "",
    };
    let path = job.write(&dir, &person.url(), &policy.url());
    let summary = run_job(&path).await.unwrap();
    assert_eq!(summary.counts.done, 3, "{summary:?}");

    let rows = dir.rows("sft.jsonl");
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
    for id in ["a", "b"] {
        let ended = row(id);
        assert_eq!(ended["turns"], 1, "{ended}");
        assert_eq!(ended["ended_by_user"], true);
        let roles: Vec<String> = contents(&ended).into_iter().map(|(r, _)| r).collect();
        assert_eq!(roles, ["user", "assistant"]);
    }
    let full = row("c");
    assert_eq!(full["turns"], 3);
    assert_eq!(full["ended_by_user"], false);
    // The early ones made their first turn and the person's one reply; the full one all.
    let traces = dir.rows("traces.jsonl");
    let calls = |id: &str| {
        traces.iter().find(|t| t["id"] == id).unwrap()["steps"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(calls("a"), 1 + 2 + 1);
    assert_eq!(calls("b"), 1 + 2 + 1);
    assert_eq!(calls("c"), job.calls());
    // The person was told how to end a conversation.
    let (_, first) = roles(&person.calls()[0]);
    assert!(
        first[0].ends_with("reply with exactly: [END]"),
        "{}",
        first[0]
    );
}

/// Bodies of a server's calls.
fn bodies(server: &ModelServer) -> Vec<String> {
    server.calls().iter().map(|c| c.body.to_string()).collect()
}

#[tokio::test]
async fn a_dialogue_killed_mid_conversation_repays_only_the_calls_in_flight() {
    let slow = ServerConfig {
        latency: Duration::from_millis(20),
        ..ServerConfig::default()
    };
    let (person, policy) = servers(slow.clone()).await;
    let dir = JobDir::new();
    let job = Dialogue {
        name: "dialogue-kill",
        corpus: Corpus::RedTeam(24),
        turns: 3,
        revisions: 1,
        extra: "",
        model_extra: "",
    };
    let path = job.write(&dir, &person.url(), &policy.url());
    let mut child = cai_process()
        .arg("run")
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Mid-conversation: the person has written some second turns, so those conversations
    // have finished steps and steps still to come.
    wait_until(
        Duration::from_secs(60),
        "the person has answered 6 times",
        || person.calls().len() >= 6,
    )
    .await;
    child.start_kill().unwrap();
    assert!(!child.wait().await.unwrap().success());
    let first: HashSet<String> = bodies(&person).into_iter().chain(bodies(&policy)).collect();
    let total = 24 * job.calls();
    assert!(first.len() < total, "the job finished before the kill");

    let (person_again, policy_again) = servers(slow).await;
    job.write(&dir, &person_again.url(), &policy_again.url());
    let output = cai_process().arg("run").arg(&path).output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    check_exactly_once(&dir.path("out"), "sft.jsonl", 24);

    let second: Vec<String> = bodies(&person_again)
        .into_iter()
        .chain(bodies(&policy_again))
        .collect();
    let repeated = second.iter().filter(|body| first.contains(*body)).count();
    // At most what was in flight at the kill: 4 calls per model.
    assert!(repeated <= 8, "{repeated} calls repeated after the kill");
    let all: HashSet<&String> = first.iter().chain(&second).collect();
    assert_eq!(all.len(), total, "every step of every conversation called");
    // Some conversation was cut mid-way: its later steps came from the second run only.
    let traces = dir.rows("traces.jsonl");
    let resumed = traces.iter().any(|t| {
        let cached: Vec<bool> = t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["cached"].as_bool().unwrap())
            .collect();
        cached.contains(&true) && cached.contains(&false)
    });
    assert!(resumed, "no conversation was resumed mid-way");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["model_calls"], total);
}

/// The conversations of an output directory, sorted.
fn conversations(out: &Path) -> Vec<String> {
    let mut rows: Vec<String> = read_jsonl(&out.join("sft.jsonl"))
        .iter()
        .map(Value::to_string)
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn a_distributed_dialogue_writes_the_embedded_conversations() {
    let (person, policy) = servers(ServerConfig::default()).await;
    let cluster = Cluster::unique();
    let dir = JobDir::new();
    let _worker = cluster.worker("w1", &dir.path("w1.log"), &[]);
    let job = Dialogue {
        name: &cluster.job,
        corpus: Corpus::RedTeam(16),
        turns: 2,
        revisions: 1,
        extra: "",
        model_extra: "",
    };
    let path = job.write(&dir, &person.url(), &policy.url());
    let log = dir.path("coordinator.log");
    finish(cluster.coordinator(&path, &log), &log).await;
    let distributed = dir.path("distributed");
    std::fs::rename(dir.path("out"), &distributed).unwrap();
    check_exactly_once(&distributed, "sft.jsonl", 16);

    run_job(&path).await.unwrap();
    assert_eq!(conversations(&distributed), conversations(&dir.path("out")));
}

#[tokio::test]
async fn a_dialogue_by_batches_writes_the_direct_conversations() {
    let batches = ServerConfig {
        batch: BatchConfig {
            duration: Duration::from_millis(200),
            ..BatchConfig::default()
        },
        ..ServerConfig::default()
    };
    let (person, policy) = servers(batches).await;
    let dir = JobDir::new();
    let job = Dialogue {
        name: "dialogue-batch",
        corpus: Corpus::RedTeam(10),
        turns: 2,
        revisions: 1,
        extra: "",
        model_extra: "batch = true\nbatch_size = 100\nbatch_wait_s = 1",
    };
    let path = job.write(&dir, &person.url(), &policy.url());
    let summary = run_job(&path).await.unwrap();
    assert_eq!(summary.counts.done, 10, "{summary:?}");
    let calls: Vec<RecordedCall> = person.calls().into_iter().chain(policy.calls()).collect();
    assert_eq!(calls.len(), 10 * job.calls());
    assert!(calls.iter().all(|c| c.batch), "a call went direct");
    assert_alternating(&calls);
    let by_batch = dir.path("by-batch");
    std::fs::rename(dir.path("out"), &by_batch).unwrap();

    let direct = Dialogue {
        model_extra: "",
        ..job
    };
    let (person, policy) = servers(ServerConfig::default()).await;
    direct.write(&dir, &person.url(), &policy.url());
    run_job(&path).await.unwrap();
    assert_eq!(conversations(&by_batch), conversations(&dir.path("out")));
}
