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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::test_rig::Rig;

    async fn get(url: String) -> (u16, String) {
        let response = reqwest::get(url).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    #[tokio::test]
    async fn endpoints_answer_health_readiness_and_metrics() {
        let rig = Rig::unpaused().await;
        let health = Arc::new(Health::new(rig.store.clone(), Arc::new(Metrics::new())));
        let stop = CancellationToken::new();
        let (bound, task) = serve("127.0.0.1:0".parse().unwrap(), health.clone(), stop.clone())
            .await
            .unwrap();

        assert_eq!(
            get(format!("http://{bound}/healthz")).await,
            (200, "ok\n".into())
        );
        let (status, body) = get(format!("http://{bound}/readyz")).await;
        assert_eq!((status, body.as_str()), (503, "config not loaded\n"));
        health.set_config_loaded(true);
        assert_eq!(get(format!("http://{bound}/readyz")).await.0, 200);
        let (status, body) = get(format!("http://{bound}/metrics")).await;
        assert_eq!(status, 200);
        assert!(body.contains("cohort_sync_leases_held 0"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");

        rig.store.close().await;
        let (status, body) = get(format!("http://{bound}/readyz")).await;
        assert_eq!(status, 503);
        assert!(body.starts_with("state store"), "{body}");

        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn the_scheduler_counts_as_dead_when_its_heartbeat_is_stale() {
        let rig = Rig::new().await;
        let health = Health::new(rig.store.clone(), Arc::new(Metrics::new()));
        assert!(health.alive());

        tokio::time::advance(HEARTBEAT_STALE + Duration::from_secs(1)).await;
        assert!(!health.alive());
        health.beat();
        assert!(health.alive());
    }
}
