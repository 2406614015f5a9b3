//! One run of one cohort, from the decision to export through the recorded result.
//!
//! The stages follow the design's flow: decide (archived, unknown, unchanged, budget),
//! export (reuse the pending request or start one), parse, guards (size sanity, mass
//! removal), push with acknowledgements, compaction of the acknowledged set, and the
//! run record. A stage that cannot go on returns a [`Stop`] saying why and how far the
//! consequences reach.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::export_stage::{self, FetchError};
use super::push::{self, AckWriter, PushLimits, PushOutcome, Side};
use super::summary::{Outcome, Scope, Summary};
use super::{CohortTarget, RunOptions, Trigger};
use crate::amplitude::{AmplitudeError, CohortInfo};
use crate::export::{ParseProgress, Parsed};
use crate::members::{self, IdSet};
use crate::oneflow::OneflowError;
use crate::state::{CohortState, Lease, Op, PendingExport, replica_name};

/// How long a pending export's request id stays usable.
const PENDING_LIFETIME_MS: i64 = 7 * 24 * 3600 * 1000;

/// Why a run stopped before syncing.
#[derive(Debug)]
pub struct Stop {
    /// How the run is recorded.
    pub outcome: Outcome,
    /// What to tell the operator.
    pub message: String,
    /// Whom it concerns.
    pub scope: Scope,
}

impl Stop {
    pub(super) fn failed(message: impl ToString) -> Stop {
        Stop {
            outcome: Outcome::Failed,
            message: message.to_string(),
            scope: Scope::Run,
        }
    }

    pub(super) fn with(outcome: Outcome, message: impl ToString) -> Stop {
        Stop {
            outcome,
            message: message.to_string(),
            scope: Scope::Run,
        }
    }
}

impl From<AmplitudeError> for Stop {
    fn from(error: AmplitudeError) -> Stop {
        let scope = if error.is_unauthorized() {
            Scope::Project
        } else {
            Scope::Run
        };
        Stop {
            outcome: Outcome::Failed,
            message: error.to_string(),
            scope,
        }
    }
}

impl From<crate::state::StateError> for Stop {
    fn from(error: crate::state::StateError) -> Stop {
        Stop::failed(format!("state store: {error}"))
    }
}

/// Runs one cohort. Never panics on bad input; every ending is a [`Summary`].
pub async fn run(
    target: &CohortTarget,
    info: Option<&CohortInfo>,
    options: &RunOptions,
) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::for_target(target);
    let result = run_stages(target, info, options, &mut summary).await;
    if let Err(stop) = result {
        summary.outcome = stop.outcome;
        summary.error = Some(stop.message);
        summary.scope = stop.scope;
    }
    summary.duration = started.elapsed();
    summary
}

