//! Turning the raw configuration into the typed one: defaults, ranges, cross-references.
//!
//! Each check names the key path it is about; values are quoted in messages only for keys
//! that cannot hold a secret. The first problem found is returned.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::error::ConfigError;
use super::load::Ctx;
use super::raw::{
    Bool, Float, Int, RawAmplitude, RawCohort, RawConfig, RawOneflow, RawState, RawTransform,
};
use super::secret::Secret;
use super::spans::env_var_for;
use super::*;

type Result<T> = std::result::Result<T, ConfigError>;

pub fn config(raw: RawConfig, ctx: &Ctx) -> Result<Config> {
    let amplitude = amplitude_block(raw.amplitude, "amplitude", ctx)?;
    let mut amplitude_projects = BTreeMap::new();
    for (name, block) in raw.amplitude_projects {
        let key = format!("amplitude_projects.{name}");
        block_name(&name, &key, ctx)?;
        amplitude_projects.insert(name, amplitude_block(block, &key, ctx)?);
    }

    let oneflow = oneflow_block(raw.oneflow, "oneflow", ctx)?;
    let mut oneflow_accounts = BTreeMap::new();
    for (name, block) in raw.oneflow_accounts {
        let key = format!("oneflow_accounts.{name}");
        block_name(&name, &key, ctx)?;
        oneflow_accounts.insert(name, oneflow_block(block, &key, ctx)?);
    }

    let state = state(raw.state, ctx)?;
    let log = LogConfig {
        format: match raw.log.format.as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ctx.invalid("log.format", one_of(&["pretty", "json"], other)));
            }
        },
        level: log_level(raw.log.level, ctx)?,
    };
    let server = ServerConfig {
        listen: listen(raw.server.listen, ctx)?,
    };
    let shutdown_grace = duration(
        raw.daemon.shutdown_grace,
        "daemon.shutdown_grace",
        DEFAULT_SHUTDOWN_GRACE,
        ctx,
    )?;

    let mut cohorts = Vec::with_capacity(raw.cohorts.len());
    for (index, entry) in raw.cohorts.into_iter().enumerate() {
        let key = format!("cohorts[{index}]");
        cohorts.push(cohort(
            entry,
            &key,
            ctx,
            &amplitude_projects,
            &oneflow_accounts,
        )?);
    }
    no_duplicates(&cohorts, ctx)?;

    Ok(Config {
        source: ctx.path.to_owned(),
        amplitude,
        amplitude_projects,
        oneflow,
        oneflow_accounts,
        state,
        log,
        server,
        daemon: DaemonConfig { shutdown_grace },
        cohorts,
    })
}

fn amplitude_block(raw: RawAmplitude, key: &str, ctx: &Ctx) -> Result<AmplitudeConfig> {
    let at = |field: &str| format!("{key}.{field}");

    let api_key = secret(raw.api_key, &at("api_key"), ctx)?;
    let secret_key = secret(raw.secret_key, &at("secret_key"), ctx)?;
    let region = match raw.region.as_deref() {
        None | Some("us") => Region::Us,
        Some("eu") => Region::Eu,
        Some(other) => return Err(ctx.invalid(&at("region"), one_of(&["us", "eu"], other))),
    };
    let base_url = base_url(raw.base_url, region.base_url(), &at("base_url"), ctx)?;

    let poll_interval = positive_duration(
        raw.poll_interval,
        &at("poll_interval"),
        DEFAULT_POLL_INTERVAL,
        ctx,
    )?;
    let export_timeout = positive_duration(
        raw.export_timeout,
        &at("export_timeout"),
        DEFAULT_EXPORT_TIMEOUT,
        ctx,
    )?;
    let request_timeout = positive_duration(
        raw.request_timeout,
        &at("request_timeout"),
        DEFAULT_AMPLITUDE_REQUEST_TIMEOUT,
        ctx,
    )?;

    let u32_max = i64::from(u32::MAX);
    let max_retries = int(raw.max_retries, &at("max_retries"), 0, u32_max, ctx)?
        .map_or(DEFAULT_AMPLITUDE_MAX_RETRIES, |v| v as u32);
    let budget = int(
        raw.monthly_export_budget,
        &at("monthly_export_budget"),
        1,
        u32_max,
        ctx,
    )?
    .map_or(DEFAULT_MONTHLY_EXPORT_BUDGET, |v| v as u32);
    let reserve = int(raw.export_reserve, &at("export_reserve"), 0, u32_max, ctx)?
        .map_or(DEFAULT_EXPORT_RESERVE, |v| v as u32);
    if reserve > budget {
        let message = format!("must be at most monthly_export_budget ({budget}), got {reserve}");
        return Err(ctx.invalid(&at("export_reserve"), message));
    }

    let size_tolerance = match raw.size_tolerance {
        None => DEFAULT_SIZE_TOLERANCE,
        Some(Float(v)) if (0.0..=1.0).contains(&v) => v,
        Some(Float(v)) => {
            return Err(ctx.invalid(&at("size_tolerance"), format!("must be in [0, 1], got {v}")));
        }
    };

    Ok(AmplitudeConfig {
        api_key,
        secret_key,
        region,
        base_url,
        poll_interval,
        export_timeout,
        request_timeout,
        max_retries,
        monthly_export_budget: budget,
        export_reserve: reserve,
        size_tolerance,
    })
}

