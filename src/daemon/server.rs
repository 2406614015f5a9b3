//! The daemon's HTTP endpoints: `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
    /// When the scheduler's supervising loop last ran (a monotonic clock, so a host
    /// that slept does not look dead when it wakes).
    heartbeat: Mutex<tokio::time::Instant>,
    /// Whether a valid config is loaded.
    config_loaded: AtomicBool,
    /// The state store, pinged by `/readyz`.
    store: Store,
    /// The metrics `/metrics` renders.
    metrics: Arc<Metrics>,
}

impl Health {
    /// Health of a daemon using `store` and `metrics`; alive now, not yet ready.
    pub fn new(store: Store, metrics: Arc<Metrics>) -> Health {
        Health {
            heartbeat: Mutex::new(tokio::time::Instant::now()),
            config_loaded: AtomicBool::new(false),
            store,
            metrics,
        }
    }

    /// Records that the scheduler is alive now.
    pub fn beat(&self) {
        *self
            .heartbeat
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = tokio::time::Instant::now();
    }

    /// Marks whether a valid config is loaded (for `/readyz`).
    pub fn set_config_loaded(&self, loaded: bool) {
        self.config_loaded.store(loaded, Ordering::Relaxed);
    }

    fn alive(&self) -> bool {
        let last = *self
            .heartbeat
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.elapsed() < HEARTBEAT_STALE
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
