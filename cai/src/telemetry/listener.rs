//! The HTTP listener of a `cai` process (`--metrics-addr`): `/metrics` in the Prometheus text
//! format, `/healthz` (the process answers) and `/readyz` (connected to the broker and the state
//! store, and not draining), for scrapers and Kubernetes probes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use cai_common::broker::Broker;
use cai_common::state::StateStore;
use cai_common::telemetry::metrics::metrics;
use tokio_util::sync::CancellationToken;

/// What `/readyz` checks.
#[derive(Clone, Default)]
pub struct Readiness {
    /// Fires when the process starts draining: from then on it is not ready for new work.
    pub draining: CancellationToken,
    /// The broker that must answer, if the process uses one of its own.
    pub broker: Option<Arc<dyn Broker>>,
    /// The state store that must answer, if the process uses one of its own.
    pub state: Option<Arc<dyn StateStore>>,
}

impl Readiness {
    /// Why the process is not ready; empty when it is.
    pub async fn problems(&self) -> Vec<&'static str> {
        let mut problems = Vec::new();
        if self.draining.is_cancelled() {
            problems.push("draining");
        }
        if let Some(broker) = &self.broker
            && !broker.ready().await
        {
            problems.push("broker not connected");
        }
        if let Some(state) = &self.state
            && !state.ready().await
        {
            problems.push("state store not answering");
        }
        problems
    }
}

/// A bound listener, serving until its handle is dropped or aborted.
pub struct Listener {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves the three endpoints in the background.
pub async fn serve(addr: SocketAddr, readiness: Readiness) -> std::io::Result<Listener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Arc::new(readiness));
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the metrics listener stopped");
        }
    });
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(Listener { task })
}

async fn render_metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics().render(),
    )
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> impl IntoResponse {
    let problems = readiness.problems().await;
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join(", ")),
        )
    }
}
