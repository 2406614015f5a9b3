//! 1Flow-side faults end to end: ids too long, a refused batch, retries running out,
//! long throttling, bodies too large, a list deleted behind our back. Each against the
//! sandbox, with the real binary.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cohort_sync::sandbox::{FakeMember, FaultKind, OfOp, sample_members};
use common::{World, all_output, cohort, cohort_toml, expected, text};

/// A world with one cohort `c1` of `count` named members and these `[oneflow]` keys.
async fn world_with(count: usize, oneflow: &[&str]) -> (World, Vec<FakeMember>) {
    let world = World::new("").await;
    world.write_tuned(&[], oneflow, &cohort_toml("c1", ""));
    let members = sample_members(count, 0.0, 21);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    (world, members)
}

/// Ids in the add requests 1Flow answered 200, counted from request `from` on.
fn confirmed_adds(world: &World, from: usize) -> usize {
    world.sandbox.oneflow_requests()[from..]
        .iter()
        .filter(|r| r.op == OfOp::Add && r.status == 200)
        .map(|r| r.ids)
        .sum()
}

/// After a run that stopped partway: what 1Flow holds is exactly what was confirmed,
/// the state acknowledges exactly that, and the next run sends only the rest.
async fn partial_run_resumes_with_the_rest(world: &World, members: &[FakeMember], done: usize) {
    let held = world.sandbox.members_of_cohort("c1").unwrap_or_default();
    assert_eq!(held.len(), done);
    assert_eq!(confirmed_adds(world, 0), done);
    let status = world.status_json().await;
    assert_eq!(status["cohorts"][0]["acknowledged"], done, "{status}");
    assert!(
        !status["cohorts"][0]["pending_export"].is_null(),
        "{status}"
    );

    let before = world.sandbox.oneflow_requests().len();
    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(confirmed_adds(world, before), members.len() - done);
    assert_eq!(world.sandbox.export_requests("c1"), 1);
    assert_eq!(world.sandbox.lists().len(), 1);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(members))
    );
}

