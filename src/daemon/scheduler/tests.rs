//! The scheduler on tokio's paused clock, with a fake runner that only sleeps: overlap,
//! independence of cohorts, host sleep, reloads, removal, `once`, refused credentials
//! and shutdown, each checked against the exact instants runs started.

use std::collections::HashMap;

use chrono::TimeZone;

use super::super::test_rig::Rig;
use super::*;
use crate::sync::Outcome;

/// When every test's wall clock starts: half a second before a whole second, so no
/// fire ties with a run's end.
fn start_wall() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 6, 0, 0, 0).unwrap() + chrono::Duration::milliseconds(500)
}

/// A fake run: sleeps as long as its cohort's duration, and records when it started.
struct FakeRunner {
    origin: tokio::time::Instant,
    durations: HashMap<String, Duration>,
    refuse_project: Option<String>,
    starts: Mutex<Vec<(String, f64)>>,
    active: Mutex<HashMap<String, usize>>,
    max_active: Mutex<usize>,
    finished: AtomicU64,
}

impl FakeRunner {
    fn new(durations: &[(&str, f64)]) -> FakeRunner {
        FakeRunner {
            origin: tokio::time::Instant::now(),
            durations: durations
                .iter()
                .map(|(id, secs)| ((*id).to_owned(), Duration::from_secs_f64(*secs)))
                .collect(),
            refuse_project: None,
            starts: Mutex::new(Vec::new()),
            active: Mutex::new(HashMap::new()),
            max_active: Mutex::new(0),
            finished: AtomicU64::new(0),
        }
    }

    /// Seconds since the test started at which `cohort`'s runs started.
    fn starts_of(&self, cohort: &str) -> Vec<f64> {
        let starts = self.starts.lock().unwrap();
        starts
            .iter()
            .filter(|(id, _)| id == cohort)
            .map(|(_, at)| (at * 10.0).round() / 10.0)
            .collect()
    }

    fn max_active(&self) -> usize {
        *self.max_active.lock().unwrap()
    }
}

impl Runner for Arc<FakeRunner> {
    fn run(&self, target: Arc<CohortTarget>, _cancel: CancellationToken) -> RunFuture {
        let fake = self.clone();
        Box::pin(async move {
            let id = target.cohort.amplitude_id.clone();
            let at = fake.origin.elapsed().as_secs_f64();
            fake.starts.lock().unwrap().push((id.clone(), at));
            {
                let mut active = fake.active.lock().unwrap();
                let now = active.entry(id.clone()).or_default();
                *now += 1;
                let mut max = fake.max_active.lock().unwrap();
                *max = (*max).max(*now);
            }
            tokio::time::sleep(fake.durations.get(&id).copied().unwrap_or_default()).await;
            *fake.active.lock().unwrap().get_mut(&id).unwrap() -= 1;
            fake.finished.fetch_add(1, Ordering::Relaxed);

            let mut summary = Summary::new(target.label());
            summary.outcome = Outcome::Synced;
            if fake.refuse_project.as_deref() == Some(target.key.project.as_str()) {
                summary.outcome = Outcome::Failed;
                summary.scope = Scope::Project;
            }
            summary
        })
    }
}

/// A wall clock that follows tokio's clock, plus jumps the test makes (a host that slept
/// while the monotonic clock stood still).
struct JumpClock {
    base: TokioClock,
    jump: Mutex<chrono::Duration>,
}

impl Clock for JumpClock {
    fn now(&self) -> DateTime<Utc> {
        self.base.now() + *self.jump.lock().unwrap()
    }
}

fn scheduler_with(runner: &Arc<FakeRunner>, clock: Arc<dyn Clock>) -> (Scheduler, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let shared = Shared::new(clock, metrics.clone(), Arc::new(runner.clone()));
    (Scheduler::new(Arc::new(shared)), metrics)
}

fn scheduler(runner: &Arc<FakeRunner>) -> (Scheduler, Arc<Metrics>) {
    scheduler_with(runner, Arc::new(TokioClock::starting_at(start_wall())))
}

