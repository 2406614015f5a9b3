//! The daemon's HTTP endpoints: `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::state::Store;

/// The scheduler counts as alive while its heartbeat is younger than this.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(30);

/// What the endpoints report on, shared with the scheduler.
pub struct Health {
    /// Milliseconds since the epoch of the scheduler's last heartbeat.
    pub heartbeat_ms: AtomicI64,
    /// Whether a valid config is loaded.
    pub config_loaded: AtomicBool,
    /// The state store, pinged by `/readyz`.
    pub store: Store,
    /// The metrics `/metrics` renders.
    pub metrics: Arc<Metrics>,
}

impl Health {
    /// Records that the scheduler is alive now.
    pub fn beat(&self) {
        self.heartbeat_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    fn alive(&self) -> bool {
        let age = chrono::Utc::now().timestamp_millis() - self.heartbeat_ms.load(Ordering::Relaxed);
        age < HEARTBEAT_STALE.as_millis() as i64
    }
}

async fn healthz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.alive() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "scheduler is not running\n",
        )
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if !health.config_loaded.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "config not loaded\n".to_owned(),
        );
    }
    match tokio::time::timeout(Duration::from_secs(5), health.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_owned()),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("state store: {error}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "state store does not answer\n".to_owned(),
        ),
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        health.metrics.render(),
    )
}

/// Binds `addr` and serves until `stop` fires.
///
/// # Errors
///
/// When the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "The health and metrics server stopped.");
        }
    });
    Ok((bound, task))
}
