//! Prometheus metrics of the daemon, labelled by cohort (never by member).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::sync::{CohortTarget, HeldLeases, Outcome, Summary};

/// Labels of per-cohort series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CohortLabels {
    /// The Amplitude cohort id.
    pub cohort: String,
    /// The Amplitude project name ("default" for `[amplitude]`).
    pub project: String,
    /// The 1Flow account name ("default" for `[oneflow]`).
    pub account: String,
}

/// Labels of per-cohort series split by run result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// The Amplitude cohort id.
    pub cohort: String,
    /// The Amplitude project name.
    pub project: String,
    /// The 1Flow account name.
    pub account: String,
    /// How the run ended.
    pub result: String,
}

/// Labels of per-project series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProjectLabels {
    /// The Amplitude project name.
    pub project: String,
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    last_success: Family<CohortLabels, Gauge<f64, AtomicU64>>,
    last_duration: Family<CohortLabels, Gauge<f64, AtomicU64>>,
    acknowledged: Family<CohortLabels, Gauge>,
    adds: Family<CohortLabels, Counter>,
    removes: Family<CohortLabels, Counter>,
    runs: Family<ResultLabels, Counter>,
    retries: Family<CohortLabels, Counter>,
    skipped_fires: Family<CohortLabels, Counter>,
    exports_used: Family<ProjectLabels, Gauge>,
    export_budget: Family<ProjectLabels, Gauge>,
    leases_held: Gauge,
    held: HeldLeases,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric under the `cohort_sync` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cohort_sync");
        let metrics = Metrics {
            last_success: Family::default(),
            last_duration: Family::default(),
            acknowledged: Family::default(),
            adds: Family::default(),
            removes: Family::default(),
            runs: Family::default(),
            retries: Family::default(),
            skipped_fires: Family::default(),
            exports_used: Family::default(),
            export_budget: Family::default(),
            leases_held: Gauge::default(),
            held: HeldLeases::default(),
            registry: Registry::default(),
        };
        registry.register(
            "last_success_timestamp_seconds",
            "When the cohort last synced or was found unchanged (Unix seconds)",
            metrics.last_success.clone(),
        );
        registry.register(
            "last_run_duration_seconds",
            "How long the cohort's last run took",
            metrics.last_duration.clone(),
        );
        registry.register(
            "acknowledged_members",
            "Members 1Flow has confirmed for the cohort",
            metrics.acknowledged.clone(),
        );
        registry.register(
            "adds",
            "Ids added to 1Flow and confirmed",
            metrics.adds.clone(),
        );
        registry.register(
            "removes",
            "Ids removed from 1Flow and confirmed",
            metrics.removes.clone(),
        );
        registry.register("runs", "Cohort runs by result", metrics.runs.clone());
        registry.register(
            "retries",
            "Requests retried during cohort runs",
            metrics.retries.clone(),
        );
        registry.register(
            "skipped_fires",
            "Schedule fires skipped because the previous run was still going",
            metrics.skipped_fires.clone(),
        );
        registry.register(
            "exports_used",
            "Amplitude exports started this calendar month (UTC)",
            metrics.exports_used.clone(),
        );
        registry.register(
            "export_budget",
            "The configured monthly export budget",
            metrics.export_budget.clone(),
        );
        registry.register(
            "leases_held",
            "Cohort leases this replica holds right now",
            metrics.leases_held.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Records a finished run.
    pub fn observe(&self, target: &CohortTarget, summary: &Summary) {
        let labels = labels(target);
        self.last_duration
            .get_or_create(&labels)
            .set(summary.duration.as_secs_f64());
        if matches!(summary.outcome, Outcome::Synced | Outcome::Unchanged) {
            let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
            self.last_success.get_or_create(&labels).set(now);
            self.acknowledged
                .get_or_create(&labels)
                .set(summary.acknowledged as i64);
        }
        self.adds.get_or_create(&labels).inc_by(summary.added);
        self.removes.get_or_create(&labels).inc_by(summary.removed);
        self.retries
            .get_or_create(&labels)
            .inc_by(u64::from(summary.retries));
        let result = ResultLabels {
            cohort: labels.cohort,
            project: labels.project,
            account: labels.account,
            result: summary.outcome.as_str().to_owned(),
        };
        self.runs.get_or_create(&result).inc();
    }

    /// Sets the acknowledged members of a cohort (read from the state store at start).
    pub fn set_acknowledged(&self, target: &CohortTarget, acknowledged: u64) {
        self.acknowledged
            .get_or_create(&labels(target))
            .set(i64::try_from(acknowledged).unwrap_or(i64::MAX));
    }

    /// Counts a fire skipped because the previous run still went on.
    pub fn skipped_fire(&self, target: &CohortTarget) {
        self.skipped_fires.get_or_create(&labels(target)).inc();
    }

    /// Sets the export quota gauges of a project.
    pub fn quota(&self, project: &str, used: u32, budget: u32) {
        let labels = ProjectLabels {
            project: project.to_owned(),
        };
        self.exports_used
            .get_or_create(&labels)
            .set(i64::from(used));
        self.export_budget
            .get_or_create(&labels)
            .set(i64::from(budget));
    }

    /// The count of leases this replica's runs hold, for their [`RunOptions`].
    ///
    /// [`RunOptions`]: crate::sync::RunOptions
    pub fn held_leases(&self) -> HeldLeases {
        self.held.clone()
    }

    /// Makes sure a cohort's series exist before its first run.
    pub fn register_cohort(&self, target: &CohortTarget) {
        let labels = labels(target);
        let _ = self.skipped_fires.get_or_create(&labels);
        let _ = self.adds.get_or_create(&labels);
        let _ = self.removes.get_or_create(&labels);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.leases_held.set(self.held.get());
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

fn labels(target: &CohortTarget) -> CohortLabels {
    CohortLabels {
        cohort: target.cohort.amplitude_id.clone(),
        project: target.key.project.clone(),
        account: target.key.account.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::test_rig::Rig;

    #[tokio::test]
    async fn a_run_shows_up_per_cohort_with_no_member_labels() {
        let rig = Rig::unpaused().await;
        let plans = rig.plans(&[("c1", "daily", ""), ("c2", "hourly", "")]);
        let metrics = Metrics::new();
        for plan in &plans {
            metrics.register_cohort(&plan.target);
        }
        let mut summary = Summary::new("c1".into());
        summary.outcome = Outcome::Synced;
        summary.added = 7;
        summary.removed = 2;
        summary.retries = 3;
        summary.acknowledged = 40;
        summary.duration = std::time::Duration::from_millis(1500);
        metrics.observe(&plans[0].target, &summary);
        metrics.skipped_fire(&plans[0].target);
        metrics.quota("default", 12, 500);

        let text = metrics.render();
        let c1 = r#"cohort="c1",project="default",account="default""#;
        for line in [
            format!("cohort_sync_adds_total{{{c1}}} 7"),
            format!("cohort_sync_removes_total{{{c1}}} 2"),
            format!("cohort_sync_retries_total{{{c1}}} 3"),
            format!("cohort_sync_acknowledged_members{{{c1}}} 40"),
            format!("cohort_sync_last_run_duration_seconds{{{c1}}} 1.5"),
            format!("cohort_sync_skipped_fires_total{{{c1}}} 1"),
            format!("cohort_sync_runs_total{{{c1},result=\"synced\"}} 1"),
            r#"cohort_sync_skipped_fires_total{cohort="c2",project="default",account="default"} 0"#
                .to_owned(),
            r#"cohort_sync_exports_used{project="default"} 12"#.to_owned(),
            r#"cohort_sync_export_budget{project="default"} 500"#.to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.contains("cohort_sync_last_success_timestamp_seconds{"));
        let labels: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('{'))
            .flat_map(|(_, rest)| rest.split('}').next().unwrap_or("").split(','))
            .filter_map(|pair| pair.split_once('=').map(|(k, _)| k))
            .collect();
        let allowed = ["account", "cohort", "project", "result"];
        assert!(labels.iter().all(|l| allowed.contains(l)), "{labels:?}");
    }

    #[test]
    fn the_leases_gauge_counts_the_leases_runs_hold() {
        let metrics = Metrics::new();
        let held = metrics.held_leases();
        let first = held.hold();
        let second = held.hold();
        assert!(metrics.render().contains("\ncohort_sync_leases_held 2\n"));
        drop(first);
        assert!(metrics.render().contains("\ncohort_sync_leases_held 1\n"));
        drop(second);
        assert!(metrics.render().contains("\ncohort_sync_leases_held 0\n"));
    }

    #[tokio::test]
    async fn a_failed_run_keeps_the_last_success() {
        let rig = Rig::unpaused().await;
        let plans = rig.plans(&[("c1", "daily", "")]);
        let metrics = Metrics::new();
        let mut summary = Summary::new("c1".into());
        summary.acknowledged = 99;
        metrics.observe(&plans[0].target, &summary);

        let text = metrics.render();
        assert!(text.contains(r#"result="failed"} 1"#), "{text}");
        assert!(!text.contains("cohort_sync_last_success_timestamp_seconds{"));
        assert!(!text.contains("cohort_sync_acknowledged_members{"));
    }
}
