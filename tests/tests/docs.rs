//! The docs are tested like the code. Every tracked Markdown file has whole tables (a blank line
//! inside a table turns the rest into a paragraph of pipes that renders as text), relative
//! links to files that exist, and anchors that match a heading. The job-file reference lists
//! exactly the keys the parser accepts. And the `console` blocks of the README and docs/ run:
//! each `$ cai …` line is run in a fresh directory and what it prints must match the lines
//! under it (`...` stands for any lines, `[..]` for any text within a line), so a renamed flag
//! or a changed message fails here.
//!
//! The runner is this file's, not trycmd's: trycmd's Markdown mode runs commands in a directory
//! it does not document (its issue #364), and a README at the repository root would need a
//! `README.in/` fixture beside it; here every block gets an empty temporary directory.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use cai_tests::harness::{cai_binary, repo_file};
use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

/// A problem in a Markdown file, with its 1-based line.
#[derive(Debug, PartialEq, Eq)]
struct Problem {
    line: usize,
    what: String,
}

/// The tracked Markdown files, relative to the repository root; Markdown under a crate's `src/`
/// is a template the code renders (the dataset card), not a document.
fn tracked_markdown() -> Vec<PathBuf> {
    let output = std::process::Command::new("git")
        .args(["ls-files", "-z", "--", "*.md"])
        .current_dir(repo_file(""))
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git ls-files failed");
    let files: Vec<PathBuf> = output
        .stdout
        .split(|byte| *byte == 0)
        .filter(|name| !name.is_empty())
        .map(|name| PathBuf::from(String::from_utf8_lossy(name).into_owned()))
        .filter(|path| !path.components().any(|part| part.as_os_str() == "src"))
        .collect();
    assert!(
        files.len() > 5,
        "the repository's Markdown files: {files:?}"
    );
    files
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset].matches('\n').count() + 1
}

/// GitHub's anchor for a heading: lower case, spaces to hyphens, other punctuation dropped,
/// `-1`, `-2`… for repeats.
fn anchors(text: &str) -> HashSet<String> {
    let mut anchors = HashSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut heading: Option<String> = None;
    for event in Parser::new_ext(text, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(part) | Event::Code(part) => {
                if let Some(heading) = &mut heading {
                    heading.push_str(&part);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                let title = heading.take().unwrap_or_default();
                let slug: String = title
                    .to_lowercase()
                    .chars()
                    .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
                    .map(|c| if c == ' ' { '-' } else { c })
                    .collect();
                let count = seen.entry(slug.clone()).or_insert(0);
                anchors.insert(if *count == 0 {
                    slug
                } else {
                    format!("{slug}-{count}")
                });
                *count += 1;
            }
            _ => {}
        }
    }
    anchors
}

/// The unescaped pipes of a table line: its cell borders.
fn pipes(line: &str) -> usize {
    let bytes = line.as_bytes();
    (0..bytes.len())
        .filter(|&i| bytes[i] == b'|' && (i == 0 || bytes[i - 1] != b'\\'))
        .count()
}

/// The problems of the Markdown file `path` (relative to `root`) whose text is `text`.
fn check_markdown(root: &Path, path: &Path, text: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut paragraph_starts = false;
    let here = anchors(text);
    for (event, range) in Parser::new_ext(text, Options::ENABLE_TABLES).into_offset_iter() {
        let line = line_of(text, range.start);
        let opens_paragraph = std::mem::replace(&mut paragraph_starts, false);
        match event {
            Event::Start(Tag::Paragraph) => paragraph_starts = true,
            Event::Text(text) if opens_paragraph && text.trim_start().starts_with('|') => {
                problems.push(Problem {
                    line,
                    what: "a table row outside a table: a blank line, or a missing `|---|` \
                           separator, breaks the table"
                        .into(),
                });
            }
            Event::Start(Tag::Table(_)) => {
                let rows: Vec<&str> = text[range.clone()].lines().collect();
                let header = rows.first().map_or(0, |row| pipes(row));
                for (at, row) in rows.iter().enumerate().skip(1) {
                    if pipes(row) != header {
                        problems.push(Problem {
                            line: line + at,
                            what: format!(
                                "a table row with {} cell borders where the header has {header}",
                                pipes(row)
                            ),
                        });
                    }
                }
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                if let Some(what) = dead_link(root, path, &here, &dest_url) {
                    problems.push(Problem { line, what });
                }
            }
            _ => {}
        }
    }
    problems
}