fn oneflow_block(raw: RawOneflow, key: &str, ctx: &Ctx) -> Result<OneflowConfig> {
    let at = |field: &str| format!("{key}.{field}");

    let api_key = secret(raw.api_key, &at("api_key"), ctx)?;
    let base_url = base_url(raw.base_url, ONEFLOW_URL, &at("base_url"), ctx)?;
    let batch_size = int(
        raw.batch_size,
        &at("batch_size"),
        1,
        MAX_BATCH_SIZE as i64,
        ctx,
    )?
    .map_or(DEFAULT_BATCH_SIZE, |v| v as usize);
    let max_batch_bytes = int(
        raw.max_batch_bytes,
        &at("max_batch_bytes"),
        MIN_BATCH_BYTES as i64,
        i64::MAX,
        ctx,
    )?
    .map_or(DEFAULT_MAX_BATCH_BYTES, |v| v as usize);
    let concurrency = int(
        raw.concurrency,
        &at("concurrency"),
        1,
        MAX_CONCURRENCY as i64,
        ctx,
    )?
    .map_or(DEFAULT_CONCURRENCY, |v| v as usize);
    let request_timeout = positive_duration(
        raw.request_timeout,
        &at("request_timeout"),
        DEFAULT_ONEFLOW_REQUEST_TIMEOUT,
        ctx,
    )?;
    let max_retries = int(
        raw.max_retries,
        &at("max_retries"),
        0,
        i64::from(u32::MAX),
        ctx,
    )?
    .map_or(DEFAULT_ONEFLOW_MAX_RETRIES, |v| v as u32);
    let max_retry_after = duration(
        raw.max_retry_after,
        &at("max_retry_after"),
        DEFAULT_MAX_RETRY_AFTER,
        ctx,
    )?;

    Ok(OneflowConfig {
        api_key,
        base_url,
        batch_size,
        max_batch_bytes,
        concurrency,
        request_timeout,
        max_retries,
        max_retry_after,
    })
}

fn state(raw: RawState, ctx: &Ctx) -> Result<StateConfig> {
    let lease_ttl = positive_duration(raw.lease_ttl, "state.lease_ttl", DEFAULT_LEASE_TTL, ctx)?;
    if lease_ttl < MIN_LEASE_TTL {
        return Err(ctx.invalid("state.lease_ttl", "must be at least 3s"));
    }
    let (path, url) = match (raw.path, raw.url) {
        (Some(_), Some(_)) => {
            return Err(ctx.invalid(
                "state.url",
                "state.path and state.url are both set; use one (path for SQLite, url for PostgreSQL)",
            ));
        }
        (None, Some(url)) => {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(
                    ctx.invalid("state.url", "must start with postgres:// or postgresql://")
                );
            }
            (None, Some(url))
        }
        (Some(path), None) if path.trim().is_empty() => {
            return Err(ctx.invalid("state.path", "must not be empty"));
        }
        (path, None) => {
            let path = ctx.resolve(path.as_deref().unwrap_or(DEFAULT_STATE_PATH));
            (Some(path), None)
        }
    };
    Ok(StateConfig {
        path,
        url,
        lease_ttl,
    })
}

fn log_level(raw: Option<String>, ctx: &Ctx) -> Result<String> {
    let level = raw.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned());
    if level.trim().is_empty() {
        return Err(ctx.invalid("log.level", "must not be empty"));
    }
    // A bare word that is not a level parses as a target name, which turns every other
    // log line off: "verbose" would silence the daemon. Accept levels and
    // `target=level` directives only.
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=') && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            let message = format!(
                "{directive:?} is not a level; use one of trace, debug, info, warn, error, \
                 off, or target=level directives such as \"info,cohort_sync=debug\""
            );
            return Err(ctx.invalid("log.level", message));
        }
    }
    match tracing_subscriber::EnvFilter::builder().parse(&level) {
        Ok(_) => Ok(level),
        Err(err) => Err(ctx.invalid("log.level", format!("invalid filter {level:?}: {err}"))),
    }
}

