//! The corpus reader as an iterator: one bounded line read at a time, turned into its items,
//! with duplicate samples and repeated ids found across lines.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{self, BufRead, ErrorKind};

use super::line::{LineSamples, parse_object};
use super::{CorpusItem, CorpusReader, MAX_LINE_BYTES, Rejection};

impl Iterator for CorpusReader {
    type Item = CorpusItem;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(item) = self.pending.pop_front() {
            return Some(item);
        }
        if self.finished || self.line >= self.limit {
            return None;
        }
        match read_bounded_line(&mut self.input, &mut self.buffer) {
            Ok(Some(length)) => {
                self.line += 1;
                self.read_line(length);
                self.pending.pop_front()
            }
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(error) => {
                self.finished = true;
                self.line += 1;
                let reason = format!(
                    "cannot read the corpus past this point ({error}); the rest is not read"
                );
                tracing::error!(path = %self.path.display(), line = self.line, "{reason}");
                Some(CorpusItem::Rejected(Rejection {
                    line: self.line,
                    field: None,
                    reason,
                }))
            }
        }
    }
}

impl CorpusReader {
    /// Turns the line in the buffer (`length` bytes long in the file) into its items, queued in
    /// `pending`: a rejection, or a sample or duplicate for each of the line's samples. A line
    /// whose samples are all duplicates is not checked for a repeated id (as its work is done
    /// once already); otherwise a repeated id rejects the whole line.
    fn read_line(&mut self, length: u64) {
        let line = self.line;
        let read = parse_object(&self.buffer, length)
            .and_then(|object| self.fields.samples(&object, line));
        let LineSamples { id, samples } = match read {
            Ok(read) => read,
            Err((field, reason)) => {
                self.pending.push_back(CorpusItem::Rejected(Rejection {
                    line,
                    field,
                    reason,
                }));
                return;
            }
        };
        let fresh = samples
            .iter()
            .any(|sample| !self.keys.contains_key(&sample.key.0));
        if let (true, Some(field), Some(id)) = (fresh, &self.fields.id, id) {
            let mut hasher = DefaultHasher::new();
            id.hash(&mut hasher);
            let hash = hasher.finish();
            if let Some(first_line) = self.ids.get(&hash) {
                self.pending.push_back(CorpusItem::Rejected(Rejection {
                    line,
                    field: Some(field.clone()),
                    reason: format!("duplicate id {id:?} (first on line {first_line})"),
                }));
                return;
            }
            self.ids.insert_new(hash, line);
        }
        for sample in samples {
            let item = match self.keys.get(&sample.key.0) {
                Some(first_line) => CorpusItem::Duplicate {
                    line,
                    key: sample.key,
                    first_line,
                },
                None => {
                    self.keys.insert_new(sample.key.0, line);
                    CorpusItem::Sample(sample)
                }
            };
            self.pending.push_back(item);
        }
    }
}

/// Reads one line into `buffer` (without its newline), keeping at most [`MAX_LINE_BYTES`] of it
/// and skipping the rest. Returns the line's full length, or `None` at the end of the input.
fn read_bounded_line(input: &mut dyn BufRead, buffer: &mut Vec<u8>) -> io::Result<Option<u64>> {
    buffer.clear();
    let (mut length, mut started) = (0u64, false);
    loop {
        let available = match input.fill_buf() {
            Ok(available) => available,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if available.is_empty() {
            return Ok(started.then_some(length));
        }
        started = true;
        let newline = available.iter().position(|&byte| byte == b'\n');
        let part = &available[..newline.unwrap_or(available.len())];
        let room = MAX_LINE_BYTES.saturating_sub(buffer.len());
        buffer.extend_from_slice(&part[..part.len().min(room)]);
        length += part.len() as u64;
        let used = part.len() + usize::from(newline.is_some());
        input.consume(used);
        if newline.is_some() {
            return Ok(Some(length));
        }
    }
}
