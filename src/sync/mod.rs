//! The sync pipeline: one pass over the configured cohorts, one run per cohort.
//!
//! [`Engine`] holds what runs share (clients per Amplitude project and 1Flow account,
//! the state store); [`Engine::pass`] lists each project's cohorts once (free of
//! quota) and runs the selected cohorts; [`run::run`] is one cohort's run.

mod export_stage;
mod guard;
pub mod progress;
mod push;
mod record;
pub mod run;
mod share;
mod summary;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio_util::sync::CancellationToken;

use crate::amplitude::{AmplitudeClient, AmplitudeError, CohortInfo, Limiter};
use crate::config::{AmplitudeConfig, CohortConfig, Config, OneflowConfig, UserIdSource};
use crate::mapping::{self, Mapper};
use crate::oneflow::OneflowClient;
use crate::state::{CohortKey, Store};

pub use record::log as record_log;
pub use share::ExportShare;
pub use summary::{Outcome, Scope, Summary};

/// The name under which the unnamed `[amplitude]` and `[oneflow]` blocks are keyed.
pub const DEFAULT_NAME: &str = "default";

/// What started a run; scheduled runs keep the export reserve untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `cohort-sync sync`.
    Manual,
    /// A schedule fired.
    Scheduled,
}

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Do everything but write to 1Flow and the state store.
    pub dry_run: bool,
    /// Push every current member and remove every acknowledged id that is not current.
    pub full: bool,
    /// Let a run remove more than `max_removal_ratio` of the members.
    pub allow_mass_removal: bool,
    /// Go past the monthly export budget.
    pub force: bool,
    /// Manual or scheduled.
    pub trigger: Trigger,
    /// The run's id, in logs and history.
    pub run_id: String,
    /// Fires on shutdown: batches in flight finish, no new ones start.
    pub cancel: CancellationToken,
    /// Exports shared by the runs of one cohort to several 1Flow accounts.
    pub share: Arc<ExportShare>,
    /// Counts the run's lease while it is held.
    pub leases: HeldLeases,
}

impl RunOptions {
    /// Options for a plain run with a fresh run id.
    pub fn new(trigger: Trigger, cancel: CancellationToken) -> RunOptions {
        RunOptions {
            dry_run: false,
            full: false,
            allow_mass_removal: false,
            force: false,
            trigger,
            run_id: new_run_id(),
            cancel,
            share: Arc::new(ExportShare::for_pass()),
            leases: HeldLeases::default(),
        }
    }
}

/// How many cohort leases runs hold right now; clones share one count.
#[derive(Debug, Clone, Default)]
pub struct HeldLeases(Arc<AtomicI64>);

impl HeldLeases {
    /// The leases held now.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one more lease until the returned guard is dropped.
    pub fn hold(&self) -> HeldLease {
        self.0.fetch_add(1, Ordering::Relaxed);
        HeldLease(self.clone())
    }
}

/// One lease counted in [`HeldLeases`]; dropping it (even by a panic or a dropped run)
/// uncounts it.
#[must_use = "the lease is uncounted when this is dropped"]
pub struct HeldLease(HeldLeases);

impl Drop for HeldLease {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A random run id of 16 hex digits.
pub fn new_run_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// A client and its settings for one Amplitude project.
pub struct Project {
    /// The project's settings.
    pub config: AmplitudeConfig,
    /// Its client, sharing the project's limiter.
    pub client: AmplitudeClient,
    listing: tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<Vec<CohortInfo>>)>>,
}

impl Project {
    fn new(config: AmplitudeConfig, client: AmplitudeClient) -> Project {
        Project {
            config,
            client,
            listing: tokio::sync::Mutex::new(None),
        }
    }

    /// The project's cohorts, listed at most once per `ttl` however many cohorts ask
    /// at once (the list call is free of quota, but it still counts as a request).
    ///
    /// # Errors
    ///
    /// When the list call fails.
    pub async fn list_cached(
        &self,
        ttl: std::time::Duration,
    ) -> Result<Arc<Vec<CohortInfo>>, AmplitudeError> {
        let mut cached = self.listing.lock().await;
        if let Some((at, cohorts)) = cached.as_ref()
            && at.elapsed() < ttl
        {
            return Ok(Arc::clone(cohorts));
        }
        let cohorts = Arc::new(self.client.list_cohorts().await?);
        *cached = Some((tokio::time::Instant::now(), Arc::clone(&cohorts)));
        Ok(cohorts)
    }
}

