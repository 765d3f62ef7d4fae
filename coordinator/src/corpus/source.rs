//! The corpus file's bytes, decompressed according to its extension (`.jsonl`, `.jsonl.gz`,
//! `.jsonl.zst`), and its line count.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::CorpusError;

/// Counts the lines of a corpus as [`CorpusReader`](super::CorpusReader) numbers them (a final newline does not start
/// a line), decompressing the same way; the caller caps it at `input.limit`.
pub fn count_lines(path: &Path) -> Result<u64, CorpusError> {
    let mut input = decompressed(path)?;
    let mut chunk = vec![0u8; 1 << 16];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let read = match input.read(&mut chunk) {
            Ok(0) => return Ok(lines + u64::from(last != b'\n')),
            Ok(read) => read,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(CorpusError::Read {
                    path: path.to_owned(),
                    line: lines + 1,
                    source,
                });
            }
        };
        lines += chunk[..read].iter().filter(|&&byte| byte == b'\n').count() as u64;
        last = chunk[read - 1];
    }
}

/// The file's bytes, decompressed according to its extension.
pub(super) fn decompressed(path: &Path) -> Result<Box<dyn Read + Send>, CorpusError> {
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    let open_error = |source| CorpusError::Open {
        path: path.to_owned(),
        source,
    };
    let file = || File::open(path).map_err(open_error);
    if name.ends_with(".jsonl") {
        Ok(Box::new(file()?))
    } else if name.ends_with(".jsonl.gz") {
        Ok(Box::new(MultiGzDecoder::new(file()?)))
    } else if name.ends_with(".jsonl.zst") {
        Ok(Box::new(zstd::Decoder::new(file()?).map_err(open_error)?))
    } else {
        Err(CorpusError::Format {
            path: path.to_owned(),
        })
    }
}
