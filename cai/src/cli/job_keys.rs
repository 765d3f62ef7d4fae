//! The job keys of `cai run` and `cai worker`, from `--job-key-file` or the environment
//! (`CAI_JOB_KEY`, and for a worker in a rotation `CAI_JOB_KEY_PREVIOUS`). The key itself is in
//! the variable, as a Kubernetes Secret hands it over; a file is for everything else.

use std::path::{Path, PathBuf};

use cai_common::signing::{JobKey, JobKeys};

/// The key from the environment variable `var`, if it is set and not empty.
fn from_env(var: &str) -> Result<Option<JobKey>, String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => JobKey::new(value.trim().as_bytes().to_vec())
            .map(Some)
            .map_err(|e| format!("{var}: {e}")),
        _ => Ok(None),
    }
}

/// The coordinator's signing key: `--job-key-file`, else `CAI_JOB_KEY`, else none.
pub(super) fn coordinator_key(file: Option<&Path>) -> Result<Option<JobKey>, String> {
    match file {
        Some(path) => JobKey::from_file(path).map(Some),
        None => from_env("CAI_JOB_KEY"),
    }
}

/// A worker's keys: the `--job-key-file`s (current first), else `CAI_JOB_KEY` and
/// `CAI_JOB_KEY_PREVIOUS`; none means jobs are not checked.
pub(super) fn worker_keys(files: &[PathBuf]) -> Result<JobKeys, String> {
    if files.len() > 2 {
        return Err("--job-key-file: at most two (the current key and the previous one)".into());
    }
    let keys = if files.is_empty() {
        [from_env("CAI_JOB_KEY")?, from_env("CAI_JOB_KEY_PREVIOUS")?]
            .into_iter()
            .flatten()
            .collect()
    } else {
        files
            .iter()
            .map(|path| JobKey::from_file(path))
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(JobKeys::new(keys))
}
