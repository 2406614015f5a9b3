//! What one cohort run did, for the summary line, the log, the metrics and history.

use std::time::Duration;

use crate::export::ExportCounts;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every add and remove was confirmed.
    Synced,
    /// `lastComputed` had not moved: no export was started.
    Unchanged,
    /// A dry run: nothing was written.
    DryRun,
    /// A guard held the run: nothing was pushed.
    Held,
    /// The cohort cannot be synced now (archived, unknown, budget, lease elsewhere).
    Skipped,
    /// The run stopped on an error; confirmed work is kept.
    Failed,
    /// The run was stopped by shutdown or deferred; confirmed work is kept.
    Interrupted,
}

impl Outcome {
    /// The word used in summaries, history and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Synced => "synced",
            Outcome::Unchanged => "unchanged",
            Outcome::DryRun => "dry-run",
            Outcome::Held => "held",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
        }
    }

    /// Whether the run counts as a success for the exit code.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Synced | Outcome::Unchanged | Outcome::DryRun)
    }
}

/// Which cohorts a failure concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This run only.
    Run,
    /// Every cohort of the Amplitude project (bad credentials).
    Project,
    /// Every cohort of the 1Flow account (bad key).
    Account,
}

/// The record of one cohort run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The cohort's display label: its name and Amplitude id.
    pub cohort: String,
    /// The route, for scripts: Amplitude cohort id, project and 1Flow account names.
    pub route: Option<(String, String, String)>,
    /// How it ended.
    pub outcome: Outcome,
    /// What the export parse counted (zero when no export was read).
    pub counts: ExportCounts,
    /// Adds confirmed by 1Flow.
    pub added: u64,
    /// Removes confirmed by 1Flow.
    pub removed: u64,
    /// Adds the diff asked for.
    pub planned_adds: u64,
    /// Removes the diff asked for.
    pub planned_removes: u64,
    /// Batches confirmed.
    pub batches: u32,
    /// Requests retried (errors and throttling).
    pub retries: u32,
    /// Whether a new export was started (quota spent).
    pub exported: bool,
    /// Acknowledged members after the run.
    pub acknowledged: u64,
    /// How long it took.
    pub duration: Duration,
    /// Of that, waiting for, downloading and parsing the export.
    pub export_duration: Duration,
    /// Of that, pushing to 1Flow.
    pub push_duration: Duration,
    /// The reason, for runs that did not sync.
    pub error: Option<String>,
    /// Whom the failure concerns, when the run failed.
    pub scope: Scope,
}

impl Summary {
    /// An empty record for a cohort, to fill in as the run goes.
    pub fn new(cohort: String) -> Summary {
        Summary {
            cohort,
            route: None,
            outcome: Outcome::Failed,
            counts: ExportCounts::default(),
            added: 0,
            removed: 0,
            planned_adds: 0,
            planned_removes: 0,
            batches: 0,
            retries: 0,
            exported: false,
            acknowledged: 0,
            duration: Duration::ZERO,
            export_duration: Duration::ZERO,
            push_duration: Duration::ZERO,
            error: None,
            scope: Scope::Run,
        }
    }

    /// The summary as one JSON object, for `sync --json`.
    pub fn to_json(&self) -> serde_json::Value {
        let c = &self.counts;
        let (cohort_id, project, account) = self.route.clone().unwrap_or_default();
        serde_json::json!({
            "cohort": self.cohort,
            "cohort_id": cohort_id,
            "project": project,
            "account": account,
            "result": self.outcome.as_str(),
            "rows": c.rows,
            "members": c.members,
            "anonymous": c.anonymous,
            "unmapped": c.unmapped,
            "invalid": c.invalid,
            "planned_adds": self.planned_adds,
            "planned_removes": self.planned_removes,
            "added": self.added,
            "removed": self.removed,
            "batches": self.batches,
            "retries": self.retries,
            "exported": self.exported,
            "acknowledged": self.acknowledged,
            "duration_secs": self.duration.as_secs_f64(),
            "export_secs": self.export_duration.as_secs_f64(),
            "push_secs": self.push_duration.as_secs_f64(),
            "error": self.error,
        })
    }

    /// An empty record for a target's run, with its route.
    pub fn for_target(target: &super::CohortTarget) -> Summary {
        let mut summary = Summary::new(target.label());
        let key = &target.key;
        summary.route = Some((
            key.cohort_id.clone(),
            key.project.clone(),
            key.account.clone(),
        ));
        summary
    }

    /// The one line printed per cohort by `sync`.
    pub fn line(&self) -> String {
        let c = &self.counts;
        let mut line = format!("{}: {}", self.cohort, self.outcome.as_str());
        match self.outcome {
            Outcome::Unchanged => line.push_str(" (lastComputed has not moved; no export started)"),
            Outcome::Skipped | Outcome::Held => {}
            Outcome::DryRun => line.push_str(&format!(
                ": {} members read, {} anonymous skipped, {} unmapped, {} invalid; would add {} and remove {}",
                c.rows, c.anonymous, c.unmapped, c.invalid, self.planned_adds, self.planned_removes
            )),
            _ => line.push_str(&format!(
                ": {} members read, {} anonymous skipped, {} unmapped, {} invalid; sent +{} -{} \
                 (of +{} -{}) in {} batches, {} retries",
                c.rows,
                c.anonymous,
                c.unmapped,
                c.invalid,
                self.added,
                self.removed,
                self.planned_adds,
                self.planned_removes,
                self.batches,
                self.retries
            )),
        }
        line.push_str(&format!(", {:.1}s", self.duration.as_secs_f64()));
        if let Some(error) = &self.error {
            line.push_str(&format!("\n  {error}"));
        }
        line
    }
}