fn listen(raw: Option<String>, ctx: &Ctx) -> Result<Option<SocketAddr>> {
    let text = raw.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        let message = format!("invalid address {text:?}: expected IP:PORT such as \"{DEFAULT_LISTEN}\", or \"\" to disable");
        ctx.invalid("server.listen", message)
    })
}

fn cohort(
    raw: RawCohort,
    key: &str,
    ctx: &Ctx,
    projects: &BTreeMap<String, AmplitudeConfig>,
    accounts: &BTreeMap<String, OneflowConfig>,
) -> Result<CohortConfig> {
    let at = |field: &str| format!("{key}.{field}");

    let amplitude_id = required_text(raw.amplitude_id, &at("amplitude_id"), ctx)?;
    let name = match raw.name {
        Some(name) if name.trim().is_empty() => {
            let message = "must not be empty; omit it to use the cohort's name in Amplitude";
            return Err(ctx.invalid(&at("name"), message));
        }
        name => name,
    };
    let schedule = required_text(raw.schedule, &at("schedule"), ctx)?;
    let timezone = match raw.timezone.as_deref().map(str::trim) {
        None => chrono_tz::UTC,
        Some(zone) => zone.parse().map_err(|_| {
            let message =
                format!("unknown time zone {zone:?}; use an IANA name like \"Europe/Paris\"");
            ctx.invalid(&at("timezone"), message)
        })?,
    };
    crate::schedule::parse(&schedule, timezone, &amplitude_id)
        .map_err(|error| ctx.invalid(&at("schedule"), error.to_string()))?;
    let user_id = user_id(raw.user_id, &at("user_id"), ctx)?;
    let transform = transform(raw.transform);
    let lookup = match raw.lookup {
        None => None,
        Some(path) if path.trim().is_empty() => {
            return Err(ctx.invalid(&at("lookup"), "must not be empty"));
        }
        Some(path) => Some(lookup_file(&path, &at("lookup"), ctx)?),
    };
    let enabled = raw.enabled.is_none_or(|Bool(b)| b);
    let max_removal_ratio = match raw.max_removal_ratio {
        None => DEFAULT_MAX_REMOVAL_RATIO,
        Some(Float(v)) if v > 0.0 && v <= 1.0 => v,
        Some(Float(v)) => {
            let message = format!("must be greater than 0 and at most 1, got {v}");
            return Err(ctx.invalid(&at("max_removal_ratio"), message));
        }
    };
    let amplitude_project = raw.amplitude_project;
    if let Some(project) = amplitude_project
        .as_deref()
        .filter(|p| !projects.contains_key(*p))
    {
        let message = format!(
            "cohort {amplitude_id:?} names Amplitude project {project:?}, \
             which is not defined in [amplitude_projects]"
        );
        return Err(ctx.invalid(&at("amplitude_project"), message));
    }
    let oneflow_account = raw.oneflow_account;
    if let Some(account) = oneflow_account
        .as_deref()
        .filter(|a| !accounts.contains_key(*a))
    {
        let message = format!(
            "cohort {amplitude_id:?} names 1Flow account {account:?}, \
             which is not defined in [oneflow_accounts]"
        );
        return Err(ctx.invalid(&at("oneflow_account"), message));
    }

    Ok(CohortConfig {
        amplitude_id,
        name,
        schedule,
        timezone,
        user_id,
        transform,
        lookup,
        enabled,
        max_removal_ratio,
        amplitude_project,
        oneflow_account,
    })
}

fn user_id(raw: Option<String>, key: &str, ctx: &Ctx) -> Result<UserIdSource> {
    match raw.as_deref() {
        None | Some("user_id") => Ok(UserIdSource::UserId),
        Some("amplitude_id") => Ok(UserIdSource::AmplitudeId),
        Some(other) => match other.strip_prefix("property:") {
            Some(name) if !name.trim().is_empty() => Ok(UserIdSource::Property(name.to_owned())),
            _ => Err(ctx.invalid(
                key,
                format!(
                    "expected \"user_id\", \"amplitude_id\" or \"property:NAME\", found {other:?}"
                ),
            )),
        },
    }
}

fn transform(raw: RawTransform) -> Transform {
    let prefix = |p: Option<String>| p.filter(|p| !p.is_empty());
    Transform {
        trim: raw.trim.is_some_and(|Bool(b)| b),
        lowercase: raw.lowercase.is_some_and(|Bool(b)| b),
        strip_prefix: prefix(raw.strip_prefix),
        add_prefix: prefix(raw.add_prefix),
    }
}

