//! A full output volume, said the way a user can act on: which file could not be written, how
//! many more bytes it needed and how many are free, and that the same command resumes once
//! space is freed. The ledger and the embedded step log both write to the output directory, so
//! both report a full disk through [`full_message`].

use std::path::Path;

/// Whether an I/O error means the volume (or the user's quota on it) is full.
pub fn is_full(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Bytes an unprivileged writer may still use on the volume holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    rustix::fs::statvfs(path)
        .ok()
        .map(|stat| stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// What to tell the user when writing `path` failed for lack of space with `needed` bytes still
/// to write.
pub fn full_message(path: &Path, needed: u64) -> String {
    let free = path
        .parent()
        .and_then(free_bytes)
        .map_or_else(|| "an unknown number".to_owned(), |free| free.to_string());
    format!(
        "the output volume is full: writing {} needs {needed} more bytes and {free} bytes are \
         free; free at least that much (more for the rest of the run) and run the same command \
         again: it resumes from the last commit, and what was written after it is cut off",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_volume_is_told_apart_and_described() {
        assert!(is_full(&std::io::Error::from_raw_os_error(28)));
        assert!(!is_full(&std::io::Error::from_raw_os_error(13)));
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_some_and(|free| free > 0));
        let message = full_message(&dir.path().join("traces.jsonl"), 4096);
        assert!(message.contains("traces.jsonl") && message.contains("needs 4096 more bytes"));
    }
}
