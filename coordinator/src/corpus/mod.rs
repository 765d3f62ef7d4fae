//! Streaming corpus reader: turns each line of a `.jsonl`, `.jsonl.gz` or `.jsonl.zst` corpus
//! into [`Sample`]s, a [`Rejection`] or [`CorpusItem::Duplicate`]s.
//!
//! Invariant: items come in file order and every item settles exactly once (as done, failed,
//! rejected or duplicate), so the items read always equal what settles. With `input.turns =
//! "whole"` (the default) every line (numbered from 1, up to `input.limit`) yields exactly one
//! item. With `"each"` a readable line yields one item per human turn (a sample or a duplicate,
//! all with the line's number) and an unreadable one a single rejection; [`CorpusItem::line`]
//! tells the lines apart. A bad line never stops the run. A read failure part way (a disk error,
//! a truncated or corrupt archive) is the last item: a rejection of the line being read, also
//! logged as an error, and nothing after it is read. The file is never held whole: a line is read
//! into a buffer of at most [`MAX_LINE_BYTES`], and the rest of an oversized line is skipped
//! without being kept.
//!
//! Memory grows with the number of distinct samples only: per sample its 16-byte key and first
//! line, plus a 64-bit hash of its line's id and first line when `input.id` is set; with
//! hash-table slack that is 40 to 90 bytes a sample (about 100 MB at peak for a million lines
//! with ids). Two different ids with the same hash (a few chances in a million at ten million
//! ids) would reject the later line as a duplicate id. With `"each"` one line's samples are held
//! at once, at most [`MAX_TURN_SAMPLES_BYTES`] of them.
//!
//! # Layout
//! - this file: the items a line becomes, the errors, the reader and [`open`];
//! - `source`: the file's bytes, decompressed by extension, and [`count_lines`];
//! - `reader`: the iterator: bounded line reads, duplicates and repeated ids;
//! - `line`: a line's object turned into samples, as the job's fields say;
//! - `field`: one field's value: strings, ids, `{role, content}` lists, the conversation;
//! - `transcript`: HH transcripts (`\n\nHuman: …\n\nAssistant: …`) split into turns;
//! - `pairwise`: the two candidates of a pairwise line and their shared conversation;
//! - `turns`: a conversation's samples with `input.turns = "each"`.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, ErrorKind};
use std::path::{Path, PathBuf};

use cai_common::job::JobSpec;
use cai_common::sample::{Sample, SampleKey};

use crate::compact::CompactMap;

mod field;
mod line;
mod pairwise;
mod reader;
mod source;
mod transcript;
mod turns;

pub use source::count_lines;

use line::Fields;
use source::decompressed;

/// Longest accepted line in bytes, without its newline; longer lines are rejected unread.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// With `input.turns = "each"`, the most one line's samples may hold together: their messages'
/// bytes plus [`MESSAGE_OVERHEAD`] for each message. A line's samples repeat its earlier turns
/// (n human turns hold about n²/2 messages), so this bounds what one pathological line costs;
/// a line over it is rejected. A 20-turn conversation of 5 KB turns needs about 2 MB.
pub const MAX_TURN_SAMPLES_BYTES: usize = 16 * MAX_LINE_BYTES;

/// What each message counts for beyond its content in [`MAX_TURN_SAMPLES_BYTES`]: its share of
/// the sample's memory, so that many tiny turns are bounded too.
pub const MESSAGE_OVERHEAD: usize = 64;

/// What a corpus line became: one item, or with `input.turns = "each"` one per human turn.
#[derive(Clone, Debug, PartialEq)]
pub enum CorpusItem {
    /// A line (or, with `turns = "each"`, one human turn of it) read into work.
    Sample(Sample),
    /// A line that cannot be read; the run continues without it. Always the line's only item.
    Rejected(Rejection),
    /// A line (or one human turn of it) with the same content key as an earlier sample; it is
    /// processed once.
    Duplicate {
        /// This line.
        line: u64,
        /// The shared content key.
        key: SampleKey,
        /// The line of the sample that has this key.
        first_line: u64,
    },
}

impl CorpusItem {
    /// The 1-based corpus line the item comes from. Items are in file order, so a change of line
    /// number starts a new line: with `turns = "each"`, where one line may yield several items,
    /// that is how a consumer counts lines rather than items.
    pub fn line(&self) -> u64 {
        match self {
            Self::Sample(sample) => sample.line,
            Self::Rejected(rejection) => rejection.line,
            Self::Duplicate { line, .. } => *line,
        }
    }
}

/// Why a corpus line was not turned into a sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// 1-based line number.
    pub line: u64,
    /// The corpus field at fault, when one is.
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl Rejection {
    /// The rejection as `path:line: field "name": reason` (or `path:line: reason`).
    pub fn message(&self, path: &Path) -> String {
        match &self.field {
            Some(field) => format!(
                "{}:{}: field {field:?}: {}",
                path.display(),
                self.line,
                self.reason
            ),
            None => format!("{}:{}: {}", path.display(), self.line, self.reason),
        }
    }
}

/// A corpus that cannot be opened or read; the message names the path.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The name does not end in `.jsonl`, `.jsonl.gz` or `.jsonl.zst`.
    #[error("{}: unsupported corpus format: expected a .jsonl, .jsonl.gz or .jsonl.zst file", path.display())]
    Format {
        /// The corpus file.
        path: PathBuf,
    },
    /// The file cannot be opened or its decompressor started.
    #[error("{}: cannot open corpus: {source}", path.display())]
    Open {
        /// The corpus file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The first bytes cannot be read (e.g. a `.gz` that is not gzip), or counting failed part
    /// way (a disk error, a truncated or corrupt archive).
    #[error("{}:{line}: cannot read corpus: {source}", path.display())]
    Read {
        /// The corpus file.
        path: PathBuf,
        /// The line being read when it failed.
        line: u64,
        /// Why.
        source: io::Error,
    },
}

