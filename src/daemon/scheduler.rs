//! One task per cohort, each sleeping until its schedule's next fire.
//!
//! A fire starts the cohort's run in a task of its own, so the cohort's timer keeps
//! ticking while the run goes on: a fire that comes while the previous run is still
//! going is skipped and counted. Sleeps are cut into short steps against the wall
//! clock, so after the host slept the missed fires collapse into one run. Reloads send
//! each task its new plan; the `once` schedule fires when its entry is new or changed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::Metrics;
use crate::config::CohortConfig;
use crate::schedule::{CohortSchedule, Schedule};
use crate::state::CohortKey;
use crate::sync::{CohortTarget, RunOptions, Scope, Trigger};

/// The longest single sleep; the wall clock is checked again after it.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// How long a project's cohort listing is reused by cohorts firing together.
const LISTING_TTL: Duration = Duration::from_secs(15);

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

/// A cohort's target and schedule, as of the latest config.
pub struct Plan {
    /// What a run needs.
    pub target: Arc<CohortTarget>,
    /// When it fires.
    pub schedule: CohortSchedule,
}

/// What every cohort task shares.
pub struct Shared {
    /// The time source.
    pub clock: Arc<dyn Clock>,
    /// Metrics to update after each run.
    pub metrics: Arc<Metrics>,
    /// Tracks run tasks, so shutdown can wait for them.
    pub runs: TaskTracker,
    /// Fires on shutdown: no new fires.
    pub stop_firing: CancellationToken,
    /// Fires on shutdown: runs stop launching batches.
    pub stop_runs: CancellationToken,
    /// Projects and accounts whose credentials were refused, until the next reload.
    pub blocked: Mutex<HashSet<(String, String)>>,
    /// Runs started, for tests and the status line.
    pub started: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Shared state for a scheduler reading `clock`.
    pub fn new(clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Shared {
        Shared {
            clock,
            metrics,
            runs: TaskTracker::new(),
            stop_firing: CancellationToken::new(),
            stop_runs: CancellationToken::new(),
            blocked: Mutex::new(HashSet::new()),
            started: Default::default(),
        }
    }
}

struct CohortTask {
    plan: watch::Sender<Option<Arc<Plan>>>,
}

/// The set of cohort tasks, updated by [`Scheduler::apply`] on each (re)load.
pub struct Scheduler {
    shared: Arc<Shared>,
    tasks: HashMap<CohortKey, CohortTask>,
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

    /// Starts added cohorts, hands changed ones their new plan, and stops removed
    /// ones (after their run in flight). Refused credentials are forgiven.
    pub fn apply(&mut self, plans: Vec<Plan>) {
        self.shared.blocked.lock().expect("blocked lock").clear();
        let mut keep = HashSet::new();
        for plan in plans {
            let key = plan.target.key.clone();
            keep.insert(key.clone());
            self.shared.metrics.register_cohort(&plan.target);
            let plan = Arc::new(plan);
            match self.tasks.get(&key) {
                Some(task) => {
                    task.plan.send_replace(Some(plan));
                }
                None => {
                    let (sender, receiver) = watch::channel(Some(plan));
                    let running = self.running.entry(key.clone()).or_default().clone();
                    tokio::spawn(cohort_loop(self.shared.clone(), receiver, running));
                    self.tasks.insert(key, CohortTask { plan: sender });
                }
            }
        }
        self.tasks.retain(|key, task| {
            let kept = keep.contains(key);
            if !kept {
                tracing::info!(cohort = %key.cohort_id, "Cohort removed from the config; stopping it.");
                task.plan.send_replace(None);
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

async fn cohort_loop(
    shared: Arc<Shared>,
    mut plans: watch::Receiver<Option<Arc<Plan>>>,
    running: Arc<AtomicBool>,
) {
    let mut once_fired_for: Option<CohortConfig> = None;
    let mut last_fire: Option<DateTime<Utc>> = None;
    loop {
        let Some(plan) = plans.borrow_and_update().clone() else {
            return;
        };
        let now = shared.clock.now();
        let after = last_fire.map_or(now, |last| last.max(now));
        let fire_at = match plan.schedule.schedule {
            Schedule::Once if once_fired_for.as_ref() != Some(&plan.target.cohort) => Some(now),
            Schedule::Once => None,
            _ => plan.schedule.next_after(after),
        };
        tokio::select! {
            () = shared.stop_firing.cancelled() => return,
            changed = plans.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            () = sleep_until(shared.clock.as_ref(), fire_at) => {}
        }
        if matches!(plan.schedule.schedule, Schedule::Once) {
            once_fired_for = Some(plan.target.cohort.clone());
        }
        last_fire = fire_at;
        fire(&shared, &plan, &running);
    }
}

/// Sleeps until the wall clock reads `at`, forever when `at` is `None`.
async fn sleep_until(clock: &dyn Clock, at: Option<DateTime<Utc>>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    loop {
        let left = at - clock.now();
        let Ok(left) = left.to_std() else { return };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(MAX_SLEEP)).await;
    }
}

fn fire(shared: &Arc<Shared>, plan: &Arc<Plan>, running: &Arc<AtomicBool>) {
    let target = &plan.target;
    if running.swap(true, Ordering::AcqRel) {
        tracing::warn!(cohort = %target.cohort.amplitude_id, "The previous run is still going; this fire is skipped.");
        shared.metrics.skipped_fire(target);
        return;
    }
    let blocked = {
        let blocked = shared.blocked.lock().expect("blocked lock");
        if blocked.contains(&("project".to_owned(), target.key.project.clone())) {
            Some(format!(
                "Amplitude project {} refused its credentials",
                target.key.project
            ))
        } else if blocked.contains(&("account".to_owned(), target.key.account.clone())) {
            Some(format!(
                "1Flow account {} refused its API key",
                target.key.account
            ))
        } else {
            None
        }
    };
    if let Some(reason) = blocked {
        tracing::error!(cohort = %target.cohort.amplitude_id, reason, "Not running until the config changes.");
        running.store(false, Ordering::Release);
        return;
    }

    shared.started.fetch_add(1, Ordering::Relaxed);
    let (shared, plan, running) = (shared.clone(), plan.clone(), running.clone());
    shared.runs.clone().spawn(async move {
        let target = &plan.target;
        let options = RunOptions::new(Trigger::Scheduled, shared.stop_runs.clone());
        let summary = match target.amplitude.list_cached(LISTING_TTL).await {
            Ok(cohorts) => {
                let info = cohorts.iter().find(|c| c.id == target.cohort.amplitude_id);
                crate::sync::run_logged(target, info, &options).await
            }
            Err(error) => {
                let mut summary = crate::sync::Summary::new(target.label());
                summary.error = Some(format!("listing the project's cohorts failed: {error}"));
                if error.is_unauthorized() {
                    summary.scope = Scope::Project;
                }
                crate::sync::record_log(&summary);
                summary
            }
        };
        shared.metrics.observe(target, &summary);
        let scope = match summary.scope {
            Scope::Run => None,
            Scope::Project => Some(("project".to_owned(), target.key.project.clone())),
            Scope::Account => Some(("account".to_owned(), target.key.account.clone())),
        };
        if let Some(scope) = scope {
            shared.blocked.lock().expect("blocked lock").insert(scope);
        }
        let month = Utc::now().format("%Y-%m").to_string();
        if let Ok(used) = target.store.exports_used(&target.key.project, &month).await {
            shared.metrics.quota(
                &target.key.project,
                used,
                target.amplitude.config.monthly_export_budget,
            );
        }
        running.store(false, Ordering::Release);
    });
}
