//! The step cache of embedded mode, made durable: every model call's result is appended to
//! `steps.log` in the output directory before the pipeline uses it, so a run killed mid-chain
//! and started again takes the finished steps from the log instead of paying for them again.
//!
//! A record is a little-endian `u32` length, then the MessagePack of (sample key, step name,
//! value). Appends are not synced: a killed process leaves its writes in the page cache, which is
//! what this guards against; a machine that loses power may lose the last steps, and those are
//! paid again, never misread (a torn last record is dropped on open). The log only grows while
//! samples are in flight: the steps of committed samples are dead weight, and once they outweigh
//! the live ones (and at least [`COMPACT_AFTER`] bytes), the live records are rewritten into a new
//! log that replaces the old one by a rename. Opening the log compacts it the same way, keeping
//! only the samples the ledger has not committed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::sample::SampleKey;

/// The log's file name in the output directory.
pub const STEP_LOG_FILE: &str = "steps.log";
/// Dead bytes below which the log is never rewritten.
pub const COMPACT_AFTER: u64 = 64 << 20;

/// The cached steps of one sample: step name → result.
pub type Steps = HashMap<String, Vec<u8>>;
/// Samples read back from a log: their steps, and the bytes their records take in it.
pub type LoggedSteps = HashMap<SampleKey, (Steps, u64)>;

#[derive(Serialize, Deserialize)]
struct Record {
    key: [u8; 16],
    step: String,
    value: Vec<u8>,
}

/// An open step log.
pub struct StepLog {
    path: PathBuf,
    file: File,
    /// Bytes of records whose samples are still cached.
    live: u64,
    /// Bytes of records whose samples were forgotten (committed).
    dead: u64,
}

impl StepLog {
    /// Opens (or creates) the log in `dir` and returns it with the steps it holds for samples
    /// `committed` says are not done, each sample with the bytes its records take, rewriting it
    /// to hold only those.
    pub fn open(
        dir: &Path,
        committed: impl Fn(&SampleKey) -> bool,
    ) -> std::io::Result<(Self, LoggedSteps)> {
        let path = dir.join(STEP_LOG_FILE);
        let mut steps = LoggedSteps::new();
        match File::open(&path) {
            Ok(file) => {
                for (record, size) in read_records::<Record>(file)? {
                    let key = SampleKey(record.key);
                    if !committed(&key) {
                        let (sample, bytes) = steps.entry(key).or_default();
                        sample.insert(record.step, record.value);
                        *bytes += size;
                    }
                }
            }
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let (file, live) = rewrite(&path, steps.iter().map(|(key, (steps, _))| (key, steps)))?;
        let log = Self {
            path,
            file,
            live,
            dead: 0,
        };
        Ok((log, steps))
    }

    /// The log's file, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one step's result; returns the record's size, which the caller passes back to
    /// [`StepLog::forget`] with the sample.
    pub fn append(&mut self, key: &SampleKey, step: &str, value: &[u8]) -> std::io::Result<u64> {
        let bytes = encode(key, step, value);
        self.file.write_all(&bytes)?;
        self.live += bytes.len() as u64;
        Ok(bytes.len() as u64)
    }

    /// Records that `bytes` of records belong to samples now committed, and compacts the log
    /// down to `cached` (every step still cached) when the dead records outweigh the live ones.
    pub fn forget<'a>(
        &mut self,
        bytes: u64,
        cached: impl IntoIterator<Item = (&'a SampleKey, &'a Steps)>,
    ) -> std::io::Result<()> {
        self.live = self.live.saturating_sub(bytes);
        self.dead += bytes;
        if self.dead >= COMPACT_AFTER && self.dead > self.live {
            let (file, live) = rewrite(&self.path, cached)?;
            self.file = file;
            self.live = live;
            self.dead = 0;
        }
        Ok(())
    }
}

fn encode(key: &SampleKey, step: &str, value: &[u8]) -> Vec<u8> {
    frame(&Record {
        key: key.0,
        step: step.to_owned(),
        value: value.to_vec(),
    })
}

