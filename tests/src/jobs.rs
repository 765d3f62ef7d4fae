//! Job files the scenario tests share: critique-revise on the red-team prompts and pairwise on
//! the HH pairs, pointed at a model server and an output directory.

use std::path::PathBuf;

use crate::harness::{JobDir, repo_file};

/// The red-team prompts.
pub const PROMPTS: &str = "hh-rlhf/red-team-prompts/harmless-base_test_prompts.jsonl";
/// The HH preference pairs.
pub const PAIRS: &str = "hh-rlhf/harmless-base/test.jsonl";

/// A critique-revise job over the first `lines` red-team prompts (no few-shot, so a request's
/// first message is the sample's prompt), written as `file`.
pub fn critique_revise(
    dir: &JobDir,
    file: &str,
    name: &str,
    url: &str,
    output: &str,
    lines: usize,
    revisions: u32,
    concurrency: usize,
) -> PathBuf {
    dir.head(PROMPTS, lines, "prompts.jsonl");
    dir.write(
        file,
        format!(
            r#"
name = "{name}"
pipeline = "critique-revise"
seed = 5
output = "{output}"

[input]
path = "prompts.jsonl"
prompt = "prompt"
id = "source_line"

[constitution]
path = "{constitution}"
few_shot = false

[critique_revise]
model = "policy"
revisions = {revisions}
sft = "every"

[models.policy]
backend = "openai"
url = "{url}"
model = "test-model"
max_concurrency = {concurrency}
"#,
            constitution = repo_file("constitutions/default.toml").display()
        ),
    )
}

/// A pairwise job over the first `lines` HH pairs, written as `file`.
pub fn pairwise(
    dir: &JobDir,
    file: &str,
    name: &str,
    url: &str,
    output: &str,
    lines: usize,
) -> PathBuf {
    dir.head(PAIRS, lines, "pairs.jsonl");
    dir.write(
        file,
        format!(
            r#"
name = "{name}"
pipeline = "pairwise"
seed = 11
output = "{output}"

[input]
path = "pairs.jsonl"

[constitution]
path = "{constitution}"

[pairwise]
judge = "feedback"
candidates = ["chosen", "rejected"]
principles_per_label = 2

[models.feedback]
backend = "openai"
url = "{url}"
model = "judge"
max_concurrency = 8
"#,
            constitution = repo_file("constitutions/default.toml").display()
        ),
    )
}
