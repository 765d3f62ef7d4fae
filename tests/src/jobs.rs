//! Job files the scenario tests share: critique-revise on the red-team prompts and pairwise on
//! the HH pairs, pointed at a model server and an output directory.

use std::path::PathBuf;

use crate::harness::{JobDir, repo_file};

/// The red-team prompts, a file of the repository's `data/` (see [`crate::harness::data_file`]).
pub const PROMPTS: &str = "hh-rlhf/red-team-prompts/harmless-base_test_prompts.jsonl";
/// The HH preference pairs, a file of the repository's `data/`.
pub const PAIRS: &str = "hh-rlhf/harmless-base/test.jsonl";

/// Where a job file goes and what it names: its file in the job directory, the job's name, the
/// model server's URL and the output directory.
pub struct Target<'a> {
    /// The job file's name.
    pub file: &'a str,
    /// The job's name.
    pub name: &'a str,
    /// The model server's base URL.
    pub url: &'a str,
    /// The output directory, relative to the job directory.
    pub output: &'a str,
}

/// A critique-revise job over the first `lines` red-team prompts (no few-shot, so a request's
/// first message is the sample's prompt).
pub fn critique_revise(
    dir: &JobDir,
    target: Target<'_>,
    lines: usize,
    revisions: u32,
    concurrency: usize,
) -> PathBuf {
    let Target {
        file,
        name,
        url,
        output,
    } = target;
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

/// A pairwise job over the first `lines` HH pairs.
pub fn pairwise(dir: &JobDir, target: Target<'_>, lines: usize) -> PathBuf {
    let Target {
        file,
        name,
        url,
        output,
    } = target;
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

/// A pairwise job over the first `lines` HH pairs with the deterministic mock judge (no
/// server), two principles per label, both orders; output in `out/`.
pub fn mock_pairwise(dir: &JobDir, lines: usize) -> PathBuf {
    dir.head(PAIRS, lines, "pairs.jsonl");
    dir.write(
        "job.toml",
        format!(
            r#"
name = "mock-pairwise"
pipeline = "pairwise"
seed = 4
output = "out"
license = "cc-by-4.0"

[input]
path = "pairs.jsonl"

[constitution]
path = "{constitution}"

[pairwise]
judge = "feedback"
candidates = ["chosen", "rejected"]
principles_per_label = 2

[models.feedback]
backend = "mock"
"#,
            constitution = repo_file("constitutions/default.toml").display()
        ),
    )
}

/// A critique-revise job over the first `lines` red-team prompts with the mock model: two
/// rounds, a row per round, and the revision-over-initial preference rows; output in `out/`.
pub fn mock_critique_revise(dir: &JobDir, lines: usize) -> PathBuf {
    dir.head(PROMPTS, lines, "prompts.jsonl");
    dir.write(
        "job.toml",
        format!(
            r#"
name = "mock-critique-revise"
pipeline = "critique-revise"
seed = 6
output = "out"

[input]
path = "prompts.jsonl"
prompt = "prompt"
id = "source_line"

[constitution]
path = "{constitution}"

[critique_revise]
model = "policy"
revisions = 2
sft = "every"
preferences = true

[models.policy]
backend = "mock"
"#,
            constitution = repo_file("constitutions/default.toml").display()
        ),
    )
}
