//! The output directory as the ledger of a job: the data files (`sft.jsonl`,
//! `preferences.jsonl`, `traces.jsonl`, `failed.jsonl`, `rejected.jsonl`) plus a commit log,
//! `ledger.jsonl`.
//!
//! Invariant: a sample is done exactly when a complete line of `ledger.jsonl` names it. A commit
//! appends the batch's rows to the data files, flushes and syncs them, then appends one ledger
//! line holding the batch's samples and the new length of every data file, and syncs that. On
//! open, a torn last ledger line is dropped and every data file is cut back to the lengths of the
//! last complete commit, so rows of an unfinished commit (a crash, a SIGKILL) never survive and
//! are never written twice. Each ledger line also records when it was committed (`at_ms`, Unix
//! milliseconds), so throughput over time can be read back; lines written before that field
//! existed read as commits of unknown time.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cai_common::result::{Outcome, Output, SampleResult, Usage};

use crate::compact::CompactMap;
use cai_common::sample::SampleKey;
use serde::{Deserialize, Serialize};

/// A data file of the output directory. Rows are addressed by this, not by a position, so a
/// new file is a new variant (added at the end of [`DataFile::ALL`]: ledger lines key offsets by
/// file name and a missing name reads as 0, so old ledgers still open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFile {
    /// SFT rows.
    Sft,
    /// Preference labels (pairwise) or revision-over-initial pairs (critique-revise).
    Preferences,
    /// One trace row per finished sample.
    Traces,
    /// Samples that failed, with the reason.
    Failed,
    /// Corpus lines refused, with the field.
    Rejected,
}

impl DataFile {
    /// Every data file, in commit order.
    pub const ALL: [DataFile; 5] = [
        Self::Sft,
        Self::Preferences,
        Self::Traces,
        Self::Failed,
        Self::Rejected,
    ];

    /// The file's name in the output directory.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sft => "sft.jsonl",
            Self::Preferences => "preferences.jsonl",
            Self::Traces => "traces.jsonl",
            Self::Failed => "failed.jsonl",
            Self::Rejected => "rejected.jsonl",
        }
    }

    /// Its place in the ledger's per-file vectors.
    fn index(self) -> usize {
        self as usize
    }
}
/// The commit log.
pub const LEDGER_FILE: &str = "ledger.jsonl";

/// A ledger problem; names the file.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// An I/O error on a file of the output directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The output volume is full: what was written since the last commit is cut off at the
    /// next start, as after a crash.
    #[error("{}", cai_common::disk::full_message(path, *needed))]
    Full {
        /// The file that could not be written.
        path: PathBuf,
        /// Bytes still to write for the commit that failed.
        needed: u64,
    },
    /// The ledger and the data files disagree in a way a crash cannot explain.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// How a sample ended, as the ledger records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Rows written.
    Done,
    /// In `failed.jsonl`.
    Failed,
}

#[derive(Serialize, Deserialize)]
struct CommitSample {
    key: SampleKey,
    status: Status,
    #[serde(flatten)]
    usage: Usage,
}

#[derive(Serialize, Deserialize)]
struct Commit {
    /// When the commit was made, in Unix milliseconds; absent in ledgers from before the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at_ms: Option<u64>,
    offsets: HashMap<String, u64>,
    #[serde(default)]
    samples: Vec<CommitSample>,
    #[serde(default)]
    rejected: Vec<u64>,
}

/// A corpus line that could not be read, as written to `rejected.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RejectedRow {
    /// 1-based line number in the corpus.
    pub line: u64,
    /// The field at fault, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

#[derive(Serialize)]
struct FailedRow<'a> {
    id: &'a str,
    key: &'a SampleKey,
    reason: &'a str,
    attempts: u32,
}

#[derive(Serialize)]
struct TraceRow<'a> {
    id: &'a str,
    key: &'a SampleKey,
    status: Status,
    steps: &'a [cai_common::result::TraceStep],
    usage: &'a Usage,
    /// Left out when nothing was reused, as in every trace written before the field existed.
    #[serde(skip_serializing_if = "nothing_reused")]
    reused: &'a Usage,
}

