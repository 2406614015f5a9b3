//! The configuration: one TOML file, overridden by `COHORT_SYNC__...` environment variables.
//!
//! [`load`] reads the file with the `config` crate, layers the environment on top, checks
//! every value and returns a typed [`Config`], or a [`ConfigError`] naming the file, the line
//! or variable, and the key path. `config/cohort-sync.example.toml` documents every key.

mod error;
mod load;
mod raw;
mod secret;
mod spans;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{ConfigError, Origin};
pub use secret::Secret;
pub use spans::{ENV_PREFIX, ENV_SEPARATOR};

/// Amplitude's API host for projects in the US region.
pub const AMPLITUDE_US_URL: &str = "https://amplitude.com";
/// Amplitude's API host for projects in the EU region.
pub const AMPLITUDE_EU_URL: &str = "https://analytics.eu.amplitude.com";
/// Default pause between two polls of a running cohort export.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Default limit on how long one cohort export may take.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default limit on one HTTP request to Amplitude.
pub const DEFAULT_AMPLITUDE_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Default number of retries of a transient Amplitude error.
pub const DEFAULT_AMPLITUDE_MAX_RETRIES: u32 = 5;
/// Default number of cohort exports allowed per calendar month.
pub const DEFAULT_MONTHLY_EXPORT_BUDGET: u32 = 500;
/// Default number of exports of the budget kept back for manual runs.
pub const DEFAULT_EXPORT_RESERVE: u32 = 50;
/// Default allowed relative gap between a cohort's listed size and its parsed member count.
pub const DEFAULT_SIZE_TOLERANCE: f64 = 0.10;
/// 1Flow's API host.
pub const ONEFLOW_URL: &str = "https://api.1flow.app";
/// Default number of users per 1Flow request.
pub const DEFAULT_BATCH_SIZE: usize = 1000;
/// Largest allowed `batch_size`.
pub const MAX_BATCH_SIZE: usize = 10_000;
/// Default cap on the JSON body of one 1Flow request, in bytes.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 500_000;
/// Smallest allowed `max_batch_bytes`: room for one request carrying the longest id.
pub const MIN_BATCH_BYTES: usize = 4096;
/// Default number of 1Flow requests in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Largest allowed `concurrency`.
pub const MAX_CONCURRENCY: usize = 64;
/// Default limit on one HTTP request to 1Flow.
pub const DEFAULT_ONEFLOW_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of retries of a transient 1Flow error.
pub const DEFAULT_ONEFLOW_MAX_RETRIES: u32 = 8;
/// Default longest Retry-After honoured inside a run; a longer one defers the run.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(5 * 60);
/// Default SQLite state file.
pub const DEFAULT_STATE_PATH: &str = "/var/lib/cohort-sync/state.db";
/// Default of `state.lease_ttl`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
/// The shortest `state.lease_ttl` accepted: runs renew every third of it.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(3);
/// Default log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default address of the metrics and health server.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// Default time in-flight work gets to finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// Default largest share of a list's members one run may remove.
pub const DEFAULT_MAX_REMOVAL_RATIO: f64 = 0.5;

/// Loads and validates the configuration at `path`, with overrides taken from `env`.
///
/// Only variables starting with [`ENV_PREFIX`] are read; `__` separates key segments and
/// names are lowercased, so `COHORT_SYNC__AMPLITUDE__SECRET_KEY` sets `[amplitude]
/// secret_key`. Relative paths in the file are resolved against the file's directory.
///
/// # Errors
///
/// Any problem with the file or a value; see [`ConfigError`]. Nothing is half-loaded.
pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    load::load(path, env)
}

/// [`load`] with the environment of the current process.
///
/// # Errors
///
/// As for [`load`].
pub fn load_from_process_env(path: &Path) -> Result<Config, ConfigError> {
    load(path, &std::env::vars().collect())
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from.
    pub source: PathBuf,
    /// `[amplitude]`: the default Amplitude project.
    pub amplitude: AmplitudeConfig,
    /// `[amplitude_projects.NAME]`: further projects that cohorts can name.
    pub amplitude_projects: BTreeMap<String, AmplitudeConfig>,
    /// `[oneflow]`: the default 1Flow account.
    pub oneflow: OneflowConfig,
    /// `[oneflow_accounts.NAME]`: further accounts that cohorts can name.
    pub oneflow_accounts: BTreeMap<String, OneflowConfig>,
    /// `[state]`: where runs and memberships are stored.
    pub state: StateConfig,
    /// `[log]`: log format and filter.
    pub log: LogConfig,
    /// `[server]`: the metrics and health endpoint.
    pub server: ServerConfig,
    /// `[daemon]`: process lifecycle.
    pub daemon: DaemonConfig,
    /// `[[cohorts]]`: what to sync, in file order.
    pub cohorts: Vec<CohortConfig>,
}