fn lookup_file(value: &str, key: &str, ctx: &Ctx) -> Result<std::path::PathBuf> {
    let file = ctx.resolve(value);
    let check = std::fs::File::open(&file)
        .and_then(|f| f.metadata())
        .and_then(|meta| {
            if meta.is_file() {
                Ok(())
            } else {
                Err(io::Error::other("not a regular file"))
            }
        });
    // The whole table is read now, so `check` reports a bad row instead of the first run.
    if check.is_ok()
        && let Err(error) = crate::mapping::read_lookup(&file)
    {
        return Err(ctx.invalid(key, error.to_string()));
    }
    match check {
        Ok(()) => Ok(file),
        Err(source) => Err(ConfigError::Lookup {
            path: ctx.path.to_owned(),
            key: key.to_owned(),
            origin: ctx.origin(key),
            file,
            source,
        }),
    }
}

fn no_duplicates(cohorts: &[CohortConfig], ctx: &Ctx) -> Result<()> {
    let mut seen = HashMap::new();
    for (index, cohort) in cohorts.iter().enumerate() {
        let identity = (
            cohort.amplitude_id.as_str(),
            cohort.amplitude_project.as_deref(),
            cohort.oneflow_account.as_deref(),
        );
        if let Some(first) = seen.insert(identity, index) {
            let first_key = format!("cohorts[{first}]");
            let first_at = ctx
                .line(&first_key)
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            let message = format!(
                "duplicates {first_key}{first_at}: same amplitude_id, amplitude_project \
                 and oneflow_account"
            );
            return Err(ctx.invalid(&format!("cohorts[{index}]"), message));
        }
    }
    Ok(())
}

fn block_name(name: &str, key: &str, ctx: &Ctx) -> Result<()> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if !name.is_empty() && name.chars().all(allowed) && !name.contains("__") {
        return Ok(());
    }
    let message = "invalid name: use lowercase letters, digits, '-' and single '_' \
                   (so environment variables can address it)";
    Err(ctx.invalid(key, message))
}

fn secret(raw: Option<Secret>, key: &str, ctx: &Ctx) -> Result<Secret> {
    match raw {
        Some(secret) if !secret.is_empty() => Ok(secret),
        _ => Err(ConfigError::MissingSecret {
            path: ctx.path.to_owned(),
            key: key.to_owned(),
            env_var: env_var_for(key),
        }),
    }
}

fn required_text(raw: Option<String>, key: &str, ctx: &Ctx) -> Result<String> {
    match raw {
        None => Err(ctx.invalid(key, "required")),
        Some(text) if text.trim().is_empty() => Err(ctx.invalid(key, "must not be empty")),
        Some(text) => Ok(text.trim().to_owned()),
    }
}

fn base_url(raw: Option<String>, default: &str, key: &str, ctx: &Ctx) -> Result<String> {
    let Some(text) = raw else {
        return Ok(default.to_owned());
    };
    let text = text.trim().trim_end_matches('/');
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            Ok(text.to_owned())
        }
        _ => Err(ctx.invalid(key, "must be an http:// or https:// URL")),
    }
}

fn duration(raw: Option<String>, key: &str, default: Duration, ctx: &Ctx) -> Result<Duration> {
    let Some(text) = raw else { return Ok(default) };
    humantime::parse_duration(text.trim())
        .map_err(|err| ctx.invalid(key, format!("invalid duration {text:?}: {err}")))
}

/// Like [`duration`], but zero is refused.
fn positive_duration(
    raw: Option<String>,
    key: &str,
    default: Duration,
    ctx: &Ctx,
) -> Result<Duration> {
    let value = duration(raw, key, default, ctx)?;
    if value.is_zero() {
        Err(ctx.invalid(key, "must be greater than 0"))
    } else {
        Ok(value)
    }
}

fn int(raw: Option<Int>, key: &str, min: i64, max: i64, ctx: &Ctx) -> Result<Option<i64>> {
    match raw {
        None => Ok(None),
        Some(Int(v)) if (min..=max).contains(&v) => Ok(Some(v)),
        Some(Int(v)) if max == i64::MAX => {
            Err(ctx.invalid(key, format!("must be at least {min}, got {v}")))
        }
        Some(Int(v)) => Err(ctx.invalid(key, format!("must be between {min} and {max}, got {v}"))),
    }
}

fn one_of(allowed: &[&str], found: &str) -> String {
    let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
    format!("expected {}, found {found:?}", allowed.join(" or "))
}
