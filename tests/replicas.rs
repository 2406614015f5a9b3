//! Several replicas over one PostgreSQL database: `cohort-sync run` processes sharing a
//! schema and a sandbox. Each cohort runs on one replica at a time, a killed replica's
//! cohort is taken over once its lease expires, the export budget holds across replicas,
//! two processes with one replica name never share a lease, and a replica whose lease was
//! taken over fails its next write instead of overwriting.
//!
//! They need PostgreSQL on 127.0.0.1:5432 (database `test`, trust authentication), and
//! fail when it is unreachable. Each test works in a schema of its own, dropped after.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cohort_sync::sandbox::{OfOp, sample_members};
use cohort_sync::state::{CohortKey, Store};
use cohort_sync::sync::{Engine, Outcome, RunOptions, Trigger};
use common::daemon::Daemon;
use common::{World, cohort, expected};
use serde_json::Value;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

/// The PostgreSQL the tests use.
const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Every other second: fast enough for tests, slow enough for runs to overlap fires.
const EVERY_2S: &str = "*/2 * * * * *";

/// The longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(20);

/// A schema of its own for one test, dropped when the test ends (even by panic).
struct Schema {
    name: String,
}

impl Schema {
    /// Creates a fresh schema; panics (failing the test) when PostgreSQL is unreachable.
    async fn create() -> Schema {
        let name = format!("replicas_{}_{:016x}", std::process::id(), fastrand::u64(..));
        let mut conn = sqlx::PgConnection::connect(POSTGRES_URL)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL at {POSTGRES_URL} is unreachable; these tests need it: {e}")
            });
        sqlx::raw_sql(&format!("CREATE SCHEMA \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("create the test schema");
        conn.close().await.expect("close");
        Schema { name }
    }

    /// The state URL that selects this schema.
    fn url(&self) -> String {
        format!("{POSTGRES_URL}?options=-csearch_path%3D{}", self.name)
    }

    /// Every run recorded in the schema: (cohort, started, finished, holder, result).
    async fn runs(&self) -> Vec<(String, i64, Option<i64>, String, String)> {
        let mut conn = sqlx::PgConnection::connect(&self.url()).await.unwrap();
        sqlx::query_as(
            "SELECT cohort_id, started_at, finished_at, holder, result FROM runs \
             ORDER BY cohort_id, started_at",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        // Drop may run inside the test's runtime, which cannot be blocked on: use another.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(POSTGRES_URL).await.ok()?;
                sqlx::raw_sql(&sql).execute(&mut conn).await.ok()?;
                conn.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop schema {}", self.name);
        }
    }
}

/// A sandbox world whose state is the PostgreSQL schema, with `state_keys` (TOML lines)
/// added to `[state]`.
async fn world(schema: &Schema, amplitude_keys: &str, state_keys: &str, cohorts: &str) -> World {
    let world = World::with_keys(amplitude_keys, "", "").await;
    write_config(&world, schema, state_keys, cohorts);
    world
}

fn write_config(world: &World, schema: &Schema, state_keys: &str, cohorts: &str) {
    let state = format!("url = \"{}\"\n{state_keys}", schema.url());
    let base = world.base_toml().replace("path = \"state.db\"\n", &state);
    world.write_config_with_base(&base, cohorts);
}

/// A `[[cohorts]]` entry firing every other second.
fn fast_cohort(id: &str) -> String {
    format!("[[cohorts]]\namplitude_id = \"{id}\"\nschedule = \"{EVERY_2S}\"\n\n")
}

/// A running `cohort-sync run` as replica `name`: the shared daemon harness with
/// `COHORT_SYNC_REPLICA` set.
type Replica = Daemon;

fn start_replica(world: &World, name: &str, env: &[(&str, &str)]) -> Replica {
    let mut env = env.to_vec();
    env.push(("COHORT_SYNC_REPLICA", name));
    Daemon::start(world, &env)
}

