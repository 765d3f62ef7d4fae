//! The `cai` binary on bad input: every corpus problem is named with its file, line and field and
//! ends in `rejected.jsonl` while the run goes on; bad job files and constitutions stop before
//! anything runs; `validate` and `status` report; exit codes are as documented.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn cai(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cai"))
        .args(args)
        .output()
        .expect("cai runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn default_constitution() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../constitutions/default.toml")
}

fn job_text(constitution: &Path, revisions: &str) -> String {
    format!(
        r#"
name = "bad-input"
pipeline = "critique-revise"
output = "out"

[input]
path = "corpus.jsonl"
prompt = "prompt"
id = "id"

[constitution]
path = "{}"

[critique_revise]
model = "policy"
{revisions}

[models.policy]
backend = "mock"
"#,
        constitution.display()
    )
}

/// A corpus with one of every problem; returns (directory, job path).
fn bad_corpus() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut corpus: Vec<u8> = Vec::new();
    let mut line = |bytes: &[u8]| {
        corpus.extend_from_slice(bytes);
        corpus.push(b'\n');
    };
    line(br#"{"id": "a", "prompt": "hello"}"#); // 1 ok
    line(br#"{"id": "b", "prompt": "#); // 2 malformed JSON
    line(b"{\"id\": \"c\", \"prompt\": \"caf\xe9\"}"); // 3 invalid UTF-8
    line(br#"{"id": "d"}"#); // 4 missing field
    line(br#"{"id": "e", "prompt": 5}"#); // 5 wrong type
    line(br#"{"id": "f", "prompt": "   "}"#); // 6 empty prompt
    let huge = format!(r#"{{"id": "g", "prompt": "{}"}}"#, "x".repeat(10 << 20));
    line(huge.as_bytes()); // 7 a 10 MB prompt
    line(br#"{"id": "a", "prompt": "another question"}"#); // 8 duplicate id
    line(br#"{"id": "h", "prompt": "hello"}"#); // 9 duplicate content of line 1
    line(b""); // 10 blank line
    line(br#"{"id": "i", "prompt": "bye"}"#); // 11 ok
    line(br#"{"id": ["j"], "prompt": "why"}"#); // 12 id of the wrong type
    std::fs::write(dir.path().join("corpus.jsonl"), corpus).unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(&job, job_text(&default_constitution(), "revisions = 1")).unwrap();
    (dir, job)
}

fn rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn bad_lines_are_rejected_with_line_and_field_and_the_run_goes_on() {
    let (dir, job) = bad_corpus();
    let output = cai(&["run", job.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("12 lines read = 2 done + 0 failed + 9 rejected + 1 duplicates"),
        "{}",
        stderr(&output)
    );
    let out = dir.path().join("out");
    let rejected = rows(&out.join("rejected.jsonl"));
    let by_line: Vec<(u64, Option<&str>)> = rejected
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["field"].as_str()))
        .collect();
    assert_eq!(
        by_line,
        vec![
            (2, None),
            (3, None),
            (4, Some("prompt")),
            (5, Some("prompt")),
            (6, Some("prompt")),
            (7, None),
            (8, Some("id")),
            (10, None),
            (12, Some("id")),
        ]
    );
    let reason = |line: u64| {
        rejected.iter().find(|r| r["line"] == line).unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(reason(3).contains("UTF-8"), "{}", reason(3));
    assert!(reason(4).contains("missing"), "{}", reason(4));
    assert!(reason(5).contains("expected a string"), "{}", reason(5));
    assert!(reason(6).contains("empty"), "{}", reason(6));
    assert!(reason(7).contains("1 MiB"), "{}", reason(7));
    assert!(
        reason(8).contains("duplicate id") && reason(8).contains("line 1"),
        "{}",
        reason(8)
    );

    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let counts = &manifest["counts"];
    assert_eq!(counts["lines_read"], 12);
    let sum: u64 = ["done", "failed", "rejected", "duplicates"]
        .iter()
        .map(|k| counts[*k].as_u64().unwrap())
        .sum();
    assert_eq!(sum, 12);
    assert_eq!(rows(&out.join("sft.jsonl")).len(), 2);

    // A re-run adds nothing: not a sample, not a rejected row.
    let again = cai(&["run", job.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(rows(&out.join("rejected.jsonl")).len(), 9);
    assert_eq!(rows(&out.join("sft.jsonl")).len(), 2);
    assert!(
        stderr(&again).contains("this run: 0 model calls"),
        "{}",
        stderr(&again)
    );

    let status = cai(&["status", out.to_str().unwrap()]);
    assert_eq!(status.status.code(), Some(0));
    assert!(
        stdout(&status).contains("2 done, 0 failed; lines rejected: 9"),
        "{}",
        stdout(&status)
    );
    assert!(stdout(&status).contains("complete"), "{}", stdout(&status));
}

#[test]
fn validate_reports_counts_and_bad_lines_without_calling_a_model() {
    let (dir, job) = bad_corpus();
    let output = cai(&["validate", job.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(
        text.contains("corpus: 12 lines = 2 samples + 1 duplicates + 9 rejected"),
        "{text}"
    );
    assert!(
        text.contains("corpus.jsonl:5: field \"prompt\": expected a string"),
        "{text}"
    );
    assert!(
        text.contains("corpus.jsonl:8: field \"id\": duplicate id"),
        "{text}"
    );
    assert!(!dir.path().join("out").exists(), "validate writes nothing");
}

#[test]
fn a_typo_in_the_job_file_names_the_file_line_and_key() {
    let (dir, job) = bad_corpus();
    std::fs::write(&job, job_text(&default_constitution(), "revison = 2")).unwrap();
    for command in ["validate", "run"] {
        let output = cai(&[command, job.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2));
        let text = stderr(&output);
        assert!(
            text.contains("job.toml") && text.contains("line 16") && text.contains("revison"),
            "{text}"
        );
    }
    assert!(!dir.path().join("out").exists());
}

#[test]
fn an_unreadable_constitution_is_named() {
    let (_dir, job) = bad_corpus();
    std::fs::write(
        &job,
        job_text(Path::new("/nonexistent/constitution.toml"), "revisions = 1"),
    )
    .unwrap();
    let output = cai(&["run", job.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("/nonexistent/constitution.toml"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_pairwise_job_refuses_a_constitution_without_judge_questions() {
    let dir = tempfile::tempdir().unwrap();
    let hf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/constitutions/huggingface-llm-swarm/constitution_anthropic.json");
    let job = dir.path().join("job.toml");
    std::fs::write(dir.path().join("pairs.jsonl"), "{\"chosen\": \"\\n\\nHuman: hi\\n\\nAssistant: a\", \"rejected\": \"\\n\\nHuman: hi\\n\\nAssistant: b\"}\n").unwrap();
    std::fs::write(
        &job,
        format!(
            "name = \"pw\"\npipeline = \"pairwise\"\n[input]\npath = \"pairs.jsonl\"\n[constitution]\npath = \"{}\"\n[pairwise]\njudge = \"j\"\ncandidates = [\"chosen\", \"rejected\"]\n[models.j]\nbackend = \"mock\"\n",
            hf.display()
        ),
    )
    .unwrap();
    let output = cai(&["run", job.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.contains("constitution_anthropic.json") && text.contains("judge question"),
        "{text}"
    );
}

#[test]
fn a_critique_revise_job_refuses_a_constitution_without_critique_principles() {
    let dir = tempfile::tempdir().unwrap();
    let constitution = dir.path().join("judge-only.toml");
    std::fs::write(
        &constitution,
        "[[principles]]\nid = \"kind\"\njudge = \"Which answer is kinder?\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("corpus.jsonl"),
        "{\"id\": \"a\", \"prompt\": \"hi\"}\n",
    )
    .unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(&job, job_text(&constitution, "revisions = 1")).unwrap();
    for command in ["validate", "run"] {
        let output = cai(&[command, job.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2));
        let text = stderr(&output);
        assert!(
            text.contains("judge-only.toml") && text.contains("critique and a revision request"),
            "{command}: {text}"
        );
    }
}

#[test]
fn a_changed_spec_is_refused_with_what_changed_unless_new() {
    let (dir, job) = bad_corpus();
    assert_eq!(cai(&["run", job.to_str().unwrap()]).status.code(), Some(0));
    std::fs::write(&job, job_text(&default_constitution(), "revisions = 2")).unwrap();
    let refused = cai(&["run", job.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("critique_revise.revisions: 1 → 2"),
        "{}",
        stderr(&refused)
    );
    assert!(stderr(&refused).contains("--new"));
    let fresh = cai(&["run", "--new", job.to_str().unwrap()]);
    assert_eq!(fresh.status.code(), Some(0), "{}", stderr(&fresh));
    let traces = rows(&dir.path().join("out/traces.jsonl"));
    assert_eq!(traces.len(), 2);
    assert!(traces.iter().all(|t| t["usage"]["calls"] == 5));
}

#[test]
fn log_lines_carry_no_colour_codes_off_a_terminal() {
    let (_dir, job) = bad_corpus();
    let output = Command::new(env!("CARGO_BIN_EXE_cai"))
        .args(["run", job.to_str().unwrap()])
        .env("CAI_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).contains(" DEBUG "), "{}", stderr(&output));
    assert!(!stderr(&output).contains('\u{1b}'), "{:?}", stderr(&output));
}

#[test]
fn init_writes_a_job_that_validates_and_runs_for_each_pipeline() {
    for (pipeline, rows_file) in [
        ("critique-revise", "sft.jsonl"),
        ("pairwise", "preferences.jsonl"),
        ("dialogue", "sft.jsonl"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("First Job");
        let init = cai(&["init", pipeline, target.to_str().unwrap()]);
        assert_eq!(init.status.code(), Some(0), "{}", stderr(&init));
        assert!(stdout(&init).contains("'"), "a path with a space is quoted");
        let job = target.join("job.toml");
        let text = std::fs::read_to_string(&job).unwrap();
        assert!(text.contains("name = \"first-job\""), "{text}");
        assert!(text.contains(&format!("pipeline = \"{pipeline}\"")));

        let validate = cai(&["validate", job.to_str().unwrap()]);
        assert_eq!(validate.status.code(), Some(0), "{}", stdout(&validate));
        assert!(
            stdout(&validate).contains("corpus: 3 lines = 3 samples + 0 duplicates + 0 rejected"),
            "{}",
            stdout(&validate)
        );
        let run = cai(&["run", job.to_str().unwrap()]);
        assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
        assert_eq!(rows(&target.join("out").join(rows_file)).len(), 3);

        let again = cai(&["init", pipeline, target.to_str().unwrap()]);
        assert_eq!(again.status.code(), Some(2));
        assert!(
            stderr(&again).contains("already exists"),
            "{}",
            stderr(&again)
        );
        assert_eq!(
            std::fs::read_to_string(&job).unwrap(),
            text,
            "nothing overwritten"
        );
    }
}

/// Every job file the repository ships validates as it stands, so an example cannot rot: exit 0,
/// or 1 where the shipped data itself has lines the reader rejects (the HH pairs have one with an
/// empty final turn), never 2 (a bad job file, constitution, model or corpus path). `validate`
/// loads no model and reads no API key, so this holds without the test model and without keys.
#[test]
fn every_shipped_job_file_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut jobs: Vec<PathBuf> = ["examples", "deploy/jobs"]
        .iter()
        .flat_map(|folder| std::fs::read_dir(root.join(folder)).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    jobs.sort();
    assert!(jobs.len() >= 5, "{jobs:?}");
    for job in &jobs {
        let output = Command::new(env!("CARGO_BIN_EXE_cai"))
            .arg("validate")
            .arg(job)
            .env_remove("OPENAI_API_KEY")
            .output()
            .unwrap();
        assert!(
            matches!(output.status.code(), Some(0 | 1)) && stdout(&output).contains("corpus: "),
            "{}:\n{}{}",
            job.display(),
            stdout(&output),
            stderr(&output)
        );
    }
}

/// `validate` checks a job whose local model file is not on this machine (it lives on the
/// workers) without loading anything: it says so and succeeds; `run`, which would load it,
/// refuses the job.
#[test]
fn validate_reports_an_absent_model_file_without_loading_it() {
    let (_dir, job) = bad_corpus();
    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(
        &job,
        format!(
            "{text}\n[models.elsewhere]\nbackend = \"local\"\npath = \"/nonexistent/model.gguf\"\n"
        ),
    )
    .unwrap();
    let validate = cai(&["validate", job.to_str().unwrap()]);
    assert_ne!(validate.status.code(), Some(2), "{}", stderr(&validate));
    assert!(
        stdout(&validate)
            .contains("note: model \"elsewhere\": /nonexistent/model.gguf is not on this machine"),
        "{}",
        stdout(&validate)
    );
    let run = cai(&["run", job.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(2));
    assert!(
        stderr(&run).contains("/nonexistent/model.gguf"),
        "{}",
        stderr(&run)
    );
}

#[test]
fn status_of_a_per_turn_job_gives_no_percentage_of_lines() {
    let dir = tempfile::tempdir().unwrap();
    let conversation =
        "\\n\\nHuman: hi\\n\\nAssistant: hello\\n\\nHuman: how are you?\\n\\nAssistant:";
    std::fs::write(
        dir.path().join("corpus.jsonl"),
        format!("{{\"id\": \"a\", \"t\": \"{conversation}\"}}\n"),
    )
    .unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        job_text(&default_constitution(), "revisions = 1").replace(
            "prompt = \"prompt\"",
            "transcript = \"t\"\nturns = \"each\"",
        ),
    )
    .unwrap();
    let run = cai(&["run", job.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let status = cai(&["status", dir.path().join("out").to_str().unwrap()]);
    let text = stdout(&status);
    assert!(
        text.contains("corpus: 1 lines, one sample per human turn; 2 samples settled"),
        "{text}"
    );
    assert!(!text.contains('%'), "{text}");
}

#[test]
fn run_writes_the_report_and_the_card_report_rewrites_them_and_new_removes_only_cai_s() {
    let (dir, job) = bad_corpus();
    let out = dir.path().join("out");
    let run = cai(&["run", job.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert!(stderr(&run).contains("report: "), "{}", stderr(&run));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("id=\"fig-rejected\""), "{html}");
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.starts_with("---\n# Dataset card written by cai"),
        "{card}"
    );
    assert!(card.contains("- config_name: sft"), "{card}");

    // cai report rewrites both, or writes the report elsewhere.
    std::fs::remove_file(out.join("report.html")).unwrap();
    std::fs::remove_file(out.join("README.md")).unwrap();
    let elsewhere = dir.path().join("elsewhere.html");
    let report = cai(&[
        "report",
        out.to_str().unwrap(),
        "--out",
        elsewhere.to_str().unwrap(),
    ]);
    assert_eq!(report.status.code(), Some(0), "{}", stderr(&report));
    assert!(elsewhere.exists() && !out.join("report.html").exists());
    assert!(out.join("README.md").exists());
    assert_eq!(
        cai(&["report", out.to_str().unwrap()]).status.code(),
        Some(0)
    );
    assert!(out.join("report.html").exists());
    assert_eq!(
        cai(&["report", dir.path().to_str().unwrap()]).status.code(),
        Some(2)
    );

    // --new removes the report and cai's card...
    let fresh = cai(&["run", "--new", job.to_str().unwrap()]);
    assert_eq!(fresh.status.code(), Some(0), "{}", stderr(&fresh));
    // ... (written again by the fresh run), but never a README.md someone else wrote.
    std::fs::write(out.join("README.md"), "# notes\n").unwrap();
    std::fs::remove_file(out.join("report.html")).unwrap();
    std::fs::write(out.join("report.html"), "old").unwrap();
    let plan_only = cai(&["run", "--new", job.to_str().unwrap()]);
    assert_eq!(plan_only.status.code(), Some(0), "{}", stderr(&plan_only));
    assert_eq!(
        std::fs::read_to_string(out.join("README.md")).unwrap(),
        "# notes\n"
    );
    assert!(
        stderr(&plan_only).contains("was not written by cai"),
        "{}",
        stderr(&plan_only)
    );
    assert_ne!(
        std::fs::read_to_string(out.join("report.html")).unwrap(),
        "old"
    );
}

#[test]
fn status_shows_the_report_s_headline_figures() {
    let (dir, job) = bad_corpus();
    assert_eq!(cai(&["run", job.to_str().unwrap()]).status.code(), Some(0));
    let status = cai(&["status", dir.path().join("out").to_str().unwrap()]);
    let text = stdout(&status);
    assert!(
        text.contains("rate: ") && text.contains("ETA done"),
        "{text}"
    );
    assert!(text.contains("failures: none"), "{text}");
}

/// `cai validate --json` estimates the calls before any is made, and they are the calls the run
/// then makes, in total and per model, for each pipeline and judge mode (duplicates are not
/// counted, votes and swap are; a dialogue's, which a user model could end early, as a most);
/// the price follows the tokens and the model's prices.
#[test]
fn the_estimate_is_the_calls_a_run_then_makes() {
    let sections = [
        "pipeline = \"critique-revise\"\n[critique_revise]\nmodel = \"policy\"\nrevisions = 3\nkeep_history = true",
        "pipeline = \"pairwise\"\n[pairwise]\njudge = \"feedback\"\ngenerate = { model = \"policy\" }\nmode = \"verdict\"\nvotes = 3\nprinciples_per_label = 2",
        "pipeline = \"pairwise\"\n[pairwise]\njudge = \"feedback\"\ngenerate = { model = \"policy\" }\nmode = \"cot\"\nswap = false",
        "pipeline = \"dialogue\"\n[dialogue]\nuser = \"feedback\"\nassistant = \"policy\"\nturns = 3\nrevisions = 2",
    ];
    for section in sections {
        let dir = tempfile::tempdir().unwrap();
        let corpus: String = ["a knife", "a cleaner", "a gift", "a knife", "a bike"]
            .iter()
            .map(|topic| format!("{{\"prompt\": \"Tell me about {topic}.\"}}\n"))
            .collect();
        std::fs::write(dir.path().join("corpus.jsonl"), corpus).unwrap();
        let job = dir.path().join("job.toml");
        let (head, rest) = section.split_once('\n').unwrap();
        std::fs::write(
            &job,
            format!(
                "name = \"estimate\"\n{head}\noutput = \"out\"\n[input]\npath = \"corpus.jsonl\"\n\
                 prompt = \"prompt\"\n[constitution]\npath = \"{}\"\n{rest}\n\
                 [models.policy]\nbackend = \"mock\"\nprice_in = 1.0\nprice_out = 2.0\n\
                 max_tokens = 100\n[models.feedback]\nbackend = \"mock\"\n",
                default_constitution().display()
            ),
        )
        .unwrap();
        let validate = cai(&["validate", "--json", job.to_str().unwrap()]);
        assert_eq!(validate.status.code(), Some(0), "{}", stderr(&validate));
        let report: Value = serde_json::from_slice(&validate.stdout).unwrap();
        assert_eq!(
            (report["samples"].as_u64(), report["duplicates"].as_u64()),
            (Some(4), Some(1))
        );
        let estimate = &report["estimate"];
        assert!(
            !dir.path().join("out").exists(),
            "validate calls nothing, writes nothing"
        );

        let run = cai(&["run", job.to_str().unwrap()]);
        assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
        let manifest: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("out/manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            estimate["calls"], manifest["model_calls"],
            "{section}: {estimate}"
        );
        assert_eq!(
            estimate.get("calls_at_most").is_some(),
            section.contains("dialogue"),
            "{estimate}"
        );
        let mut per_model: std::collections::BTreeMap<String, u64> = Default::default();
        for trace in rows(&dir.path().join("out/traces.jsonl")) {
            for step in trace["steps"].as_array().unwrap() {
                *per_model
                    .entry(step["model"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
        for (model, calls) in &per_model {
            assert_eq!(
                estimate["by_model"][model]["calls"], *calls,
                "{section}: {model}"
            );
        }
        let policy = &estimate["by_model"]["policy"];
        let usd = (policy["input_tokens"].as_f64().unwrap()
            + 2.0 * policy["output_tokens"].as_f64().unwrap())
            / 1e6;
        assert!(
            (policy["cost_usd"].as_f64().unwrap() - usd).abs() < 1e-12,
            "{policy}"
        );
        let readable = cai(&["validate", job.to_str().unwrap()]);
        let text = stdout(&readable);
        assert!(
            text.contains(&format!("estimate: {} calls", estimate["calls"])),
            "{text}"
        );
        assert!(text.contains("tokens are approximate"), "{text}");
    }
}
