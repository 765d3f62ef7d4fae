//! A tokenizer built from a GGUF file's own metadata (`tokenizer.ggml.*`), so the model file is
//! all a local model needs: byte-level BPE (`"gpt2"`: SmolLM2, Llama 3, …) with the
//! pre-tokenizer `tokenizer.ggml.pre` names, and SentencePiece (`"llama"`: Llama 2, Mistral,
//! Gemma) merging by score with byte fallback, as llama.cpp does. Control and user-defined
//! tokens (`<|im_start|>`, `<end_of_turn>`) are matched as single ids wherever they appear.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use fancy_regex::Regex;

use super::meta::{self, Metadata};

/// GGUF token type of tokens that mark structure (`<|im_start|>`, `<bos>`).
const CONTROL: i64 = 3;
/// GGUF token type of tokens added by the model's authors, matched literally like control ones.
const USER_DEFINED: i64 = 4;
/// GGUF token type of SentencePiece byte-fallback tokens (`<0x0A>`).
const BYTE: i64 = 6;

/// Control tokens that end a turn in the common chat formats, besides the declared eos/eot.
const END_OF_TURN: [&str; 6] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
];

/// GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, whitespace.
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's pre-tokenizer: digits in groups of three, newlines kept apart.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// SentencePiece's visible space.
const SPM_SPACE: char = '\u{2581}';

/// Text to token ids and back, as the model was trained.
pub(crate) struct Tokenizer {
    kind: Kind,
    /// What each id decodes to.
    pieces: Vec<Vec<u8>>,
    /// Whether each id is a control or user-defined token.
    special: Vec<bool>,
    /// Control and user-defined tokens by their first byte, longest first.
    literals: HashMap<u8, Vec<(String, u32)>>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    stops: Vec<u32>,
}

/// How plain text (between special tokens) becomes ids.
enum Kind {
    /// Byte-level BPE: bytes mapped to printable characters, then ranked merges per piece.
    Bpe {
        /// `(left, right)` → `(rank, merged id)`.
        merges: HashMap<(u32, u32), (u32, u32)>,
        /// The id of each byte's character; vocabularies lack some bytes that UTF-8 text never
        /// or hardly holds (SmolLM2 has no `0x04`, `0xC0`, `0xFF`, …), which are dropped, as
        /// llama.cpp and Hugging Face do.
        bytes: [Option<u32>; 256],
        /// Regexes that split the text into pieces, applied in turn.
        splits: Vec<Regex>,
    },
    /// SentencePiece: characters merged by the score of the merged token, unknown characters
    /// spelled with byte tokens.
    Spm {
        ids: HashMap<String, u32>,
        scores: Vec<f32>,
        /// The `<0xNN>` token of each byte.
        bytes: [Option<u32>; 256],
        unknown: Option<u32>,
        /// Prepend a space to the text at the start and after each special token.
        space_prefix: bool,
    },
}

