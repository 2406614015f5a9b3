//! `cohort-sync run`: the long-running service.
//!
//! It loads the config, opens (and locks) the state store, starts the health and
//! metrics server and one scheduled task per enabled cohort, then waits for signals:
//! SIGHUP or an edit of the config file reloads, SIGTERM or SIGINT stops firing, lets
//! in-flight batches finish within `shutdown_grace`, and exits 0. systemd is told
//! READY, RELOADING, STOPPING and WATCHDOG as these happen.

pub mod metrics;
pub mod scheduler;
pub mod server;
mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{EXIT_CONFIG, holder_name, open_store};
use crate::config::{self, Config, ConfigError};
use crate::state::Store;
use crate::sync::Engine;
use metrics::Metrics;
use scheduler::{Plan, Scheduler, Shared, SystemClock};
use server::Health;

/// How often the scheduler's heartbeat (and the systemd watchdog) is refreshed.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Why a config could not be turned into plans.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A client or lookup table could not be set up.
    #[error(transparent)]
    Engine(#[from] crate::sync::EngineError),
    /// A schedule does not parse.
    #[error("cohort {cohort}: {source}")]
    Schedule {
        /// The cohort's Amplitude id.
        cohort: String,
        /// What is wrong with its schedule.
        source: crate::schedule::ScheduleError,
    },
}

/// Loads `path` and builds a plan per enabled cohort.
///
/// # Errors
///
/// When the config is invalid or a cohort cannot be set up.
pub fn load_plans(
    path: &Path,
    store: &Store,
    holder: &str,
) -> Result<(Config, Vec<Plan>), PlanError> {
    let config = config::load_from_process_env(path)?;
    let plans = plans(&config, store, holder)?;
    Ok((config, plans))
}

fn plans(config: &Config, store: &Store, holder: &str) -> Result<Vec<Plan>, PlanError> {
    let engine = Engine::new(config, store.clone(), holder)?;
    let mut plans = Vec::new();
    for target in engine.targets {
        if !target.cohort.enabled {
            continue;
        }
        let schedule = target
            .cohort
            .parsed_schedule()
            .map_err(|source| PlanError::Schedule {
                cohort: target.cohort.amplitude_id.clone(),
                source,
            })?;
        plans.push(Plan { target, schedule });
    }
    Ok(plans)
}

fn notify(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "Could not notify systemd.");
    }
}

/// Runs the daemon until a stop signal.
pub async fn run(path: PathBuf) -> ExitCode {
    let config = match config::load_from_process_env(&path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::telemetry::init(&config.log);
    let (store, _lock) = match open_store(&config, true).await {
        Ok(opened) => opened,
        Err(error) => {
            tracing::error!(%error, "Cannot open the state store.");
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let holder = holder_name();
    let initial = match plans(&config, &store, &holder) {
        Ok(plans) => plans,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health {
        heartbeat_ms: AtomicI64::new(chrono::Utc::now().timestamp_millis()),
        config_loaded: AtomicBool::new(true),
        store: store.clone(),
        metrics: metrics.clone(),
    });
    let server_stop = tokio_util::sync::CancellationToken::new();
    let server = match config.server.listen {
        Some(addr) => match server::serve(addr, health.clone(), server_stop.clone()).await {
            Ok((bound, task)) => {
                tracing::info!(%bound, "Serving /healthz, /readyz and /metrics.");
                Some(task)
            }
            Err(error) => {
                eprintln!("error: cannot listen on {addr} (server.listen): {error}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };

    let shared = Arc::new(Shared::new(Arc::new(SystemClock), metrics));
    let mut scheduler = Scheduler::new(shared.clone());
    scheduler.apply(initial);
    let grace = config.daemon.shutdown_grace;
    tracing::info!(cohorts = scheduler.len(), config = %path.display(), holder, "Started.");
    notify(&[NotifyState::Ready, NotifyState::Status("running")]);

    let exit = supervise(&path, &store, &holder, &mut scheduler, &health, grace).await;
    server_stop.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    exit
}

/// Waits for signals and reloads until a stop signal, then shuts down.
async fn supervise(
    path: &Path,
    store: &Store,
    holder: &str,
    scheduler: &mut Scheduler,
    health: &Health,
    grace: Duration,
) -> ExitCode {
    let (Ok(mut terminate), Ok(mut interrupt), Ok(mut hangup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("error: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let mut edits = watch::watch_file(path);
    let watchdog = sd_notify::watchdog_enabled();
    let mut beat = tokio::time::interval(watchdog.map_or(HEARTBEAT, |w| (w / 2).min(HEARTBEAT)));

    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => reload(path, store, holder, scheduler, "SIGHUP"),
            Some(()) = edits.recv() => reload(path, store, holder, scheduler, "file changed"),
            _ = beat.tick() => {
                health.beat();
                if watchdog.is_some() {
                    notify(&[NotifyState::Watchdog]);
                }
            }
        }
    }

    notify(&[NotifyState::Stopping]);
    let shared = scheduler.shared();
    let in_flight = shared.runs.len();
    tracing::info!(
        runs_in_flight = in_flight,
        grace_secs = grace.as_secs_f64(),
        "Stopping: no new fires; letting batches in flight finish."
    );
    shared.stop_firing.cancel();
    shared.stop_runs.cancel();
    shared.runs.close();
    tokio::select! {
        () = shared.runs.wait() => tracing::info!("Stopped cleanly."),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(runs = shared.runs.len(), "Shutdown grace period over; exiting with runs unfinished (their confirmed batches are saved).");
        }
        _ = terminate.recv() => {
            tracing::warn!("Second stop signal; exiting at once.");
            std::process::exit(1);
        }
        _ = interrupt.recv() => {
            tracing::warn!("Second stop signal; exiting at once.");
            std::process::exit(1);
        }
    }
    ExitCode::SUCCESS
}

fn reload(path: &Path, store: &Store, holder: &str, scheduler: &mut Scheduler, why: &str) {
    let monotonic = NotifyState::monotonic_usec_now().ok();
    let mut states = vec![NotifyState::Reloading];
    states.extend(monotonic);
    notify(&states);
    match load_plans(path, store, holder) {
        Ok((config, plans)) => {
            scheduler.apply(plans);
            tracing::info!(why, cohorts = scheduler.len(), config = %config.source.display(), "Reloaded the config.");
        }
        Err(error) => {
            tracing::error!(why, %error, "The new config is invalid; keeping the running one.");
        }
    }
    notify(&[NotifyState::Ready]);
}
