//! The metrics port: `/metrics` (Prometheus text), `/healthz` (process alive) and `/readyz`
//! (connected, consuming, modules loaded or a registry to pull them from).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::refresh_gauges;
use crate::registry::ModuleRegistry;

/// What the HTTP endpoints read.
#[derive(Clone)]
pub struct HttpState {
    /// Renders the exposition.
    pub metrics: PrometheusHandle,
    /// Source of the modules and pool gauges.
    pub registry: Arc<ModuleRegistry>,
    /// True while the worker is connected and consuming.
    pub consuming: Arc<AtomicBool>,
    /// True when modules the directory lacks are pulled from a registry (`--registry`): then
    /// an empty modules directory is no reason to be unready.
    pub pulls_modules: bool,
}

/// Binds `addr` and serves until `stop` is cancelled; returns the bound address (useful with
/// port 0).
pub async fn serve(
    addr: SocketAddr,
    state: HttpState,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "metrics listener failed");
        }
    });
    Ok(bound)
}

async fn metrics(State(state): State<HttpState>) -> String {
    refresh_gauges(&state.registry);
    state.metrics.render()
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    let consuming = state.consuming.load(Ordering::Relaxed);
    let no_modules = state.registry.is_empty() && !state.pulls_modules;
    match (consuming, no_modules) {
        (true, false) => (StatusCode::OK, "ready\n"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not consuming\n"),
        (true, true) => (StatusCode::SERVICE_UNAVAILABLE, "no modules loaded\n"),
    }
}