/// Why the link `dest` in `path` leads nowhere, if it does.
fn dead_link(root: &Path, path: &Path, here: &HashSet<String>, dest: &str) -> Option<String> {
    if dest.contains("://") || dest.starts_with("mailto:") {
        return None;
    }
    let (target, anchor) = match dest.split_once('#') {
        Some((target, anchor)) => (target, Some(anchor)),
        None => (dest, None),
    };
    let file = if target.is_empty() {
        None
    } else {
        let file = path.parent().unwrap_or(Path::new("")).join(target);
        if !root.join(&file).exists() {
            return Some(format!("link to {dest}: {} does not exist", file.display()));
        }
        Some(file)
    };
    let anchor = anchor.filter(|anchor| !anchor.is_empty())?;
    let known = match &file {
        None => here.clone(),
        Some(file) if file.extension().is_some_and(|e| e == "md") => {
            anchors(&std::fs::read_to_string(root.join(file)).unwrap_or_default())
        }
        Some(_) => return None,
    };
    (!known.contains(anchor)).then(|| format!("link to {dest}: no heading makes #{anchor}"))
}

#[test]
fn every_tracked_markdown_file_has_whole_tables_and_live_links() {
    let root = repo_file("");
    let mut report = Vec::new();
    for file in tracked_markdown() {
        let text = std::fs::read_to_string(root.join(&file)).expect("a readable file");
        for problem in check_markdown(&root, &file, &text) {
            report.push(format!(
                "{}:{}: {}",
                file.display(),
                problem.line,
                problem.what
            ));
        }
    }
    assert!(report.is_empty(), "\n{}", report.join("\n"));
}

#[test]
fn the_check_catches_a_broken_table_a_ragged_row_and_dead_links() {
    let root = repo_file("");
    let text = "# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n\n\
                | x | y |\n|---|---|\n| 1 | 2 | 3 |\n\n\
                [gone](no-such-file.md), [anchor](#nowhere), [fine](#title), \
                [design](docs/DESIGN.md#trust-model), [bad anchor](docs/DESIGN.md#no-such-part)\n";
    let problems = check_markdown(&root, Path::new("README.md"), text);
    let lines: Vec<(usize, &str)> = problems
        .iter()
        .map(|p| (p.line, p.what.split(':').next().unwrap_or_default()))
        .collect();
    assert_eq!(
        lines,
        vec![
            (7, "a table row outside a table"),
            (11, "a table row with 4 cell borders where the header has 3"),
            (13, "link to no-such-file.md"),
            (13, "link to #nowhere"),
            (13, "link to docs/DESIGN.md#no-such-part"),
        ],
        "{problems:#?}"
    );
}

/// The keys docs/job-file.md documents: section (`""` for the top level) to keys, read from
/// the first cell of each table row under a heading `` ## `[section]` `` or `## Top level`.
fn documented_keys(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            section = if title.trim() == "Top level" {
                Some(String::new())
            } else {
                title
                    .trim()
                    .strip_prefix("`[")
                    .and_then(|rest| rest.strip_suffix("]`"))
                    .map(str::to_owned)
            };
            continue;
        }
        let Some(section) = &section else { continue };
        let Some(cell) = line.strip_prefix("| `") else {
            continue;
        };
        if let Some((key, _)) = cell.split_once('`') {
            keys.entry(section.clone())
                .or_default()
                .insert(key.to_owned());
        }
    }
    keys
}

