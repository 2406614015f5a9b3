//! Crash safety end to end: `sync` killed with SIGKILL twenty times in a row through a
//! 200,000-member first sync resumes each time from what 1Flow confirmed, re-sending at
//! most the batches in flight, and ends with the exact membership.

mod common;

use std::time::{Duration, Instant};

use cohort_sync::sandbox::{OfOp, OneflowRequest, sample_members};
use common::{World, cohort, cohort_toml, expected, ids_sent, text};

const MEMBERS: usize = 200_000;
const BATCH_SIZE: usize = 1_000;
const CONCURRENCY: usize = 4;
const KILLS: usize = 20;

/// Add requests 1Flow answered 2xx.
fn confirmed_adds(requests: &[OneflowRequest]) -> usize {
    requests
        .iter()
        .filter(|r| r.op == OfOp::Add && (200..300).contains(&r.status))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_push_resends_at_most_the_batches_in_flight() {
    let started = Instant::now();
    let world = World::with_keys(
        "",
        &format!("concurrency = {CONCURRENCY}"),
        &cohort_toml("c1", ""),
    )
    .await;
    assert!(
        world
            .base_toml()
            .contains(&format!("batch_size = {BATCH_SIZE}"))
    );
    let members = sample_members(MEMBERS, 0.0, 31);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    world
        .sandbox
        .faults()
        .set_oneflow_latency(Duration::from_millis(15));

    // A kill while Amplitude prepares the export: the request id is already saved.
    world.sandbox.faults().set_never_complete(true);
    let mut child = world.spawn(&["sync"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !world.state_path().exists() {
        assert!(Instant::now() < deadline, "the state file never appeared");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while world.cohort_status("c1").await["pending_export"].is_null() {
        assert!(Instant::now() < deadline, "the export never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    world.sandbox.faults().set_never_complete(false);
    assert_eq!(world.sandbox.export_requests("c1"), 1);

    // Each kill in the push lands after a random number of newly confirmed batches of that run.
    let mut rng = fastrand::Rng::with_seed(7);
    let mut resent_per_kill = Vec::new();
    let (mut logged_before, mut acknowledged_before) = (0usize, 0usize);
    for kill in 0..KILLS {
        let at_start = confirmed_adds(&world.sandbox.oneflow_requests());
        let wait_for = rng.usize(1..8);
        let mut child = world.spawn(&["sync"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while confirmed_adds(&world.sandbox.oneflow_requests()) < at_start + wait_for {
            assert!(
                Instant::now() < deadline,
                "kill {kill}: the push never went on"
            );
            if let Some(status) = child.try_wait().unwrap() {
                panic!("kill {kill}: the run ended by itself with {status}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // A random moment within the batch in flight, not only at a batch boundary.
        tokio::time::sleep(Duration::from_millis(rng.u64(0..15))).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        // Let the requests the process left in flight reach the sandbox's log.
        tokio::time::sleep(Duration::from_millis(100)).await;

        // The killed run sent only ids that were not acknowledged, each once; those it
        // sent and did not get acknowledged are sent again by a later run.
        let requests = world.sandbox.oneflow_requests();
        let sent = ids_sent(&requests[logged_before..], OfOp::Add);
        let acknowledged = world.cohort_status("c1").await["acknowledged"]
            .as_u64()
            .unwrap() as usize;
        let again = sent - (acknowledged - acknowledged_before);
        resent_per_kill.push((kill, wait_for, acknowledged, again));
        (logged_before, acknowledged_before) = (requests.len(), acknowledged);
    }

    let finish = world.cli(&["sync"]).await;
    assert!(finish.status.success(), "{}", text(&finish));
    let requests = world.sandbox.oneflow_requests();
    let total_sent = ids_sent(&requests, OfOp::Add);
    let members_set = expected(&members);
    assert_eq!(
        world.sandbox.members_of_cohort("c1").as_ref(),
        Some(&members_set)
    );
    assert_eq!(
        world.sandbox.export_requests("c1"),
        1,
        "the export was reused"
    );
    assert_eq!(
        requests.iter().filter(|r| r.op == OfOp::Create).count(),
        1,
        "one list"
    );
    assert!(requests.iter().all(|r| r.op != OfOp::Remove));

    let resent_total: usize = resent_per_kill.iter().map(|r| r.3).sum();
    eprintln!(
        "crash test: {} ids sent for {} members, {} sent again; per kill \
         (kill, batches waited, acknowledged, re-sent): {:?}; {:.1}s",
        total_sent,
        members_set.len(),
        total_sent - members_set.len(),
        resent_per_kill,
        started.elapsed().as_secs_f64()
    );
    // The 1Flow log agrees: every id sent beyond the distinct ones was sent again after
    // a kill, and never more than once per kill.
    assert_eq!(total_sent - members_set.len(), resent_total);
    for (kill, _, acknowledged, resend) in &resent_per_kill {
        assert!(
            *resend <= CONCURRENCY * BATCH_SIZE,
            "kill {kill}: {resend} ids sent again (acknowledged {acknowledged})"
        );
    }
    let status = world.cohort_status("c1").await;
    assert_eq!(status["acknowledged"], MEMBERS as u64, "{status}");
    assert!(status["pending_export"].is_null(), "{status}");
}
