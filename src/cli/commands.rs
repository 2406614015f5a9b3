//! `sync`, `check` and `cohorts`, and what they share: loading the config, opening
//! the state store, choosing cohorts.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{ConfigArg, EXIT_CONFIG};
use crate::config::{self, Config};
use crate::state::{self, SqliteLock, Store};
use crate::sync::{CohortTarget, Engine, RunOptions, Trigger};

/// Arguments of `cohort-sync sync`.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Cohorts to sync, by Amplitude id or name [default: every enabled cohort]
    #[arg(value_name = "COHORT")]
    cohorts: Vec<String>,
    /// Export, parse and diff, and show what would be sent, without writing to 1Flow
    /// or to the state store (an export may still be started, which uses quota).
    #[arg(long)]
    dry_run: bool,
    /// Repair: push every current member as an add and remove every acknowledged id
    /// that is not current, whatever the state says.
    #[arg(long)]
    full: bool,
    /// Let this run remove more than the cohort's max_removal_ratio of its members.
    #[arg(long)]
    allow_mass_removal: bool,
    /// Start an export even when the monthly export budget is spent.
    #[arg(long)]
    force: bool,
    /// Print one JSON object per cohort instead of the summary lines.
    #[arg(long)]
    json: bool,
}

/// Loads and validates the config, or prints why not.
pub fn load_config(path: &Path) -> Result<Config, ExitCode> {
    config::load_from_process_env(path).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Opens the configured state store; for SQLite, takes the file's lock when `lock`.
///
/// # Errors
///
/// When the store cannot be opened or another process holds the lock.
pub async fn open_store(
    config: &Config,
    lock: bool,
) -> Result<(Store, Option<SqliteLock>), state::StateError> {
    match (&config.state.url, &config.state.path) {
        (Some(url), _) => Ok((Store::open_postgres(url).await?, None)),
        (None, path) => {
            let path = path
                .clone()
                .unwrap_or_else(|| config::DEFAULT_STATE_PATH.into());
            let guard = if lock {
                Some(state::lock_sqlite(&path)?)
            } else {
                None
            };
            Ok((Store::open_sqlite(&path).await?, guard))
        }
    }
}

/// This process's name as a lease holder on `store`: the replica name
/// (`$COHORT_SYNC_REPLICA`, else the host name), and on PostgreSQL a nonce drawn once per
/// process (see [`state::process_holder`]).
///
/// A SQLite file is locked by one process at a time, so there a restarted process takes
/// over the leases of its dead predecessor at once; on PostgreSQL it waits for them to
/// expire, since the predecessor may still be alive.
pub fn holder_name(store: &Store) -> String {
    static HOLDER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if store.backend() == "sqlite" {
        return replica_name();
    }
    HOLDER
        .get_or_init(|| state::process_holder(&replica_name()))
        .clone()
}

/// This replica's name: `$COHORT_SYNC_REPLICA`, else the host name.
fn replica_name() -> String {
    if let Ok(name) = std::env::var("COHORT_SYNC_REPLICA")
        && !name.trim().is_empty()
    {
        return name.trim().to_owned();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "cohort-sync".to_owned())
}

/// The enabled targets, or those named on the command line (enabled or not).
fn select(engine: &Engine, names: &[String]) -> Result<Vec<Arc<CohortTarget>>, String> {
    if names.is_empty() {
        return Ok(engine
            .targets
            .iter()
            .filter(|t| t.cohort.enabled)
            .cloned()
            .collect());
    }
    let mut selected = Vec::new();
    for name in names {
        let matching: Vec<_> = engine
            .targets
            .iter()
            .filter(|t| &t.cohort.amplitude_id == name || t.cohort.name.as_deref() == Some(name))
            .cloned()
            .collect();
        if matching.is_empty() {
            return Err(format!(
                "no cohort in the config has the id or name {name:?}"
            ));
        }
        selected.extend(matching);
    }
    Ok(selected)
}

/// `cohort-sync sync`.
pub async fn sync(args: SyncArgs) -> ExitCode {
    let config = match load_config(&args.config.path()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    crate::telemetry::init(&config.log);
    crate::sync::progress::enable_bars(std::io::stderr().is_terminal());

    let (store, _lock) = match open_store(&config, !args.dry_run).await {
        Ok(opened) => opened,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let holder = holder_name(&store);
    let engine = match Engine::new(&config, store, &holder) {
        Ok(engine) => engine,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let selected = match select(&engine, &args.cohorts) {
        Ok(selected) => selected,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if selected.is_empty() {
        eprintln!("error: no enabled cohort in {}", config.source.display());
        return ExitCode::from(EXIT_CONFIG);
    }

    let cancel = CancellationToken::new();
    tokio::spawn(stop_on_signals(cancel.clone()));

    let mut options = RunOptions::new(Trigger::Manual, cancel);
    options.dry_run = args.dry_run;
    options.full = args.full;
    options.allow_mass_removal = args.allow_mass_removal;
    options.force = args.force;
    let summaries = engine.pass(&selected, &options).await;

    for summary in &summaries {
        if args.json {
            println!("{}", summary.to_json());
        } else {
            println!("{}", summary.line());
        }
    }
    if summaries.iter().all(|s| s.outcome.is_success()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// SIGINT or SIGTERM: let the batches in flight finish, start no more; a second
/// signal exits at once.
async fn stop_on_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("Stopping after the batches in flight (signal again to quit at once).");
    cancel.cancel();
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    std::process::exit(130);
}

/// `cohort-sync check`.
pub fn check(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    print!("{}", super::status::describe_config(&config));
    ExitCode::SUCCESS
}

/// `cohort-sync cohorts`.
pub async fn cohorts(path: &Path, project: Option<String>) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    crate::telemetry::init(&config.log);
    if let Some(name) = &project
        && !config.amplitude_projects.contains_key(name)
    {
        eprintln!(
            "error: no [amplitude_projects.{name}] in {}",
            config.source.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let settings = config.amplitude_project(project.as_deref());
    let client = match crate::amplitude::AmplitudeClient::new(settings, Default::default()) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match client.list_cohorts().await {
        Ok(cohorts) => {
            print!("{}", super::status::cohort_table(&cohorts));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `cohort-sync health`.
pub async fn health(path: &Path, addr: Option<String>) -> ExitCode {
    let addr = match addr {
        Some(addr) => addr,
        None => match load_config(path) {
            Ok(config) => match config.server.listen {
                Some(listen) => listen.to_string(),
                None => {
                    eprintln!(
                        "error: server.listen is empty in {}: the daemon serves no health endpoint",
                        path.display()
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
            },
            Err(code) => return code,
        },
    };
    let url = format!("http://{addr}/healthz");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build();
    let answer = match client {
        Ok(client) => client.get(&url).send().await,
        Err(error) => Err(error),
    };
    match answer {
        Ok(response) if response.status().is_success() => {
            println!("healthy ({url})");
            ExitCode::SUCCESS
        }
        Ok(response) => {
            println!("unhealthy: {url} answered {}", response.status());
            ExitCode::FAILURE
        }
        Err(error) => {
            println!(
                "unhealthy: {url}: {}",
                crate::retry::describe_transport(&error.without_url())
            );
            ExitCode::FAILURE
        }
    }
}
