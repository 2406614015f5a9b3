//! What `check`, `cohorts` and `status` print.

use std::fmt::Write;
use std::path::Path;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::commands::{load_config, open_store};
use crate::amplitude::CohortInfo;
use crate::config::{CohortConfig, Config, UserIdSource};
use crate::schedule::Schedule;
use crate::state::{CohortKey, RunRecord};
use crate::sync::DEFAULT_NAME;

/// The text `check` prints: where things are and each cohort's settings.
pub fn describe_config(config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Config {} is valid.", config.source.display());
    let state = match (&config.state.url, &config.state.path) {
        (Some(_), _) => "PostgreSQL (state.url)".to_owned(),
        (None, Some(path)) => format!("SQLite at {}", path.display()),
        (None, None) => "SQLite at the default path".to_owned(),
    };
    let _ = writeln!(out, "State: {state}");
    let _ = writeln!(out, "Amplitude: {}", config.amplitude.base_url);
    for (name, project) in &config.amplitude_projects {
        let _ = writeln!(out, "Amplitude project {name}: {}", project.base_url);
    }
    let _ = writeln!(out, "1Flow: {}", config.oneflow.base_url);
    for (name, account) in &config.oneflow_accounts {
        let _ = writeln!(out, "1Flow account {name}: {}", account.base_url);
    }
    let _ = writeln!(out, "Cohorts: {}", config.cohorts.len());
    for cohort in &config.cohorts {
        out.push_str(&describe_cohort(cohort, chrono::Utc::now()));
    }
    out
}

/// How many upcoming fire times `check` shows per cohort.
const UPCOMING_FIRES: usize = 3;

fn describe_cohort(cohort: &CohortConfig, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let name = cohort.name.as_deref().unwrap_or("(Amplitude's name)");
    let enabled = if cohort.enabled { "" } else { "  [disabled]" };
    let _ = writeln!(out, "\n  {} -> {name}{enabled}", cohort.amplitude_id);
    let _ = writeln!(
        out,
        "    schedule:  {} ({})",
        cohort.schedule, cohort.timezone
    );
    describe_fires(&mut out, cohort, now);
    let source = match &cohort.user_id {
        UserIdSource::UserId => "user_id".to_owned(),
        UserIdSource::AmplitudeId => "amplitude_id".to_owned(),
        UserIdSource::Property(name) => format!("user property {name}"),
    };
    let _ = writeln!(out, "    user id:   {source}");
    let t = &cohort.transform;
    let mut steps = Vec::new();
    if t.trim {
        steps.push("trim".to_owned());
    }
    if let Some(prefix) = &t.strip_prefix {
        steps.push(format!("strip prefix {prefix:?}"));
    }
    if t.lowercase {
        steps.push("lowercase".to_owned());
    }
    if let Some(prefix) = &t.add_prefix {
        steps.push(format!("add prefix {prefix:?}"));
    }
    if !steps.is_empty() {
        let _ = writeln!(out, "    transform: {}", steps.join(", then "));
    }
    if let Some(lookup) = &cohort.lookup {
        let _ = writeln!(out, "    lookup:    {}", lookup.display());
    }
    let _ = writeln!(out, "    max removal ratio: {}", cohort.max_removal_ratio);
    if cohort.amplitude_project.is_some() || cohort.oneflow_account.is_some() {
        let _ = writeln!(
            out,
            "    route:     {} -> {}",
            cohort.amplitude_project.as_deref().unwrap_or(DEFAULT_NAME),
            cohort.oneflow_account.as_deref().unwrap_or(DEFAULT_NAME)
        );
    }
    out
}

/// The cohort's next fire times after `now`, in UTC and in its zone.
fn describe_fires(out: &mut String, cohort: &CohortConfig, now: DateTime<Utc>) {
    // Loading validated the schedule, so this only fails for configs built by hand.
    let Ok(schedule) = cohort.parsed_schedule() else {
        return;
    };
    if !cohort.enabled {
        let _ = writeln!(out, "    next:      never (disabled)");
        return;
    }
    if matches!(schedule.schedule, Schedule::Once) {
        let _ = writeln!(
            out,
            "    next:      fires once, when the daemon starts (and when this entry changes)"
        );
        return;
    }
    let zone = cohort.timezone;
    for (i, fire) in schedule.upcoming(now, UPCOMING_FIRES).iter().enumerate() {
        let label = if i == 0 { "next:" } else { "then:" };
        let local = fire.with_timezone(&zone);
        let _ = writeln!(
            out,
            "    {label:<10} {} UTC  ({} {})",
            fire.format("%Y-%m-%d %H:%M:%S"),
            local.format("%Y-%m-%d %H:%M:%S %:z"),
            zone.name()
        );
    }
}

