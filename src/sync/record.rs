//! The end of a run: its history row and its one log line.

use super::run::Stop;
use super::summary::{Outcome, Summary};
use crate::state::{RunCounts, RunRecord};

/// The history row for a run that ended with `result`.
pub fn run_record(
    run_id: &str,
    holder: &str,
    started_at: i64,
    summary: &Summary,
    result: &Result<(), Stop>,
) -> RunRecord {
    let (outcome, error) = match result {
        Ok(()) => (summary.outcome, summary.error.clone()),
        Err(stop) => (stop.outcome, Some(stop.message.clone())),
    };
    RunRecord {
        run_id: run_id.to_owned(),
        started_at,
        finished_at: None,
        result: outcome.as_str().to_owned(),
        counts: RunCounts {
            members: summary.counts.members,
            anonymous: summary.counts.anonymous,
            unmapped: summary.counts.unmapped,
            invalid: summary.counts.invalid,
            adds: summary.added,
            removes: summary.removed,
            batches: u64::from(summary.batches),
            retries: u64::from(summary.retries),
        },
        error,
        holder: holder.to_owned(),
    }
}

/// Logs a finished run: INFO when it synced or had nothing to do, WARN when it was
/// interrupted or skipped, ERROR when an operator must act.
pub fn log(summary: &Summary) {
    let c = &summary.counts;
    let duration_ms = summary.duration.as_millis() as u64;
    let error = summary.error.as_deref().unwrap_or("");
    macro_rules! event {
        ($level:expr, $message:literal) => {
            tracing::event!(
                $level,
                result = summary.outcome.as_str(),
                rows = c.rows,
                members = c.members,
                anonymous = c.anonymous,
                unmapped = c.unmapped,
                invalid = c.invalid,
                adds = summary.added,
                removes = summary.removed,
                batches = summary.batches,
                retries = summary.retries,
                acknowledged = summary.acknowledged,
                exported = summary.exported,
                duration_ms,
                error,
                $message
            )
        };
    }
    match summary.outcome {
        Outcome::Synced | Outcome::Unchanged | Outcome::DryRun => {
            event!(tracing::Level::INFO, "Run finished.")
        }
        Outcome::Interrupted | Outcome::Skipped => {
            event!(tracing::Level::WARN, "Run did not finish.")
        }
        Outcome::Held | Outcome::Failed => event!(tracing::Level::ERROR, "Run failed."),
    }
}