async fn run_stages(
    target: &CohortTarget,
    info: Option<&CohortInfo>,
    options: &RunOptions,
    summary: &mut Summary,
) -> Result<(), Stop> {
    let cohort_id = &target.cohort.amplitude_id;
    let info = match info {
        Some(info) if info.archived => {
            return Err(Stop::with(
                Outcome::Skipped,
                format!(
                    "cohort {cohort_id} is archived in Amplitude; nothing is removed from 1Flow"
                ),
            ));
        }
        Some(info) => info,
        None => {
            return Err(Stop::with(
                Outcome::Skipped,
                format!(
                    "Amplitude does not know cohort {cohort_id} (check its id with `cohort-sync \
                     cohorts`); nothing is removed from 1Flow"
                ),
            ));
        }
    };

    let store = &target.store;
    let state = store.cohort(&target.key).await?;
    if nothing_to_do(info, &state, options) {
        summary.outcome = Outcome::Unchanged;
        summary.acknowledged = state.acknowledged;
        return Ok(());
    }

    if options.dry_run {
        return dry_run(target, info, state.pending.as_ref(), options, summary).await;
    }

    let lease = match store
        .acquire_lease(&target.key, &target.holder, target.lease_ttl_ms)
        .await?
    {
        Some(lease) => lease,
        None => {
            let holder = store
                .lease_holder(&target.key)
                .await?
                .map(|(h, _)| h)
                .unwrap_or_default();
            let name = replica_name(&holder);
            let message = if name == replica_name(&target.holder) {
                format!(
                    "another process of this replica ({name}) holds this cohort's lease, until \
                     it is released or expires; skipped"
                )
            } else {
                format!("another replica ({name}) holds this cohort's lease; skipped")
            };
            return Err(Stop::with(Outcome::Skipped, message));
        }
    };
    let _held = options.leases.hold();
    // The state read above may predate a run another replica finished just before this
    // lease was taken: decide again on what is stored now, so that run is not repeated.
    let state = match store.cohort(&target.key).await {
        Ok(state) => state,
        Err(error) => {
            release(target, lease).await;
            return Err(error.into());
        }
    };
    if nothing_to_do(info, &state, options) {
        release(target, lease).await;
        summary.outcome = Outcome::Unchanged;
        summary.acknowledged = state.acknowledged;
        return Ok(());
    }
    let started_at = chrono::Utc::now().timestamp_millis();
    let cancel = options.cancel.child_token();
    let renewer = spawn_renewer(target, lease.clone(), cancel.clone());
    let result = leased_run(target, info, &state, &lease, options, &cancel, summary).await;
    renewer.abort();
    let lease = renewer.await.ok().flatten().unwrap_or(lease);

    let record = super::record::run_record(
        &options.run_id,
        &target.holder,
        started_at,
        summary,
        &result,
    );
    if let Err(error) = store.finish_run(&lease, &record).await {
        tracing::warn!(%error, "Could not record the run in the state store.");
    }
    release(target, lease).await;
    result
}

/// Whether the cohort's last fully synced export is Amplitude's latest computation and
/// nothing of an earlier run is left to finish.
fn nothing_to_do(info: &CohortInfo, state: &CohortState, options: &RunOptions) -> bool {
    let unchanged = match (&state.synced_computed, &info.last_computed) {
        (Some(synced), Some(listed)) => synced == listed || is_newer(synced, listed),
        _ => false,
    };
    unchanged && !options.full && state.pending.is_none() && state.journal_batches == 0
}

/// Whether timestamp `a` is later than `b`, when both are numbers. Another replica may have
/// synced a computation this process's cohort listing, taken a moment earlier, predates.
fn is_newer(a: &str, b: &str) -> bool {
    matches!((a.parse::<i64>(), b.parse::<i64>()), (Ok(a), Ok(b)) if a > b)
}

async fn release(target: &CohortTarget, lease: Lease) {
    if let Err(error) = target.store.release_lease(lease).await {
        tracing::warn!(%error, "Could not release the cohort's lease.");
    }
}

/// Keeps the lease alive while the run lasts; cancels the run if it is lost.
fn spawn_renewer(
    target: &CohortTarget,
    mut lease: Lease,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<Option<Lease>> {
    let (store, ttl) = (target.store.clone(), target.lease_ttl_ms);
    tokio::spawn(async move {
        let period = std::time::Duration::from_millis((ttl / 3) as u64);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Some(lease),
                () = tokio::time::sleep(period) => {}
            }
            if let Err(error) = store.renew_lease(&mut lease, ttl).await {
                tracing::error!(%error, "Lost the cohort's lease; stopping the run.");
                cancel.cancel();
                return None;
            }
        }
    })
}

