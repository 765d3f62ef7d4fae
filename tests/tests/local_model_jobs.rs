//! Both pipelines end to end on the real small model (`backend = "local"`, the GGUF file named
//! by `CAI_TEST_MODEL`, which CI always sets): structure of the rows, and labels that are proper
//! probabilities and not all equal. The text itself is not asserted.

use std::path::PathBuf;

use cai_tests::harness::{JobDir, repo_file, run_job};
use cai_tests::jobs::PROMPTS;

/// The test model, or `None` (saying so) when `CAI_TEST_MODEL` is unset.
fn test_model() -> Option<PathBuf> {
    let path = std::env::var_os("CAI_TEST_MODEL").map(PathBuf::from);
    if path.is_none() {
        eprintln!("skipped: CAI_TEST_MODEL is unset (scripts/fetch-model.sh fetches the model)");
    }
    path
}

fn job(dir: &JobDir, model: &std::path::Path, pipeline: &str, section: &str) -> PathBuf {
    dir.head(PROMPTS, 3, "prompts.jsonl");
    dir.write(
        "job.toml",
        format!(
            r#"
name = "local-{pipeline}"
pipeline = "{pipeline}"
seed = 1
output = "out"

[input]
path = "prompts.jsonl"
prompt = "prompt"
id = "source_line"

[constitution]
path = "{constitution}"
few_shot = false

{section}

[models.policy]
backend = "local"
path = "{model}"
temperature = 0.7
max_tokens = 24
"#,
            constitution = repo_file("constitutions/default.toml").display(),
            model = model.display(),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critique_revise_on_the_real_model() {
    let Some(model) = test_model() else { return };
    let dir = JobDir::new();
    let section = "[critique_revise]\nmodel = \"policy\"\nrevisions = 1";
    let summary = run_job(&job(&dir, &model, "critique-revise", section))
        .await
        .unwrap();
    assert!(summary.complete);
    assert_eq!((summary.counts.done, summary.counts.failed), (3, 0));
    assert_eq!(summary.usage.calls, 3 * 3);
    assert!(summary.usage.tokens_in > 0 && summary.usage.tokens_out > 0);
    let rows = dir.rows("sft.jsonl");
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let messages = row["messages"].as_array().unwrap();
        assert_eq!(messages[0]["role"], "user");
        assert_eq!(messages.last().unwrap()["role"], "assistant");
        assert!(
            !messages.last().unwrap()["content"]
                .as_str()
                .unwrap()
                .trim()
                .is_empty()
        );
    }
    let traces = dir.rows("traces.jsonl");
    assert!(
        traces
            .iter()
            .all(|t| t["steps"].as_array().unwrap().len() == 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairwise_on_the_real_model() {
    let Some(model) = test_model() else { return };
    let dir = JobDir::new();
    let section =
        "[pairwise]\njudge = \"policy\"\ngenerate = { model = \"policy\", n = 2 }\nswap = true";
    let summary = run_job(&job(&dir, &model, "pairwise", section))
        .await
        .unwrap();
    assert!(summary.complete);
    assert_eq!(summary.counts.done + summary.counts.failed, 3);
    let rows = dir.rows("preferences.jsonl");
    assert!(!rows.is_empty(), "{:?}", dir.rows("failed.jsonl"));
    let mut readings = Vec::new();
    for row in &rows {
        let p = row["p_chosen"].as_f64().unwrap();
        assert!((0.5..=1.0).contains(&p), "{p}");
        assert_eq!(row["chosen"][0]["role"], "assistant");
        assert_ne!(row["chosen"][0]["content"], row["rejected"][0]["content"]);
        for reading in row["readings"].as_array().unwrap() {
            let p_first = reading["p_first"].as_f64().unwrap();
            // A letter missing from the top log-probabilities counts as 0 after normalising, so
            // a reading of exactly 0 or 1 is possible with this small, position-biased model.
            assert!((0.0..=1.0).contains(&p_first), "{p_first}");
            readings.push(p_first.to_bits());
        }
    }
    readings.sort_unstable();
    readings.dedup();
    assert!(
        readings.len() > 1,
        "the readings should not all be equal: {rows:?}"
    );
}
