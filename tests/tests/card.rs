//! The dataset card makes an output directory a Hugging Face dataset as it stands: every config
//! it names loads with the real `datasets` library (offline, from the directory) with the rows
//! of its file, and a config whose file has no rows is not named.

use std::path::{Path, PathBuf};
use std::process::Command;

use cai_coordinator::card::{self, CardOutcome};
use cai_tests::harness::{JobDir, read_jsonl, repo_file, run_job};
use cai_tests::jobs;

/// The python with `datasets` installed (scripts/test-deps.sh prints it).
fn python() -> PathBuf {
    std::env::var_os("CAI_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_file("target/pyenv/bin/python"))
}

/// Loads each config of the directory with `datasets.load_dataset(dir, config)` and returns
/// `(config, rows)` as Python counted them.
fn load_every_config(dir: &Path, configs: &[&str]) -> Vec<(String, usize)> {
    let home = tempfile::tempdir().unwrap();
    let script = "import sys, datasets\n\
                  for config in sys.argv[2:]:\n\
                  \x20   rows = datasets.load_dataset(sys.argv[1], config, split='train')\n\
                  \x20   print(config, rows.num_rows)\n";
    let output = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(dir)
        .args(configs)
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", home.path())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: install the datasets library with scripts/test-deps.sh (or set CAI_TEST_PYTHON)",
                python().display()
            )
        });
    assert!(
        output.status.success(),
        "datasets could not load {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (config, rows) = line.split_once(' ').unwrap();
            (config.to_owned(), rows.parse().unwrap())
        })
        .collect()
}

/// The configs the card's front matter names.
fn configs(card: &str) -> Vec<String> {
    let front = card.split("\n---\n").next().unwrap();
    front
        .lines()
        .filter_map(|line| line.strip_prefix("- config_name: "))
        .map(str::to_owned)
        .collect()
}

fn check(dir: &Path, expected: &[(&str, &str)], license: &str) {
    let card_path = match card::write(dir).unwrap() {
        CardOutcome::Written(path) => path,
        other => panic!("no card: {other:?}"),
    };
    let text = std::fs::read_to_string(&card_path).unwrap();
    assert!(card::is_generated(&card_path));
    assert!(text.contains(&format!("\nlicense: {license}\n")), "{text}");
    for tag in ["synthetic", "constitutional-ai", "rlaif"] {
        assert!(text.contains(&format!("\n- {tag}\n")), "{tag}: {text}");
    }
    assert!(
        !text.contains("http://") && !text.contains("api_key"),
        "{text}"
    );
    let names: Vec<&str> = expected.iter().map(|(config, _)| *config).collect();
    assert_eq!(configs(&text), names, "{text}");
    let loaded = load_every_config(dir, &names);
    let wanted: Vec<(String, usize)> = expected
        .iter()
        .map(|(config, file)| ((*config).to_owned(), read_jsonl(&dir.join(file)).len()))
        .collect();
    assert_eq!(loaded, wanted);
    assert!(wanted.iter().all(|(_, rows)| *rows > 0));
    for (config, rows) in &wanted {
        assert!(
            text.contains(&format!("### `{config}` ("))
                && text.contains(&format!(", {rows} rows)"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_config_of_a_pairwise_card_loads_with_its_rows() {
    let dir = JobDir::new();
    run_job(&jobs::mock_pairwise(&dir, 30)).await.unwrap();
    let out = dir.path("out");
    // No sft.jsonl rows in a pairwise job: no sft config.
    assert!(read_jsonl(&out.join("sft.jsonl")).is_empty());
    check(
        &out,
        &[
            ("preferences", "preferences.jsonl"),
            ("traces", "traces.jsonl"),
        ],
        "cc-by-4.0",
    );
    let text = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(text.contains("| position consistency |"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_config_of_a_critique_revise_card_loads_with_its_rows() {
    let dir = JobDir::new();
    run_job(&jobs::mock_critique_revise(&dir, 20))
        .await
        .unwrap();
    let out = dir.path("out");
    check(
        &out,
        &[
            ("sft", "sft.jsonl"),
            ("preferences", "preferences.jsonl"),
            ("traces", "traces.jsonl"),
        ],
        "other",
    );
    let text = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(text.contains("- `principle_ids`:"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readme_cai_did_not_write_is_left_alone() {
    let dir = JobDir::new();
    run_job(&jobs::mock_pairwise(&dir, 5)).await.unwrap();
    let readme = dir.path("out/README.md");
    std::fs::write(&readme, "# my notes\n").unwrap();
    assert_eq!(
        card::write(&dir.path("out")).unwrap(),
        CardOutcome::Foreign(readme.clone())
    );
    assert_eq!(std::fs::read_to_string(&readme).unwrap(), "# my notes\n");
}
