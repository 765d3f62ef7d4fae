//! The HTTP listener of a `cai` process (`--metrics-addr`): `/metrics` in the Prometheus text
//! format, `/healthz` (the process answers) and `/readyz` (connected to the broker and the state
//! store, and not draining; while it waits for them, what it waits for), for scrapers and
//! Kubernetes probes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use cai_common::broker::Broker;
use cai_common::service_error::ServiceError;
use cai_common::state::StateStore;
use cai_common::telemetry::metrics::metrics;
use tokio_util::sync::CancellationToken;

/// What `/readyz` checks.
#[derive(Clone, Default)]
pub struct Readiness {
    /// Fires when the process starts draining: from then on it is not ready for new work.
    pub draining: CancellationToken,
    /// The broker and the state store that must answer, if the process uses its own.
    pub services: Option<Arc<Services>>,
}

/// A process's broker and state store as its probe sees them: what it still waits for at
/// start (the listener is up before they answer, so an orchestrator sees a live process that
/// is not ready, not a dead one), then the connections themselves.
pub struct Services {
    stage: Mutex<Stage>,
}

enum Stage {
    /// Not connected yet; why, as the last attempt failed.
    Waiting(String),
    /// Both answered once; each is asked again at every probe.
    Connected {
        broker: Arc<dyn Broker>,
        state: Arc<dyn StateStore>,
    },
}

impl Services {
    /// Services not connected yet.
    pub fn connecting() -> Self {
        Self {
            stage: Mutex::new(Stage::Waiting(
                "connecting to the broker and the state store".into(),
            )),
        }
    }

    /// Records why the last attempt to connect failed (an outage waited for).
    pub fn waiting(&self, why: &ServiceError) {
        *self.stage.lock().expect("readiness lock") = Stage::Waiting(format!("waiting: {why}"));
    }

    /// Records the connections once both services answered.
    pub fn connected(&self, broker: Arc<dyn Broker>, state: Arc<dyn StateStore>) {
        *self.stage.lock().expect("readiness lock") = Stage::Connected { broker, state };
    }

    async fn problems(&self, problems: &mut Vec<String>) {
        let connected = match &*self.stage.lock().expect("readiness lock") {
            Stage::Waiting(why) => Err(why.clone()),
            Stage::Connected { broker, state } => Ok((broker.clone(), state.clone())),
        };
        match connected {
            Err(why) => problems.push(why),
            Ok((broker, state)) => {
                if !broker.ready().await {
                    problems.push("broker not connected".into());
                }
                if !state.ready().await {
                    problems.push("state store not answering".into());
                }
            }
        }
    }
}

impl Readiness {
    /// Why the process is not ready; empty when it is.
    pub async fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.draining.is_cancelled() {
            problems.push("draining".into());
        }
        if let Some(services) = &self.services {
            services.problems(&mut problems).await;
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
