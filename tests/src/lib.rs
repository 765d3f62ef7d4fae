//! The harness for cai's end-to-end tests: servers and helpers the scenario tests in `tests/`
//! run the coordinator and workers against, all inside the test process.
//!
//! - [`model_server`]: a deterministic OpenAI-compatible model server with a request log.
//! - [`harness`]: data file paths, job directories, running jobs, reading outputs, deadlines.
//! - [`cluster`]: a distributed job on the local RabbitMQ and Redis, with real processes.
//! - [`jobs`]: job files the scenarios share.
//! - [`scenario`]: a distributed critique-revise run ready to start, and the checks on its output.
//! - [`pki`]: a CA, server and client certificates a TLS test makes with `openssl`.
//! - [`private_rabbitmq`]: a RabbitMQ node of the test's own with a TLS listener.
//! - [`private_redis`]: a Redis of the test's own, to stop and start again (a real outage).
//! - [`proxy`]: a TCP proxy a test can cut, for real network faults to one process.
//! - [`otlp_receiver`]: an OTLP/gRPC span receiver the processes export to.
//! - [`prometheus`]: a real Prometheus server scraping a process.
//! - [`service_users`]: RabbitMQ and Redis users a test makes with chosen rights.

pub mod cluster;
pub mod harness;
pub mod jobs;
pub mod model_server;
pub mod otlp_receiver;
pub mod pki;
pub mod private_rabbitmq;
pub mod private_redis;
pub mod prometheus;
pub mod proxy;
pub mod scenario;
pub mod service_users;
