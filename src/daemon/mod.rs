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
#[cfg(test)]
mod test_rig;
mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::{EXIT_CONFIG, holder_name, open_store};
use crate::config::{self, Config, ConfigError};
use crate::state::Store;
use crate::sync::{CohortTarget, Engine};
use metrics::Metrics;
use scheduler::{Plan, Scheduler, Shared, SyncRunner, SystemClock};
use server::Health;

/// How often the scheduler's heartbeat (and the systemd watchdog) is refreshed.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The exit code after a second stop signal cut the shutdown short.
const EXIT_FORCED: i32 = 130;

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

/// A plan per enabled cohort of `config`, with fresh clients (so new credentials apply).
///
/// # Errors
///
/// When a client or lookup table cannot be set up, or a schedule does not parse.
pub fn plans(config: &Config, store: &Store, holder: &str) -> Result<Vec<Plan>, PlanError> {
    // One limiter per project for the life of the process: runs started before and
    // after a reload share the project's limits.
    static LIMITERS: std::sync::LazyLock<crate::sync::Limiters> =
        std::sync::LazyLock::new(Default::default);
    let engine = Engine::with_limiters(config, store.clone(), holder, &LIMITERS)?;
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

/// The stop and reload signals, installed before anything else so that an early
/// SIGHUP or SIGTERM is handled rather than killing the process.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for SIGTERM or SIGINT and names it.
    async fn stop(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// Runs the daemon until a stop signal.
pub async fn run(path: PathBuf) -> ExitCode {
    let mut signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("error: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
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
            return ExitCode::FAILURE;
        }
    };
    let holder = holder_name(&store);
    let initial = match plans(&config, &store, &holder) {
        Ok(plans) => plans,
        Err(error) => {
            tracing::error!(%error, "The config cannot be used.");
            return ExitCode::from(EXIT_CONFIG);
        }
    };

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(store.clone(), metrics.clone()));
    let server_stop = tokio_util::sync::CancellationToken::new();
    let server = match config.server.listen {
        Some(addr) => match server::serve(addr, health.clone(), server_stop.clone()).await {
            Ok((bound, task)) => {
                tracing::info!(%bound, "Serving /healthz, /readyz and /metrics.");
                Some(task)
            }
            Err(error) => {
                tracing::error!(%addr, %error, "Cannot listen on server.listen.");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };

    let runner = Arc::new(SyncRunner::new(metrics.clone()));
    let shared = Arc::new(Shared::new(Arc::new(SystemClock), metrics.clone(), runner));
    let mut scheduler = Scheduler::new(shared);
    tokio::spawn(seed_metrics(metrics.clone(), targets(&initial)));
    scheduler.apply(initial);
    health.set_config_loaded(true);
    tracing::info!(cohorts = scheduler.len(), config = %path.display(), holder, "Started.");
    notify(&[NotifyState::Ready, NotifyState::Status("running")]);

    let mut daemon = Daemon {
        path,
        store: store.clone(),
        holder,
        config,
        scheduler,
        metrics,
    };
    let clean = daemon.supervise(&mut signals, &health).await;
    if clean {
        // Every run has ended, so no connection is in use; closing checkpoints SQLite.
        store.close().await;
    }
    server_stop.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    ExitCode::SUCCESS
}

/// What the supervising loop owns once started.
struct Daemon {
    path: PathBuf,
    store: Store,
    holder: String,
    config: Config,
    scheduler: Scheduler,
    metrics: Arc<Metrics>,
}

impl Daemon {
    /// Waits for signals and reloads until a stop signal, then shuts down. True when
    /// every run finished within the grace period.
    async fn supervise(&mut self, signals: &mut Signals, health: &Health) -> bool {
        let mut edits = watch::watch_file(&self.path);
        let watchdog = sd_notify::watchdog_enabled();
        let period = watchdog.map_or(HEARTBEAT, |w| (w / 2).min(HEARTBEAT));
        let mut beat = tokio::time::interval(period);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let why = loop {
            tokio::select! {
                _ = signals.terminate.recv() => break "SIGTERM",
                _ = signals.interrupt.recv() => break "SIGINT",
                _ = signals.hangup.recv() => self.reload("SIGHUP"),
                Some(()) = edits.recv() => self.reload("file changed"),
                _ = beat.tick() => {
                    health.beat();
                    if watchdog.is_some() {
                        notify(&[NotifyState::Watchdog]);
                    }
                }
            }
        };
        self.shut_down(why, signals).await
    }

    /// Stops firing, lets runs finish their batches in flight within the grace period.
    async fn shut_down(&mut self, why: &str, signals: &mut Signals) -> bool {
        notify(&[NotifyState::Stopping]);
        let shared = self.scheduler.shared();
        let grace = self.config.daemon.shutdown_grace;
        tracing::info!(
            signal = why,
            runs_in_flight = shared.runs.len(),
            grace_secs = grace.as_secs_f64(),
            "Stopping: no new fires; letting batches in flight finish."
        );
        shared.stop_firing.cancel();
        shared.stop_runs.cancel();
        shared.runs.close();
        tokio::select! {
            () = shared.runs.wait() => {
                tracing::info!("Stopped cleanly.");
                true
            }
            () = tokio::time::sleep(grace) => {
                tracing::warn!(
                    runs = shared.runs.len(),
                    "The shutdown grace period is over; exiting with runs unfinished (their confirmed batches are saved)."
                );
                false
            }
            why = signals.stop() => {
                tracing::warn!(signal = why, "Second stop signal; exiting at once.");
                std::process::exit(EXIT_FORCED);
            }
        }
    }

    /// Loads the file again and applies it, or keeps the running config.
    fn reload(&mut self, why: &str) {
        let mut states = vec![NotifyState::Reloading];
        states.extend(NotifyState::monotonic_usec_now().ok());
        notify(&states);
        match load_plans(&self.path, &self.store, &self.holder) {
            Ok((config, plans)) => {
                warn_restart_only(&self.config, &config);
                tokio::spawn(seed_metrics(self.metrics.clone(), targets(&plans)));
                self.scheduler.apply(plans);
                self.config = config;
                tracing::info!(
                    why,
                    cohorts = self.scheduler.len(),
                    config = %self.path.display(),
                    "Reloaded the config."
                );
            }
            Err(error) => {
                tracing::error!(
                    why,
                    %error,
                    config = %self.path.display(),
                    "The changed config is invalid; the running config stays in force."
                );
            }
        }
        notify(&[NotifyState::Ready]);
    }
}

/// Warns about changed settings that only a restart applies.
fn warn_restart_only(old: &Config, new: &Config) {
    let mut changed = Vec::new();
    if old.state.path != new.state.path || old.state.url != new.state.url {
        changed.push("state");
    }
    if old.server.listen != new.server.listen {
        changed.push("server.listen");
    }
    if old.log.format != new.log.format || old.log.level != new.log.level {
        changed.push("log");
    }
    if !changed.is_empty() {
        tracing::warn!(
            settings = changed.join(", "),
            "These settings changed but apply only after a restart."
        );
    }
}

fn targets(plans: &[Plan]) -> Vec<Arc<CohortTarget>> {
    plans.iter().map(|plan| plan.target.clone()).collect()
}

/// Fills the acknowledged and quota gauges from the state store before the first runs.
async fn seed_metrics(metrics: Arc<Metrics>, targets: Vec<Arc<CohortTarget>>) {
    let mut projects = std::collections::BTreeSet::new();
    for target in targets {
        if let Ok(state) = target.store.cohort(&target.key).await {
            metrics.set_acknowledged(&target, state.acknowledged);
        }
        if projects.insert(target.key.project.clone()) {
            refresh_quota(&metrics, &target).await;
        }
    }
}

/// Reads the exports used this month by `target`'s project into the quota gauges.
pub(crate) async fn refresh_quota(metrics: &Metrics, target: &CohortTarget) {
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    match target.store.exports_used(&target.key.project, &month).await {
        Ok(used) => metrics.quota(
            &target.key.project,
            used,
            target.amplitude.config.monthly_export_budget,
        ),
        Err(error) => tracing::warn!(%error, "Could not read the export ledger."),
    }
}
