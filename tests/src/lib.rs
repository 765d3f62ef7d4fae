//! The harness for cai's end-to-end tests: servers and helpers the scenario tests in `tests/`
//! run the coordinator and workers against, all inside the test process.
//!
//! - [`model_server`]: a deterministic OpenAI-compatible model server with a request log.
//! - [`harness`]: shared data paths, job directories, running jobs, reading outputs, deadlines.

pub mod harness;
pub mod model_server;
