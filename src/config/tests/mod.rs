//! Loading whole files: a full config, defaults, environment overrides, and each kind of
//! bad config (in `invalid`), checking that every message names the file and the key.

mod fuzz;
mod invalid;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const AMP_KEY: &str = "amp-api-key-0451";
const AMP_SECRET: &str = "amp-secret-key-9137";
const FLOW_KEY: &str = "oneflow-key-7720";

/// A temporary directory holding one config file (and whatever else a test puts there).
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn secrets_block() -> String {
    format!(
        "[amplitude]\napi_key = \"{AMP_KEY}\"\nsecret_key = \"{AMP_SECRET}\"\n\n\
         [oneflow]\napi_key = \"{FLOW_KEY}\"\n"
    )
}

fn no_env() -> HashMap<String, String> {
    HashMap::new()
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load_text(text: &str) -> Result<Config, ConfigError> {
    let fixture = Fixture::new();
    let path = fixture.write("cohort-sync.toml", text);
    load(&path, &no_env())
}

/// Loads `text` (after the secrets block), expecting an error; returns it and its message.
fn load_err(text: &str) -> (ConfigError, String) {
    let err = load_text(&format!("{}{text}", secrets_block())).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("cohort-sync.toml"),
        "message names no file: {message}"
    );
    (err, message)
}

fn cohort(extra: &str) -> String {
    format!("\n[[cohorts]]\namplitude_id = \"123\"\nschedule = \"0 * * * *\"\n{extra}")
}

const FULL: &str = r#"
[amplitude]
api_key = "amp-api-key-0451"
secret_key = "amp-secret-key-9137"
region = "eu"
poll_interval = "200ms"
export_timeout = "1h"
request_timeout = "90s"
max_retries = 3
monthly_export_budget = 100
export_reserve = 10
size_tolerance = 0.25

[amplitude_projects.mobile]
api_key = "mobile-api-key"
secret_key = "mobile-secret-key"
base_url = "http://127.0.0.1:8081/"

[oneflow]
api_key = "oneflow-key-7720"
base_url = "https://flow.example.com/api/"
batch_size = 500
max_batch_bytes = 100000
concurrency = 2
request_timeout = "5s"
max_retries = 2
max_retry_after = "1m"

[oneflow_accounts.eu-team]
api_key = "eu-team-key"

[state]
path = "data/state.db"

[log]
format = "json"
level = "cohort_sync=debug,info"

[server]
listen = "0.0.0.0:9000"

[daemon]
shutdown_grace = "3s"

[[cohorts]]
amplitude_id = "abc123"
name = "Power users"
schedule = "0 */6 * * *"
timezone = "Europe/Paris"
user_id = "property:email"
lookup = "ids.csv"
enabled = false
max_removal_ratio = 0.2
amplitude_project = "mobile"
oneflow_account = "eu-team"
transform = { trim = true, lowercase = true, strip_prefix = "u_", add_prefix = "amp:" }

[[cohorts]]
amplitude_id = "abc123"
schedule = "daily"
"#;

