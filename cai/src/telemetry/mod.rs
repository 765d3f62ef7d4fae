//! How the `cai` process reports on itself: log lines on stderr, spans exported over OTLP when
//! the standard `OTEL_EXPORTER_OTLP_*` variables say where, and an HTTP listener with
//! `/metrics` (Prometheus), `/healthz` and `/readyz` for probes and scrapers.

pub mod listener;
pub mod tracing_setup;