const ONE_AT_A_TIME: [&str; 2] = ["batch_size = 100", "concurrency = 1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_over_1024_bytes_is_skipped_and_its_batch_still_sent() {
    let world = World::new(&cohort_toml("c1", "")).await;
    let mut members = sample_members(300, 0.0, 8);
    let longest = "y".repeat(1024);
    members.push(FakeMember::new(1, longest.clone()));
    members.push(FakeMember::new(2, "x".repeat(1025)));
    world.sandbox.put_cohort(cohort("c1", members.clone()));

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    let mut want = expected(&members[..300]);
    want.insert(longest);
    assert_eq!(world.sandbox.members_of_cohort("c1"), Some(want));
    let adds: Vec<_> = world
        .sandbox
        .oneflow_requests()
        .into_iter()
        .filter(|r| r.op == OfOp::Add)
        .collect();
    assert_eq!(adds.len(), 1, "{adds:?}");
    assert_eq!((adds[0].ids, adds[0].status), (301, 200));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("1 invalid"), "{stdout}");
    assert!(stdout.contains("sent +301 -0"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_on_one_batch_fails_the_run_and_keeps_the_confirmed_batches() {
    let (world, members) = world_with(1000, &ONE_AT_A_TIME).await;
    world
        .sandbox
        .faults()
        .fail_next_after(OfOp::Add, 3, 1, 400, None);

    let output = world.cli(&["sync"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(world.sandbox.faults().fired(FaultKind::fail(OfOp::Add)), 1);
    assert_eq!(world.oneflow_answered(OfOp::Add, 400).len(), 1, "no retry");
    let all = all_output(&output);
    assert!(
        all.contains("1Flow rejected a batch of 100 adds: HTTP 400"),
        "{all}"
    );
    partial_run_resumes_with_the_rest(&world, &members, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_500s_until_retries_run_out_keep_only_what_was_confirmed() {
    let mut settings = ONE_AT_A_TIME.to_vec();
    settings.push("max_retries = 1");
    let (world, members) = world_with(1000, &settings).await;
    world
        .sandbox
        .faults()
        .fail_next_after(OfOp::Add, 2, 2, 500, None);

    let output = world.cli(&["sync"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(world.sandbox.faults().fired(FaultKind::fail(OfOp::Add)), 2);
    let all = all_output(&output);
    assert!(all.contains("kept failing"), "{all}");
    partial_run_resumes_with_the_rest(&world, &members, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_past_max_retries_slows_the_run_but_does_not_fail_it() {
    let (world, members) = world_with(300, &["max_retries = 1"]).await;
    world
        .sandbox
        .faults()
        .fail_next(OfOp::Add, 4, 429, Some("1"));

    let started = Instant::now();
    let output = world.cli(&["sync"]).await;
    let took = started.elapsed();
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(world.sandbox.faults().fired(FaultKind::fail(OfOp::Add)), 4);
    assert!(took >= Duration::from_millis(3900), "took {took:?}");
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("4 retries"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_beyond_the_cap_defers_the_rest_of_the_run() {
    let mut settings = ONE_AT_A_TIME.to_vec();
    settings.push("max_retry_after = \"2s\"");
    let (world, members) = world_with(1000, &settings).await;
    world
        .sandbox
        .faults()
        .fail_next_after(OfOp::Add, 2, 1, 429, Some("600"));

    let started = Instant::now();
    let output = world.cli(&["sync", "--json"]).await;
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(took < Duration::from_secs(5), "no slot held: took {took:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("\"result\":\"interrupted\""), "{stdout}");
    assert!(stdout.contains("deferring"), "{stdout}");
    let status = world.status_json().await;
    assert_eq!(
        status["cohorts"][0]["last_run"]["result"], "interrupted",
        "{status}"
    );
    partial_run_resumes_with_the_rest(&world, &members, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_the_batch_until_it_fits() {
    let (world, members) = world_with(2500, &[]).await;
    world.sandbox.faults().set_max_ids_per_request(Some(300));

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(world.sandbox.faults().fired(FaultKind::TooManyIds) >= 3);
    let accepted = world.oneflow_answered(OfOp::Add, 200);
    assert!(accepted.iter().all(|r| r.ids <= 300), "{accepted:?}");
    assert_eq!(confirmed_adds(&world, 0), 2500, "each id confirmed once");
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
    let status = world.status_json().await;
    assert_eq!(status["cohorts"][0]["acknowledged"], 2500, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_deleted_in_1flow_is_created_again_with_every_member() {
    let (world, members) = world_with(300, &[]).await;
    let first = world.cli(&["sync"]).await;
    assert!(first.status.success(), "{}", text(&first));
    let old = world.sandbox.lists()[0].id.clone();
    assert!(world.sandbox.delete_list(&old));

    let mut now = members[..250].to_vec();
    now.push(FakeMember::new(3, "after-the-deletion"));
    let changed = now.clone();
    world.sandbox.update_members("c1", move |m| *m = changed);
    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));

    let lists = world.sandbox.lists();
    assert_eq!(lists.len(), 2, "created again once: {lists:?}");
    assert!(lists[0].deleted && !lists[1].deleted, "{lists:?}");
    let new = &lists[1].id;
    let want = expected(&now);
    assert_eq!(world.sandbox.list_members(new), want);
    let refused = world.oneflow_answered(OfOp::Add, 404);
    assert_eq!(refused.len(), 1, "{refused:?}");
    let into_new: BTreeSet<usize> = world
        .sandbox
        .oneflow_requests()
        .iter()
        .filter(|r| r.list_id.as_deref() == Some(new) && r.op == OfOp::Add)
        .map(|r| r.ids)
        .collect();
    assert_eq!(
        into_new,
        BTreeSet::from([want.len()]),
        "the whole membership"
    );
    let status = world.status_json().await;
    assert_eq!(status["cohorts"][0]["list_id"], new.as_str(), "{status}");
    assert_eq!(status["cohorts"][0]["acknowledged"], want.len(), "{status}");
}
