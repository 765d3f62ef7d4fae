//! Reading option probabilities from top log-probabilities.
//!
//! Tokenizers and endpoints spell a letter differently (`A`, ` A`, `(A`, ` (A`, `A)`), and a
//! chat judge answering `" (A)"` usually spends its first position on a shared `" ("` token,
//! often with a faint letter somewhere in that position's tail. So every judged position is
//! scored, and the reading is taken where the two letters together hold the most probability
//! (every spelling of a letter summed), then normalised over the two.
//!
//! A server returns only the top-k tokens of a position. A letter missing from them is not
//! impossible, only rarer than the rarest token returned: it is given that upper bound (or the
//! probability the returned tokens leave over, if smaller), never 0, so no reading is exactly
//! 0 or 1 because the server cut the list. How much probability the letters held is kept with
//! the reading (`letter_mass`), so a label made from faint letters can be refused and any label
//! audited afterwards.

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

/// What one judgment says about the two options.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LetterReading {
    /// Probability of option A, normalised over A and B.
    pub p_a: f64,
    /// The probability the two letters held at the position read, counting only the spellings
    /// the server returned (a lower bound on the true mass).
    pub letter_mass: f64,
    /// Which generated position was read (0-based).
    pub position: usize,
}

/// The reading at the judged position where the letters hold the most probability, or `None`
/// when no position's returned tokens spell either letter.
pub fn read(positions: &[Vec<TokenLogprob>]) -> Option<LetterReading> {
    positions
        .iter()
        .enumerate()
        .filter_map(|(position, candidates)| read_position(candidates, position))
        .max_by(|x, y| x.letter_mass.total_cmp(&y.letter_mass))
}

/// The normalised probability of option A (see [`read`]).
pub fn probability_of_a(positions: &[Vec<TokenLogprob>]) -> Option<f64> {
    read(positions).map(|reading| reading.p_a)
}

fn read_position(candidates: &[TokenLogprob], position: usize) -> Option<LetterReading> {
    let (mut a, mut b) = (None::<f64>, None::<f64>);
    let (mut returned, mut smallest) = (0.0f64, f64::INFINITY);
    for candidate in candidates {
        let p = candidate.logprob.exp();
        returned += p;
        smallest = smallest.min(p);
        match option_of(&candidate.token) {
            Some('A') => *a.get_or_insert(0.0) += p,
            Some('B') => *b.get_or_insert(0.0) += p,
            _ => {}
        }
    }
    let letter_mass = a.unwrap_or(0.0) + b.unwrap_or(0.0);
    if letter_mass <= 0.0 {
        return None;
    }
    // A letter the server did not return is at most as likely as the least likely token it
    // did return, and at most what the returned tokens leave over.
    let bound = smallest.min((1.0 - returned).max(0.0));
    let (a, b) = (a.unwrap_or(bound), b.unwrap_or(bound));
    Some(LetterReading {
        p_a: a / (a + b),
        letter_mass,
        position,
    })
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

    fn close(x: f64, y: f64) -> bool {
        (x - y).abs() < 1e-9
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
        let reading = read(&positions).unwrap();
        assert!(close(reading.p_a, 0.5), "{reading:?}");
        assert!(close(reading.letter_mass, 0.8), "{reading:?}");
        let positions = vec![vec![t(" A", 0.6), t(" B", 0.2)]];
        assert!(close(probability_of_a(&positions).unwrap(), 0.75));
    }

    /// A chat judge answering " (A)": position 0 is almost all " (" with a faint B in its tail;
    /// the letters live at position 1. Reading the first position with any letter would give a
    /// hard 0 (B at 0.01, A bounded by the tail); the heaviest position gives the true 0.7.
    #[test]
    fn the_paren_first_shape_is_read_at_the_letter_position() {
        let positions = vec![
            vec![t(" (", 0.95), t(" The", 0.02), t("B", 0.01), t("\n", 0.005)],
            vec![t("A", 0.63), t("B", 0.27), t("C", 0.05), t("a", 0.02)],
        ];
        let reading = read(&positions).unwrap();
        assert_eq!(reading.position, 1);
        assert!(close(reading.p_a, 0.7), "{reading:?}");
        assert!(close(reading.letter_mass, 0.9), "{reading:?}");
    }

    /// TGI returns 5 tokens: when one letter is not among them, it gets the rarest returned
    /// token's probability as an upper bound, so the reading is not a hard 1.
    #[test]
    fn a_letter_outside_a_top_5_gets_an_upper_bound_not_zero() {
        let positions = vec![vec![
            t(" A", 0.80),
            t(" The", 0.08),
            t(" I", 0.05),
            t(" Option", 0.03),
            t(" Both", 0.02),
        ]];
        let reading = read(&positions).unwrap();
        assert!(reading.p_a < 1.0, "{reading:?}");
        assert!(close(reading.p_a, 0.80 / 0.82), "{reading:?}");
        assert!(close(reading.letter_mass, 0.80), "{reading:?}");
        // The bound is also at most what the returned tokens leave over.
        let nearly_all = vec![vec![t(" A", 0.9), t(" The", 0.0995)]];
        let reading = read(&nearly_all).unwrap();
        assert!(close(reading.p_a, 0.9 / (0.9 + 0.0005)), "{reading:?}");
    }

    #[test]
    fn faint_letters_are_read_with_their_small_mass() {
        let positions = vec![
            vec![t("I", 0.6), t("The", 0.3), t("A", 0.02), t("B", 0.01)],
            vec![t(" think", 0.9), t(" would", 0.05)],
        ];
        let reading = read(&positions).unwrap();
        assert_eq!(reading.position, 0);
        assert!(close(reading.letter_mass, 0.03), "{reading:?}");
        assert!(close(reading.p_a, 2.0 / 3.0), "{reading:?}");
    }

    #[test]
    fn no_letter_anywhere_gives_no_reading() {
        assert_eq!(read(&[vec![t("The", 0.9)], vec![t(" answer", 0.8)]]), None);
        assert_eq!(read(&[]), None);
    }
}
