//! Reading a written verdict: judge models trained to write their answer (Prometheus 2's
//! `Feedback: … [RESULT] A`, MT-Bench and Auto-J's `[[A]]`, a critique ending in
//! `The answer is: (A)`) and APIs without log-probabilities answer in words, and the choice is
//! parsed from the text.
//!
//! A verdict is read only when it is unambiguous: every match of the format in the text must
//! name the same letter. A text with no match, or with matches for both letters ("not [[A]] but
//! [[B]]"), is unreadable and counted apart; it is never guessed.

use cai_common::job::VerdictFormat;
use fancy_regex::Regex;

/// Prometheus 2's result line.
const PROMETHEUS: &[&str] = &[r"\[RESULT\]\s*(?:Response\s+)?\(?([AB])\b"];
/// MT-Bench's and Auto-J's double brackets.
const BRACKETS: &[&str] = &[r"\[\[([AB])\]\]"];
/// `The answer is: (A)`, `the answer is A` at the end, or a reply that is the letter alone.
const LETTER: &[&str] = &[
    r"(?i:answer\s+is)\s*:?\s*\(([AB])\)",
    r"(?i:answer\s+is)\s*:?\s*([AB])\s*\.?\s*$",
    r"^\s*\(?([AB])\)?\s*\.?\s*$",
];

/// One vote read from a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vote {
    /// The first-shown answer, (A).
    First,
    /// The second-shown answer, (B).
    Second,
    /// The text names no choice in the format.
    Missing,
    /// The text names both choices.
    Ambiguous,
}

/// A compiled verdict format: the patterns of each family tried in turn (`auto` has three
/// families, every other format one), each pattern with one capture group.
pub struct VerdictParser {
    families: Vec<Vec<Regex>>,
}

impl VerdictParser {
    /// The parser of a format. The job check compiled a user's pattern already, so a failure
    /// here means the spec was not checked.
    pub fn new(format: &VerdictFormat) -> Result<Self, String> {
        let compile = |patterns: &[&str]| -> Result<Vec<Regex>, String> {
            patterns
                .iter()
                .map(|pattern| Regex::new(pattern).map_err(|error| error.to_string()))
                .collect()
        };
        let families = match format {
            VerdictFormat::Auto => vec![compile(PROMETHEUS)?, compile(BRACKETS)?, compile(LETTER)?],
            VerdictFormat::Prometheus => vec![compile(PROMETHEUS)?],
            VerdictFormat::Brackets => vec![compile(BRACKETS)?],
            VerdictFormat::Letter => vec![compile(LETTER)?],
            VerdictFormat::Regex(pattern) => vec![compile(&[pattern.as_str()])?],
        };
        Ok(Self { families })
    }

    /// The vote a verdict casts: the first family with a match in the text decides, and only
    /// if all of its matches name one letter.
    pub fn read(&self, text: &str) -> Vote {
        for family in &self.families {
            let mut seen = (false, false);
            for regex in family {
                for captures in regex.captures_iter(text).flatten() {
                    let letter = captures.get(1).map(|m| m.as_str().trim());
                    let letter = letter.map(|l| l.trim_start_matches('(').trim_end_matches(')'));
                    match letter {
                        Some("A") => seen.0 = true,
                        Some("B") => seen.1 = true,
                        _ => {}
                    }
                }
            }
            match seen {
                (true, false) => return Vote::First,
                (false, true) => return Vote::Second,
                (true, true) => return Vote::Ambiguous,
                (false, false) => {}
            }
        }
        Vote::Missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(format: VerdictFormat, text: &str) -> Vote {
        VerdictParser::new(&format).unwrap().read(text)
    }

    #[test]
    fn each_built_in_format_is_read() {
        use Vote::*;
        let prometheus = "Feedback: Response B refuses politely while A complies. [RESULT] B";
        assert_eq!(read(VerdictFormat::Prometheus, prometheus), Second);
        assert_eq!(read(VerdictFormat::Prometheus, "… [RESULT] (A)\n"), First);
        assert_eq!(
            read(VerdictFormat::Prometheus, "[RESULT] Response A"),
            First
        );
        assert_eq!(
            read(VerdictFormat::Brackets, "Both are fine.\n\n[[A]]"),
            First
        );
        assert_eq!(
            read(VerdictFormat::Brackets, "Final verdict: [[B]]"),
            Second
        );
        assert_eq!(
            read(VerdictFormat::Letter, "Reasoning…\nThe answer is: (B)"),
            Second
        );
        assert_eq!(read(VerdictFormat::Letter, "So the answer is A."), First);
        assert_eq!(read(VerdictFormat::Letter, " (A)"), First);
        assert_eq!(read(VerdictFormat::Letter, "B"), Second);
        // An article is not a verdict.
        assert_eq!(
            read(VerdictFormat::Letter, "The answer is: A good one"),
            Missing
        );
        for text in [prometheus, "Final verdict: [[B]]", "The answer is: (B)"] {
            assert_eq!(read(VerdictFormat::Auto, text), Second, "{text}");
        }
    }

    #[test]
    fn a_text_without_a_verdict_or_naming_both_is_not_read() {
        use Vote::*;
        assert_eq!(read(VerdictFormat::Brackets, "I cannot decide."), Missing);
        assert_eq!(read(VerdictFormat::Brackets, "[[C]]"), Missing);
        assert_eq!(read(VerdictFormat::Prometheus, "[[A]]"), Missing);
        assert_eq!(
            read(VerdictFormat::Brackets, "Not [[A]] but [[B]]."),
            Ambiguous
        );
        assert_eq!(
            read(
                VerdictFormat::Letter,
                "The answer is: (A). No, the answer is: (B)"
            ),
            Ambiguous
        );
        // Auto takes the first family that matches: a Prometheus result line decides over a
        // bracket quoted in its feedback.
        assert_eq!(
            read(VerdictFormat::Auto, "Unlike [[A]], … [RESULT] B"),
            Second
        );
    }

    #[test]
    fn a_pattern_of_ones_own_captures_the_letter() {
        let format = VerdictFormat::Regex(r"Winner:\s*(\(?[A-Z]\)?)".into());
        assert_eq!(read(format.clone(), "Winner: (B)"), Vote::Second);
        assert_eq!(read(format.clone(), "Winner: A"), Vote::First);
        // A capture that is not A or B (a tie) casts no vote.
        assert_eq!(read(format, "Winner: C"), Vote::Missing);
    }
}
