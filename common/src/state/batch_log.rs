//! The batch records of embedded mode, made durable: each record of a batch submitted to a
//! provider's Batch API is appended to `batches.log` in the output directory before anything
//! waits on the batch, and its removal too, so a run killed while batches are in flight and
//! started again finds them and waits for them instead of paying for their calls again.
//!
//! The records are framed as the step log's are ([`super::step_log`]): a put carries the
//! record, a removal none. Appends are not synced, as for the step log: a killed process leaves
//! its writes in the page cache. Opening the log replays it and rewrites it with the live records
//! only (there are few: the batches in flight and those whose calls were not all consumed).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::step_log::{frame, read_records};

/// The log's file name in the output directory.
pub const BATCH_LOG_FILE: &str = "batches.log";

/// Batch records by id.
pub type BatchRecords = HashMap<String, Vec<u8>>;

#[derive(Serialize, Deserialize)]
struct Entry {
    id: String,
    /// The record; `None` removes it.
    record: Option<Vec<u8>>,
}

/// An open batch log.
pub struct BatchLog {
    path: PathBuf,
    file: File,
}

impl BatchLog {
    /// Opens (or creates) the log in `dir` and returns it with the records it holds, rewriting
    /// it to hold only those.
    pub fn open(dir: &Path) -> std::io::Result<(Self, BatchRecords)> {
        let path = dir.join(BATCH_LOG_FILE);
        let mut records = BatchRecords::new();
        match File::open(&path) {
            Ok(file) => {
                for (entry, _) in read_records::<Entry>(file)? {
                    match entry.record {
                        Some(record) => records.insert(entry.id, record),
                        None => records.remove(&entry.id),
                    };
                }
            }
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let temporary = path.with_extension("log.tmp");
        let mut writer = BufWriter::new(File::create(&temporary)?);
        for (id, record) in &records {
            writer.write_all(&frame(&Entry {
                id: id.clone(),
                record: Some(record.clone()),
            }))?;
        }
        writer
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        std::fs::rename(&temporary, &path)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok((Self { path, file }, records))
    }

    /// The log's file, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record (replacing one of the same id), or its removal (`None`).
    pub fn append(&mut self, id: &str, record: Option<&[u8]>) -> std::io::Result<()> {
        self.file.write_all(&frame(&Entry {
            id: id.to_owned(),
            record: record.map(<[u8]>::to_vec),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen_and_removed_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, records) = BatchLog::open(dir.path()).unwrap();
        assert!(records.is_empty());
        log.append("a", Some(b"one")).unwrap();
        log.append("b", Some(b"two")).unwrap();
        log.append("a", Some(b"three")).unwrap();
        log.append("b", None).unwrap();
        drop(log);
        let (_, records) = BatchLog::open(dir.path()).unwrap();
        assert_eq!(
            records,
            BatchRecords::from([("a".into(), b"three".to_vec())])
        );
        // The rewritten log holds only the live record.
        let (_, again) = BatchLog::open(dir.path()).unwrap();
        assert_eq!(again, records);
    }
}
