//! The cai coordinator: everything a run does between the job file and the output directory.
//! The `cai` binary (the `cai` crate) is its command line.
//!
//! # Layout
//! - [`corpus`]: streams corpus lines into samples, rejections and duplicates.
//! - [`plan`]: the checked job (spec, constitution, fingerprint) and the output directory's identity.
//! - [`ledger`]: the output directory as an exactly-once commit log.
//! - [`compact`]: the compact map behind the per-sample indexes of a million-sample corpus.
//! - [`coordinate`]: publish tasks with back-pressure, collect results into the ledger.
//! - [`outage`]: waiting out a broker or state-store outage instead of failing the run.
//! - [`error`]: why a run could not go on, by what to do next (the exit code's source).
//! - [`embedded`]: the whole job in one process (in-process broker, state and workers).
//! - [`distributed`]: the coordinator of a distributed job (RabbitMQ, Redis).
//! - [`progress`]: counters, progress bar, plain progress lines.
//! - [`observe`]: the coordinator's metrics (line counts, queue depths).
//! - [`manifest`]: the end-of-run summary file.
//! - [`label_stats`]: what a pairwise job's labels look like as a whole.
//! - [`rows`]: reading output files a run may still be writing (torn last lines skipped).
//! - [`report`]: `report.html`, the page a person looks at (headline figures, plots, samples).
//! - [`card`]: `README.md`, the dataset card that makes a finished output a Hugging Face dataset.

pub mod card;
pub mod compact;
pub mod coordinate;
pub mod corpus;
pub mod distributed;
pub mod embedded;
pub mod error;
pub mod estimate;
pub mod label_stats;
pub mod ledger;
pub mod manifest;
pub mod observe;
pub mod outage;
pub mod plan;
pub mod progress;
pub mod report;
pub mod rows;
