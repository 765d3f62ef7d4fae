//! Reading the JSONL files of an output directory that a run may still be writing: only
//! complete lines (ending in a newline) count, and a line that does not parse as the shape
//! asked for is skipped, so a torn last line (even one cut inside a UTF-8 character) never
//! stops a reader. Shared by the label statistics, the report and the dataset card.

use std::io::BufRead as _;
use std::path::Path;

/// Calls `each` with every complete row of a JSONL file that parses as `T`; a missing file has
/// no rows.
pub fn for_each_row<T: serde::de::DeserializeOwned>(
    path: &Path,
    mut each: impl FnMut(T),
) -> std::io::Result<()> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
            return Ok(());
        }
        if let Ok(row) = serde_json::from_slice(&line) {
            each(row);
        }
    }
}

/// The number of complete lines of a file (0 when it is missing).
pub fn count_lines(path: &Path) -> std::io::Result<u64> {
    let mut lines = 0;
    for_each_row(path, |_: serde::de::IgnoredAny| lines += 1)?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_and_other_shapes_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        let mut text = b"{\"n\":1}\n{\"m\":2}\n{\"n\":3}\n{\"n\":4,\"s\":\"caf".to_vec();
        // Cut inside the two bytes of `é`.
        text.push("é".as_bytes()[0]);
        std::fs::write(&path, text).unwrap();
        #[derive(serde::Deserialize)]
        struct Row {
            n: u64,
        }
        let mut seen = Vec::new();
        for_each_row(&path, |row: Row| seen.push(row.n)).unwrap();
        assert_eq!(seen, [1, 3]);
        assert_eq!(count_lines(&path).unwrap(), 3);
        assert_eq!(count_lines(&dir.path().join("missing.jsonl")).unwrap(), 0);
    }
}