#[test]
fn full_config_loads_every_key() {
    let fixture = Fixture::new();
    fixture.write("ids.csv", "amplitude_value,oneflow_user_id\n");
    let path = fixture.write("cohort-sync.toml", FULL);
    let config = load(&path, &no_env()).unwrap();

    assert_eq!(config.source, path);
    let amp = &config.amplitude;
    assert_eq!(
        (amp.api_key.expose(), amp.secret_key.expose()),
        (AMP_KEY, AMP_SECRET)
    );
    assert_eq!(amp.region, Region::Eu);
    assert_eq!(amp.base_url, AMPLITUDE_EU_URL);
    assert_eq!(amp.poll_interval, Duration::from_millis(200));
    assert_eq!(amp.export_timeout, Duration::from_secs(3600));
    assert_eq!(amp.request_timeout, Duration::from_secs(90));
    assert_eq!(
        (
            amp.max_retries,
            amp.monthly_export_budget,
            amp.export_reserve
        ),
        (3, 100, 10)
    );
    assert_eq!(amp.size_tolerance, 0.25);

    let mobile = config.amplitude_project(Some("mobile"));
    assert_eq!(mobile.secret_key.expose(), "mobile-secret-key");
    assert_eq!(mobile.base_url, "http://127.0.0.1:8081");
    assert_eq!(mobile.region, Region::Us);

    let flow = &config.oneflow;
    assert_eq!(flow.base_url, "https://flow.example.com/api");
    assert_eq!(
        (flow.batch_size, flow.max_batch_bytes, flow.concurrency),
        (500, 100_000, 2)
    );
    assert_eq!(flow.request_timeout, Duration::from_secs(5));
    assert_eq!(flow.max_retries, 2);
    assert_eq!(flow.max_retry_after, Duration::from_secs(60));
    assert_eq!(
        config.oneflow_account(Some("eu-team")).api_key.expose(),
        "eu-team-key"
    );
    assert_eq!(config.oneflow_account(None).api_key.expose(), FLOW_KEY);

    assert_eq!(
        config.state.path,
        Some(fixture.dir.path().join("data/state.db"))
    );
    assert_eq!(config.state.url, None);
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.log.level, "cohort_sync=debug,info");
    assert_eq!(config.server.listen, Some("0.0.0.0:9000".parse().unwrap()));
    assert_eq!(config.daemon.shutdown_grace, Duration::from_secs(3));

    let first = &config.cohorts[0];
    assert_eq!(first.amplitude_id, "abc123");
    assert_eq!(first.name.as_deref(), Some("Power users"));
    assert_eq!(first.schedule, "0 */6 * * *");
    assert_eq!(first.timezone, chrono_tz::Europe::Paris);
    assert_eq!(first.user_id, UserIdSource::Property("email".into()));
    assert_eq!(first.lookup, Some(fixture.dir.path().join("ids.csv")));
    assert!(!first.enabled);
    assert_eq!(first.max_removal_ratio, 0.2);
    assert_eq!(first.amplitude_project.as_deref(), Some("mobile"));
    assert_eq!(first.oneflow_account.as_deref(), Some("eu-team"));
    let expected = Transform {
        trim: true,
        lowercase: true,
        strip_prefix: Some("u_".into()),
        add_prefix: Some("amp:".into()),
    };
    assert_eq!(first.transform, expected);

    assert_eq!(config.cohorts.len(), 2);
    assert_eq!(
        config.find_cohort("abc123").unwrap().name.as_deref(),
        Some("Power users")
    );
    assert_eq!(
        config.find_cohort("Power users").unwrap().amplitude_id,
        "abc123"
    );
    assert!(config.find_cohort("nope").is_none());
}

