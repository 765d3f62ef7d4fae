//! The dataset card: a finished output directory's `README.md`, with the Hugging Face YAML
//! front matter that makes the directory a dataset as it stands (`configs` naming each data
//! file that has rows, the licence, task categories, tags), and a body generated from the
//! manifest and the files: what made it, the counts, the label statistics, the columns and how
//! to load or upload it. The card's second line marks it as cai's, so cai only ever rewrites or
//! removes a card it wrote, never a README.md someone else put there.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use crate::ledger::DataFile;
use crate::report::headline::{Figure, Headline};
use crate::report::write_atomically;
use crate::rows::count_lines;

/// The card's file name.
pub const CARD_FILE: &str = "README.md";
/// The card's first two lines: front matter opens, and the comment that marks the card as
/// cai's.
const MARKER: &str = "---\n# Dataset card written by cai:";
/// The card's template (minijinja, no escaping: Markdown and YAML).
const TEMPLATE: &str = include_str!("card.md");

/// What became of a card.
#[derive(Debug, PartialEq, Eq)]
pub enum CardOutcome {
    /// Written here.
    Written(PathBuf),
    /// The job is not finished: a card describes a finished dataset.
    Incomplete,
    /// A README.md that cai did not write is there, and was left alone.
    Foreign(PathBuf),
}

/// One config of the card: a data file with rows.
#[derive(Serialize)]
struct Config {
    name: &'static str,
    file: &'static str,
    rows: u64,
    default: bool,
}

#[derive(Serialize)]
struct Card {
    headline: Headline,
    figures: Vec<Figure>,
    license: String,
    task_categories: Vec<&'static str>,
    size_category: &'static str,
    configs: Vec<Config>,
    default_config: &'static str,
    revision_preferences: bool,
    /// A dialogue job's `[dialogue]` settings, from the manifest, to describe how the
    /// conversations were grown.
    dialogue: Option<serde_json::Value>,
}

/// Whether the file at `path` is a card cai wrote (so cai may replace or remove it).
pub fn is_generated(path: &Path) -> bool {
    use std::io::Read as _;
    let mut start = [0u8; MARKER.len()];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut start))
        .is_ok_and(|()| start == MARKER.as_bytes())
}

/// Renders the card of a finished output directory, or `None` for an unfinished one.
pub fn render(dir: &Path) -> anyhow::Result<Option<String>> {
    let headline = Headline::read(dir)?;
    if !headline.complete {
        return Ok(None);
    }
    let pairwise = headline.pipeline == "pairwise";
    let mut configs = Vec::new();
    for (name, file) in [
        ("sft", DataFile::Sft.name()),
        ("preferences", DataFile::Preferences.name()),
        ("traces", DataFile::Traces.name()),
    ] {
        let rows = count_lines(&dir.join(file))
            .with_context(|| format!("{}: cannot read {file}", dir.display()))?;
        if rows > 0 {
            configs.push(Config {
                name,
                file,
                rows,
                default: false,
            });
        }
    }
    let main = if pairwise { "preferences" } else { "sft" };
    let default_config = configs
        .iter()
        .position(|c| c.name == main)
        .or((!configs.is_empty()).then_some(0))
        .map_or("", |i| {
            configs[i].default = true;
            configs[i].name
        });
    let largest = configs.iter().map(|c| c.rows).max().unwrap_or(0);
    let card = Card {
        figures: headline.figures(),
        license: headline.license.clone().unwrap_or_else(|| "other".into()),
        task_categories: if pairwise {
            vec!["text-generation", "reinforcement-learning"]
        } else {
            vec!["text-generation"]
        },
        size_category: size_category(largest),
        revision_preferences: !pairwise && configs.iter().any(|c| c.name == "preferences"),
        dialogue: crate::manifest::read(dir)
            .map(|manifest| manifest["spec"]["dialogue"].clone())
            .filter(|dialogue| dialogue.is_object()),
        configs,
        default_config,
        headline,
    };
    let mut environment = minijinja::Environment::new();
    environment.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()?,
    );
    environment.add_template("card.md", TEMPLATE)?;
    let text = environment
        .get_template("card.md")?
        .render(minijinja::value::Serde(&card))?;
    Ok(Some(text))
}

/// Writes the card of a finished output directory as its `README.md` (atomically), unless a
/// README.md that cai did not write is there.
pub fn write(dir: &Path) -> anyhow::Result<CardOutcome> {
    let target = dir.join(CARD_FILE);
    if target.exists() && !is_generated(&target) {
        return Ok(CardOutcome::Foreign(target));
    }
    let Some(text) = render(dir)? else {
        return Ok(CardOutcome::Incomplete);
    };
    write_atomically(&target, text.as_bytes())?;
    Ok(CardOutcome::Written(target))
}

/// Hugging Face's size category of a dataset of `rows` rows.
fn size_category(rows: u64) -> &'static str {
    match rows {
        0..1_000 => "n<1K",
        1_000..10_000 => "1K<n<10K",
        10_000..100_000 => "10K<n<100K",
        100_000..1_000_000 => "100K<n<1M",
        1_000_000..10_000_000 => "1M<n<10M",
        _ => "10M<n<100M",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_marked_readme_is_cai_s() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CARD_FILE);
        assert!(!is_generated(&path));
        std::fs::write(&path, "# My notes\n").unwrap();
        assert!(!is_generated(&path));
        std::fs::write(
            &path,
            format!("{MARKER} see cai report\nlicense: other\n---\n"),
        )
        .unwrap();
        assert!(is_generated(&path));
        assert!(TEMPLATE.starts_with(MARKER));
    }

    #[test]
    fn size_categories_follow_the_hub() {
        assert_eq!(size_category(0), "n<1K");
        assert_eq!(size_category(999), "n<1K");
        assert_eq!(size_category(1_000), "1K<n<10K");
        assert_eq!(size_category(250_000), "100K<n<1M");
    }
}
