//! What cai tells operators about itself: Prometheus metrics and the trace context that joins a
//! sample's spans across the coordinator and the workers.
//!
//! Exporting (OTLP, the `/metrics` listener) is the binary's business; this module only holds
//! what the libraries record into, so the coordinator and the worker crates need no exporter.

pub mod metrics;
pub mod trace_context;