/// A client and its settings for one 1Flow account.
pub struct Account {
    /// The account's settings.
    pub config: OneflowConfig,
    /// Its client.
    pub client: OneflowClient,
}

/// Everything one cohort's run needs.
pub struct CohortTarget {
    /// The cohort's settings.
    pub cohort: CohortConfig,
    /// Its key in the state store.
    pub key: CohortKey,
    /// The state store.
    pub store: Store,
    /// This process's name, as lease holder.
    pub holder: String,
    /// How long a lease lasts unless renewed, in milliseconds.
    pub lease_ttl_ms: i64,
    /// The Amplitude project it comes from.
    pub amplitude: Arc<Project>,
    /// The 1Flow account it goes to.
    pub oneflow: Arc<Account>,
    /// Which export column holds the id.
    pub source: Arc<UserIdSource>,
    /// How a value becomes a 1Flow id.
    pub mapper: Arc<Mapper>,
}

impl CohortTarget {
    /// "name (id)" or the id alone, with the project and account when not default.
    pub fn label(&self) -> String {
        let mut label = match &self.cohort.name {
            Some(name) => format!("{name} ({})", self.cohort.amplitude_id),
            None => self.cohort.amplitude_id.clone(),
        };
        if self.key.project != DEFAULT_NAME || self.key.account != DEFAULT_NAME {
            label.push_str(&format!(" [{} -> {}]", self.key.project, self.key.account));
        }
        label
    }
}

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// An HTTP client could not be created.
    #[error("cannot create an HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// A lookup table could not be read.
    #[error("cohort {cohort}: {source}")]
    Lookup {
        /// The cohort's Amplitude id.
        cohort: String,
        /// What failed.
        source: mapping::LookupError,
    },
}

/// The clients and targets built from one config.
pub struct Engine {
    /// The state store.
    pub store: Store,
    /// One target per configured cohort, in config order.
    pub targets: Vec<Arc<CohortTarget>>,
    projects: BTreeMap<String, Arc<Project>>,
}

/// The Amplitude limiters of a process, one per project name. The daemon keeps them
/// across reloads, so runs before and after a reload share one limit.
#[derive(Debug, Default)]
pub struct Limiters(std::sync::Mutex<BTreeMap<String, Arc<Limiter>>>);

impl Limiters {
    /// The limiter of a project, created on first use.
    pub fn get(&self, project: &str) -> Arc<Limiter> {
        let mut limiters = self.0.lock().expect("limiters lock");
        Arc::clone(limiters.entry(project.to_owned()).or_default())
    }
}

impl Engine {
    /// Builds clients for every project and account the cohorts use.
    ///
    /// # Errors
    ///
    /// When a client cannot be built or a lookup table cannot be read.
    pub fn new(config: &Config, store: Store, holder: &str) -> Result<Engine, EngineError> {
        Engine::with_limiters(config, store, holder, &Limiters::default())
    }