/// A record as the logs of the output directory frame it: a little-endian `u32` length, then
/// its MessagePack.
pub(super) fn frame(record: &impl Serialize) -> Vec<u8> {
    let body = rmp_serde::to_vec(record).expect("a log record encodes");
    let mut bytes = Vec::with_capacity(4 + body.len());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// Every whole record of a log of [`frame`]s with its size in bytes; a torn or unreadable tail (a
/// write cut by a crash) ends it.
pub(super) fn read_records<R: DeserializeOwned>(file: File) -> std::io::Result<Vec<(R, u64)>> {
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    loop {
        let mut length = [0u8; 4];
        match reader.read_exact(&mut length) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::UnexpectedEof => return Ok(records),
            Err(error) => return Err(error),
        }
        let mut body = vec![0u8; u32::from_le_bytes(length) as usize];
        match reader.read_exact(&mut body) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::UnexpectedEof => return Ok(records),
            Err(error) => return Err(error),
        }
        match rmp_serde::from_slice(&body) {
            Ok(record) => records.push((record, 4 + body.len() as u64)),
            Err(_) => return Ok(records),
        }
    }
}

/// Writes `steps` into a new log that replaces the one at `path`; returns it open for appends,
/// with its size.
fn rewrite<'a>(
    path: &Path,
    steps: impl IntoIterator<Item = (&'a SampleKey, &'a Steps)>,
) -> std::io::Result<(File, u64)> {
    let temporary = path.with_extension("log.tmp");
    let mut writer = BufWriter::new(File::create(&temporary)?);
    let mut size = 0u64;
    for (key, steps) in steps {
        for (step, value) in steps {
            let bytes = encode(key, step, value);
            writer.write_all(&bytes)?;
            size += bytes.len() as u64;
        }
    }
    writer
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    std::fs::rename(&temporary, path)?;
    let file = OpenOptions::new().append(true).open(path)?;
    Ok((file, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SampleKey {
        SampleKey([n; 16])
    }

    #[test]
    fn steps_survive_a_reopen_committed_ones_do_not_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, steps) = StepLog::open(dir.path(), |_| false).unwrap();
        assert!(steps.is_empty());
        log.append(&key(1), "initial", b"one").unwrap();
        log.append(&key(1), "critique-1", b"two").unwrap();
        log.append(&key(2), "initial", b"three").unwrap();
        drop(log);
        // A write cut in the middle of its record.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(STEP_LOG_FILE))
            .unwrap();
        file.write_all(&encode(&key(3), "initial", b"four")[..9])
            .unwrap();
        drop(file);

        let (_, steps) = StepLog::open(dir.path(), |k| *k == key(2)).unwrap();
        assert_eq!(steps.len(), 1);
        let (sample, bytes) = &steps[&key(1)];
        assert_eq!(sample["initial"], b"one");
        assert_eq!(sample["critique-1"], b"two");
        let size = |step: &str, value: &[u8]| encode(&key(1), step, value).len() as u64;
        assert_eq!(*bytes, size("initial", b"one") + size("critique-1", b"two"));
        // The reopened log holds only what was kept.
        let (_, again) = StepLog::open(dir.path(), |_| false).unwrap();
        assert_eq!(again, steps);
    }

    #[test]
    fn the_log_is_rewritten_once_forgotten_records_outweigh_the_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = StepLog::open(dir.path(), |_| false).unwrap();
        let value = vec![7u8; 1 << 20];
        let mut size = 0;
        for n in 0..70u8 {
            size += log.append(&key(n), "initial", &value).unwrap();
        }
        let length = || {
            std::fs::metadata(dir.path().join(STEP_LOG_FILE))
                .unwrap()
                .len()
        };
        assert_eq!(length(), size);
        let live: HashMap<SampleKey, Steps> =
            [(key(0), Steps::from([("initial".to_owned(), value.clone())]))].into();
        log.forget(size - size / 70, &live).unwrap();
        assert_eq!(length(), size / 70, "only the live sample's record is left");
        log.append(&key(99), "initial", b"x").unwrap();
        let (_, steps) = StepLog::open(dir.path(), |_| false).unwrap();
        assert_eq!(steps.len(), 2);
    }
}
