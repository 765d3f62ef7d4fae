//! Shared types of cai, used by the coordinator and the workers alike.
//!
//! # Layout
//! - [`message`]: chat messages, the unit every corpus format is converted to.
//! - [`sample`]: a corpus line turned into work ([`sample::Sample`]) and its content key.
//! - [`job`]: the job file (TOML), validated, and its fingerprint.
//! - [`constitution`]: principles and demonstrations, from cai TOML, the HF JSON format or a
//!   directory of Anthropic's prompt files.
//! - [`disk`]: a full output volume, described so the user can act on it.
//! - [`descriptor`]: a job as registered for workers (spec, constitution, fingerprint).
//! - [`result`]: what a worker returns for a sample: output rows, trace, usage.
//! - [`envelope`]: the versioned MessagePack codec for tasks and results.
//! - [`seed`]: deterministic randomness derived from (job seed, sample key, step).
//! - [`broker`]: the task/result queue seam and its in-memory implementation.
//! - [`state`]: the progress / done-set / step-cache seam and its in-memory implementation.
//! - [`service_error`]: broker and state-store failures typed by the next action (wait out an
//!   outage, give up on a request, stop the job), and the one loop that waits out an outage.
//! - [`tls`]: the private CA and client certificate for `amqps://` and `rediss://`.
//! - [`signing`]: the job key that signs a job's registry entry and tasks, so workers run only
//!   what their coordinator published.
//! - [`telemetry`]: the process's Prometheus metrics and trace context for task messages.

pub mod broker;
pub mod constitution;
pub mod descriptor;
pub mod disk;
pub mod envelope;
pub mod job;
pub mod message;
pub mod result;
pub mod sample;
pub mod seed;
pub mod service_error;
pub mod services;
pub mod signing;
pub mod state;
pub mod telemetry;
pub mod tls;