fn nothing_reused(usage: &&Usage) -> bool {
    usage.is_zero()
}

/// One commit of the log as throughput over time sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitPoint {
    /// When it was committed, in Unix milliseconds.
    pub at_ms: u64,
    /// Samples it settled (done or failed).
    pub samples: u64,
    /// Model calls of those samples.
    pub calls: u64,
}

/// What the complete lines of a commit log say.
struct LogState {
    done: CompactMap<SampleKey, Status>,
    rejected: HashSet<u64>,
    usage: Usage,
    offsets: Vec<u64>,
    good_len: u64,
    /// The timed commits, in order.
    timeline: Vec<CommitPoint>,
}

/// Reads every complete commit of a log; stops at a torn or unreadable last line.
fn read_log(log: impl std::io::Read) -> std::io::Result<LogState> {
    let mut done = Vec::new();
    let mut state = LogState {
        done: CompactMap::default(),
        rejected: HashSet::new(),
        usage: Usage::default(),
        offsets: vec![0; DataFile::ALL.len()],
        good_len: 0,
        timeline: Vec::new(),
    };
    let mut reader = BufReader::new(log);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let Ok(commit) = serde_json::from_slice::<Commit>(&line) else {
            break;
        };
        state.good_len += read as u64;
        if let Some(at_ms) = commit.at_ms {
            state.timeline.push(CommitPoint {
                at_ms,
                samples: commit.samples.len() as u64,
                calls: commit.samples.iter().map(|s| s.usage.calls).sum(),
            });
        }
        for sample in commit.samples {
            state.usage += sample.usage;
            done.push((sample.key, sample.status));
        }
        state.rejected.extend(commit.rejected);
        for file in DataFile::ALL {
            state.offsets[file.index()] = commit.offsets.get(file.name()).copied().unwrap_or(0);
        }
    }
    state.done = CompactMap::from_entries(done);
    Ok(state)
}

/// Committed totals of an output directory, read without changing anything (for `cai status`
/// while a run may be writing).
#[derive(Clone, Copy, Debug, Default)]
pub struct LedgerTotals {
    /// Samples with rows.
    pub done: u64,
    /// Samples failed.
    pub failed: u64,
    /// Rejected lines.
    pub rejected: u64,
    /// Tokens and calls.
    pub usage: Usage,
}

/// Reads the committed totals of an output directory.
pub fn totals(dir: &Path) -> Result<LedgerTotals, LedgerError> {
    history(dir).map(|(totals, _)| totals)
}

/// Reads the committed totals of an output directory and its timed commits in order (for the
/// rate, the ETA and the throughput plot), without changing anything.
pub fn history(dir: &Path) -> Result<(LedgerTotals, Vec<CommitPoint>), LedgerError> {
    let path = dir.join(LEDGER_FILE);
    let file = File::open(&path).map_err(|source| LedgerError::Io { path, source })?;
    let state = read_log(file).map_err(|source| LedgerError::Io {
        path: dir.join(LEDGER_FILE),
        source,
    })?;
    let failed = state
        .done
        .iter()
        .filter(|(_, status)| *status == Status::Failed)
        .count() as u64;
    let totals = LedgerTotals {
        done: state.done.len() as u64 - failed,
        failed,
        rejected: state.rejected.len() as u64,
        usage: state.usage,
    };
    Ok((totals, state.timeline))
}

/// Keys of every committed sample, read without changing anything.
pub fn committed_keys(dir: &Path) -> Result<Vec<SampleKey>, LedgerError> {
    let path = dir.join(LEDGER_FILE);
    let file = File::open(&path).map_err(|source| LedgerError::Io {
        path: path.clone(),
        source,
    })?;
    let state = read_log(file).map_err(|source| LedgerError::Io { path, source })?;
    Ok(state.done.iter().map(|(key, _)| key).collect())
}

/// An open output directory.
pub struct Ledger {
    dir: PathBuf,
    writers: Vec<BufWriter<File>>,
    offsets: Vec<u64>,
    /// Each data file's length when it was last synced: a commit syncs only files that grew.
    synced: Vec<u64>,
    log: File,
    done: CompactMap<SampleKey, Status>,
    rejected: HashSet<u64>,
    usage: Usage,
    pending_samples: Vec<CommitSample>,
    /// Keys of `pending_samples`: a redelivered result is recognised in O(1), not by a scan
    /// of everything staged since the last commit.
    pending_keys: HashSet<SampleKey>,
    pending_rejected: Vec<u64>,
}