impl Tokenizer {
    /// Builds the tokenizer described by `tokenizer.ggml.*` metadata.
    pub(crate) fn from_metadata(metadata: &Metadata) -> Result<Self, String> {
        let tokens = meta::strings(metadata, "tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match metadata.get("tokenizer.ggml.token_type") {
            Some(_) => meta::array(metadata, "tokenizer.ggml.token_type")?
                .iter()
                .map(|value| meta::as_int(value).unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err("GGUF `tokenizer.ggml.token_type` and `tokens` differ in length".into());
        }
        let n_tokens = u32::try_from(tokens.len()).map_err(|_| "vocabulary too large")?;
        let special: Vec<bool> = types
            .iter()
            .map(|&kind| kind == CONTROL || kind == USER_DEFINED)
            .collect();
        let model = meta::string(metadata, "tokenizer.ggml.model").unwrap_or("llama");
        let (kind, pieces) = match model {
            "gpt2" => Self::bpe(metadata, &tokens, &special)?,
            "llama" => Self::spm(metadata, &tokens, &types)?,
            other => {
                return Err(format!(
                    "tokenizer model {other:?} is not supported (only \"gpt2\" and \"llama\")"
                ));
            }
        };
        let mut literals: HashMap<u8, Vec<(String, u32)>> = HashMap::new();
        for (id, token) in (0..n_tokens).zip(&tokens) {
            if special[id as usize] && !token.is_empty() {
                literals
                    .entry(token.as_bytes()[0])
                    .or_default()
                    .push(((*token).to_owned(), id));
            }
        }
        for candidates in literals.values_mut() {
            candidates.sort_by_key(|(literal, _)| std::cmp::Reverse(literal.len()));
        }
        let valid = |id: u32| (id < n_tokens).then_some(id);
        let bos = meta::id(metadata, "tokenizer.ggml.bos_token_id").and_then(valid);
        let eos = meta::id(metadata, "tokenizer.ggml.eos_token_id").and_then(valid);
        let eot = meta::id(metadata, "tokenizer.ggml.eot_token_id").and_then(valid);
        let mut stops: Vec<u32> = eos.into_iter().chain(eot).collect();
        for (id, token) in (0..n_tokens).zip(&tokens) {
            if types[id as usize] == CONTROL && END_OF_TURN.contains(token) && !stops.contains(&id)
            {
                stops.push(id);
            }
        }
        let add_bos =
            meta::flag(metadata, "tokenizer.ggml.add_bos_token").unwrap_or(model == "llama");
        Ok(Self {
            kind,
            pieces,
            special,
            literals,
            bos,
            eos,
            add_bos,
            stops,
        })
    }

    fn bpe(
        metadata: &Metadata,
        tokens: &[&str],
        special: &[bool],
    ) -> Result<(Kind, Vec<Vec<u8>>), String> {
        let chars = byte_chars();
        let char_bytes: HashMap<char, u8> = (0..=255u8).map(|b| (chars[b as usize], b)).collect();
        let ids: HashMap<&str, u32> = tokens.iter().zip(0u32..).map(|(t, id)| (*t, id)).collect();
        let mut bytes = [None; 256];
        for (slot, c) in bytes.iter_mut().zip(chars) {
            *slot = ids.get(c.to_string().as_str()).copied();
        }
        let mut merges = HashMap::new();
        for (rank, merge) in (0u32..).zip(meta::strings(metadata, "tokenizer.ggml.merges")?) {
            let Some((left, right)) = merge.split_once(' ') else {
                return Err(format!("malformed BPE merge {merge:?}"));
            };
            let merged = format!("{left}{right}");
            if let (Some(&l), Some(&r), Some(&m)) =
                (ids.get(left), ids.get(right), ids.get(merged.as_str()))
            {
                merges.entry((l, r)).or_insert((rank, m));
            }
        }
        let pre = meta::string(metadata, "tokenizer.ggml.pre").unwrap_or("default");
        let patterns: &[&str] = match pre {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => &[r"\p{N}", GPT2_SPLIT],
            "llama3" | "llama-v3" | "llama-bpe" => &[LLAMA3_SPLIT],
            "default" | "gpt2" | "gpt-2" => &[GPT2_SPLIT],
            other => {
                tracing::warn!(
                    pre = other,
                    "unknown BPE pre-tokenizer: splitting text as GPT-2 does"
                );
                &[GPT2_SPLIT]
            }
        };
        let splits = patterns
            .iter()
            .map(|pattern| Regex::new(pattern).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let pieces = tokens
            .iter()
            .zip(special)
            .map(|(token, &special)| {
                if special {
                    token.as_bytes().to_vec()
                } else {
                    let mut out = Vec::with_capacity(token.len());
                    for c in token.chars() {
                        match char_bytes.get(&c) {
                            Some(&b) => out.push(b),
                            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                    out
                }
            })
            .collect();
        Ok((
            Kind::Bpe {
                merges,
                bytes,
                splits,
            },
            pieces,
        ))
    }

    fn spm(
        metadata: &Metadata,
        tokens: &[&str],
        types: &[i64],
    ) -> Result<(Kind, Vec<Vec<u8>>), String> {
        let scores: Vec<f32> = match metadata.get("tokenizer.ggml.scores") {
            Some(_) => meta::array(metadata, "tokenizer.ggml.scores")?
                .iter()
                .map(|value| value.to_f32().map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?,
            None => vec![0.0; tokens.len()],
        };
        if scores.len() != tokens.len() {
            return Err("GGUF `tokenizer.ggml.scores` and `tokens` differ in length".into());
        }
        let mut bytes = [None; 256];
        let mut pieces = Vec::with_capacity(tokens.len());
        for ((token, &kind), id) in tokens.iter().zip(types).zip(0u32..) {
            let byte = (kind == BYTE)
                .then(|| token.strip_prefix("<0x")?.strip_suffix('>'))
                .flatten()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok());
            pieces.push(match byte {
                Some(b) => {
                    bytes[b as usize] = Some(id);
                    vec![b]
                }
                None if kind == CONTROL => token.as_bytes().to_vec(),
                None => token.replace(SPM_SPACE, " ").into_bytes(),
            });
        }
        let ids = tokens
            .iter()
            .zip(0u32..)
            .map(|(t, id)| ((*t).to_owned(), id))
            .collect();
        let kind = Kind::Spm {
            ids,
            scores,
            bytes,
            unknown: meta::id(metadata, "tokenizer.ggml.unknown_token_id"),
            space_prefix: meta::flag(metadata, "tokenizer.ggml.add_space_prefix").unwrap_or(true),
        };
        Ok((kind, pieces))
    }

    /// The ids of `text`, special tokens included as single ids; no BOS is added.
    pub(crate) fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let bytes = text.as_bytes();
        let (mut start, mut at) = (0, 0);
        while at < bytes.len() {
            let found = self.literals.get(&bytes[at]).and_then(|candidates| {
                candidates
                    .iter()
                    .find(|(literal, _)| bytes[at..].starts_with(literal.as_bytes()))
            });
            match found {
                Some((literal, id)) => {
                    self.encode_plain(&text[start..at], &mut out);
                    out.push(*id);
                    at += literal.len();
                    start = at;
                }
                None => at += 1,
            }
        }
        self.encode_plain(&text[start..], &mut out);
        out
    }

    /// The ids a prompt is run with: [`encode`](Self::encode), with the BOS token first when
    /// the model wants one and the text does not already start with it.
    pub(crate) fn encode_prompt(&self, text: &str) -> Vec<u32> {
        let mut ids = self.encode(text);
        if let Some(bos) = self.bos.filter(|_| self.add_bos) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        ids
    }

    /// Encodes text that holds no special token; it follows the start or a special token.
    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        match &self.kind {
            Kind::Bpe {
                merges,
                bytes,
                splits,
            } => {
                for piece in split(text, splits) {
                    bpe_piece(piece, merges, bytes, out);
                }
            }
            Kind::Spm {
                ids,
                scores,
                bytes,
                unknown,
                space_prefix,
            } => {
                let mut escaped = String::with_capacity(text.len() + 3);
                if *space_prefix {
                    escaped.push(SPM_SPACE);
                }
                escaped.extend(text.chars().map(|c| if c == ' ' { SPM_SPACE } else { c }));
                spm_text(&escaped, ids, scores, bytes, *unknown, out);
            }
        }
    }

    /// The text of `ids` taken as a whole text: special tokens spelled out, and for
    /// SentencePiece the space [`encode`](Self::encode) prefixes removed again.
    pub(crate) fn decode(&self, ids: &[u32]) -> String {
        let space_prefix = matches!(
            self.kind,
            Kind::Spm {
                space_prefix: true,
                ..
            }
        );
        let mut bytes = Vec::new();
        let mut after_special = true;
        for &id in ids {
            let Some(piece) = self.pieces.get(id as usize) else {
                continue;
            };
            if self.special[id as usize] {
                after_special = true;
                bytes.extend_from_slice(piece);
                continue;
            }
            let skip = usize::from(space_prefix && after_special && piece.first() == Some(&b' '));
            bytes.extend_from_slice(&piece[skip..]);
            after_special = false;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The text of one token as it reads inside a longer text (`" A"` for SentencePiece's `▁A`).
    pub(crate) fn token_text(&self, id: u32) -> String {
        self.pieces
            .get(id as usize)
            .map(|piece| String::from_utf8_lossy(piece).into_owned())
            .unwrap_or_default()
    }

    /// Whether generating `id` ends the reply (end of sequence or end of turn).
    pub(crate) fn is_stop(&self, id: u32) -> bool {
        self.stops.contains(&id)
    }

    /// The BOS token's text, for chat templates that spell it out.
    pub(crate) fn bos_text(&self) -> String {
        self.bos.map(|id| self.token_text(id)).unwrap_or_default()
    }

    /// The EOS token's text, for chat templates that spell it out.
    pub(crate) fn eos_text(&self) -> String {
        self.eos.map(|id| self.token_text(id)).unwrap_or_default()
    }
}

/// GPT-2's map of bytes to printable characters: printable Latin-1 bytes stand for themselves,
/// the others for the characters from U+0100 on, in order.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        table[b as usize] = if matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("U+0100..U+0143 are characters")
        };
    }
    table
}

/// Splits `text` with each regex in turn, as llama.cpp does: matches and the text between
/// them both become pieces.
fn split<'t>(text: &'t str, splits: &[Regex]) -> Vec<&'t str> {
    let mut pieces = vec![text];
    for regex in splits {
        let mut next = Vec::with_capacity(pieces.len() * 2);
        for piece in pieces {
            let mut last = 0;
            for found in regex.find_iter(piece) {
                let Ok(found) = found else {
                    break;
                };
                if found.start() > last {
                    next.push(&piece[last..found.start()]);
                }
                next.push(found.as_str());
                last = found.end();
            }
            if last < piece.len() {
                next.push(&piece[last..]);
            }
        }
        pieces = next;
    }
    pieces
}