#[test]
fn minimal_config_gets_defaults() {
    let config = load_text(&format!("{}{}", secrets_block(), cohort(""))).unwrap();

    let amp = &config.amplitude;
    assert_eq!(amp.region, Region::Us);
    assert_eq!(amp.base_url, AMPLITUDE_US_URL);
    assert_eq!(amp.poll_interval, Duration::from_secs(5));
    assert_eq!(amp.export_timeout, Duration::from_secs(30 * 60));
    assert_eq!(amp.request_timeout, Duration::from_secs(60));
    assert_eq!(
        (
            amp.max_retries,
            amp.monthly_export_budget,
            amp.export_reserve
        ),
        (5, 500, 50)
    );
    assert_eq!(amp.size_tolerance, 0.10);
    assert!(config.amplitude_projects.is_empty());

    let flow = &config.oneflow;
    assert_eq!(flow.base_url, ONEFLOW_URL);
    assert_eq!(
        (flow.batch_size, flow.max_batch_bytes, flow.concurrency),
        (1000, 500_000, 4)
    );
    assert_eq!(flow.request_timeout, Duration::from_secs(10));
    assert_eq!(flow.max_retries, 8);
    assert_eq!(flow.max_retry_after, Duration::from_secs(300));

    assert_eq!(config.state.path, Some(PathBuf::from(DEFAULT_STATE_PATH)));
    assert_eq!(config.state.url, None);
    assert_eq!(config.log.format, LogFormat::Pretty);
    assert_eq!(config.log.level, "info");
    assert_eq!(
        config.server.listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(config.daemon.shutdown_grace, Duration::from_secs(8));

    let c = &config.cohorts[0];
    assert_eq!((c.name.as_ref(), c.lookup.as_ref()), (None, None));
    assert_eq!(c.timezone, chrono_tz::UTC);
    assert_eq!(c.user_id, UserIdSource::UserId);
    assert_eq!(c.transform, Transform::default());
    assert!(c.enabled);
    assert_eq!(c.max_removal_ratio, 0.5);
    assert_eq!(
        (c.amplitude_project.as_ref(), c.oneflow_account.as_ref()),
        (None, None)
    );
}

#[test]
fn environment_overrides_secrets_numbers_and_named_blocks() {
    let fixture = Fixture::new();
    let text = format!(
        "{}\n[amplitude_projects.mobile]\napi_key = \"m-key\"\n{}",
        secrets_block(),
        cohort("amplitude_project = \"mobile\"\n")
    );
    let path = fixture.write("cohort-sync.toml", &text);
    let vars = env(&[
        ("COHORT_SYNC__AMPLITUDE__SECRET_KEY", "from-env-secret"),
        (
            "COHORT_SYNC__AMPLITUDE_PROJECTS__MOBILE__SECRET_KEY",
            "mobile-env-secret",
        ),
        ("COHORT_SYNC__ONEFLOW__BATCH_SIZE", "250"),
        ("COHORT_SYNC__AMPLITUDE__SIZE_TOLERANCE", "0.5"),
        ("COHORT_SYNC__SERVER__LISTEN", ""),
        ("COHORT_SYNC__STATE__URL", "postgres://u:pw-from-env@db/cs"),
        ("COHORT_SYNC_CONFIG", "/elsewhere.toml"),
        ("UNRELATED", "x"),
    ]);
    let config = load(&path, &vars).unwrap();

    assert_eq!(config.amplitude.secret_key.expose(), "from-env-secret");
    assert_eq!(config.amplitude.api_key.expose(), AMP_KEY);
    assert_eq!(
        config.amplitude_project(Some("mobile")).secret_key.expose(),
        "mobile-env-secret"
    );
    assert_eq!(config.oneflow.batch_size, 250);
    assert_eq!(config.amplitude.size_tolerance, 0.5);
    assert_eq!(config.server.listen, None);
    assert_eq!(
        config.state.url.as_deref(),
        Some("postgres://u:pw-from-env@db/cs")
    );
    assert!(!format!("{config:?}").contains("pw-from-env"));
}

#[test]
fn environment_secret_kept_verbatim() {
    // A numeric-looking secret must not be parsed as a number (leading zeros, exponents).
    let fixture = Fixture::new();
    let path = fixture.write("c.toml", &secrets_block());
    let vars = env(&[("COHORT_SYNC__ONEFLOW__API_KEY", "00123e4")]);
    assert_eq!(
        load(&path, &vars).unwrap().oneflow.api_key.expose(),
        "00123e4"
    );
}

#[test]
fn example_config_loads_with_secrets_from_env() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cohort-sync.example.toml");
    let vars = env(&[
        ("COHORT_SYNC__AMPLITUDE__API_KEY", "a"),
        ("COHORT_SYNC__AMPLITUDE__SECRET_KEY", "b"),
        ("COHORT_SYNC__ONEFLOW__API_KEY", "c"),
    ]);
    let config = load(&path, &vars).unwrap();
    assert!(!config.cohorts.is_empty());
    assert_eq!(config.amplitude.poll_interval, DEFAULT_POLL_INTERVAL);
    assert_eq!(config.oneflow.batch_size, DEFAULT_BATCH_SIZE);
}

#[test]
fn transform_applies_in_documented_order() {
    let t = Transform {
        trim: true,
        lowercase: true,
        strip_prefix: Some("U_".into()),
        add_prefix: Some("Amp:".into()),
    };
    assert_eq!(t.apply("  U_Alice "), "Amp:alice");
    assert_eq!(t.apply("u_bob"), "Amp:u_bob");
    assert_eq!(Transform::default().apply(" X "), " X ");
}