#[test]
fn the_job_file_reference_lists_every_key_the_parser_accepts() {
    let text = std::fs::read_to_string(repo_file("docs/job-file.md")).expect("the reference");
    let documented = documented_keys(&text);
    let mut report = Vec::new();
    for (section, keys) in cai_common::job::keys::accepted_keys() {
        let accepted: BTreeSet<String> = keys.iter().map(|key| (*key).to_owned()).collect();
        let empty = BTreeSet::new();
        let written = documented.get(section).unwrap_or(&empty);
        let shown = if section.is_empty() {
            "top level"
        } else {
            section
        };
        for key in accepted.difference(written) {
            report.push(format!(
                "[{shown}] {key}: accepted by the parser, not documented"
            ));
        }
        for key in written.difference(&accepted) {
            report.push(format!(
                "[{shown}] {key}: documented, not accepted by the parser"
            ));
        }
    }
    let sections: BTreeSet<&str> = cai_common::job::keys::accepted_keys()
        .iter()
        .map(|(section, _)| *section)
        .collect();
    for section in documented.keys() {
        if !sections.contains(section.as_str()) {
            report.push(format!(
                "[{section}]: documented, not a section of the job file"
            ));
        }
    }
    assert!(
        report.is_empty(),
        "docs/job-file.md:\n{}",
        report.join("\n")
    );
}

/// One `console` block: its file and line, and its commands with the output shown under each.
struct Example {
    place: String,
    steps: Vec<(String, Vec<String>)>,
}

fn console_examples(file: &Path, text: &str) -> Vec<Example> {
    let mut examples = Vec::new();
    let mut current: Option<Example> = None;
    for (at, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start() == "```console" => {
                current = Some(Example {
                    place: format!("{}:{}", file.display(), at + 1),
                    steps: Vec::new(),
                });
            }
            None => {}
            Some(_) if line.trim_start() == "```" => examples.extend(current.take()),
            Some(example) => match line.strip_prefix("$ ") {
                Some(command) => example.steps.push((command.to_owned(), Vec::new())),
                None => {
                    if let Some((_, output)) = example.steps.last_mut() {
                        output.push(line.to_owned());
                    }
                }
            },
        }
    }
    examples
}

/// Whether `actual` matches `expected`, where an expected line `...` matches any lines and
/// `[..]` within a line matches any text.
fn matches(expected: &[String], actual: &[String]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first == "..." => {
            (0..=actual.len()).any(|skip| matches(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual
            .split_first()
            .is_some_and(|(line, more)| line_matches(first, line) && matches(rest, more)),
    }
}

fn line_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("[..]").collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return pattern == line;
    }
    if !line.starts_with(first) || !line[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &line[first.len()..line.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[test]
fn the_line_matcher_takes_elisions() {
    let lines = |text: &str| text.lines().map(str::to_owned).collect::<Vec<_>>();
    assert!(matches(&lines("a\n...\nd"), &lines("a\nb\nc\nd")));
    assert!(matches(&lines("a [..] c"), &lines("a b c")));
    assert!(!matches(&lines("a\nd"), &lines("a\nb\nd")));
    assert!(!matches(&lines("x[..]z"), &lines("xyy")));
}

#[test]
fn the_console_examples_of_the_docs_print_what_they_show() {
    let root = repo_file("");
    let bin = cai_binary();
    let bin_dir = bin.parent().expect("the binary's directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    let mut report = Vec::new();
    for file in tracked_markdown() {
        let text = std::fs::read_to_string(root.join(&file)).expect("a readable file");
        for example in console_examples(&file, &text) {
            let dir = tempfile::tempdir().expect("a directory for the example");
            for (command, expected) in &example.steps {
                assert!(
                    command.starts_with("cai "),
                    "{}: only `cai` commands run in console blocks: {command}",
                    example.place
                );
                let output = std::process::Command::new("bash")
                    .args(["-c", &format!("{command} 2>&1")])
                    .current_dir(dir.path())
                    .env("PATH", &path)
                    .env("NO_COLOR", "1")
                    .env_remove("CAI_LOG")
                    .env_remove("CAI_BROKER")
                    .env_remove("CAI_STATE")
                    .output()
                    .expect("bash runs");
                ran += 1;
                let printed: Vec<String> = String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect();
                if !matches(expected, &printed) {
                    report.push(format!(
                        "{}: `{command}` printed:\n{}\n--- the docs show:\n{}",
                        example.place,
                        printed.join("\n"),
                        expected.join("\n")
                    ));
                }
            }
        }
    }
    assert!(ran >= 3, "the docs show at least three commands, ran {ran}");
    assert!(report.is_empty(), "\n{}", report.join("\n\n"));
}
