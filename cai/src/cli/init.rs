//! `cai init`: writes a commented job file, a starter constitution and a tiny corpus for one
//! pipeline into a directory, the way `cargo new` starts a project. The job uses the `mock`
//! model so it runs as written; its comments show how to point it at a real model. Existing
//! files are never overwritten.

use std::path::{Path, PathBuf};

use super::InitPipeline;

const CONSTITUTION: &str = include_str!("init/constitution.toml");
const CRITIQUE_REVISE_JOB: &str = include_str!("init/critique-revise.toml");
const PAIRWISE_JOB: &str = include_str!("init/pairwise.toml");
const DIALOGUE_JOB: &str = include_str!("init/dialogue.toml");
const PROMPTS: &str = include_str!("init/prompts.jsonl");
const PAIRS: &str = include_str!("init/pairs.jsonl");

pub(super) fn init(pipeline: InitPipeline, dir: &Path) -> u8 {
    let name = job_name(dir);
    let (job, corpus_name, corpus) = match pipeline {
        InitPipeline::CritiqueRevise => (CRITIQUE_REVISE_JOB, "prompts.jsonl", PROMPTS),
        InitPipeline::Pairwise => (PAIRWISE_JOB, "pairs.jsonl", PAIRS),
        InitPipeline::Dialogue => (DIALOGUE_JOB, "prompts.jsonl", PROMPTS),
    };
    let files = [
        ("job.toml", job.replace("{name}", &name)),
        ("constitution.toml", CONSTITUTION.to_owned()),
        (corpus_name, corpus.to_owned()),
    ];
    let paths: Vec<PathBuf> = files.iter().map(|(file, _)| dir.join(file)).collect();
    if let Some(taken) = paths.iter().find(|path| path.exists()) {
        eprintln!(
            "error: {} already exists; cai init writes only new files (choose another directory)",
            taken.display()
        );
        return 2;
    }
    if let Err(error) = std::fs::create_dir_all(dir) {
        eprintln!("error: cannot create {}: {error}", dir.display());
        return 1;
    }
    for ((_, text), path) in files.iter().zip(&paths) {
        if let Err(error) = std::fs::write(path, text) {
            eprintln!("error: cannot write {}: {error}", path.display());
            return 1;
        }
        println!("wrote {}", path.display());
    }
    let job = shell_word(&paths[0]);
    println!();
    println!("job {name:?} ready. It uses the `mock` model, so it runs as it is:");
    println!("  cai validate {job}   # reads the job, the constitution and the corpus");
    println!(
        "  cai run {job}        # writes {}",
        shell_word(&dir.join("out"))
    );
    println!(
        "Then put your own data in {corpus_name}, your principles in constitution.toml, and point the model in job.toml at your server."
    );
    0
}

/// A path as one word a shell reads back unchanged, so the printed commands can be pasted.
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+".contains(c);
    if text.chars().all(plain) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// A job name from the directory's name: lower-case letters, digits and dashes, as job names
/// must be; `my-job` if nothing usable is left.
fn job_name(dir: &Path) -> String {
    let base = std::path::absolute(dir)
        .ok()
        .and_then(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let mut name = String::new();
    for c in base.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    let name: String = name.trim_end_matches('-').chars().take(64).collect();
    if name.is_empty() {
        "my-job".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::{job_name, shell_word};
    use std::path::Path;

    #[test]
    fn job_names_follow_the_directory_and_the_job_name_rules() {
        assert_eq!(
            job_name(Path::new("/tmp/My Harmless_SL v2")),
            "my-harmless-sl-v2"
        );
        assert_eq!(job_name(Path::new("/tmp/__")), "my-job");
        assert_eq!(job_name(Path::new("/tmp/ünï")), "n");
    }

    #[test]
    fn printed_paths_paste_into_a_shell() {
        assert_eq!(
            shell_word(Path::new("jobs/a-1/job.toml")),
            "jobs/a-1/job.toml"
        );
        assert_eq!(
            shell_word(Path::new("My Job/job.toml")),
            "'My Job/job.toml'"
        );
        assert_eq!(shell_word(Path::new("it's")), r"'it'\''s'");
    }
}
