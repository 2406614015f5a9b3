//! Amplitude-side faults end to end: stuck exports, broken downloads, odd files, refused
//! and throttled calls, a server that never answers. Each against the sandbox, with the
//! real binary.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cohort_sync::sandbox::{AmpEndpoint, FakeMember, FaultKind, FileOptions, OfOp, sample_members};
use common::{World, all_output, cohort, cohort_toml, expected, text};

/// A world with one 200-member cohort `c1` (5% anonymous) and these `[amplitude]` keys.
async fn world_with(amplitude: &[&str]) -> (World, Vec<FakeMember>) {
    let world = World::new("").await;
    world.write_tuned(amplitude, &[], &cohort_toml("c1", ""));
    let members = sample_members(200, 0.05, 3);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    (world, members)
}

fn ids(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs `sync` and returns the output and how long it took.
async fn timed_sync(world: &World) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let output = world.cli(&["sync"]).await;
    (output, started.elapsed())
}

/// An export that stays unfinished fails each run at `export_timeout`, reusing the one
/// request id, and syncs once Amplitude finishes it.
async fn a_stuck_export_times_out_and_is_reused(stick: impl Fn(&World), last_status: &str) {
    let (world, members) = world_with(&["export_timeout = \"2s\""]).await;
    stick(&world);

    for attempt in 1..=2 {
        let (output, took) = timed_sync(&world).await;
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        assert!(
            took >= Duration::from_secs(2),
            "attempt {attempt} took {took:?}"
        );
        assert!(
            took < Duration::from_secs(8),
            "attempt {attempt} took {took:?}"
        );
        let all = all_output(&output);
        assert!(all.contains("did not complete within 2s"), "{all}");
        assert!(
            all.contains(&format!("last status: {last_status}")),
            "{all}"
        );
        assert_eq!(world.sandbox.export_requests("c1"), 1, "attempt {attempt}");
        assert!(world.sandbox.oneflow_requests().is_empty());
    }
    let status = world.status_json().await;
    let pending = &status["cohorts"][0]["pending_export"]["request_id"];
    assert_eq!(
        pending.as_str(),
        world
            .sandbox
            .export_request_ids("c1")
            .first()
            .map(String::as_str),
        "{status}"
    );
    assert_eq!(status["quota"][0]["exports_used"], 1, "{status}");

    world.sandbox.faults().reset();
    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(world.sandbox.export_requests("c1"), 1);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_that_never_completes_fails_at_export_timeout_and_is_reused() {
    let stick = |world: &World| world.sandbox.faults().set_never_complete(true);
    a_stuck_export_times_out_and_is_reused(stick, "JOB INPROGRESS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_export_status_fails_at_export_timeout_and_is_reused() {
    let stick = |world: &World| {
        let faults = world.sandbox.faults();
        faults.set_status_string(Some("JOB REHYDRATING"));
    };
    a_stuck_export_times_out_and_is_reused(stick, "JOB REHYDRATING").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_download_link_is_replaced_with_the_same_request_id() {
    let (world, members) = world_with(&[]).await;
    world.sandbox.faults().expire_next_links(1);

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(world.sandbox.faults().fired(FaultKind::ExpiredLink), 1);
    let requests = world.sandbox.export_request_ids("c1");
    assert_eq!(requests.len(), 1, "no second export: {requests:?}");
    assert_eq!(world.sandbox.export_requests("c1"), 1);
    assert_eq!(world.sandbox.file_requests(&requests[0]), 2, "/file again");
    assert_eq!(world.sandbox.s3_requests(), 2);
    assert!(!world.sandbox.s3_saw_authorization());
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_reset_midway_is_downloaded_again() {
    let (world, members) = world_with(&[]).await;
    world.sandbox.faults().reset_download_midway(1);

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(world.sandbox.faults().fired(FaultKind::ResetDownload), 1);
    let requests = world.sandbox.export_request_ids("c1");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(world.sandbox.file_requests(&requests[0]), 2);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_stream_cut_in_the_middle_fails_without_pushing() {
    let (world, _) = world_with(&["max_retries = 1"]).await;
    let mut fake = cohort("c1", sample_members(5_000, 0.0, 4));
    fake.file = FileOptions {
        gzip: true,
        truncate: true,
        ..FileOptions::default()
    };
    world.sandbox.put_cohort(fake);

    let (output, took) = timed_sync(&world).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let all = all_output(&output);
    assert!(all.contains("reading the export failed"), "{all}");
    assert!(all.contains("nothing was pushed"), "{all}");
    let requests = world.sandbox.export_request_ids("c1");
    assert_eq!(requests.len(), 1);
    assert_eq!(world.sandbox.file_requests(&requests[0]), 2, "tried twice");
    assert!(world.sandbox.oneflow_requests().is_empty());
    assert!(world.sandbox.lists().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_fields_with_line_breaks_and_quotes_arrive_intact() {
    let world = World::new(&cohort_toml("c1", "")).await;
    let odd = [
        "line\r\nbreak",
        "lf\nonly",
        "say \"hi\"",
        "\"",
        "comma, inside",
        "plain",
    ];
    let members: Vec<FakeMember> = odd
        .iter()
        .enumerate()
        .map(|(i, id)| FakeMember::new(i as u64 + 1, *id))
        .collect();
    let mut fake = cohort("c1", members);
    fake.file.crlf = true;
    world.sandbox.put_cohort(fake);

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(world.sandbox.members_of_cohort("c1"), Some(ids(&odd)));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("6 members read"), "{stdout}");
}

/// A cohort `c1` of `members` members whose export file is `raw`.
async fn world_with_file(raw: &[u8], members: usize) -> World {
    let world = World::new(&cohort_toml("c1", "")).await;
    let mut fake = cohort("c1", sample_members(members, 0.0, 5));
    fake.raw_file = Some(Bytes::copy_from_slice(raw));
    world.sandbox.put_cohort(fake);
    world
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_without_the_user_id_column_fails_naming_it() {
    let world = world_with_file(b"amplitude_id,device_id\n1,d1\n2,d2\n", 2).await;

    let output = world.cli(&["sync"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let all = all_output(&output);
    assert!(all.contains("no `user_id` column"), "{all}");
    assert!(all.contains("amplitude_id,device_id"), "{all}");
    assert!(world.sandbox.oneflow_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_are_not_utf8_are_counted_invalid_and_not_sent() {
    let world = world_with_file(b"amplitude_id,user_id\n1,ok-1\n2,\xff\xfebad\n3,ok-2\n", 3).await;

    let output = world.cli(&["sync", "--json"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(ids(&["ok-1", "ok-2"]))
    );
    let sent: usize = world.sandbox.oneflow_requests().iter().map(|r| r.ids).sum();
    assert_eq!(sent, 2);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("\"invalid\":1"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_columns_in_any_order_are_ignored() {
    let raw = b"\"device\",\"user_id\",\"amplitude_id\",\"zz_new\"\n\
                \"d1\",\"u-1\",\"1\",\"x\"\n\"d2\",\"u-2\",\"2\",\"\"\n";
    let world = world_with_file(raw, 2).await;

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(ids(&["u-1", "u-2"]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_fails_without_pushing() {
    let mut gzipped_nothing = Vec::new();
    flate2::write::GzEncoder::new(&mut gzipped_nothing, flate2::Compression::fast())
        .finish()
        .unwrap();
    for raw in [&b""[..], &gzipped_nothing[..]] {
        let world = world_with_file(raw, 0).await;
        let output = world.cli(&["sync"]).await;
        assert_eq!(output.status.code(), Some(1), "{raw:?}\n{}", text(&output));
        let all = all_output(&output);
        assert!(all.contains("the export file is empty"), "{all}");
        assert!(world.sandbox.oneflow_requests().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_only_export_of_a_synced_cohort_is_held() {
    let (world, members) = world_with(&[]).await;
    let first = world.cli(&["sync"]).await;
    assert!(first.status.success(), "{}", text(&first));
    let named = expected(&members);
    let computed = chrono::Utc::now().timestamp() + 10;

    // A header only while Amplitude lists no size: only the empty-export guard stands.
    let mut unsized_empty = cohort("c1", members.clone());
    unsized_empty.raw_file = Some(Bytes::from_static(b"\"amplitude_id\",\"user_id\"\n"));
    unsized_empty.listed_size = Some(None);
    unsized_empty.last_computed = Some(computed);
    // Then Amplitude recomputes it as really empty: size 0, header only.
    let mut emptied = cohort("c1", Vec::new());
    emptied.last_computed = Some(computed + 1);

    for (step, fake) in [("unsized", unsized_empty), ("size 0", emptied)] {
        world.sandbox.put_cohort(fake);
        let output = world.cli(&["sync"]).await;
        assert_eq!(output.status.code(), Some(1), "{step}\n{}", text(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("c1: held"), "{step}: {stdout}");
        let held = format!(
            "the export is empty but 1Flow has {} acknowledged members",
            named.len()
        );
        assert!(stdout.contains(&held), "{step}: {stdout}");
        assert!(stdout.contains("--allow-mass-removal"), "{step}: {stdout}");
        assert!(
            world.oneflow_answered(OfOp::Remove, 200).is_empty(),
            "{step}"
        );
        assert_eq!(world.sandbox.members_of_cohort("c1"), Some(named.clone()));
        let status = world.status_json().await;
        assert_eq!(
            status["cohorts"][0]["acknowledged"],
            named.len(),
            "{status}"
        );
    }
    assert_eq!(
        world.sandbox.export_requests("c1"),
        3,
        "a recomputed cohort gets a fresh export, not the held one"
    );

    // Amplitude recomputes it with its members back and one more: the held export is
    // not read again, the new one syncs.
    let mut back = members.clone();
    back.push(FakeMember::new(7, "returning-newcomer"));
    let mut recovered = cohort("c1", back.clone());
    recovered.last_computed = Some(computed + 2);
    world.sandbox.put_cohort(recovered);
    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(world.sandbox.export_requests("c1"), 4);
    assert_eq!(world.sandbox.members_of_cohort("c1"), Some(expected(&back)));
}

/// `status` on `endpoint` once: the run fails at once (no retry), nothing reaches
/// 1Flow, the message says what to check; the next run succeeds, reusing any export.
async fn refused_once(endpoint: AmpEndpoint, status: u16) {
    let (world, members) = world_with(&[]).await;
    world.sandbox.faults().fail_next(endpoint, 1, status, None);

    let (output, took) = timed_sync(&world).await;
    let case = format!("{endpoint:?} {status}");
    assert_eq!(output.status.code(), Some(1), "{case}\n{}", text(&output));
    assert!(took < Duration::from_secs(5), "{case}: took {took:?}");
    assert_eq!(
        world.sandbox.faults().fired(FaultKind::fail(endpoint)),
        1,
        "{case}"
    );
    assert!(world.sandbox.oneflow_requests().is_empty(), "{case}");
    let all = all_output(&output);
    let hint = if status == 404 {
        "Amplitude does not know"
    } else {
        "check amplitude.api_key, amplitude.secret_key and amplitude.region"
    };
    assert!(all.contains(hint), "{case}: {all}");
    assert!(all.contains(&format!("HTTP {status}")), "{case}: {all}");

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{case}\n{}", text(&output));
    let exports = match endpoint {
        AmpEndpoint::List => 1,
        AmpEndpoint::Request => 2,
        _ => 1,
    };
    assert_eq!(world.sandbox.export_requests("c1"), exports, "{case}");
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members)),
        "{case}"
    );
}

const ENDPOINTS: [AmpEndpoint; 4] = [
    AmpEndpoint::List,
    AmpEndpoint::Request,
    AmpEndpoint::Status,
    AmpEndpoint::File,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_on_any_endpoint_fails_fast_and_the_next_run_recovers() {
    for endpoint in ENDPOINTS {
        refused_once(endpoint, 401).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_on_any_endpoint_fails_fast_and_the_next_run_recovers() {
    for endpoint in ENDPOINTS {
        refused_once(endpoint, 403).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_on_any_endpoint_fails_fast_and_the_next_run_recovers() {
    for endpoint in ENDPOINTS {
        refused_once(endpoint, 404).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_an_http_date_is_honoured() {
    let (world, members) = world_with(&[]).await;
    let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(5));
    world
        .sandbox
        .faults()
        .fail_next(AmpEndpoint::List, 1, 429, Some(&at));

    let (output, took) = timed_sync(&world).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        world
            .sandbox
            .faults()
            .fired(FaultKind::fail(AmpEndpoint::List)),
        1
    );
    // The date has whole seconds, so the wait is between 4 and 5 s: more than any first
    // backoff step (at most 2 s).
    assert!(took >= Duration::from_millis(3900), "took {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_5xx_are_retried() {
    let (world, members) = world_with(&[]).await;
    world
        .sandbox
        .faults()
        .fail_next(AmpEndpoint::List, 2, 503, None);

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        world
            .sandbox
            .faults()
            .fired(FaultKind::fail(AmpEndpoint::List)),
        2
    );
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_5xx_past_max_retries_fail_the_run_and_keep_the_export() {
    let (world, members) = world_with(&["max_retries = 1"]).await;
    world
        .sandbox
        .faults()
        .fail_next(AmpEndpoint::File, 100, 502, None);

    let output = world.cli(&["sync"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(
        world
            .sandbox
            .faults()
            .fired(FaultKind::fail(AmpEndpoint::File)),
        2
    );
    let all = all_output(&output);
    assert!(
        all.contains("Amplitude export file failed: HTTP 502"),
        "{all}"
    );
    assert!(world.sandbox.oneflow_requests().is_empty());

    world.sandbox.faults().reset();
    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        world.sandbox.export_requests("c1"),
        1,
        "the export is reused"
    );
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

/// A server that accepts `endpoint`'s request and never answers: the run fails after
/// about `request_timeout`.
async fn hung(endpoint: AmpEndpoint) {
    let settings = ["request_timeout = \"2s\"", "max_retries = 0"];
    let (world, _) = world_with(&settings).await;
    world.sandbox.faults().hang(endpoint, true);

    let (output, took) = timed_sync(&world).await;
    assert_eq!(
        output.status.code(),
        Some(1),
        "{endpoint:?}\n{}",
        text(&output)
    );
    assert!(world.sandbox.faults().fired(FaultKind::hang(endpoint)) >= 1);
    assert!(took >= Duration::from_secs(2), "{endpoint:?} took {took:?}");
    assert!(took < Duration::from_secs(6), "{endpoint:?} took {took:?}");
    let all = all_output(&output);
    assert!(all.contains("timed out"), "{endpoint:?}: {all}");
    assert!(world.sandbox.oneflow_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_fails_the_run_within_request_timeout() {
    let endpoints = [
        AmpEndpoint::List,
        AmpEndpoint::Request,
        AmpEndpoint::Status,
        AmpEndpoint::File,
        AmpEndpoint::S3,
    ];
    futures_util::future::join_all(endpoints.map(hung)).await;
}
