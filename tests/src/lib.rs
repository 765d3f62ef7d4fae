//! The harness for cai's end-to-end tests: servers and helpers the scenario tests in `tests/`
//! run the coordinator and workers against, all inside the test process.
//!
//! - [`model_server`]: a deterministic OpenAI-compatible model server with a request log.
//! - [`harness`]: shared data paths, job directories, running jobs, reading outputs, deadlines.
//! - [`cluster`]: a distributed job on the local RabbitMQ and Redis, with real processes.
//! - [`jobs`]: job files the scenarios share.

pub mod cluster;
pub mod harness;
pub mod jobs;
pub mod model_server;