/// Sleeps on the paused clock until `secs` after the runner's origin.
async fn until(runner: &FakeRunner, secs: f64) {
    tokio::time::sleep_until(runner.origin + Duration::from_secs_f64(secs)).await;
}

/// The value of a cohort's series in the rendered metrics.
fn metric(metrics: &Metrics, name: &str, cohort: &str) -> f64 {
    let label = format!("cohort=\"{cohort}\"");
    metrics
        .render()
        .lines()
        .find(|line| line.starts_with(&format!("{name}{{")) && line.contains(&label))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0.0, |value| value.parse().unwrap())
}

const EVERY_SECOND: &str = "* * * * * *";

#[tokio::test]
async fn a_fire_during_a_run_is_skipped_and_counted() {
    let rig = Rig::new().await;
    let runner = Arc::new(FakeRunner::new(&[("c1", 2.5)]));
    let (mut scheduler, metrics) = scheduler(&runner);
    scheduler.apply(rig.plans(&[("c1", EVERY_SECOND, "")]));

    until(&runner, 10.2).await;

    // Fires at 0.5, 1.5, ... 9.5; each run lasts 2.5 s, so two of every three are skipped.
    assert_eq!(runner.starts_of("c1"), vec![0.5, 3.5, 6.5, 9.5]);
    assert_eq!(runner.max_active(), 1);
    assert_eq!(
        metric(&metrics, "cohort_sync_skipped_fires_total", "c1"),
        6.0
    );
    assert_eq!(metric(&metrics, "cohort_sync_runs_total", "c1"), 3.0);
}

#[tokio::test]
async fn a_slow_cohort_does_not_delay_another() {
    let rig = Rig::new().await;
    let runner = Arc::new(FakeRunner::new(&[("slow", 100.0), ("fast", 0.1)]));
    let (mut scheduler, _metrics) = scheduler(&runner);
    scheduler.apply(rig.plans(&[("slow", EVERY_SECOND, ""), ("fast", EVERY_SECOND, "")]));

    until(&runner, 5.2).await;

    assert_eq!(runner.starts_of("slow"), vec![0.5]);
    assert_eq!(runner.starts_of("fast"), vec![0.5, 1.5, 2.5, 3.5, 4.5]);
}

#[tokio::test]
async fn missed_fires_after_the_host_slept_collapse_into_one_run() {
    let rig = Rig::new().await;
    let runner = Arc::new(FakeRunner::new(&[]));
    let clock = Arc::new(JumpClock {
        base: TokioClock::starting_at(Utc.with_ymd_and_hms(2025, 1, 6, 0, 0, 30).unwrap()),
        jump: Mutex::new(chrono::Duration::zero()),
    });
    let (mut scheduler, _metrics) = scheduler_with(&runner, clock.clone());
    scheduler.apply(rig.plans(&[("c1", "0 * * * * *", "")]));

    until(&runner, 40.0).await;
    assert_eq!(runner.starts_of("c1"), vec![30.0]);
    // The host sleeps an hour: sixty minute-fires are missed while no timer ran.
    *clock.jump.lock().unwrap() = chrono::Duration::hours(1);

    until(&runner, 100.0).await;
    // One catch-up run when the current sleep step ends, then back on the minute grid.
    assert_eq!(runner.starts_of("c1"), vec![30.0, 60.0, 90.0]);
}

#[tokio::test]
async fn a_changed_schedule_takes_effect_at_once() {
    let rig = Rig::new().await;
    let runner = Arc::new(FakeRunner::new(&[]));
    let (mut scheduler, _metrics) = scheduler(&runner);
    scheduler.apply(rig.plans(&[("c1", "0 0 0 * * *", "")]));

    until(&runner, 5.0).await;
    assert!(runner.starts_of("c1").is_empty());
    scheduler.apply(rig.plans(&[("c1", EVERY_SECOND, "")]));

    until(&runner, 7.0).await;
    assert_eq!(runner.starts_of("c1"), vec![5.5, 6.5]);
}