    /// Like [`Engine::new`], with the Amplitude limiters taken from `limiters`.
    ///
    /// # Errors
    ///
    /// When a client cannot be built or a lookup table cannot be read.
    pub fn with_limiters(
        config: &Config,
        store: Store,
        holder: &str,
        limiters: &Limiters,
    ) -> Result<Engine, EngineError> {
        let mut projects = BTreeMap::new();
        let mut accounts = BTreeMap::new();
        let mut targets = Vec::new();
        for cohort in &config.cohorts {
            let project_name = cohort
                .amplitude_project
                .clone()
                .unwrap_or_else(|| DEFAULT_NAME.into());
            let account_name = cohort
                .oneflow_account
                .clone()
                .unwrap_or_else(|| DEFAULT_NAME.into());
            let project = match projects.get(&project_name) {
                Some(project) => Arc::clone(project),
                None => {
                    let settings = config
                        .amplitude_project(cohort.amplitude_project.as_deref())
                        .clone();
                    let block = cohort.amplitude_project.as_ref().map_or_else(
                        || "amplitude".to_owned(),
                        |name| format!("amplitude_projects.{name}"),
                    );
                    let limiter = limiters.get(&project_name);
                    let client = AmplitudeClient::new(&settings, limiter)?.with_block(block);
                    let project = Arc::new(Project::new(settings, client));
                    projects.insert(project_name.clone(), Arc::clone(&project));
                    project
                }
            };
            let account = match accounts.get(&account_name) {
                Some(account) => Arc::clone(account),
                None => {
                    let settings = config
                        .oneflow_account(cohort.oneflow_account.as_deref())
                        .clone();
                    let block = cohort.oneflow_account.as_ref().map_or_else(
                        || "oneflow".to_owned(),
                        |name| format!("oneflow_accounts.{name}"),
                    );
                    let client = OneflowClient::new(&settings)?.with_block(block);
                    let account = Arc::new(Account {
                        config: settings,
                        client,
                    });
                    accounts.insert(account_name.clone(), Arc::clone(&account));
                    account
                }
            };
            let lookup = match &cohort.lookup {
                Some(path) => {
                    Some(
                        mapping::read_lookup(path).map_err(|source| EngineError::Lookup {
                            cohort: cohort.amplitude_id.clone(),
                            source,
                        })?,
                    )
                }
                None => None,
            };
            targets.push(Arc::new(CohortTarget {
                key: CohortKey {
                    project: project_name,
                    cohort_id: cohort.amplitude_id.clone(),
                    account: account_name,
                },
                store: store.clone(),
                holder: holder.to_owned(),
                lease_ttl_ms: config.state.lease_ttl.as_millis() as i64,
                amplitude: project,
                oneflow: account,
                source: Arc::new(cohort.user_id.clone()),
                mapper: Arc::new(Mapper::new(cohort.transform.clone(), lookup)),
                cohort: cohort.clone(),
            }));
        }
        Ok(Engine {
            store,
            targets,
            projects,
        })
    }

    /// The client of a project, by name.
    pub fn project(&self, name: &str) -> Option<&Arc<Project>> {
        self.projects.get(name)
    }

    /// Runs every target in `selected` once, listing each project's cohorts once.
    pub async fn pass(&self, selected: &[Arc<CohortTarget>], options: &RunOptions) -> Vec<Summary> {
        let mut listings: BTreeMap<String, Result<Vec<CohortInfo>, AmplitudeError>> =
            BTreeMap::new();
        let mut summaries = Vec::new();
        for target in selected {
            let project = &target.key.project;
            if !listings.contains_key(project) {
                let listed = target.amplitude.client.list_cohorts().await;
                listings.insert(project.clone(), listed);
            }
            let mut options = options.clone();
            options.run_id = new_run_id();
            let listed = listings[project].as_ref().map(Vec::as_slice);
            summaries.push(run_logged(target, listed, &options).await);
        }
        summaries
    }
}

/// Runs one cohort inside its span, given its project's cohort listing, and logs its
/// one INFO (or WARN/ERROR) line. A listing that failed fails the run with its reason;
/// refused credentials stop the whole project.
pub async fn run_logged(
    target: &CohortTarget,
    listed: Result<&[CohortInfo], &AmplitudeError>,
    options: &RunOptions,
) -> Summary {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "run",
        cohort = %target.cohort.amplitude_id,
        project = %target.key.project,
        account = %target.key.account,
        run_id = %options.run_id,
    );
    async {
        let summary = match listed {
            Ok(cohorts) => {
                let info = cohorts.iter().find(|c| c.id == target.cohort.amplitude_id);
                run::run(target, info, options).await
            }
            Err(error) => {
                let mut summary = Summary::for_target(target);
                summary.error = Some(format!("listing the project's cohorts failed: {error}"));
                if error.is_unauthorized() {
                    summary.scope = Scope::Project;
                }
                summary
            }
        };
        record::log(&summary);
        summary
    }
    .instrument(span)
    .await
}
