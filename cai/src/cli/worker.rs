//! `cai worker`: connect to the broker and the state store, serve until SIGTERM or Ctrl-C,
//! then drain within the grace period.

use std::sync::Arc;
use std::time::Duration;

use cai_common::services::connect_waiting;
use cai_worker::model::key_policy::KeyPolicy;
use cai_worker::serve::{self, ServeOptions};
use tokio_util::sync::CancellationToken;

use super::{MetricsAddr, WorkerArgs};
use crate::telemetry::listener::{self, Readiness, Services};

/// Where a worker serves /metrics, /healthz and /readyz unless told otherwise.
const DEFAULT_METRICS_ADDR: ([u8; 4], u16) = ([0, 0, 0, 0], 9090);

pub(super) async fn worker(args: WorkerArgs) -> u8 {
    let keys = match KeyPolicy::bound(
        &args.allow_keys,
        std::env::var("CAI_ALLOW_KEYS").ok().as_deref(),
    ) {
        Ok(keys) => keys,
        Err(error) => {
            eprintln!("error: {error}");
            return 2;
        }
    };
    let job_keys = match super::job_keys::worker_keys(&args.job_key_files) {
        Ok(job_keys) => job_keys,
        Err(error) => {
            eprintln!("error: {error}");
            return 2;
        }
    };
    let shutdown = CancellationToken::new();
    watch_signals(shutdown.clone());
    // The listener comes up first, so that while the services are waited for the process is
    // alive (/healthz) and says in /readyz what it waits for.
    let services = Arc::new(Services::connecting());
    let readiness = Readiness {
        draining: shutdown.clone(),
        services: Some(services.clone()),
    };
    let _listener = match args.metrics_addr {
        Some(MetricsAddr::Off) => None,
        Some(MetricsAddr::At(addr)) => match listener::serve(addr, readiness).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                eprintln!("error: --metrics-addr {addr}: {error}");
                return 2;
            }
        },
        None => match listener::serve(DEFAULT_METRICS_ADDR.into(), readiness).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(addr = %std::net::SocketAddr::from(DEFAULT_METRICS_ADDR), %error, "no /metrics listener (pass --metrics-addr to choose a port)");
                None
            }
        },
    };
    // Services that are away when the worker starts are waited for, as while it serves; a
    // signal ends the wait. What no wait mends stops the worker with exit code 2.
    let tls = args.tls.files();
    let report_wait = |error: &_| services.waiting(error);
    let connecting = connect_waiting(
        &args.broker,
        &args.state,
        &tls,
        Duration::from_secs(args.connect_timeout_s),
        &report_wait,
    );
    let (broker, state) = tokio::select! {
        connected = connecting => match connected {
            Ok(connected) => connected,
            Err(error) => {
                eprintln!("error: {error}");
                return if error.is_misconfigured() { 2 } else { 1 };
            }
        },
        () = shutdown.cancelled() => {
            tracing::info!("worker stopped before the services answered");
            return 0;
        }
    };
    services.connected(broker.clone(), state.clone());
    let worker_id = args.id.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_else(|_| "worker".into());
        format!("{}-{}", host.trim(), std::process::id())
    });
    let options = ServeOptions {
        worker_id,
        concurrency: args.concurrency,
        poll_interval: Duration::from_secs(2),
        heartbeat_ttl: Duration::from_secs(15),
        grace: Duration::from_secs(args.grace_s),
        keys,
        job_keys,
    };
    tracing::info!(worker = options.worker_id, "worker started");
    serve::serve(broker, state, options, shutdown).await;
    tracing::info!("worker stopped");
    0
}

/// Cancels `shutdown` at the first SIGTERM or Ctrl-C: the worker then drains.
fn watch_signals(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        shutdown.cancel();
    });
}