#[tokio::test]
async fn a_removed_cohort_finishes_its_run_and_a_readded_one_never_overlaps_it() {
    let rig = Rig::new().await;
    let runner = Arc::new(FakeRunner::new(&[("c1", 2.8)]));
    let (mut scheduler, metrics) = scheduler(&runner);
    scheduler.apply(rig.plans(&[("c1", EVERY_SECOND, "")]));

    until(&runner, 1.0).await;
    scheduler.apply(Vec::new());
    assert!(scheduler.is_empty());
    until(&runner, 5.0).await;
    assert_eq!(runner.starts_of("c1"), vec![0.5]);
    assert_eq!(runner.finished.load(Ordering::Relaxed), 1);

    // Remove it and add it again while a run is going.
    scheduler.apply(rig.plans(&[("c1", EVERY_SECOND, "")]));
    until(&runner, 5.7).await;
    scheduler.apply(Vec::new());
    scheduler.apply(rig.plans(&[("c1", EVERY_SECOND, "")]));
    until(&runner, 9.0).await;

    // The run from 5.5 lasts until 8.3: the new task's fires at 6.5 and 7.5 are skipped.
    assert_eq!(runner.starts_of("c1"), vec![0.5, 5.5, 8.5]);
    assert_eq!(runner.max_active(), 1);
    assert_eq!(
        metric(&metrics, "cohort_sync_skipped_fires_total", "c1"),
        2.0
    );
}

#[tokio::test]
async fn once_fires_at_start_and_again_only_when_its_entry_changes() {
    let rig = Rig::new().await;
    let runner = Arc::new(FakeRunner::new(&[]));
    let (mut scheduler, _metrics) = scheduler(&runner);
    scheduler.apply(rig.plans(&[("c1", "once", "")]));

    until(&runner, 5.0).await;
    scheduler.apply(rig.plans(&[("c1", "once", "")]));
    until(&runner, 10.0).await;
    scheduler.apply(rig.plans(&[("c1", "once", "name = \"Renamed\"")]));
    until(&runner, 20.0).await;

    assert_eq!(runner.starts_of("c1"), vec![0.0, 10.0]);
}

#[tokio::test]
async fn refused_credentials_hold_the_project_until_a_reload() {
    let rig = Rig::new().await;
    let mut fake = FakeRunner::new(&[("c1", 0.1), ("c2", 0.1)]);
    fake.refuse_project = Some("default".to_owned());
    let runner = Arc::new(fake);
    let (mut scheduler, metrics) = scheduler(&runner);
    let cohorts = [("c1", EVERY_SECOND, ""), ("c2", EVERY_SECOND, "")];
    scheduler.apply(rig.plans(&cohorts));

    until(&runner, 3.0).await;
    assert_eq!(runner.starts_of("c1"), vec![0.5]);
    assert_eq!(runner.starts_of("c2"), vec![0.5]);
    scheduler.apply(rig.plans(&cohorts));
    until(&runner, 3.7).await;

    assert_eq!(runner.starts_of("c1"), vec![0.5, 3.5]);
    assert_eq!(runner.starts_of("c2"), vec![0.5, 3.5]);
    assert_eq!(
        metric(&metrics, "cohort_sync_skipped_fires_total", "c1"),
        0.0
    );
}

#[tokio::test]
async fn shutdown_stops_firing_and_waits_for_runs_in_flight() {
    let rig = Rig::new().await;
    let runner = Arc::new(FakeRunner::new(&[("c1", 3.0)]));
    let (mut scheduler, _metrics) = scheduler(&runner);
    scheduler.apply(rig.plans(&[("c1", EVERY_SECOND, "")]));

    until(&runner, 1.0).await;
    let shared = scheduler.shared();
    shared.stop_firing.cancel();
    shared.stop_runs.cancel();
    shared.runs.close();
    shared.runs.wait().await;

    let waited = runner.origin.elapsed().as_secs_f64();
    assert!((3.5..3.6).contains(&waited), "waited until {waited}");
    assert_eq!(runner.finished.load(Ordering::Relaxed), 1);
    until(&runner, 10.0).await;
    assert_eq!(runner.starts_of("c1"), vec![0.5]);
}