async fn leased_run(
    target: &CohortTarget,
    info: &CohortInfo,
    state: &CohortState,
    lease: &Lease,
    options: &RunOptions,
    cancel: &CancellationToken,
    summary: &mut Summary,
) -> Result<(), Stop> {
    let store = &target.store;
    store.start_run(lease, &options.run_id).await?;

    // Waiting for and reading an export is abandoned on shutdown: the pending request
    // id is saved, so the next run resumes it without spending quota.
    let export_started = Instant::now();
    let exported = tokio::select! {
        biased;
        () = cancel.cancelled() => {
            return Err(Stop::with(Outcome::Interrupted, "stopped while waiting for the export; it resumes on the next run"));
        }
        exported = options.share.get_or_export(target, info, || {
            export(target, info, state.pending.as_ref(), Some(lease), options, summary)
        }) => exported,
    };
    let (parsed, computed) = exported?;
    summary.export_duration = export_started.elapsed();
    summary.counts = parsed.counts;
    let acknowledged = store.load_acknowledged(&target.key).await?;
    summary.acknowledged = acknowledged.len() as u64;
    super::guard::check(target, info, &parsed, &acknowledged, options)?;

    let list_id = match &state.list_id {
        Some(id) => id.clone(),
        None => create_list(target, info, lease).await?,
    };
    let current = &parsed.members;
    let pushed = push_diff(
        target,
        lease,
        &list_id,
        current,
        acknowledged,
        options,
        cancel,
        summary,
    )
    .await;
    let (acknowledged, outcome) = match pushed {
        Err(ListGone) => {
            tracing::warn!(
                list_id,
                "The 1Flow list is gone; creating it again and sending every member."
            );
            let list_id = create_list(target, info, lease).await?;
            store.reset_list(lease, &list_id).await?;
            summary.added = 0;
            let empty = IdSet::default();
            push_diff(
                target, lease, &list_id, current, empty, options, cancel, summary,
            )
            .await
            .map_err(ListGone::into_stop)?
        }
        other => other.map_err(ListGone::into_stop)?,
    };

    // Only a complete run marks the export as synced (which also clears the pending
    // export); a partial one keeps the request id so the next run reuses it.
    summary.acknowledged = acknowledged.len() as u64;
    let synced = outcome.is_ok().then(|| computed.unwrap_or_default());
    store
        .compact(lease, &acknowledged, synced.as_deref())
        .await?;
    outcome?;
    summary.outcome = Outcome::Synced;
    Ok(())
}

/// Reuses the pending export or starts one, then downloads and parses it.
async fn export(
    target: &CohortTarget,
    info: &CohortInfo,
    pending: Option<&PendingExport>,
    lease: Option<&Lease>,
    options: &RunOptions,
    summary: &mut Summary,
) -> Result<(Parsed, Option<String>), Stop> {
    let now = chrono::Utc::now().timestamp_millis();
    let reusable = pending.filter(|p| now - p.started_at < PENDING_LIFETIME_MS);
    // An export of an older computation would only be synced to be replaced by the next
    // run's export; worse, a guard that held it would hold it again on every run.
    let reusable = match reusable {
        Some(p) if is_stale(p, info) => {
            tracing::info!(
                request_id = %p.request_id,
                "The cohort was recomputed since the pending export; starting a new one."
            );
            None
        }
        other => other,
    };
    let (request_id, computed) = match reusable {
        Some(p) => {
            tracing::info!(request_id = %p.request_id, "Resuming the pending export.");
            (p.request_id.clone(), p.computed.clone())
        }
        None => start_export(target, info, lease, options, summary).await?,
    };

    match fetch(target, &request_id).await {
        Ok(parsed) => Ok((parsed, computed)),
        Err(error) if reusable.is_some_and(|p| unusable_pending(&error, p, target)) => {
            tracing::warn!(%request_id, %error, "The pending export cannot serve this run; starting a new one.");
            let (request_id, computed) =
                start_export(target, info, lease, options, summary).await?;
            let parsed = fetch(target, &request_id)
                .await
                .map_err(|e| fetch_stop(&request_id, e))?;
            Ok((parsed, computed))
        }
        Err(error) => Err(fetch_stop(&request_id, error)),
    }
}

