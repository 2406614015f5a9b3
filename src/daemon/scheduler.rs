//! One task per cohort, each sleeping until its schedule's next fire.
//!
//! A fire starts the cohort's run in a task of its own, so the cohort's timer keeps
//! ticking while the run goes on: a fire that comes while the previous run is still
//! going is skipped and counted. Sleeps are cut into short steps against the wall
//! clock, so after the host slept the missed fires collapse into one run. Reloads send
//! each task its new plan; the `once` schedule fires when its entry is new or changed.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::Metrics;
use crate::config::CohortConfig;
use crate::schedule::{CohortSchedule, Schedule};
use crate::state::CohortKey;
use crate::sync::{CohortTarget, RunOptions, Scope, Summary, Trigger};

/// The longest single sleep; the wall clock is checked again after it.
pub const MAX_SLEEP: Duration = Duration::from_secs(30);
/// How long a project's cohort listing is reused by cohorts firing together. Short, so a
/// cohort recomputed just before its fire is seen as changed.
const LISTING_TTL: Duration = Duration::from_secs(2);

/// Where the scheduler reads the time. Tests use [`TokioClock`] on a paused runtime.
pub trait Clock: Send + Sync {
    /// The current wall-clock time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A wall clock that follows tokio's (possibly paused) clock from a starting time.
pub struct TokioClock {
    wall: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `wall` now and advances with tokio's time.
    pub fn starting_at(wall: DateTime<Utc>) -> TokioClock {
        TokioClock {
            wall,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.start.elapsed()).unwrap_or_default();
        self.wall + elapsed
    }
}

/// A future that runs one cohort once and says how it went.
pub type RunFuture = Pin<Box<dyn Future<Output = Summary> + Send>>;

/// Runs one cohort once. The daemon uses [`SyncRunner`]; tests bring their own.
pub trait Runner: Send + Sync {
    /// Runs `target` once as a scheduled run; `cancel` fires at shutdown, when the run
    /// lets its batches in flight finish and starts no new ones.
    fn run(&self, target: Arc<CohortTarget>, cancel: CancellationToken) -> RunFuture;
}

/// The real runner: lists the project's cohorts (shared briefly between cohorts that
/// fire together), runs the sync pipeline, and refreshes the project's quota gauges.
pub struct SyncRunner {
    /// Where the quota gauges go.
    pub metrics: Arc<Metrics>,
    /// Exports shared by runs of one cohort to several accounts that fire together.
    pub share: Arc<crate::sync::ExportShare>,
}

impl SyncRunner {
    /// The runner of the daemon, reporting to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> SyncRunner {
        SyncRunner {
            metrics,
            share: Arc::new(crate::sync::ExportShare::for_daemon()),
        }
    }
}

impl Runner for SyncRunner {
    fn run(&self, target: Arc<CohortTarget>, cancel: CancellationToken) -> RunFuture {
        let (metrics, share) = (self.metrics.clone(), self.share.clone());
        Box::pin(async move {
            let mut options = RunOptions::new(Trigger::Scheduled, cancel);
            options.share = share;
            options.leases = metrics.held_leases();
            let listed = target.amplitude.list_cached(LISTING_TTL).await;
            let listed = listed.as_ref().map(|cohorts| cohorts.as_slice());
            let summary = crate::sync::run_logged(&target, listed, &options).await;
            super::refresh_quota(&metrics, &target).await;
            summary
        })
    }
}

/// A cohort's target and schedule, as of the latest config.
pub struct Plan {
    /// What a run needs.
    pub target: Arc<CohortTarget>,
    /// When it fires.
    pub schedule: CohortSchedule,
}

/// Credentials that were refused; cohorts using them do not run until the next reload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Blocked {
    Project(String),
    Account(String),
}

/// What every cohort task shares.
pub struct Shared {
    /// The time source.
    pub clock: Arc<dyn Clock>,
    /// Metrics to update after each run.
    pub metrics: Arc<Metrics>,
    /// Runs a cohort once.
    pub runner: Arc<dyn Runner>,
    /// Tracks run tasks, so shutdown can wait for them.
    pub runs: TaskTracker,
    /// Fires on shutdown: no new fires.
    pub stop_firing: CancellationToken,
    /// Fires on shutdown: runs stop launching batches.
    pub stop_runs: CancellationToken,
    /// Runs started since the process started.
    pub started: AtomicU64,
    blocked: Mutex<HashSet<Blocked>>,
}

impl Shared {
    /// Shared state for a scheduler reading `clock` and running cohorts with `runner`.
    pub fn new(clock: Arc<dyn Clock>, metrics: Arc<Metrics>, runner: Arc<dyn Runner>) -> Shared {
        Shared {
            clock,
            metrics,
            runner,
            runs: TaskTracker::new(),
            stop_firing: CancellationToken::new(),
            stop_runs: CancellationToken::new(),
            started: AtomicU64::new(0),
            blocked: Mutex::new(HashSet::new()),
        }
    }

    fn blocked(&self) -> MutexGuard<'_, HashSet<Blocked>> {
        self.blocked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why `target` may not run now, if its credentials were refused since the last load.
    fn block_reason(&self, target: &CohortTarget) -> Option<String> {
        let blocked = self.blocked();
        if blocked.contains(&Blocked::Project(target.key.project.clone())) {
            Some(format!(
                "Amplitude project {} refused its credentials",
                target.key.project
            ))
        } else if blocked.contains(&Blocked::Account(target.key.account.clone())) {
            Some(format!(
                "1Flow account {} refused its API key",
                target.key.account
            ))
        } else {
            None
        }
    }
}