/// A blocking iterator over the items of a corpus, one per line (with `turns = "each"`, one per
/// human turn of a readable line); run it off the async runtime.
pub struct CorpusReader {
    path: PathBuf,
    input: Box<dyn BufRead + Send>,
    fields: Fields,
    limit: u64,
    line: u64,
    buffer: Vec<u8>,
    /// Content key → first line, for duplicates.
    keys: CompactMap<[u8; 16], u64>,
    /// Hash of the line's id → first line, for repeated ids.
    ids: CompactMap<u64, u64>,
    /// Items of the line last read not yet returned (more than one only with `turns = "each"`).
    pending: VecDeque<CorpusItem>,
    finished: bool,
}

/// Opens the corpus of a job (`spec.input.path`, already resolved) and reads it as the spec says.
/// The first block is read at once, so a file that is not what its extension says fails here.
pub fn open(spec: &JobSpec) -> Result<CorpusReader, CorpusError> {
    let path = spec.input.path.clone();
    let mut input = Box::new(BufReader::with_capacity(1 << 16, decompressed(&path)?));
    while let Err(source) = input.fill_buf() {
        if source.kind() != ErrorKind::Interrupted {
            return Err(CorpusError::Read {
                path,
                line: 1,
                source,
            });
        }
    }
    Ok(CorpusReader {
        path,
        input,
        fields: Fields::of(spec),
        limit: spec.input.limit.unwrap_or(u64::MAX),
        line: 0,
        buffer: Vec::new(),
        keys: CompactMap::default(),
        ids: CompactMap::default(),
        pending: VecDeque::new(),
        finished: false,
    })
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write;

    use cai_common::message::{Message, Role};
    use serde_json::{Value, json};

    use super::transcript::transcript_conversation;
    use super::*;

    /// The repository's red-team prompts: the first 500 lines (see `data/SOURCES.md`).
    const RED_TEAM: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/hh-rlhf/red-team-prompts/harmless-base_test_prompts.jsonl"
    );
    /// The repository's HH pairs: the first 500 lines of `harmless-base/test.jsonl`.
    const HH_TEST: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/hh-rlhf/harmless-base/test.jsonl"
    );

    /// A job reading `path` with the given `[input]` keys; `rest` overrides top-level keys.
    fn spec(path: &Path, input: Value, rest: Value) -> JobSpec {
        let mut job = json!({
            "name": "t",
            "pipeline": "critique-revise",
            "constitution": {"path": "c.json"},
            "input": input,
            "critique_revise": {"model": "m"},
            "models": {"m": {"backend": "mock"}},
        });
        job["input"]["path"] = json!(path);
        for (key, value) in rest.as_object().expect("object") {
            job[key] = value.clone();
        }
        if job["pipeline"] == "pairwise" {
            job["critique_revise"] = Value::Null;
        }
        serde_json::from_value(job).expect("job spec")
    }

    fn prompt_spec(path: &Path) -> JobSpec {
        spec(path, json!({"prompt": "prompt"}), json!({}))
    }

    fn pairwise(path: &Path, input: Value) -> JobSpec {
        let pairwise = json!({"judge": "m", "candidates": ["a", "b"]});
        spec(
            path,
            input,
            json!({"pipeline": "pairwise", "pairwise": pairwise}),
        )
    }

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write corpus");
        path
    }

    fn lines(lines: &[Value]) -> Vec<u8> {
        lines
            .iter()
            .map(|line| format!("{line}\n"))
            .collect::<String>()
            .into_bytes()
    }

    fn read_all(spec: &JobSpec) -> Vec<CorpusItem> {
        open(spec).expect("open").collect()
    }

    /// Reads one-line corpora and returns each line's item.
    fn each(spec_of: impl Fn(&Path) -> JobSpec, objects: &[Value]) -> Vec<CorpusItem> {
        let dir = tempfile::tempdir().expect("tempdir");
        objects
            .iter()
            .map(|object| {
                let path = write(&dir, "one.jsonl", &lines(std::slice::from_ref(object)));
                let mut items = read_all(&spec_of(&path));
                assert_eq!(items.len(), 1, "{object}");
                items.remove(0)
            })
            .collect()
    }

    fn rejected(field: Option<&str>, reason: &str, line: u64) -> CorpusItem {
        CorpusItem::Rejected(Rejection {
            line,
            field: field.map(str::to_owned),
            reason: reason.to_owned(),
        })
    }

    fn sample(item: &CorpusItem) -> &Sample {
        match item {
            CorpusItem::Sample(sample) => sample,
            other => panic!("expected a sample, got {other:?}"),
        }
    }

    #[derive(Debug, Default, PartialEq)]
    struct Counts {
        samples: usize,
        rejected: usize,
        duplicates: usize,
    }

    fn counts(items: &[CorpusItem]) -> Counts {
        let mut counts = Counts::default();
        for item in items {
            match item {
                CorpusItem::Sample(_) => counts.samples += 1,
                CorpusItem::Rejected(_) => counts.rejected += 1,
                CorpusItem::Duplicate { .. } => counts.duplicates += 1,
            }
        }
        counts
    }

    #[test]
    fn every_line_yields_one_item_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut text = Vec::new();
        for line in [
            r#"{"prompt": "  hello  ", "other": 1}"#,
            r#"{"prompt": 5}"#,
            r#"{"prompt": ["a"]}"#,
            r#"{"other": "x"}"#,
            r#"{"prompt": " \t "}"#,
            "",
            "[1, 2]",
            r#"{"prompt": "x""#,
            r#"{"prompt": "hello"}"#,
            r#"{"prompt": null}"#,
        ] {
            text.extend_from_slice(line.as_bytes());
            text.push(b'\n');
        }
        text.extend_from_slice(b"{\"prompt\": \"caf\xe9\"}\n");
        let path = write(&dir, "prompts.jsonl", &text);
        let items = read_all(&prompt_spec(&path));
        let first = sample(&items[0]);
        assert_eq!(
            (first.line, first.messages.clone()),
            (1, vec![Message::user("hello")])
        );
        assert_eq!(first.id, first.key.to_hex());
        let prompt = Some("prompt");
        let expected = vec![
            items[0].clone(),
            rejected(prompt, "expected a string, found a number", 2),
            rejected(prompt, "expected a string, found an array", 3),
            rejected(prompt, "missing", 4),
            rejected(prompt, "empty", 5),
            rejected(None, "empty line", 6),
            rejected(None, "expected a JSON object, found an array", 7),
            rejected(
                None,
                "invalid JSON at column 14: EOF while parsing an object",
                8,
            ),
            CorpusItem::Duplicate {
                line: 9,
                key: first.key,
                first_line: 1,
            },
            rejected(prompt, "expected a string, found null", 10),
            rejected(None, "invalid UTF-8 at byte offset 15", 11),
        ];
        assert_eq!(items, expected);
        let CorpusItem::Rejected(rejection) = &items[1] else {
            unreachable!()
        };
        assert_eq!(
            rejection.message(Path::new("prompts.jsonl")),
            "prompts.jsonl:2: field \"prompt\": expected a string, found a number"
        );
        let CorpusItem::Rejected(rejection) = &items[5] else {
            unreachable!()
        };
        assert_eq!(
            rejection.message(Path::new("prompts.jsonl")),
            "prompts.jsonl:6: empty line"
        );
        assert_eq!(count_lines(&path).expect("count"), 11);
    }

    #[test]
    fn oversized_lines_are_rejected_without_being_buffered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let line_of = |length: usize| {
            let mut line = format!("{{\"prompt\": \"{}\"}}", "a".repeat(length - 14));
            assert_eq!(line.len(), length);
            line.push('\n');
            line
        };
        let text = [
            line_of(10 << 20),
            line_of(MAX_LINE_BYTES),
            line_of(MAX_LINE_BYTES + 1),
            "{\"prompt\": \"after\"}".to_owned(),
        ]
        .concat();
        let path = write(&dir, "big.jsonl", text.as_bytes());
        let mut reader = open(&prompt_spec(&path)).expect("open");
        assert_eq!(
            reader.next().expect("item"),
            rejected(None, "line is 10485760 bytes, more than the 1 MiB limit", 1)
        );
        assert!(
            reader.buffer.capacity() <= 2 * MAX_LINE_BYTES,
            "{}",
            reader.buffer.capacity()
        );
        let items: Vec<CorpusItem> = reader.collect();
        assert_eq!(
            sample(&items[0]).messages[0].content.len(),
            MAX_LINE_BYTES - 14
        );
        assert_eq!(
            items[1],
            rejected(None, "line is 1048577 bytes, more than the 1 MiB limit", 3)
        );
        assert_eq!(sample(&items[2]).messages, vec![Message::user("after")]);
        assert_eq!(count_lines(&path).expect("count"), 4);
    }

    #[test]
    fn final_newline_ends_the_last_line_and_blank_lines_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: [(&[u8], usize); 5] = [
            (b"{\"prompt\": \"a\"}", 1),
            (b"{\"prompt\": \"a\"}\n", 1),
            (b"{\"prompt\": \"a\"}\r\n{\"prompt\": \"b\"}\r\n", 2),
            (b"{\"prompt\": \"a\"}\n\n{\"prompt\": \"b\"}\n", 3),
            (b"", 0),
        ];
        for (text, expected) in cases {
            let path = write(&dir, "c.jsonl", text);
            let items = read_all(&prompt_spec(&path));
            assert_eq!(items.len(), expected, "{}", String::from_utf8_lossy(text));
            assert_eq!(count_lines(&path).expect("count"), expected as u64);
            assert!(
                items
                    .iter()
                    .all(|item| matches!(item, CorpusItem::Sample(_))
                        || item == &rejected(None, "empty line", 2))
            );
        }
    }

    #[test]
    fn gzip_and_zstd_corpora_read_like_plain_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = lines(&[
            json!({"prompt": "a"}),
            json!({"prompt": 1}),
            json!({"prompt": "a"}),
        ]);
        let plain = read_all(&prompt_spec(&write(&dir, "c.jsonl", &text)));
        assert_eq!(
            counts(&plain),
            Counts {
                samples: 1,
                rejected: 1,
                duplicates: 1
            }
        );

        // Two gzip members, as `cat a.gz b.gz` makes: both are read.
        let (head, tail) = text.split_at(text.len() / 2);
        let mut gz = Vec::new();
        for part in [head, tail] {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(part).expect("gzip");
            gz.extend(encoder.finish().expect("gzip"));
        }
        let zst = zstd::encode_all(text.as_slice(), 3).expect("zstd");
        for (name, bytes) in [("c.jsonl.gz", &gz), ("c.jsonl.zst", &zst)] {
            let path = write(&dir, name, bytes);
            assert_eq!(read_all(&prompt_spec(&path)), plain, "{name}");
            assert_eq!(count_lines(&path).expect("count"), 3, "{name}");
        }
    }

    #[test]
    fn a_truncated_archive_ends_with_a_rejection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text: Vec<Value> = (0..20_000)
            .map(|i| json!({"prompt": format!("p{i}")}))
            .collect();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&lines(&text)).expect("gzip");
        let gz = encoder.finish().expect("gzip");
        let truncated = write(&dir, "cut.jsonl.gz", &gz[..gz.len() / 2]);
        let items = read_all(&prompt_spec(&truncated));
        let (last, before) = items.split_last().expect("items");
        assert!(before.len() > 1000, "{}", before.len());
        assert!(
            before
                .iter()
                .all(|item| matches!(item, CorpusItem::Sample(_)))
        );
        let CorpusItem::Rejected(rejection) = last else {
            panic!("a truncated archive ends with a rejection: {last:?}");
        };
        assert_eq!(
            (rejection.line, rejection.field.as_deref()),
            (items.len() as u64, None)
        );
        assert!(
            rejection
                .reason
                .starts_with("cannot read the corpus past this point ("),
            "{rejection:?}"
        );
        let error = count_lines(&truncated).expect_err("truncated archive");
        assert!(
            matches!(error, CorpusError::Read { line, .. } if line > 1000),
            "{error}"
        );
        assert!(error.to_string().contains("cut.jsonl.gz"), "{error}");
    }

    #[test]
    fn unreadable_corpora_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let csv = write(&dir, "c.csv", b"a,b\n");
        let error = open(&prompt_spec(&csv)).err().expect("csv refused");
        assert!(matches!(error, CorpusError::Format { .. }));
        assert!(error.to_string().contains("c.csv"), "{error}");
        for name in ["plain.jsonl.gz", "plain.jsonl.zst"] {
            let path = write(&dir, name, b"{\"prompt\": \"a\"}\n");
            let error = open(&prompt_spec(&path)).err().expect("not compressed");
            assert!(
                matches!(error, CorpusError::Read { line: 1, .. }),
                "{error}"
            );
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("{}:1: cannot read corpus", path.display())),
                "{error}"
            );
            assert!(count_lines(&path).is_err(), "{name}");
        }
        let missing = dir.path().join("missing.jsonl.zst");
        let error = open(&prompt_spec(&missing))
            .err()
            .expect("missing file refused");
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}: cannot open corpus", missing.display())),
            "{error}"
        );
        assert!(count_lines(&missing).is_err());
    }

    #[test]
    fn transcripts_become_messages() {
        let user = Message::user;
        let assistant = Message::assistant;
        assert_eq!(
            transcript_conversation(
                "\n\nHuman: hi \n\nAssistant: hello\n\nHuman: and?\n\nAssistant:"
            ),
            Ok(vec![user("hi"), assistant("hello"), user("and?")])
        );
        assert_eq!(transcript_conversation("Human: hi"), Ok(vec![user("hi")]));
        assert_eq!(
            transcript_conversation("\n\nHuman: a\n\n\nAssistant: b\n\nHuman: c\n\nHuman: d"),
            Ok(vec![user("a"), assistant("b"), user("c"), user("d")])
        );
        assert!(
            transcript_conversation("\n\nHuman: hi\n\nAssistant: hello")
                .unwrap_err()
                .contains("ends with an Assistant answer")
        );
        assert!(
            transcript_conversation("\n\nAssistant: hi\n\nHuman: x")
                .unwrap_err()
                .contains("starting with")
        );
        assert_eq!(
            transcript_conversation("\n\nHuman: \n\nAssistant:"),
            Err("turn 1 (Human) is empty".to_owned())
        );

        let items = each(
            |path| spec(path, json!({"transcript": "t"}), json!({})),
            &[
                json!({"t": "\n\nHuman: q\n\nAssistant:"}),
                json!({"x": 1}),
                json!({"t": "hello"}),
            ],
        );
        assert_eq!(sample(&items[0]).messages, vec![user("q")]);
        assert_eq!(items[1], rejected(Some("t"), "missing", 1));
        assert_eq!(
            items[2],
            rejected(
                Some("t"),
                "expected an HH transcript starting with \"\\n\\nHuman:\"",
                1
            )
        );
    }

    #[test]
    fn message_arrays_are_checked() {
        let items = each(
            |path| spec(path, json!({"messages": "m"}), json!({})),
            &[
                json!({"m": [{"role": "system", "content": "be kind"}, {"role": "user", "content": " hi ", "name": "x"}]}),
                json!({"m": []}),
                json!({"m": "hi"}),
                json!({"m": [{"role": "bot", "content": "x"}]}),
                json!({"m": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
                json!({"m": [{"role": "user", "content": 3}]}),
                json!({"m": [{"role": "user", "content": "a"}, 5]}),
                json!({"m": [{"content": "a"}]}),
                json!({"m": [{"role": "user", "content": "  "}]}),
            ],
        );
        let system = Message {
            role: Role::System,
            content: "be kind".into(),
        };
        assert_eq!(
            sample(&items[0]).messages,
            vec![system, Message::user("hi")]
        );
        let field = Some("m");
        let expected = [
            rejected(field, "empty", 1),
            rejected(field, "expected an array, found a string", 1),
            rejected(
                field,
                "message 1: role \"bot\" is not system, user or assistant",
                1,
            ),
            rejected(field, "the last message must be a user turn", 1),
            rejected(
                field,
                "message 1: content: expected a string, found a number",
                1,
            ),
            rejected(
                field,
                "message 2: expected an object {role, content}, found a number",
                1,
            ),
            rejected(field, "message 1: role: missing", 1),
            rejected(field, "message 1: content: empty", 1),
        ];
        assert_eq!(items[1..], expected);
    }

    #[test]
    fn plain_candidates_pair_with_the_selected_prompt() {
        let items = each(
            |path| pairwise(path, json!({"prompt": "q"})),
            &[
                json!({"q": "question", "a": " x ", "b": "y"}),
                json!({"q": "question", "a": "x", "b": " x"}),
                json!({"q": "question", "a": "x", "b": ""}),
                json!({"q": "question", "a": "x"}),
                json!({"q": "question", "a": "\n\nHuman: other\n\nAssistant: x", "b": "\n\nHuman: other\n\nAssistant: y"}),
            ],
        );
        let first = sample(&items[0]);
        assert_eq!(first.messages, vec![Message::user("question")]);
        assert_eq!(first.candidates, Some(["x".to_owned(), "y".to_owned()]));
        assert_eq!(
            items[1],
            rejected(None, "candidates \"a\" and \"b\" are identical", 1)
        );
        assert_eq!(items[2], rejected(Some("b"), "empty", 1));
        assert_eq!(items[3], rejected(Some("b"), "missing", 1));
        // Transcript candidates with a conversation field: the answers are their final turns.
        assert_eq!(sample(&items[4]).key, first.key);
    }

    #[test]
    fn transcript_candidates_share_their_conversation() {
        let items = each(
            |path| pairwise(path, json!({})),
            &[
                json!({"a": "\n\nHuman: q\n\nAssistant: r\n\nHuman: s\n\nAssistant: x", "b": "Human: q\n\nAssistant: r\n\nHuman: s\n\nAssistant:  y "}),
                json!({"a": "\n\nHuman: q\n\nAssistant: x", "b": "\n\nHuman: p\n\nAssistant: y"}),
                json!({"a": "\n\nHuman: q\n\nAssistant: x", "b": "y"}),
                json!({"a": "\n\nHuman: q\n\nAssistant:", "b": "\n\nHuman: q\n\nAssistant: y"}),
                json!({"a": "\n\nHuman: q", "b": "\n\nHuman: q\n\nAssistant: y"}),
                json!({"a": "\n\nHuman: q\n\nAssistant: x", "b": "\n\nHuman: q\n\nAssistant: x"}),
                json!({"a": "\n\nHuman: q\n\nAssistant: r\n\nAssistant: x", "b": "\n\nHuman: q\n\nAssistant: r\n\nAssistant: y"}),
            ],
        );
        let first = sample(&items[0]);
        let conversation = vec![
            Message::user("q"),
            Message::assistant("r"),
            Message::user("s"),
        ];
        assert_eq!(first.messages, conversation);
        assert_eq!(first.candidates, Some(["x".to_owned(), "y".to_owned()]));
        let expected = [
            rejected(
                None,
                "candidates \"a\" and \"b\" differ before their final Assistant turn (turn 1 differs)",
                1,
            ),
            rejected(
                Some("b"),
                "expected an HH transcript (\"\\n\\nHuman: …\\n\\nAssistant: …\"), as the job sets no conversation field",
                1,
            ),
            rejected(Some("a"), "the final Assistant turn is empty", 1),
            rejected(Some("a"), "does not end with an Assistant turn", 1),
            rejected(None, "candidates \"a\" and \"b\" are identical", 1),
            rejected(
                Some("a"),
                "the turn before the final Assistant one must be a Human turn",
                1,
            ),
        ];
        assert_eq!(items[1..], expected);
    }

    #[test]
    fn initial_answers_are_read_and_keyed() {
        let critique = json!({"critique_revise": {"model": "m", "initial": "answer"}});
        let items = each(
            |path| spec(path, json!({"prompt": "q"}), critique.clone()),
            &[
                json!({"q": "question", "answer": " first "}),
                json!({"q": "question"}),
                json!({"q": "question", "answer": 2}),
            ],
        );
        assert_eq!(sample(&items[0]).initial.as_deref(), Some("first"));
        assert_eq!(items[1], rejected(Some("answer"), "missing", 1));
        assert_eq!(
            items[2],
            rejected(Some("answer"), "expected a string, found a number", 1)
        );
        let without = each(
            |path| spec(path, json!({"prompt": "q"}), json!({})),
            &[json!({"q": "question"})],
        );
        assert_ne!(sample(&without[0]).key, sample(&items[0]).key);
    }

    #[test]
    fn ids_are_read_and_must_be_unique() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = lines(&[
            json!({"id": "a", "prompt": "p1"}),
            json!({"id": 7, "prompt": "p2"}),
            json!({"id": 1.5, "prompt": "p3"}),
            json!({"prompt": "p4"}),
            json!({"id": "a", "prompt": "p5"}),
            json!({"id": "b", "prompt": "p1"}),
            json!({"id": true, "prompt": "p6"}),
            json!({"id": "c", "prompt": "p5"}),
            json!({"id": "", "prompt": "p7"}),
        ]);
        let path = write(&dir, "ids.jsonl", &text);
        let items = read_all(&spec(
            &path,
            json!({"prompt": "prompt", "id": "id"}),
            json!({}),
        ));
        assert_eq!(sample(&items[0]).id, "a");
        assert_eq!(sample(&items[1]).id, "7");
        let id = Some("id");
        assert_eq!(
            items[2],
            rejected(
                id,
                "expected a string or an integer, found the number 1.5",
                3
            )
        );
        assert_eq!(items[3], rejected(id, "missing", 4));
        assert_eq!(
            items[4],
            rejected(id, "duplicate id \"a\" (first on line 1)", 5)
        );
        let duplicate = CorpusItem::Duplicate {
            line: 6,
            key: sample(&items[0]).key,
            first_line: 1,
        };
        assert_eq!(items[5], duplicate);
        assert_eq!(
            items[6],
            rejected(id, "expected a string or an integer, found a boolean", 7)
        );
        assert_eq!(
            (sample(&items[7]).id.as_str(), sample(&items[7]).line),
            ("c", 8)
        );
        assert_eq!(items[8], rejected(id, "empty", 9));
    }

    #[test]
    fn limit_stops_after_n_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = lines(&[
            json!({"prompt": "a"}),
            json!({}),
            json!({"prompt": "a"}),
            json!({"prompt": "b"}),
        ]);
        let path = write(&dir, "c.jsonl", &text);
        let items = read_all(&spec(
            &path,
            json!({"prompt": "prompt", "limit": 3}),
            json!({}),
        ));
        assert_eq!(
            counts(&items),
            Counts {
                samples: 1,
                rejected: 1,
                duplicates: 1
            }
        );
    }

    #[test]
    fn red_team_prompts_have_8_duplicates() {
        // The 500 lines in data/; the whole derived file (2,312 lines) has 2,178 distinct
        // prompts, 134 duplicates, and 2 duplicate transcripts (lines 1453 and 1484).
        let path = Path::new(RED_TEAM);
        assert_eq!(count_lines(path).expect("count"), 500);
        let prompts = read_all(&spec(
            path,
            json!({"prompt": "prompt", "id": "source_line"}),
            json!({}),
        ));
        assert_eq!(prompts.len(), 500);
        assert_eq!(
            counts(&prompts),
            Counts {
                samples: 492,
                rejected: 0,
                duplicates: 8
            }
        );
        assert_eq!(sample(&prompts[0]).id, "0");
        let transcripts = read_all(&spec(
            path,
            json!({"transcript": "conversation_prefix"}),
            json!({}),
        ));
        assert_eq!(
            counts(&transcripts),
            Counts {
                samples: 500,
                rejected: 0,
                duplicates: 0
            }
        );
        for item in &transcripts {
            if let CorpusItem::Sample(sample) = item {
                assert_eq!(
                    sample.messages.last().map(|m| m.role),
                    Some(Role::User),
                    "line {}",
                    sample.line
                );
            }
        }
    }

    #[test]
    fn hh_pairs_split_into_conversation_and_answers() {
        let path = Path::new(HH_TEST);
        let spec = spec(
            path,
            json!({"limit": 50}),
            json!({"pipeline": "pairwise", "pairwise": {"judge": "m", "candidates": ["chosen", "rejected"]}}),
        );
        let items = read_all(&spec);
        assert_eq!(
            counts(&items),
            Counts {
                samples: 50,
                rejected: 0,
                duplicates: 0
            }
        );
        let first = sample(&items[0]);
        assert_eq!(
            first.messages[0],
            Message::user("what are some pranks with a pen i can do?")
        );
        assert_eq!(first.messages.len(), 5);
        let [chosen, _] = first.candidates.as_ref().expect("candidates");
        assert!(
            chosen.starts_with("No, sorry!  All of these involve a pen"),
            "{chosen}"
        );
        let file = BufReader::new(File::open(path).expect("open"));
        for (item, text) in items.iter().zip(file.lines()) {
            let sample = sample(item);
            let row: Value = serde_json::from_str(&text.expect("line")).expect("json");
            let [x, y] = sample.candidates.as_ref().expect("candidates");
            assert!(
                row["chosen"]
                    .as_str()
                    .expect("chosen")
                    .trim_end()
                    .ends_with(x.as_str())
            );
            assert!(
                row["rejected"]
                    .as_str()
                    .expect("rejected")
                    .trim_end()
                    .ends_with(y.as_str())
            );
            assert_ne!(x, y);
            assert_eq!(sample.messages.first().map(|m| m.role), Some(Role::User));
            assert_eq!(sample.messages.last().map(|m| m.role), Some(Role::User));
            for message in &sample.messages {
                assert!(
                    row["chosen"]
                        .as_str()
                        .expect("chosen")
                        .contains(&message.content)
                );
            }
        }

        // The whole file (data/ keeps its first 500 lines): one pair has an empty chosen answer.
        // The first 2,000 lines of the original also have empty chosen answers on lines 517, 926
        // and 1104, and pairs that differ before their final Assistant turn on lines 1255, 1689,
        // 1951 and 1953 (transcript_candidates_share_their_conversation checks that rejection).
        let mut whole = spec.clone();
        whole.input.limit = None;
        let all = read_all(&whole);
        assert_eq!(
            counts(&all),
            Counts {
                samples: 499,
                rejected: 1,
                duplicates: 0
            }
        );
        let rejected: Vec<(u64, Option<&str>, &str)> = all
            .iter()
            .filter_map(|item| match item {
                CorpusItem::Rejected(r) => Some((r.line, r.field.as_deref(), r.reason.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            rejected,
            [(87, Some("chosen"), "the final Assistant turn is empty")]
        );
    }

    /// Reads `objects` as one corpus (line n is `objects[n - 1]`).
    fn read_lines(spec_of: impl Fn(&Path) -> JobSpec, objects: &[Value]) -> Vec<CorpusItem> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(&dir, "c.jsonl", &lines(objects));
        read_all(&spec_of(&path))
    }

    /// Lines (distinct line numbers, in order) and items per line.
    fn per_line(items: &[CorpusItem]) -> Vec<(u64, usize)> {
        let mut lines: Vec<(u64, usize)> = Vec::new();
        for item in items {
            match lines.last_mut() {
                Some((line, count)) if *line == item.line() => *count += 1,
                _ => lines.push((item.line(), 1)),
            }
        }
        lines
    }

    fn duplicate(line: u64, key: SampleKey, first_line: u64) -> CorpusItem {
        CorpusItem::Duplicate {
            line,
            key,
            first_line,
        }
    }

    #[test]
    fn each_human_turn_of_a_transcript_becomes_a_sample() {
        let (user, assistant) = (Message::user, Message::assistant);
        let objects = [
            json!({"id": "a", "t": "\n\nHuman: q1\n\nAssistant: r1\n\nHuman: q2\n\nAssistant: r2"}),
            json!({"id": "b", "t": "\n\nHuman: q1\n\nAssistant: r1\n\nHuman: q3\n\nAssistant:"}),
            json!({"id": "c", "t": "\n\nHuman: q1\n\nAssistant: r1\n\nHuman: q2"}),
            json!({"id": "a", "t": "\n\nHuman: q1"}),
            json!({"id": "a", "t": "\n\nHuman: new"}),
            json!({"id": "d", "t": "\n\nHuman: x\n\nAssistant: \n\nHuman: y"}),
            json!({"id": "e", "t": "hello"}),
            json!({"id": "f", "t": "\n\nHuman: z\n\nAssistant: w\n\nAssistant: "}),
            json!({"t": "\n\nHuman: no id"}),
        ];
        let mut text = lines(&objects);
        text.extend_from_slice(b"{\"id\": \"g\"\n");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(&dir, "t.jsonl", &text);
        let each = json!({"transcript": "t", "id": "id", "turns": "each"});
        let items = read_all(&spec(&path, each, json!({})));

        let q1 = vec![user("q1")];
        let q2 = vec![user("q1"), assistant("r1"), user("q2")];
        let q3 = vec![user("q1"), assistant("r1"), user("q3")];
        let (a1, a2, b2) = (sample(&items[0]), sample(&items[1]), sample(&items[3]));
        assert_eq!((a1.id.as_str(), a1.line, &a1.messages), ("a#1", 1, &q1));
        assert_eq!((a2.id.as_str(), a2.line, &a2.messages), ("a#2", 1, &q2));
        assert_eq!((b2.id.as_str(), b2.line, &b2.messages), ("b#2", 2, &q3));
        let t = Some("t");
        let expected = vec![
            items[0].clone(),
            items[1].clone(),
            // Line 2's first turn is line 1's.
            duplicate(2, a1.key, 1),
            items[3].clone(),
            // Line 3 repeats line 1's turns: duplicates only, and so is line 4 (its repeated
            // id is not checked, as no work comes of it).
            duplicate(3, a1.key, 1),
            duplicate(3, a2.key, 1),
            duplicate(4, a1.key, 1),
            rejected(Some("id"), "duplicate id \"a\" (first on line 1)", 5),
            rejected(t, "turn 2 (Assistant) is empty", 6),
            rejected(
                t,
                "expected an HH transcript starting with \"\\n\\nHuman:\"",
                7,
            ),
            items[10].clone(),
            rejected(Some("id"), "missing", 9),
            rejected(
                None,
                "invalid JSON at column 10: EOF while parsing an object",
                10,
            ),
        ];
        assert_eq!(items, expected);
        let f1 = sample(&items[10]);
        assert_eq!((f1.id.as_str(), &f1.messages), ("f#1", &vec![user("z")]));

        // Counts add up: every line ends as its items (one per human turn of a readable line,
        // one rejection otherwise), and every item settles once.
        assert_eq!(
            per_line(&items),
            [
                (1, 2),
                (2, 2),
                (3, 2),
                (4, 1),
                (5, 1),
                (6, 1),
                (7, 1),
                (8, 1),
                (9, 1),
                (10, 1)
            ]
        );
        assert_eq!(
            counts(&items),
            Counts {
                samples: 4,
                rejected: 5,
                duplicates: 4
            }
        );
        assert_eq!(count_lines(&path).expect("count"), 10);
        // `limit` counts lines, not samples.
        let limited = json!({"transcript": "t", "id": "id", "turns": "each", "limit": 3});
        let first_three = read_all(&spec(&path, limited, json!({})));
        assert_eq!(first_three, items[..6]);

        // Without an id field the line's id is the content key of its last sample, which is the
        // key (and id) "whole" gives a line ending with a Human turn.
        let without = json!({"transcript": "t", "turns": "each"});
        let items = read_lines(
            |path| spec(path, without.clone(), json!({})),
            &objects[2..3],
        );
        let whole = read_lines(
            |path| spec(path, json!({"transcript": "t"}), json!({})),
            &objects[2..3],
        );
        let last = sample(&items[1]);
        assert_eq!(last.key, sample(&whole[0]).key);
        assert_eq!(last.id, format!("{}#2", sample(&whole[0]).id));
        assert_eq!(sample(&items[0]).id, format!("{}#1", last.key.to_hex()));
        assert_ne!(sample(&items[0]).key, last.key);
    }

    #[test]
    fn each_user_turn_of_a_message_list_becomes_a_sample() {
        let system = Message {
            role: Role::System,
            content: "be kind".into(),
        };
        let m = |role: &str, content: &str| json!({"role": role, "content": content});
        let objects = [
            json!({"m": [m("system", "be kind"), m("user", "a"), m("assistant", "b"), m("user", "c"), m("assistant", "d")]}),
            json!({"m": [m("system", "be kind"), m("user", "a")]}),
            json!({"m": [m("system", "s"), m("assistant", "x")]}),
            json!({"m": [m("user", "a"), m("assistant", " ")]}),
            json!({"m": []}),
        ];
        for pipeline in [
            json!({}),
            json!({"pipeline": "pairwise", "pairwise": {"judge": "m", "generate": {"model": "m"}}}),
        ] {
            let input = json!({"messages": "m", "turns": "each"});
            let items = read_lines(|path| spec(path, input.clone(), pipeline.clone()), &objects);
            let (first, second) = (sample(&items[0]), sample(&items[1]));
            assert_eq!(first.messages, vec![system.clone(), Message::user("a")]);
            assert_eq!(
                second.messages,
                vec![
                    system.clone(),
                    Message::user("a"),
                    Message::assistant("b"),
                    Message::user("c")
                ]
            );
            let base = second.key.to_hex();
            assert_eq!(
                (first.id.clone(), second.id.clone()),
                (format!("{base}#1"), format!("{base}#2"))
            );
            let field = Some("m");
            let expected = [
                duplicate(2, first.key, 1),
                rejected(field, "no user turn", 3),
                rejected(field, "message 2: content: empty", 4),
                rejected(field, "empty", 5),
            ];
            assert_eq!(items[2..], expected);
        }
    }

    #[test]
    fn each_with_a_prompt_field_reads_as_whole() {
        let path = Path::new(RED_TEAM);
        let input = |turns: &str| json!({"prompt": "prompt", "id": "source_line", "turns": turns});
        let whole = read_all(&spec(path, input("whole"), json!({})));
        assert_eq!(read_all(&spec(path, input("each"), json!({}))), whole);
        assert_eq!(whole.len(), 500);
    }

    #[test]
    fn each_refuses_a_line_whose_samples_would_be_too_big() {
        let text = "\n\nHuman: a\n\nAssistant: b".repeat(3000);
        let items = read_lines(
            |path| spec(path, json!({"transcript": "t", "turns": "each"}), json!({})),
            &[json!({"t": text}), json!({"t": "\n\nHuman: a"})],
        );
        let CorpusItem::Rejected(rejection) = &items[0] else {
            panic!("expected a rejection: {:?}", items[0]);
        };
        assert_eq!((rejection.line, rejection.field.as_deref()), (1, Some("t")));
        assert!(
            rejection.reason.starts_with("its 3000 human turns make ")
                && rejection
                    .reason
                    .ends_with("more than the 16 MiB limit of one line with turns = \"each\""),
            "{}",
            rejection.reason
        );
        // The whole conversation still reads as one sample.
        let whole = read_lines(
            |path| spec(path, json!({"transcript": "t"}), json!({})),
            &[json!({"t": format!("{text}\n\nHuman: c")})],
        );
        assert_eq!(sample(&whole[0]).messages.len(), 6001);
        assert_eq!(sample(&items[1]).id, format!("{}#1", sample(&items[1]).key));
    }

    #[test]
    fn hh_transcripts_give_one_sample_per_human_turn() {
        let path = Path::new(HH_TEST);
        let input = json!({"transcript": "chosen", "turns": "each", "limit": 20});
        let items = read_all(&spec(path, input, json!({})));
        let rows: Vec<String> = BufReader::new(File::open(path).expect("open"))
            .lines()
            .take(20)
            .map(|line| {
                let row: Value = serde_json::from_str(&line.expect("line")).expect("json");
                row["chosen"].as_str().expect("chosen").to_owned()
            })
            .collect();
        let marker = "\n\nHuman:";
        let humans: usize = rows.iter().map(|text| text.matches(marker).count()).sum();
        let counted = counts(&items);
        assert_eq!(counted.rejected, 0);
        assert_eq!(counted.samples, humans - counted.duplicates);
        assert_eq!(items.len(), humans);
        // The distinct prefixes, found on the raw text: up to each Human turn's end.
        let mut prefixes = std::collections::HashSet::new();
        for text in &rows {
            for (at, _) in text.match_indices(marker) {
                let end = text[at..]
                    .find("\n\nAssistant:")
                    .map_or(text.len(), |e| at + e);
                prefixes.insert(&text[..end]);
            }
        }
        assert_eq!(counted.samples, prefixes.len());
        assert_eq!(humans, 44);

        for (line, count) in per_line(&items) {
            let text = &rows[line as usize - 1];
            assert_eq!(count, text.matches(marker).count(), "line {line}");
            let mut previous: Option<&Sample> = None;
            for (turn, item) in items.iter().filter(|i| i.line() == line).enumerate() {
                let CorpusItem::Sample(sample) = item else {
                    continue;
                };
                let (base, n) = sample.id.rsplit_once('#').expect("#n");
                assert_eq!(n, (turn + 1).to_string());
                assert_eq!(base.len(), 32);
                let messages = &sample.messages;
                assert_eq!(messages.first().map(|m| m.role), Some(Role::User));
                assert_eq!(messages.last().map(|m| m.role), Some(Role::User));
                let users = messages.iter().filter(|m| m.role == Role::User).count();
                assert_eq!(users, turn + 1, "line {line}");
                if let Some(before) = previous {
                    assert!(messages.starts_with(&before.messages), "line {line}");
                }
                for message in messages {
                    assert!(text.contains(&message.content));
                }
                previous = Some(sample);
            }
        }
        assert_eq!(per_line(&items).len(), 20);
    }

    /// A pairwise job reading TRL preference rows: `messages = "prompt"`, candidates
    /// `chosen` and `rejected`.
    fn trl(path: &Path) -> JobSpec {
        let pairwise = json!({"judge": "m", "candidates": ["chosen", "rejected"]});
        spec(
            path,
            json!({"messages": "prompt"}),
            json!({"pipeline": "pairwise", "pairwise": pairwise}),
        )
    }

    #[test]
    fn trl_preference_rows_read_as_pairwise_samples() {
        let m = |role: &str, content: &str| json!({"role": role, "content": content});
        let answer = |content: &str| json!([m("assistant", content)]);
        let prompt = json!([m("system", "be kind"), m("user", "q")]);
        let objects = [
            json!({"id": "x", "prompt": prompt, "chosen": answer(" good "), "rejected": answer("bad"), "p_chosen": 0.8, "readings": []}),
            json!({"prompt": [m("user", "a"), m("assistant", "b"), m("user", "c")], "chosen": answer("d"), "rejected": "e"}),
            json!({"prompt": prompt, "chosen": "good", "rejected": "bad"}),
            json!({"prompt": prompt, "chosen": [m("assistant", "a"), m("assistant", "b")], "rejected": answer("c")}),
            json!({"prompt": prompt, "chosen": answer("a"), "rejected": [m("user", "c")]}),
            json!({"prompt": prompt, "chosen": answer("  "), "rejected": answer("c")}),
            json!({"prompt": prompt, "chosen": [], "rejected": answer("c")}),
            json!({"prompt": prompt, "chosen": 3, "rejected": answer("c")}),
            json!({"prompt": prompt, "chosen": [5], "rejected": answer("c")}),
            json!({"prompt": prompt, "chosen": answer("a"), "rejected": [{"content": "c"}]}),
            json!({"prompt": prompt, "chosen": answer("same"), "rejected": answer("same")}),
            json!({"chosen": answer("a"), "rejected": answer("c")}),
            json!({"prompt": [m("user", "q"), m("assistant", "x")], "chosen": answer("a"), "rejected": answer("c")}),
        ];
        let items = read_lines(trl, &objects);
        assert_eq!(items.len(), objects.len());
        let first = sample(&items[0]);
        let system = Message {
            role: Role::System,
            content: "be kind".into(),
        };
        assert_eq!(first.messages, vec![system, Message::user("q")]);
        assert_eq!(
            first.candidates,
            Some(["good".to_owned(), "bad".to_owned()])
        );
        let second = sample(&items[1]);
        assert_eq!(
            second.messages,
            vec![
                Message::user("a"),
                Message::assistant("b"),
                Message::user("c")
            ]
        );
        assert_eq!(second.candidates, Some(["d".to_owned(), "e".to_owned()]));
        // The same answers as strings are the same work.
        assert_eq!(items[2], duplicate(3, first.key, 1));
        let (chosen, rejected_field) = (Some("chosen"), Some("rejected"));
        let expected = [
            rejected(
                chosen,
                "expected one assistant message, found 2 messages",
                4,
            ),
            rejected(
                rejected_field,
                "message 1: role \"user\" is not assistant (a candidate is an answer)",
                5,
            ),
            rejected(chosen, "message 1: content: empty", 6),
            rejected(chosen, "empty", 7),
            rejected(
                chosen,
                "expected a string or a [{role, content}] list, found a number",
                8,
            ),
            rejected(
                chosen,
                "message 1: expected an object {role, content}, found a number",
                9,
            ),
            rejected(rejected_field, "message 1: role: missing", 10),
            rejected(
                None,
                "candidates \"chosen\" and \"rejected\" are identical",
                11,
            ),
            rejected(Some("prompt"), "missing", 12),
            rejected(Some("prompt"), "the last message must be a user turn", 13),
        ];
        assert_eq!(items[3..], expected);

        // Without a conversation field a message list cannot be read.
        let bare = read_lines(
            |path| pairwise(path, json!({})),
            &[json!({"a": answer("x"), "b": "\n\nHuman: q\n\nAssistant: y"})],
        );
        assert_eq!(
            bare[0],
            rejected(
                Some("a"),
                "a message list holds only the answer, and the job sets no conversation field \
                 (for TRL preference rows: `messages = \"prompt\"`)",
                1
            )
        );
    }
}
