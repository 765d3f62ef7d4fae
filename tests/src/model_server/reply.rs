//! What a reply says: the text of a generation call ([`reply_for`]), and a judgment's
//! generated positions, with option A at [`p_first`], in either log-probability layout.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{JudgeShape, LogprobFormat, ServerConfig, VerdictStyle};

/// Share of the first position's probability mass held by the two letters.
const LETTER_MASS: f64 = 0.9;
/// How a letter's mass is split over its spellings.
const SPELLINGS: [(&str, f64); 3] = [(" {}", 0.60), ("{}", 0.25), ("({}", 0.15)];
/// Non-letter tokens of the first position and their fixed probabilities (sum 1 − LETTER_MASS).
const OTHERS: [(&str, f64); 2] = [("The", 0.06), (" I", 0.04)];
/// The first position when [`ServerConfig::no_letters`] is set.
const NO_LETTERS: [(&str, f64); 3] = [(" The", 0.5), (" I", 0.3), (" (", 0.2)];
/// The second position of a judgment.
const SECOND: [(&str, f64); 2] = [(")", 0.9), (".", 0.1)];
/// The first position of a [`JudgeShape::ParenFirst`] judgment.
const PAREN_FIRST: [(&str, f64); 4] = [(" (", 0.93), (" The", 0.04), ("\n", 0.02), ("B", 0.01)];
/// The non-letter tokens of a [`JudgeShape::Faint`] judgment's first position (sum 0.97).
const FAINT_OTHERS: [(&str, f64); 3] = [("I", 0.6), (" The", 0.3), (" It", 0.07)];
/// Share of a faint position held by the letters.
const FAINT_MASS: f64 = 0.03;

/// The probability of option A a judge call on `prompt_text` reports, in (0.05, 0.95): the
/// first 8 bytes of SHA-256(`prompt_text`) as a big-endian u64 `v`, then
/// `0.05 + 0.9 × ((v >> 11) + 0.5) / 2^53`.
pub fn p_first(prompt_text: &str) -> f64 {
    0.05 + 0.9 * unit(&Sha256::digest(prompt_text.as_bytes()))
}

/// A number in (0, 1) from the first 8 bytes of a digest: `((v >> 11) + 0.5) / 2^53`.
pub(super) fn unit(digest: &[u8]) -> f64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    ((u64::from_be_bytes(first) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// The reply a generation call gets: `"reply <h>: seed <seed>, a test answer"` where `<h>` is
/// the first 8 hex digits of SHA-256(`prompt_text`).
pub fn reply_for(prompt_text: &str, seed: u64) -> String {
    let digest = hex::encode(Sha256::digest(prompt_text.as_bytes()));
    format!("reply {}: seed {seed}, a test answer", &digest[..8])
}

/// The verdict a generation call gets from a server set to write verdicts
/// ([`ServerConfig::verdict`]): a vote for (A) when `unit(SHA-256(prompt_text ‖ seed as 8
/// little-endian bytes)) < p` (p is [`ServerConfig::verdict_p_first`], else
/// [`p_first`]`(prompt_text)`), written in `style`; with [`ServerConfig::verdict_unparseable`]
/// = u, a verdict whose `unit(SHA-256("unparseable" ‖ prompt_text ‖ seed))` is below u names no
/// choice. So the votes of one prompt under distinct seeds are draws with a known share.
pub fn verdict_for(
    prompt_text: &str,
    seed: u64,
    config: &ServerConfig,
    style: VerdictStyle,
) -> String {
    let draw = |salt: &str| {
        let mut hasher = Sha256::new();
        hasher.update(salt.as_bytes());
        hasher.update(prompt_text.as_bytes());
        hasher.update(seed.to_le_bytes());
        unit(&hasher.finalize())
    };
    let tag = &hex::encode(Sha256::digest(prompt_text.as_bytes()))[..8];
    if draw("unparseable") < config.verdict_unparseable {
        return format!("Feedback: {tag} both responses have merits; I cannot choose.");
    }
    let p = config
        .verdict_p_first
        .unwrap_or_else(|| p_first(prompt_text));
    let letter = if draw("") < p { "A" } else { "B" };
    match style {
        VerdictStyle::Prometheus => {
            format!(
                "Feedback: Response {letter} follows the rubric more closely ({tag}). [RESULT] {letter}"
            )
        }
        VerdictStyle::Brackets => {
            format!("Comparing the two ({tag}), my final verdict is: [[{letter}]]")
        }
        VerdictStyle::Letter => format!("Let me weigh them ({tag}).\nThe answer is: ({letter})"),
    }
}

/// The candidates of each generated position of a judgment, most probable first.
pub(super) fn judge_positions(
    prompt: &str,
    config: &ServerConfig,
    max_tokens: u64,
) -> Vec<Vec<(String, f64)>> {
    let owned = |candidates: &[(&str, f64)]| -> Vec<(String, f64)> {
        candidates.iter().map(|&(t, p)| (t.to_owned(), p)).collect()
    };
    let letters = |mass: f64| -> Vec<(String, f64)> {
        let p = p_first(prompt);
        let mut spelled = Vec::new();
        for (letter, share_of_mass) in [("A", p), ("B", 1.0 - p)] {
            for (spelling, share) in SPELLINGS {
                spelled.push((spelling.replace("{}", letter), mass * share_of_mass * share));
            }
        }
        spelled
    };
    let mut positions = if config.no_letters {
        vec![owned(&NO_LETTERS), owned(&SECOND)]
    } else {
        match config.judge_shape {
            JudgeShape::LettersFirst => {
                let mut first = owned(&OTHERS);
                first.extend(letters(LETTER_MASS));
                vec![first, owned(&SECOND)]
            }
            JudgeShape::ParenFirst => {
                let mut second = owned(&OTHERS);
                second.extend(letters(LETTER_MASS));
                vec![owned(&PAREN_FIRST), second, owned(&SECOND)]
            }
            JudgeShape::Faint => {
                let mut first = owned(&FAINT_OTHERS);
                first.extend(letters(FAINT_MASS));
                vec![first, owned(&SECOND)]
            }
        }
    };
    for position in &mut positions {
        position.sort_by(|a, b| b.1.total_cmp(&a.1));
    }
    positions.truncate(max_tokens.max(1) as usize);
    positions
}

/// The `logprobs` object of a choice in `format`.
pub(super) fn render(format: LogprobFormat, positions: &[Vec<(String, f64)>]) -> Value {
    match format {
        LogprobFormat::Chat => {
            let content: Vec<Value> = positions
                .iter()
                .map(|top| {
                    let candidate =
                        |(token, p): &(String, f64)| json!({"token": token, "logprob": p.ln()});
                    let mut entry = candidate(&top[0]);
                    entry["top_logprobs"] = top.iter().map(candidate).collect();
                    entry
                })
                .collect();
            json!({"content": content})
        }
        LogprobFormat::Legacy => {
            let mut offset = 0;
            let mut text_offset = Vec::new();
            for top in positions {
                text_offset.push(offset);
                offset += top[0].0.len();
            }
            let top_logprobs: Vec<Value> = positions
                .iter()
                .map(|top| {
                    top.iter()
                        .map(|(token, p)| (token.clone(), Value::from(p.ln())))
                        .collect::<serde_json::Map<String, Value>>()
                        .into()
                })
                .collect();
            json!({
                "tokens": positions.iter().map(|top| top[0].0.clone()).collect::<Vec<_>>(),
                "token_logprobs": positions.iter().map(|top| top[0].1.ln()).collect::<Vec<_>>(),
                "top_logprobs": top_logprobs,
                "text_offset": text_offset,
            })
        }
    }
}