/// The set of cohort tasks, updated by [`Scheduler::apply`] on each (re)load.
pub struct Scheduler {
    shared: Arc<Shared>,
    tasks: HashMap<CohortKey, watch::Sender<Arc<Plan>>>,
    // Kept across removal, so a cohort removed and added again while its old run is
    // still going does not start a second, overlapping run.
    running: HashMap<CohortKey, Arc<AtomicBool>>,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(shared: Arc<Shared>) -> Scheduler {
        Scheduler {
            shared,
            tasks: HashMap::new(),
            running: HashMap::new(),
        }
    }

    /// Starts added cohorts, hands changed ones their new plan (a changed schedule takes
    /// effect at once, changed credentials at the next run), and stops removed ones after
    /// their run in flight. Refused credentials are forgiven.
    pub fn apply(&mut self, plans: Vec<Plan>) {
        self.shared.blocked().clear();
        let mut keep = HashSet::new();
        for plan in plans {
            let key = plan.target.key.clone();
            keep.insert(key.clone());
            self.shared.metrics.register_cohort(&plan.target);
            let plan = Arc::new(plan);
            match self.tasks.get(&key) {
                Some(task) => {
                    task.send_replace(plan);
                }
                None => {
                    let (sender, receiver) = watch::channel(plan);
                    let running = self.running.entry(key.clone()).or_default().clone();
                    tokio::spawn(cohort_loop(self.shared.clone(), receiver, running));
                    self.tasks.insert(key, sender);
                }
            }
        }
        // Dropping a sender ends its task's loop; a run in flight goes on in its own task.
        self.tasks.retain(|key, _| {
            let kept = keep.contains(key);
            if !kept {
                tracing::info!(cohort = %key.cohort_id, project = %key.project, account = %key.account, "Cohort removed from the config; it stops after any run in flight.");
            }
            kept
        });
    }

    /// What the cohort tasks share.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The cohorts scheduled now.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no cohort is scheduled.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// One cohort's timer: sleeps until the next fire, fires, repeats, following new plans.
async fn cohort_loop(
    shared: Arc<Shared>,
    mut plans: watch::Receiver<Arc<Plan>>,
    running: Arc<AtomicBool>,
) {
    let mut once_fired_for: Option<CohortConfig> = None;
    let mut last_fire: Option<DateTime<Utc>> = None;
    loop {
        let plan = plans.borrow_and_update().clone();
        let now = shared.clock.now();
        // Never before the last fire, so a clock set back does not fire the same time twice.
        let after = last_fire.map_or(now, |last| last.max(now));
        let is_once = matches!(plan.schedule.schedule, Schedule::Once);
        let fire_at = if is_once {
            (once_fired_for.as_ref() != Some(&plan.target.cohort)).then_some(now)
        } else {
            plan.schedule.next_after(after)
        };

        tokio::select! {
            biased;
            () = shared.stop_firing.cancelled() => return,
            changed = plans.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            () = sleep_until(shared.clock.as_ref(), fire_at) => {}
        }

        if is_once {
            once_fired_for = Some(plan.target.cohort.clone());
        }
        last_fire = fire_at;
        fire(&shared, &plan, &running);
    }
}

/// Sleeps until the wall clock reads `at`, forever when `at` is `None`. Sleeps are at
/// most [`MAX_SLEEP`] each, so a wall clock that jumped (host sleep) is noticed soon.
async fn sleep_until(clock: &dyn Clock, at: Option<DateTime<Utc>>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    loop {
        let Ok(left) = (at - clock.now()).to_std() else {
            return;
        };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(MAX_SLEEP)).await;
    }
}

/// Clears a cohort's running flag when its run task ends, even by panic.
struct RunningGuard(Arc<AtomicBool>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Starts a run of `plan`, unless the previous one is still going or its credentials
/// were refused.
fn fire(shared: &Arc<Shared>, plan: &Arc<Plan>, running: &Arc<AtomicBool>) {
    let target = plan.target.clone();
    let cohort = target.cohort.amplitude_id.as_str();
    if running.swap(true, Ordering::AcqRel) {
        tracing::warn!(
            cohort,
            schedule = %plan.schedule.spec,
            "The previous run is still going; this fire is skipped."
        );
        shared.metrics.skipped_fire(&target);
        return;
    }
    let guard = RunningGuard(running.clone());
    if let Some(reason) = shared.block_reason(&target) {
        tracing::error!(
            cohort,
            reason,
            "Not running until the config is reloaded with working credentials."
        );
        return;
    }

    shared.started.fetch_add(1, Ordering::Relaxed);
    let shared = shared.clone();
    shared.runs.clone().spawn(async move {
        let _guard = guard;
        let summary = shared
            .runner
            .run(target.clone(), shared.stop_runs.clone())
            .await;
        shared.metrics.observe(&target, &summary);
        let blocked = match summary.scope {
            Scope::Run => None,
            Scope::Project => Some(Blocked::Project(target.key.project.clone())),
            Scope::Account => Some(Blocked::Account(target.key.account.clone())),
        };
        if let Some(blocked) = blocked {
            shared.blocked().insert(blocked);
        }
    });
}

#[cfg(test)]
mod tests;