impl Ledger {
    /// Keys of every committed sample.
    pub fn committed_keys(&self) -> Vec<SampleKey> {
        self.done.iter().map(|(key, _)| key).collect()
    }

    /// Opens (creating) an output directory, repairs what a crash left, and loads the done set.
    pub fn open(dir: &Path) -> Result<Self, LedgerError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LedgerError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let log_path = dir.join(LEDGER_FILE);
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(io(&log_path))?;

        let LogState {
            done,
            rejected,
            usage,
            offsets,
            good_len,
            timeline: _,
        } = read_log(&mut log).map_err(io(&log_path))?;
        log.set_len(good_len).map_err(io(&log_path))?;
        log.seek(SeekFrom::End(0)).map_err(io(&log_path))?;

        let mut writers = Vec::with_capacity(DataFile::ALL.len());
        for (name, offset) in DataFile::ALL.map(DataFile::name).iter().zip(&offsets) {
            let path = dir.join(name);
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io(&path))?;
            let length = file.metadata().map_err(io(&path))?.len();
            if length < *offset {
                return Err(LedgerError::Corrupt {
                    path,
                    message: format!(
                        "is {length} bytes but {LEDGER_FILE} says {offset} were committed; \
                         the output directory was changed by hand (start over with --new)"
                    ),
                });
            }
            file.set_len(*offset).map_err(io(&path))?;
            let mut file = file;
            file.seek(SeekFrom::Start(*offset)).map_err(io(&path))?;
            writers.push(BufWriter::with_capacity(1 << 16, file));
        }
        Ok(Self {
            dir: dir.to_owned(),
            writers,
            synced: offsets.clone(),
            offsets,
            log,
            done,
            rejected,
            usage,
            pending_samples: Vec::new(),
            pending_keys: HashSet::new(),
            pending_rejected: Vec::new(),
        })
    }

    /// The status of a sample committed earlier, if any.
    pub fn status(&self, key: &SampleKey) -> Option<Status> {
        self.done.get(key)
    }

    /// The status of a sample committed earlier or staged for the next commit, if any.
    pub fn settled(&self, key: &SampleKey) -> Option<Status> {
        self.done.get(key).or_else(|| {
            self.pending_keys
                .contains(key)
                .then(|| {
                    self.pending_samples
                        .iter()
                        .find(|sample| sample.key == *key)
                        .map(|sample| sample.status)
                })
                .flatten()
        })
    }

    /// Tokens and calls of every committed sample.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Stages a sample's result for the next commit. Returns its status, or `None` when the
    /// sample is already committed (a redelivered result), in which case nothing is written.
    pub fn stage_result(&mut self, result: &SampleResult) -> Result<Option<Status>, LedgerError> {
        if self.done.contains_key(&result.key) || self.pending_keys.contains(&result.key) {
            return Ok(None);
        }
        let status = match &result.outcome {
            Outcome::Done {
                output: Output::Sft { rows, preference },
            } => {
                for row in rows {
                    self.append(DataFile::Sft, row)?;
                }
                if let Some(preference) = preference {
                    self.append(DataFile::Preferences, preference)?;
                }
                Status::Done
            }
            Outcome::Done {
                output: Output::Preference { row },
            } => {
                self.append(DataFile::Preferences, row)?;
                Status::Done
            }
            Outcome::Done {
                output: Output::Dialogue { row, preferences },
            } => {
                self.append(DataFile::Sft, row)?;
                for preference in preferences {
                    self.append(DataFile::Preferences, preference)?;
                }
                Status::Done
            }
            Outcome::Failed { reason, attempts } => {
                self.append(
                    DataFile::Failed,
                    &FailedRow {
                        id: &result.id,
                        key: &result.key,
                        reason,
                        attempts: *attempts,
                    },
                )?;
                Status::Failed
            }
        };
        self.append(
            DataFile::Traces,
            &TraceRow {
                id: &result.id,
                key: &result.key,
                status,
                steps: &result.steps,
                usage: &result.usage,
                reused: &result.reused,
            },
        )?;
        self.pending_keys.insert(result.key);
        // What the job paid for this sample: this run's calls and the cached steps an earlier,
        // uncommitted run paid for.
        let mut paid = result.usage;
        paid += result.reused;
        self.pending_samples.push(CommitSample {
            key: result.key,
            status,
            usage: paid,
        });
        Ok(Some(status))
    }

    /// Stages a rejected corpus line for the next commit, unless it is already recorded.
    pub fn stage_rejected(&mut self, row: &RejectedRow) -> Result<bool, LedgerError> {
        if self.rejected.contains(&row.line) || self.pending_rejected.contains(&row.line) {
            return Ok(false);
        }
        self.append(DataFile::Rejected, row)?;
        self.pending_rejected.push(row.line);
        Ok(true)
    }

    /// Whether anything is staged.
    pub fn has_pending(&self) -> bool {
        !self.pending_samples.is_empty() || !self.pending_rejected.is_empty()
    }

    /// Makes everything staged durable and returns the keys it committed.
    pub fn commit(&mut self) -> Result<Vec<SampleKey>, LedgerError> {
        if !self.has_pending() {
            return Ok(Vec::new());
        }
        let names = DataFile::ALL.map(DataFile::name);
        for (index, (writer, name)) in self.writers.iter_mut().zip(names).enumerate() {
            if self.synced[index] == self.offsets[index] {
                continue;
            }
            let path = self.dir.join(name);
            let needed = self.offsets[index] - self.synced[index];
            writer
                .flush()
                .and_then(|()| writer.get_ref().sync_data())
                .map_err(|source| write_error(path, source, needed))?;
            self.synced[index] = self.offsets[index];
        }
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let commit = Commit {
            at_ms: Some(at_ms),
            offsets: DataFile::ALL
                .map(DataFile::name)
                .iter()
                .zip(&self.offsets)
                .map(|(name, offset)| ((*name).to_owned(), *offset))
                .collect(),
            samples: std::mem::take(&mut self.pending_samples),
            rejected: std::mem::take(&mut self.pending_rejected),
        };
        self.pending_keys.clear();
        let mut line = serde_json::to_vec(&commit).expect("commit serialises");
        line.push(b'\n');
        let log_path = self.dir.join(LEDGER_FILE);
        self.log
            .write_all(&line)
            .and_then(|()| self.log.sync_data())
            .map_err(|source| write_error(log_path, source, line.len() as u64))?;
        let keys = commit.samples.iter().map(|s| s.key).collect();
        for sample in commit.samples {
            self.usage += sample.usage;
            // Staging refused keys already committed or staged.
            self.done.insert_new(sample.key, sample.status);
        }
        self.rejected.extend(commit.rejected);
        Ok(keys)
    }

    fn append<T: Serialize>(&mut self, file: DataFile, row: &T) -> Result<(), LedgerError> {
        let mut line = serde_json::to_vec(row).expect("rows serialise");
        line.push(b'\n');
        let name = file.name();
        let file = file.index();
        let pending = self.offsets[file] - self.synced[file];
        self.writers[file].write_all(&line).map_err(|source| {
            write_error(self.dir.join(name), source, pending + line.len() as u64)
        })?;
        self.offsets[file] += line.len() as u64;
        Ok(())
    }
}