impl Config {
    /// The Amplitude project called `name`, or the default one for `None`.
    ///
    /// # Panics
    ///
    /// If `name` is not a key of `amplitude_projects`. Every cohort's `amplitude_project`
    /// was checked at load, so this only happens for names from elsewhere.
    pub fn amplitude_project(&self, name: Option<&str>) -> &AmplitudeConfig {
        match name {
            None => &self.amplitude,
            Some(name) => self
                .amplitude_projects
                .get(name)
                .unwrap_or_else(|| panic!("no Amplitude project named {name:?}")),
        }
    }

    /// The 1Flow account called `name`, or the default one for `None`.
    ///
    /// # Panics
    ///
    /// If `name` is not a key of `oneflow_accounts` (checked at load for every cohort).
    pub fn oneflow_account(&self, name: Option<&str>) -> &OneflowConfig {
        match name {
            None => &self.oneflow,
            Some(name) => self
                .oneflow_accounts
                .get(name)
                .unwrap_or_else(|| panic!("no 1Flow account named {name:?}")),
        }
    }

    /// The first cohort whose `amplitude_id` is the argument, else the first whose `name` is.
    pub fn find_cohort(&self, amplitude_id_or_name: &str) -> Option<&CohortConfig> {
        let wanted = amplitude_id_or_name;
        self.cohorts
            .iter()
            .find(|c| c.amplitude_id == wanted)
            .or_else(|| {
                self.cohorts
                    .iter()
                    .find(|c| c.name.as_deref() == Some(wanted))
            })
    }
}

/// The Amplitude region a project lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Region {
    /// `"us"`: the default data center.
    #[default]
    Us,
    /// `"eu"`: the EU data center.
    Eu,
}

impl Region {
    /// The API host of this region.
    pub fn base_url(self) -> &'static str {
        match self {
            Self::Us => AMPLITUDE_US_URL,
            Self::Eu => AMPLITUDE_EU_URL,
        }
    }
}

/// One Amplitude project and how to talk to it.
#[derive(Debug, Clone)]
pub struct AmplitudeConfig {
    /// The project's API key (`api_key`, required).
    pub api_key: Secret,
    /// The project's secret key (`secret_key`, required).
    pub secret_key: Secret,
    /// `region`: `"us"` (default) or `"eu"`.
    pub region: Region,
    /// `base_url` if given, else the region's host; never ends with `/`.
    pub base_url: String,
    /// `poll_interval`: pause between polls of a running export.
    pub poll_interval: Duration,
    /// `export_timeout`: the longest one export may take.
    pub export_timeout: Duration,
    /// `request_timeout`: the longest one HTTP request may take.
    pub request_timeout: Duration,
    /// `max_retries`: retries of a transient error before giving up.
    pub max_retries: u32,
    /// `monthly_export_budget`: exports allowed per calendar month.
    pub monthly_export_budget: u32,
    /// `export_reserve`: exports of the budget kept for manual runs; at most the budget.
    pub export_reserve: u32,
    /// `size_tolerance`: allowed relative gap, in `[0, 1]`, between the size Amplitude lists
    /// for a cohort and the number of members parsed from its export.
    pub size_tolerance: f64,
}

/// One 1Flow account and how to talk to it.
#[derive(Debug, Clone)]
pub struct OneflowConfig {
    /// The account's API key (`api_key`, required).
    pub api_key: Secret,
    /// `base_url`: the API host; never ends with `/`.
    pub base_url: String,
    /// `batch_size`: users per request, 1 to [`MAX_BATCH_SIZE`].
    pub batch_size: usize,
    /// `max_batch_bytes`: cap on one request's JSON body; a batch is split to fit.
    pub max_batch_bytes: usize,
    /// `concurrency`: requests in flight at once, 1 to [`MAX_CONCURRENCY`].
    pub concurrency: usize,
    /// `request_timeout`: the longest one HTTP request may take.
    pub request_timeout: Duration,
    /// `max_retries`: retries of a transient error before giving up.
    pub max_retries: u32,
    /// `max_retry_after`: a Retry-After longer than this defers the run instead of waiting.
    pub max_retry_after: Duration,
}

/// Where state is stored: exactly one of the two fields is set after loading.
#[derive(Clone)]
pub struct StateConfig {
    /// `path`: a SQLite file, resolved against the config file's directory.
    pub path: Option<PathBuf>,
    /// `url`: a `postgres://` or `postgresql://` URL.
    pub url: Option<String>,
    /// `lease_ttl`: how long a replica's claim on a cohort lasts without renewal; a
    /// replica that dies mid-run is replaced after it (default 60s, at least 3s).
    pub lease_ttl: Duration,
}

