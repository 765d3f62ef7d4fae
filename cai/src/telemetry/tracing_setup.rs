//! The process's `tracing` subscriber: log lines on stderr (text or JSON, filtered by `CAI_LOG`)
//! and, when an OTLP endpoint is configured, an OpenTelemetry layer exporting spans over gRPC.
//!
//! The exporter is configured by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SDK_DISABLED`); with no endpoint set nothing is exported
//! and spans cost only what the log filter lets through.

use std::io::IsTerminal as _;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Log line format (`--log-format`).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flushes exported spans when the process ends.
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
}

impl TracingGuard {
    /// Sends the spans still buffered and stops the exporter (bounded by its own timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("warning: exporting the last spans failed: {error}");
        }
    }
}

/// Installs the global subscriber. Must run inside the tokio runtime: the span exporter runs
/// on it. `service` names the process in traces unless `OTEL_SERVICE_NAME` does.
pub fn init(format: LogFormat, service: &'static str) -> TracingGuard {
    let filter = EnvFilter::try_from_env("CAI_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: log files and CI output get plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    }
    .with_filter(filter);
    let (provider, otel_error) = match otlp_provider(service) {
        Ok(provider) => (provider, None),
        Err(error) => (None, Some(error)),
    };
    // cai's task, sample and model-call spans are at debug level: exported when tracing is on,
    // never formatted into log lines unless CAI_LOG asks for them.
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("cai"))
            .with_filter(
                Targets::new()
                    .with_target("cai_common", LevelFilter::DEBUG)
                    .with_target("cai_worker", LevelFilter::DEBUG)
                    .with_target("cai_coordinator", LevelFilter::DEBUG)
                    .with_default(LevelFilter::WARN),
            )
    });
    tracing_subscriber::registry().with(fmt).with(otel).init();
    if let Some(error) = otel_error {
        tracing::error!(%error, "OTLP trace export is configured but cannot start; spans are not exported");
    }
    TracingGuard { provider }
}

/// The tracer provider exporting to the configured OTLP endpoint, or `None` when none is set.
fn otlp_provider(service: &'static str) -> Result<Option<SdkTracerProvider>, String> {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if disabled
        || !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let mut resource = Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(service);
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.build())
            .build(),
    ))
}
