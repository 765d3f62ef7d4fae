//! cai workers: model backends, the two CAI pipelines, and the loop that takes a task, runs its
//! samples and publishes the results.
//!
//! # Layout
//! - [`model`]: the `Model` seam and its backends (OpenAI-compatible HTTP, mock), option reading.
//! - [`pipeline`]: critique-revise and pairwise, one sample at a time, with the step cache.
//! - [`consume`]: take task → run samples → publish results → ack.
//! - [`serve`]: a distributed worker: serve every active job, heartbeat, drain on shutdown.

pub mod consume;
pub mod model;
pub mod pipeline;
pub mod serve;