/// Whether a pending export's failure means it can never serve this cohort: Amplitude
/// no longer knows it, or its file lacks the column the cohort's `user_id` needs because
/// it was requested with other properties (the setting changed since). When it was
/// requested with the same properties, the column is missing from Amplitude's data and a
/// new export would fail the same way, so none is started.
fn unusable_pending(error: &FetchError, pending: &PendingExport, target: &CohortTarget) -> bool {
    match error {
        FetchError::Amplitude(AmplitudeError::NotFound { .. }) => true,
        FetchError::Amplitude(_) => false,
        FetchError::Export(error) => {
            let wanted = target.source.properties().join(",");
            error.is_column_error() && pending.properties.as_deref() != Some(wanted.as_str())
        }
    }
}

/// Whether Amplitude recomputed the cohort after `pending` was requested.
fn is_stale(pending: &PendingExport, info: &CohortInfo) -> bool {
    match (&pending.computed, &info.last_computed) {
        (Some(then), Some(now)) => then != now,
        _ => false,
    }
}

fn fetch_stop(request_id: &str, error: FetchError) -> Stop {
    match error {
        FetchError::Amplitude(error) => error.into(),
        FetchError::Export(error) => {
            Stop::failed(format!("export {request_id}: {error}; nothing was pushed"))
        }
    }
}

async fn fetch(target: &CohortTarget, request_id: &str) -> Result<Parsed, FetchError> {
    let client = &target.amplitude.client;
    client.wait_for_export(request_id).await?;
    let progress = Arc::new(ParseProgress::default());
    let reporter = super::progress::watch_download(&target.label(), progress.clone());
    let parsed = export_stage::download_and_parse(
        client,
        request_id,
        target.source.clone(),
        target.mapper.clone(),
        progress,
        target.amplitude.config.max_retries + 1,
    )
    .await;
    reporter.finish();
    parsed
}

/// Starts a new export within the budget and records it as pending at once.
async fn start_export(
    target: &CohortTarget,
    info: &CohortInfo,
    lease: Option<&Lease>,
    options: &RunOptions,
    summary: &mut Summary,
) -> Result<(String, Option<String>), Stop> {
    let config = &target.amplitude.config;
    let limit = match (options.force, options.trigger) {
        (true, _) => u32::MAX,
        (false, Trigger::Manual) => config.monthly_export_budget,
        (false, Trigger::Scheduled) => config
            .monthly_export_budget
            .saturating_sub(config.export_reserve),
    };
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let project = &target.key.project;
    let Some(used) = target.store.reserve_export(project, &month, limit).await? else {
        let hint = match options.trigger {
            Trigger::Scheduled => format!(
                "scheduled runs keep {} of the {} monthly exports in reserve for manual runs; \
                 run `cohort-sync sync` by hand, or raise amplitude.monthly_export_budget",
                config.export_reserve, config.monthly_export_budget
            ),
            Trigger::Manual => "pass --force to go past the budget".to_owned(),
        };
        return Err(Stop::with(
            Outcome::Skipped,
            format!("the export budget for {month} is spent ({limit} exports); {hint}"),
        ));
    };

    let properties = target.source.properties();
    let request_id = target
        .amplitude
        .client
        .request_export(&info.id, &properties)
        .await?;
    summary.exported = true;
    tracing::info!(request_id, exports_this_month = used, "Export started.");
    if let Some(lease) = lease {
        let pending = PendingExport {
            request_id: request_id.clone(),
            started_at: chrono::Utc::now().timestamp_millis(),
            computed: info.last_computed.clone(),
            properties: Some(properties.join(",")),
        };
        target.store.set_pending(lease, Some(&pending)).await?;
    }
    Ok((request_id, info.last_computed.clone()))
}

async fn create_list(
    target: &CohortTarget,
    info: &CohortInfo,
    lease: &Lease,
) -> Result<String, Stop> {
    let name = target
        .cohort
        .name
        .clone()
        .unwrap_or_else(|| info.name.clone());
    let list_id = target
        .oneflow
        .client
        .create_list(&name, &info.id)
        .await
        .map_err(oneflow_stop)?;
    target.store.set_list_id(lease, Some(&list_id)).await?;
    tracing::info!(list_id, name, "Created the 1Flow list.");
    Ok(list_id)
}