fn logs(replicas: &[&Replica]) -> String {
    replicas
        .iter()
        .map(|r| r.log_text())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until the sandbox's list of every cohort in `want` holds exactly its members.
async fn wait_all_members(
    world: &World,
    want: &BTreeMap<String, BTreeSet<String>>,
    replicas: &[&Replica],
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let wrong: Vec<&String> = want
            .iter()
            .filter(|(id, members)| world.sandbox.members_of_cohort(id).as_ref() != Some(members))
            .map(|(id, _)| id)
            .collect();
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cohorts {wrong:?} do not hold their members:\n{}",
            logs(replicas)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Panics when two recorded runs of one cohort overlap in time.
fn assert_no_overlap(runs: &[(String, i64, Option<i64>, String, String)]) {
    let mut by_cohort: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
    for (cohort, started, finished, _, result) in runs {
        let finished = finished.unwrap_or_else(|| panic!("{cohort}: a run still {result}"));
        by_cohort
            .entry(cohort)
            .or_default()
            .push((*started, finished));
    }
    for (cohort, mut spans) in by_cohort {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{cohort}: runs {:?} and {:?} overlap",
                pair[0],
                pair[1]
            );
        }
    }
}

/// The replica names recorded as the holders of runs.
fn run_holders(runs: &[(String, i64, Option<i64>, String, String)]) -> BTreeSet<String> {
    runs.iter()
        .map(|(_, _, _, holder, _)| cohort_sync::state::replica_name(holder).to_owned())
        .collect()
}

