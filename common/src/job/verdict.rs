//! Verdict mode's settings (`pairwise.mode = "verdict"`): how many votes make a label and how a
//! written verdict is read (`pairwise.verdict`). Only what the job file says and its checks live
//! here; the parsers that read a judge's text are the worker's (`model::verdicts`).

/// How a judge's written verdict is read: `pairwise.verdict` as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerdictFormat {
    /// Whichever built-in format the text holds, tried as Prometheus, brackets, letter.
    Auto,
    /// Prometheus 2's `Feedback: … [RESULT] A`.
    Prometheus,
    /// MT-Bench and Auto-J's `[[A]]`.
    Brackets,
    /// A closing `The answer is: (A)`, or a reply that is only the letter.
    Letter,
    /// A regular expression with one capture group that captures `A` or `B`.
    Regex(String),
}

impl VerdictFormat {
    /// The format a `verdict = "…"` value names: a built-in's name, or else a regular
    /// expression, which must compile and have exactly one capture group.
    pub fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "auto" => Self::Auto,
            "prometheus" => Self::Prometheus,
            "brackets" => Self::Brackets,
            "letter" => Self::Letter,
            pattern => {
                let regex = fancy_regex::Regex::new(pattern).map_err(|error| {
                    format!(
                        "{pattern:?} is neither \"auto\", \"prometheus\", \"brackets\" nor \
                         \"letter\", and not a regular expression: {error}"
                    )
                })?;
                // captures_len counts the whole match as group 0.
                if regex.captures_len() != 2 {
                    return Err(format!(
                        "the regular expression {pattern:?} must have exactly one capture group \
                         (the letter A or B); it has {}",
                        regex.captures_len() - 1
                    ));
                }
                Self::Regex(pattern.to_owned())
            }
        })
    }

    /// The value the job file writes for it.
    pub fn name(&self) -> &str {
        match self {
            Self::Auto => "auto",
            Self::Prometheus => "prometheus",
            Self::Brackets => "brackets",
            Self::Letter => "letter",
            Self::Regex(pattern) => pattern,
        }
    }
}

/// The settings of verdict mode: a label's votes per order and how each is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerdictSpec {
    /// Verdicts sampled per judged order (distinct seeds, the judge's own temperature).
    pub votes: u32,
    /// How each verdict is read from the text.
    pub format: VerdictFormat,
}

/// The most votes a reading may take.
pub const MAX_VOTES: u32 = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_names_and_regular_expressions_are_told_apart() {
        assert_eq!(VerdictFormat::parse("auto"), Ok(VerdictFormat::Auto));
        assert_eq!(VerdictFormat::parse("letter"), Ok(VerdictFormat::Letter));
        let pattern = r"Winner: \(?([AB])";
        assert_eq!(
            VerdictFormat::parse(pattern),
            Ok(VerdictFormat::Regex(pattern.into()))
        );
        assert_eq!(VerdictFormat::parse(pattern).unwrap().name(), pattern);
        // A misspelt name is a pattern without a capture group: refused, not guessed.
        let typo = VerdictFormat::parse("promethues").unwrap_err();
        assert!(typo.contains("exactly one capture group"), "{typo}");
        assert!(VerdictFormat::parse(r"(A)|(B)").is_err());
        assert!(
            VerdictFormat::parse(r"([AB]")
                .unwrap_err()
                .contains("not a regular")
        );
    }
}