fn oneflow_stop(error: OneflowError) -> Stop {
    let scope = if error.is_unauthorized() {
        Scope::Account
    } else {
        Scope::Run
    };
    let outcome = if matches!(error, OneflowError::Deferred { .. }) {
        Outcome::Interrupted
    } else {
        Outcome::Failed
    };
    Stop {
        outcome,
        message: error.to_string(),
        scope,
    }
}

/// The 1Flow list was found gone during a push.
struct ListGone;

impl ListGone {
    fn into_stop(self) -> Stop {
        Stop::failed("the 1Flow list disappeared again while every member was being re-sent")
    }
}

/// Pushes adds then removes; returns the acknowledged set after the push, and
/// whether every batch was confirmed.
#[allow(clippy::too_many_arguments)]
async fn push_diff(
    target: &CohortTarget,
    lease: &Lease,
    list_id: &str,
    current: &IdSet,
    acknowledged: IdSet,
    options: &RunOptions,
    cancel: &CancellationToken,
    summary: &mut Summary,
) -> Result<(IdSet, Result<(), Stop>), ListGone> {
    let diff = members::diff(current, &acknowledged);
    let adds: Vec<u32> = if options.full {
        (0..current.len() as u32).collect()
    } else {
        diff.adds
    };
    summary.planned_adds = adds.len() as u64;
    summary.planned_removes = diff.removes.len() as u64;

    let account = &target.oneflow;
    let limits = PushLimits {
        batch_size: account.config.batch_size,
        max_batch_bytes: account.config.max_batch_bytes,
        concurrency: account.config.concurrency,
    };
    let acks = AckWriter::start(target.store.clone(), lease.clone(), options.run_id.clone());
    let sent = Arc::new(AtomicU64::new(0));
    let total = adds.len() + diff.removes.len();
    let reporter = super::progress::watch_push(&target.label(), total as u64, sent.clone());

    let add_side = Side {
        op: Op::Add,
        set: current,
        positions: &adds,
    };
    let sending = Instant::now();
    let added = push::push(
        &account.client,
        list_id,
        add_side,
        limits,
        &acks,
        cancel,
        &sent,
    )
    .await;
    let remove_side = Side {
        op: Op::Remove,
        set: &acknowledged,
        positions: &diff.removes,
    };
    let removed = if added.error.is_none() && !added.cancelled {
        push::push(
            &account.client,
            list_id,
            remove_side,
            limits,
            &acks,
            cancel,
            &sent,
        )
        .await
    } else {
        PushOutcome::default()
    };
    acks.finish().await;
    summary.push_duration += sending.elapsed();
    reporter.finish();

    summary.added += added.confirmed_ids() as u64;
    summary.removed = removed.confirmed_ids() as u64;
    summary.batches += added.batches + removed.batches;
    summary.retries += added.report.retries
        + added.report.throttled
        + removed.report.retries
        + removed.report.throttled;

    let add_side = Side {
        op: Op::Add,
        set: current,
        positions: &adds,
    };
    let remove_side = Side {
        op: Op::Remove,
        set: &acknowledged,
        positions: &diff.removes,
    };
    let complete =
        added.confirmed_ids() == adds.len() && removed.confirmed_ids() == diff.removes.len();
    let next = if complete {
        current.clone()
    } else {
        acknowledged.apply(
            &push::confirmed_set(&add_side, &added),
            &push::confirmed_set(&remove_side, &removed),
        )
    };

    let error = added.error.or(removed.error);
    let result = match error {
        None if complete => Ok(()),
        None => Err(Stop::with(
            Outcome::Interrupted,
            "stopped before every batch was sent; the rest goes on the next run",
        )),
        Some(push::PushError::Oneflow(OneflowError::ListGone { .. })) => return Err(ListGone),
        Some(push::PushError::Oneflow(error)) => Err(oneflow_stop(error)),
        Some(error) => Err(Stop::failed(error)),
    };
    Ok((next, result))
}