/// Lists created per cohort id in the default 1Flow account.
fn lists_per_cohort(world: &World) -> BTreeMap<String, usize> {
    let mut lists = BTreeMap::new();
    for list in world.sandbox.lists() {
        *lists.entry(list.cohort_id.unwrap_or_default()).or_insert(0) += 1;
    }
    lists
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sync_every_cohort_once_per_change_never_twice_at_once() {
    let schema = Schema::create().await;
    let ids: Vec<String> = (0..20).map(|i| format!("r{i:02}")).collect();
    let toml: String = ids.iter().map(|id| fast_cohort(id)).collect();
    let world = world(&schema, "", "", &toml).await;
    // Slow enough that both replicas reach each changed cohort while one of them runs it.
    world
        .sandbox
        .faults()
        .set_oneflow_latency(Duration::from_millis(150));

    let mut a = start_replica(&world, "replica-a", &[]);
    let mut b = start_replica(&world, "replica-b", &[]);
    a.started().await;
    b.started().await;
    let mut want = BTreeMap::new();
    let mut members = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let list = sample_members(60, 0.0, 100 + i as u64);
        want.insert(id.clone(), expected(&list));
        members.insert(id.clone(), list.clone());
        world.sandbox.put_cohort(cohort(id, list));
    }
    wait_all_members(&world, &want, &[&a, &b]).await;

    let changed = ["r03", "r07", "r11", "r15"];
    for id in changed {
        let mut list = members[id].clone();
        list.truncate(40);
        list.extend(sample_members(80, 0.0, 7).into_iter().skip(60));
        want.insert(id.to_owned(), expected(&list));
        world.sandbox.update_members(id, |m| *m = list.clone());
    }
    wait_all_members(&world, &want, &[&a, &b]).await;
    // Two more fires on each replica: none may export or push again.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let requests = world.sandbox.oneflow_requests().len();
    a.stop().await;
    b.stop().await;

    for id in &ids {
        let changes = if changed.contains(&id.as_str()) { 2 } else { 1 };
        assert_eq!(
            world.sandbox.export_requests(id),
            changes,
            "{id}\n{}",
            logs(&[&a, &b])
        );
    }
    assert!(
        lists_per_cohort(&world).values().all(|&n| n == 1),
        "{:?}",
        lists_per_cohort(&world)
    );
    assert_eq!(lists_per_cohort(&world).len(), 20);
    // Every id was added once and the four changes removed 20 each: nothing was sent twice.
    let sent = world.sandbox.oneflow_requests();
    assert_eq!(sent.len(), requests, "nothing was sent while stopping");
    assert_eq!(common::ids_sent(&sent, OfOp::Add), 20 * 60 + 4 * 20);
    assert_eq!(common::ids_sent(&sent, OfOp::Remove), 4 * 20);
    wait_all_members(&world, &want, &[&a, &b]).await;

    let runs = schema.runs().await;
    assert_no_overlap(&runs);
    let synced: usize = runs.iter().filter(|r| r.4 == "synced").count();
    assert_eq!(synced, 24, "{runs:?}");
    // Both replicas fire every cohort at the same instants, so both win some leases.
    let holders = run_holders(&runs);
    let both: BTreeSet<String> = ["replica-a".to_owned(), "replica-b".to_owned()].into();
    assert_eq!(holders, both, "{runs:?}");
    // A cohort whose lease the other replica held was skipped, never run alongside.
    let skipped = |r: &Replica| {
        r.count_logs(|v| {
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("holds this cohort's lease"))
        })
    };
    eprintln!(
        "runs by holder: {:?}; lease skips: a {}, b {}",
        runs.iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(cohort_sync::state::replica_name(&r.3).to_owned())
                .or_insert(0) += 1;
            m
        }),
        skipped(&a),
        skipped(&b)
    );

    let status = world.status_json().await;
    for entry in status["cohorts"].as_array().unwrap() {
        let holder = entry["last_run"]["holder"].as_str().unwrap_or_default();
        assert!(holders.contains(holder), "{entry}");
        assert!(entry["lease"].is_null(), "released at stop: {entry}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_cohort_is_finished_by_the_other_after_its_lease_expires() {
    let schema = Schema::create().await;
    let world = world(&schema, "", "lease_ttl = \"3s\"\n", &fast_cohort("k1")).await;
    let members = sample_members(1200, 0.0, 21);
    world
        .sandbox
        .faults()
        .set_oneflow_latency(Duration::from_millis(400));
    let small_batches = [
        ("COHORT_SYNC__ONEFLOW__BATCH_SIZE", "100"),
        ("COHORT_SYNC__ONEFLOW__CONCURRENCY", "1"),
    ];
    let mut a = start_replica(&world, "replica-a", &small_batches);
    let mut b = start_replica(&world, "replica-b", &small_batches);
    let addr_a = a.started().await;
    let addr_b = b.started().await;
    world.sandbox.put_cohort(cohort("k1", members.clone()));

    // Wait for a confirmed batch, then kill whichever replica holds the lease.
    let deadline = Instant::now() + WAIT;
    while common::ids_confirmed(&world.sandbox.oneflow_requests(), OfOp::Add) == 0 {
        assert!(Instant::now() < deadline, "{}", logs(&[&a, &b]));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = world.cohort_status("k1").await;
    let holder = status["lease"]["holder"].as_str().unwrap_or_default();
    assert!(
        status["lease"]["process"]
            .as_str()
            .unwrap()
            .starts_with(holder)
    );
    // The holder's metrics say it holds the lease; the other's say it holds none.
    let (holds, idle) = if holder == a.name {
        (&addr_a, &addr_b)
    } else {
        (&addr_b, &addr_a)
    };
    assert_eq!(leases_held(holds).await, 1.0, "{status}");
    assert_eq!(leases_held(idle).await, 0.0, "{status}");
    let (dead, survivor) = match holder {
        "replica-a" => (&mut a, &mut b),
        "replica-b" => (&mut b, &mut a),
        other => panic!("lease held by {other:?}: {status}"),
    };
    let killed_at = Instant::now();
    dead.kill();
    let partial = world.sandbox.members_of_cohort("k1").unwrap_or_default();
    assert!(partial.len() < 1200, "killed mid-run: {}", partial.len());
    world
        .sandbox
        .faults()
        .set_oneflow_latency(Duration::from_millis(20));

    let want = [("k1".to_owned(), expected(&members))].into();
    wait_all_members(&world, &want, &[survivor]).await;
    // It waited for the lease to expire (renewed a third of 3 s before the kill).
    assert!(
        killed_at.elapsed() >= Duration::from_secs(1),
        "taken over too early"
    );
    survivor
        .wait_log("of the finishing run", |v| {
            v["message"] == "Run finished." && v["result"] == "synced"
        })
        .await;
    assert!(
        survivor.count_logs(|v| v["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("another replica ({holder}) holds"))))
            >= 1,
        "the survivor was refused while the lease was alive:\n{}",
        survivor.log_text()
    );
    survivor.stop().await;

    // The takeover resumed the pending export and sent only what was not confirmed.
    assert_eq!(world.sandbox.export_requests("k1"), 1);
    assert_eq!(world.sandbox.lists().len(), 1);
    let confirmed = common::ids_confirmed(&world.sandbox.oneflow_requests(), OfOp::Add);
    assert!(
        (1200..=1300).contains(&confirmed),
        "at most the batch in flight is sent again: {confirmed}"
    );
    let status = world.cohort_status("k1").await;
    assert_eq!(status["last_run"]["holder"], survivor.name, "{status}");
    assert_eq!(status["last_run"]["result"], "synced", "{status}");
    assert_eq!(status["acknowledged"], 1200, "{status}");
}

/// The `cohort_sync_leases_held` gauge of the daemon at `addr`.
async fn leases_held(addr: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("cohort_sync_leases_held "))
        .unwrap_or_else(|| panic!("no leases gauge in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_racing_for_the_last_exports_stay_within_the_budget() {
    let schema = Schema::create().await;
    let ids: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();
    let toml: String = ids.iter().map(|id| fast_cohort(id)).collect();
    let budget = "monthly_export_budget = 5\nexport_reserve = 0";
    let world = world(&schema, budget, "", &toml).await;
    let mut a = start_replica(&world, "replica-a", &[]);
    let mut b = start_replica(&world, "replica-b", &[]);
    a.started().await;
    b.started().await;
    for (i, id) in ids.iter().enumerate() {
        world
            .sandbox
            .put_cohort(cohort(id, sample_members(30, 0.0, 300 + i as u64)));
    }

    // Both replicas keep firing every cohort; only five ever get an export.
    let spent = |r: &Replica| {
        r.count_logs(|v| {
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("export budget") && e.contains("is spent"))
        })
    };
    let deadline = Instant::now() + WAIT;
    while spent(&a) + spent(&b) < 10 || spent(&a) == 0 || spent(&b) == 0 {
        assert!(Instant::now() < deadline, "{}", logs(&[&a, &b]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.stop().await;
    b.stop().await;

    let exports: usize = ids.iter().map(|id| world.sandbox.export_requests(id)).sum();
    assert_eq!(exports, 5, "{}", logs(&[&a, &b]));
    let status = world.status_json().await;
    assert_eq!(status["quota"][0]["exports_used"], 5, "{status}");
    let synced: Vec<&Value> = status["cohorts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["last_run"]["result"] == "synced")
        .collect();
    assert_eq!(synced.len(), 5, "{status}");
    for entry in synced {
        let id = entry["amplitude_id"].as_str().unwrap();
        assert_eq!(world.sandbox.export_requests(id), 1, "{id}");
        assert_eq!(
            world.sandbox.members_of_cohort(id).map(|m| m.len()),
            Some(30)
        );
    }
    assert_eq!(world.sandbox.lists().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_one_replica_name_never_share_a_lease() {
    let schema = Schema::create().await;
    let world = world(&schema, "", "", &fast_cohort("s1")).await;
    // Each run lasts about three seconds, so every fire finds the other process running.
    world
        .sandbox
        .faults()
        .set_oneflow_latency(Duration::from_millis(300));
    let small_batches = [
        ("COHORT_SYNC__ONEFLOW__BATCH_SIZE", "100"),
        ("COHORT_SYNC__ONEFLOW__CONCURRENCY", "1"),
    ];
    let mut first = start_replica(&world, "same-host", &small_batches);
    let mut second = start_replica(&world, "same-host", &small_batches);
    first.started().await;
    second.started().await;
    let members = sample_members(900, 0.0, 31);
    world.sandbox.put_cohort(cohort("s1", members.clone()));

    let want = [("s1".to_owned(), expected(&members))].into();
    wait_all_members(&world, &want, &[&first, &second]).await;
    let refused = |r: &Replica| {
        r.count_logs(|v| {
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("another process of this replica (same-host)"))
        })
    };
    let deadline = Instant::now() + WAIT;
    while refused(&first) + refused(&second) == 0 {
        assert!(Instant::now() < deadline, "{}", logs(&[&first, &second]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.stop().await;
    second.stop().await;

    assert_eq!(world.sandbox.export_requests("s1"), 1);
    assert_eq!(world.sandbox.lists().len(), 1);
    let sent = world.sandbox.oneflow_requests();
    assert_eq!(
        common::ids_sent(&sent, OfOp::Add),
        900,
        "no batch sent twice"
    );
    let runs = schema.runs().await;
    assert_no_overlap(&runs);
    assert_eq!(run_holders(&runs), ["same-host".to_owned()].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lease_was_taken_over_fails_its_next_write_instead_of_overwriting() {
    let schema = Schema::create().await;
    let world = world(&schema, "", "lease_ttl = \"3s\"\n", &fast_cohort("f1")).await;
    let members = sample_members(1000, 0.0, 41);
    world.sandbox.put_cohort(cohort("f1", members.clone()));
    world
        .sandbox
        .faults()
        .set_oneflow_latency(Duration::from_millis(250));
    let env = HashMap::from([
        (
            "COHORT_SYNC__ONEFLOW__BATCH_SIZE".to_owned(),
            "100".to_owned(),
        ),
        (
            "COHORT_SYNC__ONEFLOW__CONCURRENCY".to_owned(),
            "1".to_owned(),
        ),
    ]);
    let config = cohort_sync::config::load(&world.config, &env).expect("config loads");

    // Replica a runs on the wall clock; replica b's clock is an hour ahead, so a's live
    // lease looks expired to b, as it would after a pause longer than the TTL.
    let store_a = Store::open_postgres(&schema.url()).await.unwrap();
    let ahead: cohort_sync::state::Clock =
        Arc::new(|| chrono::Utc::now().timestamp_millis() + 3_600_000);
    let store_b = Store::open_postgres(&schema.url())
        .await
        .unwrap()
        .with_clock(ahead);
    let engine_a = Arc::new(Engine::new(&config, store_a.clone(), "a#0000000000000001").unwrap());
    let engine_b = Engine::new(&config, store_b.clone(), "b#0000000000000002").unwrap();

    let run_a = {
        let engine = engine_a.clone();
        tokio::spawn(async move {
            let options = RunOptions::new(Trigger::Scheduled, CancellationToken::new());
            engine.pass(&engine.targets, &options).await
        })
    };
    let deadline = Instant::now() + WAIT;
    while common::ids_confirmed(&world.sandbox.oneflow_requests(), OfOp::Add) < 200 {
        assert!(
            Instant::now() < deadline,
            "replica a never confirmed two batches"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let options = RunOptions::new(Trigger::Scheduled, CancellationToken::new());
    let summary_b = engine_b.pass(&engine_b.targets, &options).await.remove(0);
    assert_eq!(summary_b.outcome, Outcome::Synced, "{summary_b:?}");
    let summary_a = run_a.await.unwrap().remove(0);
    assert_eq!(summary_a.outcome, Outcome::Failed, "{summary_a:?}");
    let error = summary_a.error.clone().unwrap_or_default();
    assert!(error.contains("lost the lease"), "{error}");

    // b's state stands: a's refused writes changed nothing after the takeover.
    let key = CohortKey::single("f1");
    let state = store_a.cohort(&key).await.unwrap();
    assert_eq!(state.acknowledged, 1000);
    assert_eq!(
        state.journal_batches, 0,
        "b compacted; a journaled nothing after"
    );
    assert!(state.pending.is_none());
    let acknowledged = store_a.load_acknowledged(&key).await.unwrap();
    assert_eq!(acknowledged.len(), 1000);
    assert_eq!(
        world.sandbox.members_of_cohort("f1"),
        Some(expected(&members))
    );
    assert_eq!(
        world.sandbox.export_requests("f1"),
        1,
        "b reused a's export"
    );
    let runs = schema.runs().await;
    let by = |holder: &str| {
        runs.iter()
            .filter(|r| r.3 == holder)
            .map(|r| r.4.as_str())
            .collect::<Vec<_>>()
    };
    // a's run record could not be finished either: it stays as a's start.
    assert_eq!(by("a#0000000000000001"), ["running"], "{runs:?}");
    assert_eq!(by("b#0000000000000002"), ["synced"], "{runs:?}");
    store_a.close().await;
    store_b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_read_the_state_before_another_run_finished_does_not_repeat_it() {
    let schema = Schema::create().await;
    let world = world(&schema, "", "", &fast_cohort("d1")).await;
    let members = sample_members(300, 0.0, 51);
    world.sandbox.put_cohort(cohort("d1", members.clone()));
    let config = cohort_sync::config::load(&world.config, &HashMap::new()).unwrap();

    // Replica b's store clock is first read when b takes the lease, after b read the
    // state: hold b there until replica a has run the cohort from start to end.
    let (waiting, released) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let clock: cohort_sync::state::Clock = {
        let (waiting, released) = (waiting.clone(), released.clone());
        Arc::new(move || {
            waiting.store(true, Ordering::SeqCst);
            while !released.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            chrono::Utc::now().timestamp_millis()
        })
    };
    // b blocks its thread while it waits, so it runs on a thread and runtime of its own.
    let run_b = {
        let (config, url) = (config.clone(), schema.url());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let store = Store::open_postgres(&url).await.unwrap().with_clock(clock);
                let engine = Engine::new(&config, store.clone(), "b#0000000000000002").unwrap();
                let options = RunOptions::new(Trigger::Scheduled, CancellationToken::new());
                let summary = engine.pass(&engine.targets, &options).await.remove(0);
                store.close().await;
                summary
            })
        })
    };
    let store_a = Store::open_postgres(&schema.url()).await.unwrap();
    let engine_a = Engine::new(&config, store_a.clone(), "a#0000000000000001").unwrap();
    let deadline = Instant::now() + WAIT;
    while !waiting.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "replica b never reached its lease"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let options = RunOptions::new(Trigger::Scheduled, CancellationToken::new());
    let summary_a = engine_a.pass(&engine_a.targets, &options).await.remove(0);
    assert_eq!(summary_a.outcome, Outcome::Synced, "{summary_a:?}");
    released.store(true, Ordering::SeqCst);

    let summary_b = tokio::task::spawn_blocking(move || run_b.join().unwrap())
        .await
        .unwrap();
    assert_eq!(summary_b.outcome, Outcome::Unchanged, "{summary_b:?}");
    assert_eq!(summary_b.acknowledged, 300);
    assert_eq!(world.sandbox.export_requests("d1"), 1);
    assert_eq!(world.sandbox.lists().len(), 1);
    assert_eq!(
        world.sandbox.members_of_cohort("d1"),
        Some(expected(&members))
    );
    store_a.close().await;
}

/// A TCP proxy to PostgreSQL that the test can cut (closing every connection and refusing
/// new ones) and restore, to play a database outage.
struct Proxy {
    port: u16,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (gate, tasks) = (open.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !gate.load(Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(task);
            }
        });
        Proxy {
            port,
            open,
            connections,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

async fn readyz(addr: &str) -> u16 {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_runs_fail_and_readyz_is_503_then_all_resumes() {
    let schema = Schema::create().await;
    let proxy = Proxy::start().await;
    let world = World::with_keys("", "", "").await;
    let url = schema.url().replace(":5432/", &format!(":{}/", proxy.port));
    let base = world
        .base_toml()
        .replace("path = \"state.db\"\n", &format!("url = \"{url}\"\n"));
    world.write_config_with_base(&base, &fast_cohort("o1"));
    let members = sample_members(100, 0.0, 61);
    world.sandbox.put_cohort(cohort("o1", members.clone()));
    let mut replica = start_replica(&world, "replica-a", &[]);
    let addr = replica.started().await;
    let want = [("o1".to_owned(), expected(&members))].into();
    wait_all_members(&world, &want, &[&replica]).await;
    // The first run must have finished (its compaction written) before the cut.
    replica
        .wait_log("of the first run finishing", |v| {
            v["message"] == "Run finished."
        })
        .await;
    assert_eq!(readyz(&addr).await, 200);

    proxy.cut();
    let mut changed = members.clone();
    changed.truncate(70);
    world.sandbox.update_members("o1", |m| *m = changed.clone());
    let deadline = Instant::now() + WAIT;
    while readyz(&addr).await != 503 {
        assert!(Instant::now() < deadline, "{}", replica.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = replica
        .wait_log("of a run failing on the state store", |v| {
            v["message"] == "Run failed."
                && v["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("state store"))
        })
        .await;
    assert_eq!(
        failed["exported"], false,
        "no export is spent while down: {failed}"
    );
    assert_eq!(
        world.sandbox.members_of_cohort("o1"),
        Some(expected(&members))
    );

    proxy.restore();
    let want = [("o1".to_owned(), expected(&changed))].into();
    wait_all_members(&world, &want, &[&replica]).await;
    assert_eq!(readyz(&addr).await, 200);
    replica.stop().await;
    assert_eq!(world.sandbox.export_requests("o1"), 2);
    let status = world.cohort_status("o1").await;
    assert_eq!(status["acknowledged"], 70, "{status}");
}
