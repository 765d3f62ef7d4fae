//! `cai report OUTPUT_DIR [--out FILE]`: writes the report of a finished or running job, and
//! rewrites the dataset card of a finished one.

use std::path::Path;

use cai_coordinator::card::{self, CardOutcome};
use cai_coordinator::report;

use super::shown::shown;

pub(super) fn report(dir: &Path, out: Option<&Path>) -> u8 {
    if !dir.join(cai_coordinator::plan::JOB_FILE).exists() {
        eprintln!(
            "error: {}: not a cai output directory (no job.json)",
            dir.display()
        );
        return 2;
    }
    match report::write(dir, out) {
        Ok(path) => println!("report: {}", shown(&path)),
        Err(error) => {
            super::report(error.as_ref());
            return 1;
        }
    }
    match card::write(dir) {
        Ok(CardOutcome::Written(path)) => println!("dataset card: {}", shown(&path)),
        Ok(CardOutcome::Incomplete) => {
            println!("dataset card: not written, the job is not finished")
        }
        Ok(CardOutcome::Foreign(path)) => {
            println!(
                "dataset card: not written, {} was not written by cai",
                shown(&path)
            )
        }
        Err(error) => {
            super::report(error.as_ref());
            return 1;
        }
    }
    0
}