/// Everything a real run does, except writing to 1Flow and the state store.
async fn dry_run(
    target: &CohortTarget,
    info: &CohortInfo,
    pending: Option<&PendingExport>,
    options: &RunOptions,
    summary: &mut Summary,
) -> Result<(), Stop> {
    // An export a dry run starts is saved as pending, so the real run after it reuses it
    // instead of spending a second one. That needs the cohort's lease for a moment;
    // when another runner holds it, the export is read but not saved.
    let store = &target.store;
    let lease = store
        .acquire_lease(&target.key, &target.holder, target.lease_ttl_ms)
        .await?;
    let exported = export(target, info, pending, lease.as_ref(), options, summary).await;
    if let Some(lease) = lease
        && let Err(error) = store.release_lease(lease).await
    {
        tracing::warn!(%error, "Could not release the cohort's lease.");
    }
    let (parsed, _) = exported?;
    let acknowledged = store.load_acknowledged(&target.key).await?;
    summary.acknowledged = acknowledged.len() as u64;
    super::guard::check(target, info, &parsed, &acknowledged, options)?;
    let diff = members::diff(&parsed.members, &acknowledged);
    summary.counts = parsed.counts;
    summary.planned_adds = if options.full {
        parsed.members.len()
    } else {
        diff.adds.len()
    } as u64;
    summary.planned_removes = diff.removes.len() as u64;
    summary.acknowledged = acknowledged.len() as u64;
    summary.outcome = Outcome::DryRun;
    let sample = |set: &IdSet, positions: &[u32]| -> Vec<String> {
        positions
            .iter()
            .take(5)
            .map(|&p| String::from_utf8_lossy(set.get(p as usize)).into_owned())
            .collect()
    };
    summary.error = Some(format!(
        "would add e.g. {:?}; would remove e.g. {:?}",
        sample(&parsed.members, &diff.adds),
        sample(&acknowledged, &diff.removes)
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(computed: Option<&str>) -> PendingExport {
        PendingExport {
            request_id: "r1".into(),
            started_at: 0,
            computed: computed.map(str::to_owned),
            properties: None,
        }
    }

    fn info(last_computed: Option<&str>) -> CohortInfo {
        CohortInfo {
            id: "c1".into(),
            name: "C1".into(),
            size: None,
            archived: false,
            last_computed: last_computed.map(str::to_owned),
        }
    }

    #[test]
    fn a_listing_older_than_the_synced_computation_means_nothing_to_do() {
        let options = RunOptions::new(super::Trigger::Scheduled, CancellationToken::new());
        let state = |synced: &str| CohortState {
            synced_computed: Some(synced.into()),
            ..CohortState::default()
        };
        assert!(nothing_to_do(&info(Some("100")), &state("100"), &options));
        assert!(nothing_to_do(&info(Some("100")), &state("160"), &options));
        assert!(!nothing_to_do(&info(Some("160")), &state("100"), &options));
        assert!(!nothing_to_do(&info(Some("b")), &state("a"), &options));
        assert!(!nothing_to_do(&info(None), &state("100"), &options));
        let mut full = options.clone();
        full.full = true;
        assert!(!nothing_to_do(&info(Some("100")), &state("100"), &full));
    }

    #[test]
    fn a_pending_export_is_stale_only_when_the_cohort_was_recomputed() {
        assert!(!is_stale(&pending(Some("100")), &info(Some("100"))));
        assert!(is_stale(&pending(Some("100")), &info(Some("160"))));
        // Without both timestamps nothing says it is stale: keep the quota.
        assert!(!is_stale(&pending(None), &info(Some("160"))));
        assert!(!is_stale(&pending(Some("100")), &info(None)));
    }
}