impl fmt::Debug for StateConfig {
    // The URL may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self
            .url
            .as_deref()
            .map(|url| match spans::url_password(url) {
                Some(password) => url.replacen(password, secret::REDACTED, 1),
                None => url.to_owned(),
            });
        f.debug_struct("StateConfig")
            .field("path", &self.path)
            .field("url", &url)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `"pretty"`: human-readable lines (default).
    #[default]
    Pretty,
    /// `"json"`: one JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `format`: `"pretty"` (default) or `"json"`.
    pub format: LogFormat,
    /// `level`: a tracing filter such as `"info"` or `"cohort_sync=debug,info"`.
    pub level: String,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `listen`: the metrics and health address; `""` disables the server.
    pub listen: Option<SocketAddr>,
}

/// `[daemon]`.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// `shutdown_grace`: how long in-flight work may run on after a shutdown signal.
    pub shutdown_grace: Duration,
}

/// Which Amplitude field becomes the 1Flow user id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UserIdSource {
    /// `"user_id"` (default): Amplitude's user id.
    #[default]
    UserId,
    /// `"amplitude_id"`: Amplitude's numeric id.
    AmplitudeId,
    /// `"property:NAME"`: the user property `NAME`.
    Property(String),
}

impl UserIdSource {
    /// The user properties the export must include for this source.
    pub fn properties(&self) -> Vec<String> {
        match self {
            UserIdSource::Property(name) => vec![name.clone()],
            UserIdSource::UserId | UserIdSource::AmplitudeId => Vec::new(),
        }
    }
}

/// Rewrites of each id before it is sent to 1Flow.
///
/// Applied in this order: `trim`, `strip_prefix`, `lowercase`, `add_prefix`. So
/// `strip_prefix` matches case-sensitively, and `add_prefix` is added as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transform {
    /// `trim`: remove leading and trailing whitespace.
    pub trim: bool,
    /// `lowercase`: lowercase the id.
    pub lowercase: bool,
    /// `strip_prefix`: remove this prefix when the id starts with it.
    pub strip_prefix: Option<String>,
    /// `add_prefix`: put this in front of every id.
    pub add_prefix: Option<String>,
}

impl Transform {
    /// Applies the rewrites to one id, in the documented order.
    pub fn apply(&self, id: &str) -> String {
        let mut id = if self.trim { id.trim() } else { id };
        if let Some(prefix) = &self.strip_prefix {
            id = id.strip_prefix(prefix.as_str()).unwrap_or(id);
        }
        let id = if self.lowercase {
            id.to_lowercase()
        } else {
            id.to_owned()
        };
        match &self.add_prefix {
            Some(prefix) => format!("{prefix}{id}"),
            None => id,
        }
    }
}

/// One `[[cohorts]]` entry: an Amplitude cohort synced to a 1Flow list.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortConfig {
    /// `amplitude_id`: the cohort's id in Amplitude (required).
    pub amplitude_id: String,
    /// `name`: the 1Flow list name; `None` uses the cohort's name in Amplitude.
    pub name: Option<String>,
    /// `schedule`: when to run, as written (required; parsed by the scheduler).
    pub schedule: String,
    /// `timezone`: the IANA zone the schedule is read in (default UTC).
    pub timezone: chrono_tz::Tz,
    /// `user_id`: which Amplitude field becomes the 1Flow user id.
    pub user_id: UserIdSource,
    /// `[cohorts.transform]`: rewrites of each id.
    pub transform: Transform,
    /// `lookup`: a CSV of `amplitude_value,oneflow_user_id` rows mapping ids; resolved
    /// against the config file's directory and readable at load time.
    pub lookup: Option<PathBuf>,
    /// `enabled`: false keeps the entry but never runs it (default true).
    pub enabled: bool,
    /// `max_removal_ratio`: in `(0, 1]`; a run that would remove a larger share of the
    /// list's members is refused.
    pub max_removal_ratio: f64,
    /// `amplitude_project`: a key of `amplitude_projects`; `None` is `[amplitude]`.
    pub amplitude_project: Option<String>,
    /// `oneflow_account`: a key of `oneflow_accounts`; `None` is `[oneflow]`.
    pub oneflow_account: Option<String>,
}

impl CohortConfig {
    /// The cohort's schedule, parsed in its time zone. Loading already validated it.
    ///
    /// # Errors
    ///
    /// When the schedule does not parse (only for configs built by hand).
    pub fn parsed_schedule(
        &self,
    ) -> Result<crate::schedule::CohortSchedule, crate::schedule::ScheduleError> {
        crate::schedule::parse(&self.schedule, self.timezone, &self.amplitude_id)
    }
}