/// A failed write of `needed` bytes to `path`: [`LedgerError::Full`] when the volume is full.
fn write_error(path: PathBuf, source: std::io::Error, needed: u64) -> LedgerError {
    if cai_common::disk::is_full(&source) {
        LedgerError::Full { path, needed }
    } else {
        LedgerError::Io { path, source }
    }
}

#[cfg(test)]
mod tests {
    use cai_common::message::Message;
    use cai_common::result::SftRow;

    use super::*;

    fn result(n: u8) -> SampleResult {
        SampleResult {
            key: SampleKey([n; 16]),
            id: format!("s{n}"),
            outcome: Outcome::Done {
                output: Output::Sft {
                    preference: None,
                    rows: vec![SftRow {
                        id: format!("s{n}"),
                        messages: vec![Message::user("q"), Message::assistant("a")],
                        round: 1,
                    }],
                },
            },
            steps: Vec::new(),
            usage: Usage {
                tokens_in: 10,
                tokens_out: 5,
                calls: 3,
                cost_micro_usd: 0,
                batch_calls: 0,
            },
            reused: Usage::default(),
        }
    }

    fn lines(dir: &Path, name: &str) -> usize {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .lines()
            .count()
    }

    #[test]
    fn committed_rows_survive_and_uncommitted_rows_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger.stage_result(&result(1)).unwrap();
        ledger
            .stage_rejected(&RejectedRow {
                line: 4,
                field: None,
                reason: "bad".into(),
            })
            .unwrap();
        assert_eq!(ledger.commit().unwrap(), vec![SampleKey([1; 16])]);
        ledger.stage_result(&result(2)).unwrap();
        // Flush the staged rows without a commit record, as a process killed mid-commit would.
        for writer in &mut ledger.writers {
            writer.flush().unwrap();
        }
        drop(ledger);
        assert_eq!(lines(dir.path(), "sft.jsonl"), 2);

        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(lines(dir.path(), "sft.jsonl"), 1);
        assert_eq!(lines(dir.path(), "traces.jsonl"), 1);
        assert_eq!(ledger.status(&SampleKey([1; 16])), Some(Status::Done));
        assert_eq!(ledger.status(&SampleKey([2; 16])), None);
        assert_eq!(totals(dir.path()).unwrap().rejected, 1);
        assert_eq!(ledger.usage().calls, 3);
    }

    #[test]
    fn a_torn_ledger_line_is_dropped_and_a_redelivered_result_is_not_written_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger.stage_result(&result(1)).unwrap();
        ledger.commit().unwrap();
        assert_eq!(ledger.stage_result(&result(1)).unwrap(), None);
        ledger.stage_result(&result(2)).unwrap();
        ledger.commit().unwrap();
        drop(ledger);
        let log = dir.path().join(LEDGER_FILE);
        let text = std::fs::read(&log).unwrap();
        std::fs::write(&log, &text[..text.len() - 5]).unwrap();

        drop(Ledger::open(dir.path()).unwrap());
        let totals = totals(dir.path()).unwrap();
        assert_eq!((totals.done, totals.failed), (1, 0));
        assert_eq!(lines(dir.path(), "sft.jsonl"), 1);
    }

    #[test]
    fn commits_record_their_time_and_old_ledgers_without_it_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger.stage_result(&result(1)).unwrap();
        ledger.stage_result(&result(2)).unwrap();
        ledger.commit().unwrap();
        drop(ledger);
        let (totals, timeline) = history(dir.path()).unwrap();
        assert_eq!(totals.done, 2);
        assert_eq!(timeline.len(), 1);
        assert_eq!((timeline[0].samples, timeline[0].calls), (2, 6));
        assert!(timeline[0].at_ms >= before);

        // A line as ledgers wrote it before commits were timed.
        let old = dir.path().join(LEDGER_FILE);
        let text = std::fs::read_to_string(&old).unwrap();
        let untimed = serde_json::to_string(&{
            let mut line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
            line.as_object_mut().unwrap().remove("at_ms");
            line
        })
        .unwrap();
        std::fs::write(&old, untimed + "\n").unwrap();
        let (totals, timeline) = history(dir.path()).unwrap();
        assert_eq!((totals.done, timeline.len()), (2, 0));
        drop(Ledger::open(dir.path()).unwrap());
        assert_eq!(lines(dir.path(), "sft.jsonl"), 2);
    }

    #[test]
    fn a_data_file_shorter_than_committed_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger.stage_result(&result(1)).unwrap();
        ledger.commit().unwrap();
        drop(ledger);
        std::fs::write(dir.path().join("sft.jsonl"), "").unwrap();
        let message = Ledger::open(dir.path()).err().unwrap().to_string();
        assert!(
            message.contains("sft.jsonl") && message.contains("--new"),
            "{message}"
        );
    }
}
