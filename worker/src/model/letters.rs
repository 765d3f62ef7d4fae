//! Reading option probabilities from top log-probabilities.
//!
//! Tokenizers and endpoints spell a letter differently (`A`, ` A`, `(A`, ` (A`, `A)`), and a
//! model may emit a shared `" ("` token before the letter. So: take the first generated
//! position whose top tokens spell either option, sum the probabilities of every spelling of
//! each letter there, and normalise over the two. A position where neither letter appears
//! gives no reading: the caller retries and then fails the sample, it never guesses 0.5.

use super::TokenLogprob;

/// Which option a token spells, if any: `'A'`, `'B'` or nothing.
pub fn option_of(token: &str) -> Option<char> {
    let core = token.trim();
    let core = core.strip_prefix('(').unwrap_or(core);
    let core = core.strip_suffix(')').unwrap_or(core);
    match core {
        "A" => Some('A'),
        "B" => Some('B'),
        _ => None,
    }
}

/// The normalised probability of option A at the first position that spells an option,
/// or `None` when no position does.
pub fn probability_of_a(positions: &[Vec<TokenLogprob>]) -> Option<f64> {
    for candidates in positions {
        let (mut a, mut b) = (0.0f64, 0.0f64);
        for candidate in candidates {
            match option_of(&candidate.token) {
                Some('A') => a += candidate.logprob.exp(),
                Some('B') => b += candidate.logprob.exp(),
                _ => {}
            }
        }
        if a + b > 0.0 {
            return Some(a / (a + b));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(token: &str, p: f64) -> TokenLogprob {
        TokenLogprob {
            token: token.into(),
            logprob: p.ln(),
        }
    }

    #[test]
    fn every_spelling_of_a_letter_counts() {
        for token in ["A", " A", "(A", " (A", "A)", "(A)", " A "] {
            assert_eq!(option_of(token), Some('A'), "{token:?}");
        }
        for token in ["a", "AB", " (", "The", "", "B."] {
            assert_eq!(option_of(token), None, "{token:?}");
        }
    }

    #[test]
    fn spellings_are_summed_and_normalised_over_the_two_options() {
        let positions = vec![vec![
            t(" A", 0.3),
            t("A", 0.1),
            t(" (B", 0.2),
            t("B", 0.2),
            t("The", 0.2),
        ]];
        let p = probability_of_a(&positions).unwrap();
        assert!((p - 0.5).abs() < 1e-12, "{p}");
        let positions = vec![vec![t(" A", 0.6), t(" B", 0.2)]];
        assert!((probability_of_a(&positions).unwrap() - 0.75).abs() < 1e-12);
    }

    #[test]
    fn skips_a_shared_prefix_token_and_refuses_when_no_letter_appears() {
        let positions = vec![
            vec![t(" (", 0.9), t(" The", 0.1)],
            vec![t("B", 0.6), t("A", 0.2)],
        ];
        assert!((probability_of_a(&positions).unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(probability_of_a(&[vec![t("The", 0.9)]]), None);
        assert_eq!(probability_of_a(&[]), None);
    }
}