/// The table `cohorts` prints.
pub fn cohort_table(cohorts: &[CohortInfo]) -> String {
    let mut out = format!(
        "{:<12} {:>10} {:>12} {:<9} {}\n",
        "ID", "SIZE", "COMPUTED", "ARCHIVED", "NAME"
    );
    for cohort in cohorts {
        let size = cohort.size.map_or("-".to_owned(), |s| s.to_string());
        let computed = cohort
            .last_computed
            .as_deref()
            .map_or("-".to_owned(), format_computed);
        let archived = if cohort.archived { "yes" } else { "no" };
        let _ = writeln!(
            out,
            "{:<12} {:>10} {:>12} {:<9} {}",
            cohort.id, size, computed, archived, cohort.name
        );
    }
    out
}

/// Amplitude's lastComputed looks like epoch seconds; show it as a UTC time if so.
fn format_computed(value: &str) -> String {
    match value
        .parse::<i64>()
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
    {
        Some(at) => at.format("%Y-%m-%d %H:%M").to_string(),
        None => value.to_owned(),
    }
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// `cohort-sync status`.
pub async fn status(path: &Path, as_json: bool) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // A state file that does not exist is not created: with a mistyped path that would
    // leave a stray database behind. Its (empty) report is read from a scratch copy.
    let missing = match (&config.state.url, &config.state.path) {
        (None, Some(path)) if !path.exists() => Some(path.clone()),
        _ => None,
    };
    let scratch = match missing.as_ref().map(|_| tempfile::tempdir()).transpose() {
        Ok(scratch) => scratch,
        Err(error) => {
            eprintln!("error: cannot create a scratch directory: {error}");
            return ExitCode::FAILURE;
        }
    };
    let opened = match &scratch {
        Some(dir) => crate::state::Store::open_sqlite(&dir.path().join("empty.db")).await,
        None => open_store(&config, false).await.map(|(store, _)| store),
    };
    let store = match opened {
        Ok(store) => store,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &missing {
        eprintln!(
            "note: there is no state at {} (state.path in {}) yet: nothing has synced with \
             this config, or the path is wrong",
            path.display(),
            config.source.display()
        );
    }
    match collect(&config, &store).await {
        Ok(report) if as_json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", render(&report));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The text `status` prints, for a config and its open store.
///
/// # Errors
///
/// When the store cannot be read.
pub async fn status_text(
    config: &Config,
    store: &crate::state::Store,
) -> Result<String, crate::state::StateError> {
    Ok(render(&collect(config, store).await?))
}

async fn collect(
    config: &Config,
    store: &crate::state::Store,
) -> Result<serde_json::Value, crate::state::StateError> {
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let mut projects = vec![(DEFAULT_NAME.to_owned(), &config.amplitude)];
    projects.extend(
        config
            .amplitude_projects
            .iter()
            .map(|(n, p)| (n.clone(), p)),
    );
    let mut quota = Vec::new();
    for (name, project) in projects {
        let used = store.exports_used(&name, &month).await?;
        quota.push(json!({
            "project": name, "month": month, "exports_used": used,
            "budget": project.monthly_export_budget, "reserve": project.export_reserve,
        }));
    }

    // On SQLite, a free file lock means no cohort-sync process is running on this state,
    // whatever the leases say (a killed process leaves its lease until it expires).
    let nobody_runs = match (&config.state.url, &config.state.path) {
        (None, Some(path)) => crate::state::lock_sqlite(path).is_ok(),
        _ => false,
    };
    let mut cohorts = Vec::new();
    for cohort in &config.cohorts {
        let key = CohortKey {
            project: cohort
                .amplitude_project
                .clone()
                .unwrap_or_else(|| DEFAULT_NAME.into()),
            cohort_id: cohort.amplitude_id.clone(),
            account: cohort
                .oneflow_account
                .clone()
                .unwrap_or_else(|| DEFAULT_NAME.into()),
        };
        let state = store.cohort(&key).await?;
        let last = store.runs(&key, 1).await?.into_iter().next();
        let last_success = store
            .runs(&key, 50)
            .await?
            .into_iter()
            .find(|r| r.result == "synced" || r.result == "unchanged");
        let holder = store.lease_holder(&key).await?;
        // A run still marked running with no live lease was cut short: its process
        // died or was killed. Say so rather than "running".
        let now = chrono::Utc::now().timestamp_millis();
        let alive = holder.as_ref().is_some_and(|(_, expires)| *expires > now) && !nobody_runs;
        let mut last_run = last.as_ref().map(run_json);
        if let Some(run) = last_run.as_mut()
            && run["result"] == crate::state::RUN_IN_PROGRESS
            && !alive
        {
            run["result"] = json!("stopped (the process ended mid-run; the next run resumes)");
        }
        cohorts.push(json!({
            "amplitude_id": cohort.amplitude_id,
            "name": cohort.name,
            "project": key.project,
            "account": key.account,
            "enabled": cohort.enabled,
            "list_id": state.list_id,
            "acknowledged": state.acknowledged,
            "synced_last_computed": state.synced_computed,
            "pending_export": state.pending.as_ref().map(|p| json!({
                "request_id": p.request_id, "started_at": format_ms(p.started_at),
            })),
            "last_run": last_run,
            "last_success": last_success.as_ref().map(|r| format_ms(r.finished_at.unwrap_or(r.started_at))),
            "lease": holder.map(|(holder, expires)| json!({
                "holder": crate::state::replica_name(&holder), "process": holder,
                "expires_at": format_ms(expires),
            })),
        }));
    }
    Ok(json!({ "quota": quota, "cohorts": cohorts }))
}

fn run_json(run: &RunRecord) -> serde_json::Value {
    let duration = run
        .finished_at
        .map(|end| (end - run.started_at) as f64 / 1000.0);
    json!({
        "run_id": run.run_id,
        "started_at": format_ms(run.started_at),
        "duration_secs": duration,
        "result": run.result,
        "members": run.counts.members,
        "adds": run.counts.adds,
        "removes": run.counts.removes,
        "batches": run.counts.batches,
        "retries": run.counts.retries,
        "error": run.error,
        "holder": crate::state::replica_name(&run.holder),
    })
}

fn render(report: &serde_json::Value) -> String {
    let mut out = String::new();
    for q in report["quota"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "Exports {} ({}): {} of {} used ({} kept for manual runs)",
            q["month"].as_str().unwrap_or(""),
            q["project"].as_str().unwrap_or(""),
            q["exports_used"],
            q["budget"],
            q["reserve"]
        );
    }
    for c in report["cohorts"].as_array().into_iter().flatten() {
        let text = |v: &serde_json::Value| v.as_str().map_or_else(|| "-".to_owned(), str::to_owned);
        let _ = writeln!(
            out,
            "\n{} ({} -> {})",
            c["amplitude_id"].as_str().unwrap_or(""),
            text(&c["project"]),
            text(&c["account"])
        );
        if let Some(name) = c["name"].as_str() {
            let _ = writeln!(out, "  name:            {name}");
        }
        let _ = writeln!(out, "  1Flow list:      {}", text(&c["list_id"]));
        let _ = writeln!(out, "  acknowledged:    {}", c["acknowledged"]);
        let _ = writeln!(
            out,
            "  synced computed: {}",
            c["synced_last_computed"]
                .as_str()
                .map_or_else(|| "-".to_owned(), format_computed)
        );
        match c["last_run"].as_object() {
            Some(run) => {
                let duration = run["duration_secs"]
                    .as_f64()
                    .map_or("-".to_owned(), |d| format!("{d:.1}s"));
                let _ = writeln!(
                    out,
                    "  last run:        {} at {}, {}, +{} -{} in {} batches, by {}",
                    text(&run["result"]),
                    text(&run["started_at"]),
                    duration,
                    run["adds"],
                    run["removes"],
                    run["batches"],
                    text(&run["holder"])
                );
                if let Some(error) = run["error"].as_str() {
                    let _ = writeln!(out, "  last error:      {error}");
                }
            }
            None => {
                let _ = writeln!(out, "  last run:        never");
            }
        }
        if let Some(pending) = c["pending_export"].as_object() {
            let _ = writeln!(
                out,
                "  pending export:  {} since {}",
                text(&pending["request_id"]),
                text(&pending["started_at"])
            );
        }
        if let Some(lease) = c["lease"].as_object() {
            let _ = writeln!(
                out,
                "  lease:           {} until {}",
                text(&lease["holder"]),
                text(&lease["expires_at"])
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn london_cohort(schedule: &str) -> CohortConfig {
        CohortConfig {
            amplitude_id: "c1".into(),
            name: None,
            schedule: schedule.into(),
            timezone: chrono_tz::Europe::London,
            user_id: UserIdSource::UserId,
            transform: Default::default(),
            lookup: None,
            enabled: true,
            max_removal_ratio: 0.5,
            amplitude_project: None,
            oneflow_account: None,
        }
    }

    fn fire_lines(text: &str) -> Vec<&str> {
        text.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("next:") || l.starts_with("then:"))
            .collect()
    }

    #[test]
    fn check_shows_three_fires_in_utc_and_local_time_across_a_dst_gap() {
        let now = Utc.with_ymd_and_hms(2025, 3, 28, 12, 0, 0).unwrap();
        let text = describe_cohort(&london_cohort("30 1 * * *"), now);
        // 01:30 does not exist on 30 March in London: that fire comes when the gap ends.
        assert_eq!(
            fire_lines(&text),
            vec![
                "next:      2025-03-29 01:30:00 UTC  (2025-03-29 01:30:00 +00:00 Europe/London)",
                "then:      2025-03-30 01:00:00 UTC  (2025-03-30 02:00:00 +01:00 Europe/London)",
                "then:      2025-03-31 00:30:00 UTC  (2025-03-31 01:30:00 +01:00 Europe/London)",
            ]
        );
    }

    #[test]
    fn check_says_once_and_disabled_instead_of_times() {
        let now = Utc.with_ymd_and_hms(2025, 3, 28, 12, 0, 0).unwrap();
        let once = describe_cohort(&london_cohort("once"), now);
        assert_eq!(
            fire_lines(&once),
            vec!["next:      fires once, when the daemon starts (and when this entry changes)"]
        );
        let mut disabled = london_cohort("daily");
        disabled.enabled = false;
        let text = describe_cohort(&disabled, now);
        assert_eq!(fire_lines(&text), vec!["next:      never (disabled)"]);
    }
}
