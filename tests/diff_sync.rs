//! Diff-based sync end to end: only adds and removes are pushed, failed batches are
//! sent again and never acknowledged early, `--full` repairs, and exports are spent only
//! when needed (unchanged cohorts, pending exports, the monthly budget).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cohort_sync::sandbox::{AmpEndpoint, FakeMember, FaultKind, OfOp, sample_members};
use cohort_sync::state::Store;
use cohort_sync::sync::{Engine, Outcome, RunOptions, Trigger};
use common::{World, cohort, cohort_toml, expected, ids_confirmed, ids_sent, text};
use tokio_util::sync::CancellationToken;

/// `count` members joining, with user ids distinct from [`sample_members`]'s.
fn joiners(count: usize, tag: &str) -> Vec<FakeMember> {
    (0..count)
        .map(|i| FakeMember::new(900_000_000 + i as u64, format!("{tag}-{i:06}")))
        .collect()
}

/// Drops the first `leave` members and appends `join`.
fn churn(members: &mut Vec<FakeMember>, leave: usize, join: &[FakeMember]) {
    members.drain(..leave);
    members.extend_from_slice(join);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_sends_exactly_the_difference() {
    let world = World::new(&cohort_toml("c1", "")).await;
    let mut members = sample_members(50_000, 0.0, 11);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    let first = world.cli(&["sync"]).await;
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );

    let join = joiners(1_000, "joiner");
    churn(&mut members, 1_000, &join);
    assert!(
        world
            .sandbox
            .update_members("c1", |m| churn(m, 1_000, &join))
    );
    let before = world.sandbox.oneflow_requests().len();
    let second = world.cli(&["sync"]).await;
    assert!(second.status.success(), "{}", text(&second));

    let requests = world.sandbox.oneflow_requests();
    let run = &requests[before..];
    assert_eq!(ids_sent(run, OfOp::Add), 1_000, "{run:?}");
    assert_eq!(ids_sent(run, OfOp::Remove), 1_000, "{run:?}");
    assert!(run.iter().all(|r| r.op != OfOp::Create), "{run:?}");
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        stdout.contains("sent +1000 -1000 (of +1000 -1000)"),
        "{stdout}"
    );
    assert_eq!(world.sandbox.export_requests("c1"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_cohort_starts_no_export_and_a_changed_one_does() {
    let world = World::new(&cohort_toml("c1", "")).await;
    let mut members = sample_members(2_000, 0.02, 3);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    let first = world.cli(&["sync"]).await;
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(world.sandbox.export_requests("c1"), 1);

    let before = world.sandbox.oneflow_requests().len();
    let again = world.cli(&["sync"]).await;
    assert!(again.status.success(), "{}", text(&again));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("c1: unchanged"), "{stdout}");
    assert_eq!(world.sandbox.export_requests("c1"), 1, "no export spent");
    assert_eq!(world.sandbox.oneflow_requests().len(), before);

    let join = joiners(5, "late");
    members.extend_from_slice(&join);
    world
        .sandbox
        .update_members("c1", |m| m.extend_from_slice(&join));
    let changed = world.cli(&["sync"]).await;
    assert!(changed.status.success(), "{}", text(&changed));
    let stdout = String::from_utf8_lossy(&changed.stdout);
    assert!(stdout.contains("c1: synced"), "{stdout}");
    assert_eq!(world.sandbox.export_requests("c1"), 2);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_adds_are_not_acknowledged_and_are_sent_again() {
    let world = World::with_keys(
        "",
        "max_retries = 1\nconcurrency = 2",
        &cohort_toml("c1", ""),
    )
    .await;
    let members = sample_members(20_000, 0.0, 5);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    world
        .sandbox
        .faults()
        .latency(OfOp::Add, Duration::from_millis(30));

    // Let a few batches through, then 1Flow answers 500 to every add.
    let child = world.spawn(&["sync"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while ids_confirmed(&world.sandbox.oneflow_requests(), OfOp::Add) < 4_000 {
        assert!(Instant::now() < deadline, "the push never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    world
        .sandbox
        .faults()
        .fail_next(OfOp::Add, 1_000_000, 500, None);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("c1: failed"), "{stdout}");
    assert!(stdout.contains("kept failing"), "{stdout}");
    assert!(world.sandbox.faults().fired(FaultKind::fail(OfOp::Add)) > 0);

    let requests = world.sandbox.oneflow_requests();
    let confirmed = ids_confirmed(&requests, OfOp::Add);
    assert!((4_000..20_000).contains(&confirmed), "{confirmed}");
    let list = world.list_id("c1").await;
    assert_eq!(world.sandbox.list_members(&list).len(), confirmed);
    let status = world.cohort_status("c1").await;
    assert_eq!(status["acknowledged"], confirmed as u64, "{status}");
    assert_eq!(status["last_run"]["result"], "failed", "{status}");
    assert!(status["pending_export"].is_object(), "{status}");

    // Healthy again: the rest goes, on the same export.
    world.sandbox.faults().reset();
    let before = requests.len();
    let healed = world.cli(&["sync"]).await;
    assert!(healed.status.success(), "{}", text(&healed));
    let run = &world.sandbox.oneflow_requests()[before..];
    assert_eq!(ids_sent(run, OfOp::Add), 20_000 - confirmed, "{run:?}");
    assert_eq!(ids_sent(run, OfOp::Remove), 0);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
    assert_eq!(world.sandbox.export_requests("c1"), 1);
    let status = world.cohort_status("c1").await;
    assert_eq!(status["acknowledged"], 20_000, "{status}");
    assert!(status["pending_export"].is_null(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_repairs_a_list_edited_on_the_oneflow_side() {
    let world = World::new(&cohort_toml("c1", "")).await;
    let members = sample_members(3_000, 0.0, 8);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    let first = world.cli(&["sync"]).await;
    assert!(first.status.success(), "{}", text(&first));

    let list = world.list_id("c1").await;
    let tampered: Vec<&str> = members[..250].iter().map(|m| m.user_id.as_str()).collect();
    assert_eq!(world.sandbox.remove_members(&list, &tampered), 250);

    // A plain sync trusts the acknowledged set: nothing moved, nothing is sent.
    let plain = world.cli(&["sync"]).await;
    assert!(plain.status.success(), "{}", text(&plain));
    assert_eq!(world.sandbox.list_members(&list).len(), 2_750);

    let full = world.cli(&["sync", "--full"]).await;
    assert!(full.status.success(), "{}", text(&full));
    assert_eq!(world.sandbox.list_members(&list), expected(&members));
    assert_eq!(world.sandbox.lists().len(), 1, "the same list is repaired");
    let status = world.cohort_status("c1").await;
    assert_eq!(status["acknowledged"], 3_000, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_link_is_downloaded_again_on_the_same_export() {
    let world = World::new(&cohort_toml("c1", "")).await;
    let members = sample_members(4_000, 0.01, 9);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    world.sandbox.faults().expire_next_links(1);

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(world.sandbox.faults().fired(FaultKind::ExpiredLink), 1);
    assert_eq!(world.sandbox.export_requests("c1"), 1);
    assert!(
        world.sandbox.s3_requests() >= 2,
        "the link was fetched again"
    );
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_refuses_sync_unless_forced() {
    let world = World::with_keys(
        "monthly_export_budget = 2\nexport_reserve = 0",
        "",
        &cohort_toml("c1", ""),
    )
    .await;
    let mut members = sample_members(1_000, 0.0, 2);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    for round in 0..2 {
        if round > 0 {
            let join = joiners(10, &format!("round{round}"));
            members.extend_from_slice(&join);
            world
                .sandbox
                .update_members("c1", |m| m.extend_from_slice(&join));
        }
        let output = world.cli(&["sync"]).await;
        assert!(output.status.success(), "{}", text(&output));
    }
    assert_eq!(world.sandbox.export_requests("c1"), 2);

    let synced = members.clone();
    let join = joiners(10, "over");
    members.extend_from_slice(&join);
    world
        .sandbox
        .update_members("c1", |m| m.extend_from_slice(&join));
    let refused = world.cli(&["sync"]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert!(stdout.contains("c1: skipped"), "{stdout}");
    assert!(stdout.contains("export budget"), "{stdout}");
    assert!(stdout.contains("(2 exports)"), "{stdout}");
    assert!(stdout.contains("--force"), "{stdout}");
    assert_eq!(world.sandbox.export_requests("c1"), 2);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&synced))
    );

    let forced = world.cli(&["sync", "--force"]).await;
    assert!(forced.status.success(), "{}", text(&forced));
    assert_eq!(world.sandbox.export_requests("c1"), 3);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
    let status = world.status_json().await;
    assert_eq!(status["quota"][0]["exports_used"], 3, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_keep_the_reserve() {
    let world = World::with_keys(
        "monthly_export_budget = 3\nexport_reserve = 1",
        "",
        &cohort_toml("c1", ""),
    )
    .await;
    let mut members = sample_members(1_000, 0.0, 4);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    let config = cohort_sync::config::load(&world.config, &HashMap::new()).expect("config loads");
    let store = Store::open_sqlite(&world.state_path())
        .await
        .expect("store opens");
    let engine = Engine::new(&config, store, "scheduler-test").expect("engine builds");

    let scheduled = RunOptions::new(Trigger::Scheduled, CancellationToken::new());
    for round in 0..3 {
        if round > 0 {
            let join = joiners(10, &format!("round{round}"));
            members.extend_from_slice(&join);
            world
                .sandbox
                .update_members("c1", |m| m.extend_from_slice(&join));
        }
        let summaries = engine.pass(&engine.targets, &scheduled).await;
        let summary = &summaries[0];
        if round < 2 {
            assert_eq!(summary.outcome, Outcome::Synced, "{}", summary.line());
            continue;
        }
        // Two of three used: the third is the reserve, which a schedule never touches.
        assert_eq!(summary.outcome, Outcome::Skipped, "{}", summary.line());
        let error = summary.error.as_deref().unwrap_or_default();
        assert!(error.contains("reserve"), "{error}");
        assert!(error.contains("export budget"), "{error}");
    }
    assert_eq!(world.sandbox.export_requests("c1"), 2);

    let manual = RunOptions::new(Trigger::Manual, CancellationToken::new());
    let summaries = engine.pass(&engine.targets, &manual).await;
    assert_eq!(
        summaries[0].outcome,
        Outcome::Synced,
        "{}",
        summaries[0].line()
    );
    assert_eq!(world.sandbox.export_requests("c1"), 3);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_export_is_reused_after_a_failed_download() {
    let world = World::with_keys("max_retries = 1", "", &cohort_toml("c1", "")).await;
    let members = sample_members(3_000, 0.0, 6);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    world
        .sandbox
        .faults()
        .fail_next(AmpEndpoint::File, 100, 500, None);

    let failed = world.cli(&["sync"]).await;
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert_eq!(world.sandbox.export_requests("c1"), 1);
    assert!(
        world.sandbox.oneflow_requests().is_empty(),
        "nothing pushed"
    );
    let status = world.cohort_status("c1").await;
    let request_id = status["pending_export"]["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a pending export in {status}"))
        .to_owned();
    let shown = world.cli(&["status"]).await;
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!("pending export:  {request_id}")),
        "{shown}"
    );

    world.sandbox.faults().reset();
    let healed = world.cli(&["sync"]).await;
    assert!(healed.status.success(), "{}", text(&healed));
    assert_eq!(
        world.sandbox.export_requests("c1"),
        1,
        "the export is reused"
    );
    assert!(world.sandbox.file_requests(&request_id) >= 3);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
    let status = world.cohort_status("c1").await;
    assert!(status["pending_export"].is_null(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_export_is_reused_after_an_export_timeout() {
    let world = World::new(&cohort_toml("c1", "")).await;
    // export_timeout is 20 s in the base config; make it short with an override.
    let mut command = world.command(&["sync"]);
    command.env("COHORT_SYNC__AMPLITUDE__EXPORT_TIMEOUT", "300ms");
    let members = sample_members(1_500, 0.0, 12);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    world.sandbox.faults().set_never_complete(true);

    let failed = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let status = world.cohort_status("c1").await;
    assert!(status["pending_export"].is_object(), "{status}");

    world.sandbox.faults().set_never_complete(false);
    let healed = world.cli(&["sync"]).await;
    assert!(healed.status.success(), "{}", text(&healed));
    assert_eq!(world.sandbox.export_requests("c1"), 1);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_runs_members_pending_export_and_quota() {
    let world = World::new(&cohort_toml("c1", "name = \"Buyers\"")).await;
    let never = world.status_json().await;
    assert!(never["cohorts"][0]["last_run"].is_null(), "{never}");
    assert_eq!(never["quota"][0]["exports_used"], 0, "{never}");

    let mut members = sample_members(5_000, 0.0, 13);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    let first = world.cli(&["sync"]).await;
    assert!(first.status.success(), "{}", text(&first));
    let join = joiners(120, "joiner");
    churn(&mut members, 80, &join);
    world.sandbox.update_members("c1", |m| churn(m, 80, &join));
    let second = world.cli(&["sync"]).await;
    assert!(second.status.success(), "{}", text(&second));

    let status = world.status_json().await;
    let quota = &status["quota"][0];
    assert_eq!(quota["exports_used"], 2, "{status}");
    assert_eq!(quota["budget"], 500, "{status}");
    let c1 = &status["cohorts"][0];
    assert_eq!(c1["acknowledged"], 5_040, "{status}");
    assert!(c1["pending_export"].is_null(), "{status}");
    let last = &c1["last_run"];
    assert_eq!(last["result"], "synced", "{status}");
    assert_eq!(last["adds"], 120, "{status}");
    assert_eq!(last["removes"], 80, "{status}");
    assert_eq!(last["members"], 5_040, "{status}");
    assert!(c1["last_success"].is_string(), "{status}");

    let output = world.cli(&["status"]).await;
    assert!(output.status.success(), "{}", text(&output));
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(shown.contains(": 2 of 500 used"), "{shown}");
    assert!(shown.contains("acknowledged:    5040"), "{shown}");
    assert!(shown.contains("last run:        synced at"), "{shown}");
    assert!(shown.contains("+120 -80"), "{shown}");
    assert!(!shown.contains("pending export"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_removes_stay_acknowledged_until_confirmed() {
    let world = World::with_keys("", "max_retries = 1", &cohort_toml("c1", "")).await;
    let mut members = sample_members(2_000, 0.0, 14);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    let first = world.cli(&["sync"]).await;
    assert!(first.status.success(), "{}", text(&first));

    let join = joiners(300, "joiner");
    churn(&mut members, 400, &join);
    world.sandbox.update_members("c1", |m| churn(m, 400, &join));
    world
        .sandbox
        .faults()
        .fail_next(OfOp::Remove, 1_000, 503, None);
    let failed = world.cli(&["sync"]).await;
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    // The adds were confirmed and acknowledged; the removes were not.
    let status = world.cohort_status("c1").await;
    assert_eq!(status["acknowledged"], 2_300, "{status}");
    assert_eq!(status["last_run"]["adds"], 300, "{status}");
    assert_eq!(status["last_run"]["removes"], 0, "{status}");

    world.sandbox.faults().reset();
    let before = world.sandbox.oneflow_requests().len();
    let healed = world.cli(&["sync"]).await;
    assert!(healed.status.success(), "{}", text(&healed));
    let run = &world.sandbox.oneflow_requests()[before..];
    assert_eq!(ids_sent(run, OfOp::Add), 0, "{run:?}");
    assert_eq!(ids_sent(run, OfOp::Remove), 400, "{run:?}");
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
    assert_eq!(world.cohort_status("c1").await["acknowledged"], 1_900);
}