/// Byte-level BPE of one piece: start from its bytes, apply the best-ranked merge until none
/// applies.
fn bpe_piece(
    piece: &str,
    merges: &HashMap<(u32, u32), (u32, u32)>,
    bytes: &[Option<u32>; 256],
    out: &mut Vec<u32>,
) {
    let mut symbols: Vec<u32> = piece.bytes().filter_map(|b| bytes[b as usize]).collect();
    loop {
        let best = symbols
            .windows(2)
            .enumerate()
            .filter_map(|(at, pair)| {
                merges
                    .get(&(pair[0], pair[1]))
                    .map(|&(rank, id)| (rank, at, id))
            })
            .min();
        let Some((_, at, id)) = best else {
            break;
        };
        symbols[at] = id;
        symbols.remove(at + 1);
    }
    out.extend(symbols);
}

/// A candidate merge of two adjacent symbols in SentencePiece encoding.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    /// Higher score first; among equal scores, the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// One symbol of the text being merged: a byte range, linked to its neighbours.
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// SentencePiece encoding of escaped text (spaces already `▁`), as llama.cpp does it: merge
/// the adjacent pair whose concatenation is the best-scored token until none is a token,
/// then spell symbols that are not tokens with byte tokens.
fn spm_text(
    text: &str,
    ids: &HashMap<String, u32>,
    scores: &[f32],
    bytes: &[Option<u32>; 256],
    unknown: Option<u32>,
    out: &mut Vec<u32>,
) {
    let starts: Vec<(usize, char)> = text.char_indices().collect();
    let count = starts.len();
    let mut symbols: Vec<Symbol> = starts
        .iter()
        .enumerate()
        .map(|(at, &(start, c))| Symbol {
            start,
            len: c.len_utf8(),
            prev: at.checked_sub(1),
            next: (at + 1 < count).then_some(at + 1),
        })
        .collect();
    let mut queue = BinaryHeap::new();
    let candidate = |symbols: &[Symbol], left: usize, right: usize| -> Option<Bigram> {
        let (l, r) = (&symbols[left], &symbols[right]);
        let merged = &text[l.start..r.start + r.len];
        ids.get(merged).map(|&id| Bigram {
            score: scores[id as usize],
            left,
            right,
            len: merged.len(),
        })
    };
    for left in 1..count {
        queue.extend(candidate(&symbols, left - 1, left));
    }
    while let Some(bigram) = queue.pop() {
        let (left, right) = (bigram.left, bigram.right);
        if symbols[left].len == 0
            || symbols[right].len == 0
            || symbols[left].len + symbols[right].len != bigram.len
        {
            continue;
        }
        symbols[left].len += symbols[right].len;
        symbols[right].len = 0;
        symbols[left].next = symbols[right].next;
        if let Some(next) = symbols[right].next {
            symbols[next].prev = Some(left);
        }
        if let Some(prev) = symbols[left].prev {
            queue.extend(candidate(&symbols, prev, left));
        }
        if let Some(next) = symbols[left].next {
            queue.extend(candidate(&symbols, left, next));
        }
    }
    let mut at = (count > 0).then_some(0);
    while let Some(index) = at {
        let symbol = &symbols[index];
        let piece = &text[symbol.start..symbol.start + symbol.len];
        match ids.get(piece) {
            Some(&id) => out.push(id),
            None => out.extend(piece.bytes().filter_map(|b| bytes[b as usize].or(unknown))),
        }
        at = symbol.next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Value;

    fn strings(items: &[&str]) -> Value {
        Value::Array(
            items
                .iter()
                .map(|s| Value::String((*s).to_owned()))
                .collect(),
        )
    }

    /// A SentencePiece vocabulary small enough to reason about.
    fn spm() -> Tokenizer {
        let tokens = [
            "<unk>", "<s>", "</s>", "<0x21>", "▁", "h", "e", "l", "o", "▁h", "ll", "llo", "▁hello",
            "<turn>", "▁he",
        ];
        let types = [2, 3, 3, 6, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 1];
        let scores = [
            0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -2.0, -2.0, -3.0, -4.0, -5.0, -1.0, 0.0, -1.5,
        ];
        let metadata: Metadata = [
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            (
                "tokenizer.ggml.token_type",
                Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
            ),
            (
                "tokenizer.ggml.scores",
                Value::Array(scores.iter().map(|&s| Value::F32(s)).collect()),
            ),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(2)),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Tokenizer::from_metadata(&metadata).unwrap()
    }

    #[test]
    fn sentencepiece_merges_by_score_and_falls_back_to_bytes() {
        let tokenizer = spm();
        // "▁hello" is reached by pairwise merges of tokens: "▁h", "▁he", "ll", "llo", "▁hello".
        assert_eq!(tokenizer.encode("hello"), vec![12]);
        // "!" is not a token: its byte token spells it; "?" has no byte token: unknown.
        assert_eq!(tokenizer.encode("hello!?"), vec![12, 3, 0]);
        assert_eq!(tokenizer.encode_prompt("hello"), vec![1, 12]);
        assert_eq!(tokenizer.decode(&[1, 12, 3]), "<s>hello!");
    }

    #[test]
    fn sentencepiece_prefixes_a_space_after_special_tokens_and_decoding_removes_it() {
        let tokenizer = spm();
        let ids = tokenizer.encode("hello<turn>hello hello");
        assert_eq!(ids, vec![12, 13, 12, 12]);
        assert_eq!(tokenizer.decode(&ids), "hello<turn>hello hello");
        assert_eq!(tokenizer.token_text(12), " hello");
        assert!(tokenizer.is_stop(2) && !tokenizer.is_stop(12));
    }

    #[test]
    fn gpt2_split_keeps_the_space_before_a_word_and_every_byte() {
        let splits = [
            Regex::new(r"\p{N}").unwrap(),
            Regex::new(GPT2_SPLIT).unwrap(),
        ];
        let text = "Hi  there,\n\n 42 l'ok ";
        let pieces = split(text, &splits);
        assert_eq!(pieces.concat(), text);
        assert_eq!(
            pieces,
            vec![
                "Hi", " ", " there", ",", "\n\n ", "4", "2", " l", "'", "ok", " "
            ]
        );
    }

    #[test]
    fn byte_characters_are_distinct_and_printable_bytes_stand_for_themselves() {
        let chars = byte_chars();
        assert_eq!(chars[b'A' as usize], 'A');
        assert_eq!(chars[b' ' as usize], 'Ġ');
        assert_eq!(chars[b'\n' as usize], 'Ċ');
        let mut sorted = chars.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
    }
}
