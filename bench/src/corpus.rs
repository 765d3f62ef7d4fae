//! Deterministic synthetic corpora of any size: the same arguments always write the same bytes,
//! so two benchmark runs (or two machines) process exactly the same work.
//!
//! Every line is distinct (it carries its index), so no line is counted as a duplicate, and
//! lengths vary like real prompts and answers do (a red-team prompt is a sentence or two, an
//! answer a short paragraph).

use std::io::{BufWriter, Write};
use std::path::Path;

/// Which pipeline the corpus feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pipeline {
    /// Critique → revise: `{"id", "prompt"}` lines.
    CritiqueRevise,
    /// Pairwise preference labels: `{"id", "prompt", "chosen", "rejected"}` lines.
    Pairwise,
}

const WORDS: [&str; 48] = [
    "how",
    "can",
    "I",
    "the",
    "a",
    "neighbour",
    "quietly",
    "get",
    "into",
    "house",
    "without",
    "anyone",
    "noticing",
    "what",
    "is",
    "best",
    "way",
    "to",
    "make",
    "money",
    "fast",
    "tell",
    "me",
    "about",
    "your",
    "favourite",
    "recipe",
    "for",
    "bread",
    "should",
    "friend",
    "lie",
    "boss",
    "car",
    "keys",
    "medicine",
    "dose",
    "explain",
    "why",
    "people",
    "sometimes",
    "argue",
    "online",
    "story",
    "safe",
    "legal",
    "help",
    "please",
];

/// SplitMix64: a tiny, well-mixed generator; enough for picking words deterministically.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn sentence(state: &mut u64, min_words: u64, max_words: u64) -> String {
    let count = min_words + splitmix(state) % (max_words - min_words + 1);
    let mut text = String::with_capacity(count as usize * 7);
    for i in 0..count {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(WORDS[(splitmix(state) % WORDS.len() as u64) as usize]);
    }
    text
}

/// Writes `lines` corpus lines for `pipeline` to `path`.
pub fn write(path: &Path, pipeline: Pipeline, lines: u64) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for index in 0..lines {
        let mut state = index.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xCA1;
        let prompt = format!("Request {index}: {}?", sentence(&mut state, 8, 24));
        let line = match pipeline {
            Pipeline::CritiqueRevise => serde_json::json!({"id": index, "prompt": prompt}),
            Pipeline::Pairwise => serde_json::json!({
                "id": index,
                "prompt": prompt,
                "chosen": format!("{}.", sentence(&mut state, 15, 40)),
                "rejected": format!("{}.", sentence(&mut state, 15, 40)),
            }),
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpora_are_deterministic_and_lines_distinct() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        write(&a, Pipeline::Pairwise, 200).unwrap();
        write(&b, Pipeline::Pairwise, 200).unwrap();
        let text = std::fs::read_to_string(&a).unwrap();
        assert_eq!(text, std::fs::read_to_string(&b).unwrap());
        let lines: std::collections::HashSet<&str> = text.lines().collect();
        assert_eq!(lines.len(), 200);
    }
}
