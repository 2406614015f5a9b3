//! The first slice end to end: `cohort-sync sync` against the sandbox, over HTTP.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cohort_sync::sandbox::{
    AmpEndpoint, Delivery, FakeCohort, FakeMember, FaultKind, FileOptions, OfOp, sample_members,
};
use common::{BIN, World, all_output, cohort, cohort_toml, expected, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_members_sync_through_the_redirect_path() {
    let world = World::new(&cohort_toml("c1", "name = \"Buyers\"")).await;
    let members = sample_members(10_000, 0.02, 1);
    world.sandbox.put_cohort(cohort("c1", members.clone()));

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));

    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
    assert!(world.sandbox.s3_requests() >= 1, "the 302 path was used");
    assert!(
        !world.sandbox.s3_saw_authorization(),
        "no Authorization header reached S3"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Buyers (c1): synced"), "{stdout}");
    assert!(stdout.contains("10000 members read"), "{stdout}");
    let anonymous = members.iter().filter(|m| m.user_id.is_empty()).count();
    assert!(
        stdout.contains(&format!("{anonymous} anonymous skipped")),
        "{stdout}"
    );
}

/// Syncs a 300-member cohort (10% anonymous) served with `file` and checks the list.
async fn sync_with_file(file: FileOptions) -> World {
    let world = World::new(&cohort_toml("c1", "")).await;
    let members = sample_members(300, 0.1, 7);
    let mut fake = cohort("c1", members.clone());
    fake.file = file;
    world.sandbox.put_cohort(fake);

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{file:?}\n{}", text(&output));
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members)),
        "{file:?}"
    );
    assert_eq!(world.sandbox.lists().len(), 1);
    world
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_with_and_without_content_encoding() {
    for header in [true, false] {
        let file = FileOptions {
            gzip: true,
            content_encoding_header: header,
            ..FileOptions::default()
        };
        sync_with_file(file).await;
        let inline = FileOptions {
            delivery: Delivery::Inline,
            ..file
        };
        sync_with_file(inline).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_csv_bom_and_crlf() {
    let shapes = [
        FileOptions {
            gzip: false,
            ..FileOptions::default()
        },
        FileOptions {
            bom: true,
            ..FileOptions::default()
        },
        FileOptions {
            gzip: false,
            bom: true,
            ..FileOptions::default()
        },
        FileOptions {
            crlf: true,
            ..FileOptions::default()
        },
        FileOptions {
            gzip: false,
            bom: true,
            crlf: true,
            delivery: Delivery::Inline,
            ..FileOptions::default()
        },
    ];
    for file in shapes {
        sync_with_file(file).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_delivery_never_touches_s3_and_redirect_sends_no_authorization() {
    let inline = sync_with_file(FileOptions {
        delivery: Delivery::Inline,
        ..FileOptions::default()
    })
    .await;
    assert_eq!(
        inline.sandbox.s3_requests(),
        0,
        "inline delivery needs no S3"
    );

    let redirect = sync_with_file(FileOptions::default()).await;
    assert!(redirect.sandbox.s3_requests() >= 1, "the 302 path was used");
    assert!(
        !redirect.sandbox.s3_saw_authorization(),
        "no Authorization header reached S3"
    );
}

/// A world with one 200-member cohort `c1`.
async fn small_world() -> (World, Vec<FakeMember>) {
    let world = World::new(&cohort_toml("c1", "")).await;
    let members = sample_members(200, 0.05, 3);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    (world, members)
}

/// Two 500s from `endpoint`, then success: the sync succeeds with every member.
async fn amplitude_500s_then_success(endpoint: AmpEndpoint) {
    let (world, members) = small_world().await;
    world.sandbox.faults().fail_next(endpoint, 2, 500, None);

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{endpoint:?}\n{}", text(&output));
    assert_eq!(world.sandbox.faults().fired(FaultKind::fail(endpoint)), 2);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amplitude_request_500s_are_retried() {
    amplitude_500s_then_success(AmpEndpoint::Request).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amplitude_status_500s_are_retried() {
    amplitude_500s_then_success(AmpEndpoint::Status).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amplitude_file_500s_are_retried() {
    amplitude_500s_then_success(AmpEndpoint::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amplitude_429_retry_after_is_honoured() {
    let (world, members) = small_world().await;
    world
        .sandbox
        .faults()
        .fail_next(AmpEndpoint::Request, 1, 429, Some("3"));

    let started = Instant::now();
    let output = world.cli(&["sync"]).await;
    let took = started.elapsed();
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        world
            .sandbox
            .faults()
            .fired(FaultKind::fail(AmpEndpoint::Request)),
        1
    );
    // Longer than any first backoff step (at most 2 s), so only the header explains it.
    assert!(took >= Duration::from_millis(2900), "took {took:?}");
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
    assert_eq!(
        world.sandbox.export_requests("c1"),
        2,
        "one 429, one accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneflow_add_500s_are_retried() {
    let (world, members) = small_world().await;
    world.sandbox.faults().fail_next(OfOp::Add, 2, 500, None);

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(world.sandbox.faults().fired(FaultKind::fail(OfOp::Add)), 2);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("2 retries"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneflow_add_429_retry_after_is_honoured() {
    let (world, members) = small_world().await;
    world
        .sandbox
        .faults()
        .fail_next(OfOp::Add, 1, 429, Some("3"));

    let started = Instant::now();
    let output = world.cli(&["sync"]).await;
    let took = started.elapsed();
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(world.sandbox.faults().fired(FaultKind::fail(OfOp::Add)), 1);
    // Longer than any first backoff step (at most 2 s), so only the header explains it.
    assert!(took >= Duration::from_millis(2900), "took {took:?}");
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_oneflow_key_fails_fast_naming_the_key_without_its_value() {
    let (world, _) = small_world().await;
    let wrong = "wrong-1flow-key-4f9a2c";
    let base = world
        .base_toml()
        .replace(&world.sandbox.options().oneflow_api_key, wrong);
    world.write_config_with_base(&base, &cohort_toml("c1", ""));

    let started = Instant::now();
    let output = world.cli(&["sync"]).await;
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let all = all_output(&output);
    assert!(all.contains("oneflow.api_key"), "{all}");
    assert!(!all.contains(wrong), "the key leaked: {all}");
    assert!(
        world.sandbox.lists().is_empty(),
        "nothing was created with a wrong key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_after_the_first_sync_fails_fast_on_add() {
    let (world, members) = small_world().await;
    let first = world.cli(&["sync"]).await;
    assert!(first.status.success(), "{}", text(&first));

    let wrong = "revoked-1flow-key-0b1d";
    let base = world
        .base_toml()
        .replace(&world.sandbox.options().oneflow_api_key, wrong);
    world.write_config_with_base(&base, &cohort_toml("c1", ""));
    world
        .sandbox
        .update_members("c1", |m| m.push(FakeMember::new(5, "late-joiner")));

    let started = Instant::now();
    let output = world.cli(&["sync"]).await;
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let all = all_output(&output);
    assert!(all.contains("oneflow.api_key"), "{all}");
    assert!(!all.contains(wrong), "the key leaked: {all}");
    let adds: Vec<_> = world
        .sandbox
        .oneflow_requests()
        .into_iter()
        .filter(|r| r.op == OfOp::Add && r.status == 401)
        .collect();
    assert_eq!(adds.len(), 1, "one refused add, no retries: {adds:?}");
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_amplitude_secret_fails_naming_the_keys() {
    let (world, _) = small_world().await;
    let wrong = "wrong-amplitude-secret-77e1";
    let base = world
        .base_toml()
        .replace(&world.sandbox.options().amplitude_secret_key, wrong);
    world.write_config_with_base(&base, &cohort_toml("c1", ""));

    let started = Instant::now();
    let output = world.cli(&["sync"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(started.elapsed() < Duration::from_secs(5));
    let all = all_output(&output);
    assert!(all.contains("amplitude.secret_key"), "{all}");
    assert!(all.contains("amplitude.api_key"), "{all}");
    assert!(all.contains("amplitude.region"), "{all}");
    assert!(!all.contains(wrong), "the secret leaked: {all}");
    assert!(world.sandbox.oneflow_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_writes_nothing_and_shows_what_it_would_send() {
    let (world, members) = small_world().await;

    let output = world.cli(&["sync", "--dry-run"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(world.sandbox.lists().is_empty());
    assert!(
        world.sandbox.oneflow_requests().is_empty(),
        "{:?}",
        world.sandbox.oneflow_requests()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let named = expected(&members).len();
    assert!(stdout.contains("dry-run"), "{stdout}");
    assert!(
        stdout.contains(&format!("would add {named} and remove 0")),
        "{stdout}"
    );
    let first = expected(&members).into_iter().next().unwrap();
    assert!(stdout.contains(&first), "a sample id is shown: {stdout}");

    let status = world.status_json().await;
    let entry = &status["cohorts"][0];
    assert_eq!(entry["acknowledged"], 0, "{status}");
    assert!(entry["list_id"].is_null(), "{status}");
    assert!(entry["last_run"].is_null(), "{status}");
    assert_eq!(
        status["quota"][0]["exports_used"], 1,
        "Amplitude counts it: {status}"
    );

    // Another dry run reuses the export the first one started, and so does the real
    // run after them: one export in all.
    let output = world.cli(&["sync", "--dry-run"]).await;
    assert!(output.status.success(), "{}", text(&output));
    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
    assert_eq!(
        world.sandbox.export_requests("c1"),
        1,
        "dry runs do not waste exports"
    );

    // A dry run of a change shows the removes and sends nothing.
    world.sandbox.update_members("c1", |m| m.truncate(190));
    let requests = world.sandbox.oneflow_requests().len();
    let output = world.cli(&["sync", "--dry-run"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(world.sandbox.oneflow_requests().len(), requests);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
    let gone = named - expected(&members[..190]).len();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("would add 0 and remove {gone}")),
        "{stdout}"
    );
    let status = world.status_json().await;
    assert_eq!(status["cohorts"][0]["acknowledged"], named, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_run_reuses_the_list_and_starts_no_export_when_unchanged() {
    let (world, members) = small_world().await;
    let first = world.cli(&["sync"]).await;
    assert!(first.status.success(), "{}", text(&first));
    let exports = world.sandbox.export_requests("c1");
    assert_eq!(exports, 1);
    let requests = world.sandbox.oneflow_requests().len();

    let second = world.cli(&["sync"]).await;
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(world.sandbox.lists().len(), 1);
    assert_eq!(world.sandbox.export_requests("c1"), exports);
    assert_eq!(world.sandbox.oneflow_requests().len(), requests);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(stdout.contains("c1: unchanged"), "{stdout}");

    // A change afterwards goes to the same list, and only the difference is sent.
    world.sandbox.update_members("c1", |m| {
        m.truncate(150);
        m.push(FakeMember::new(9, "newcomer"));
    });
    let mut now = members[..150].to_vec();
    now.push(FakeMember::new(9, "newcomer"));
    let third = world.cli(&["sync"]).await;
    assert!(third.status.success(), "{}", text(&third));
    assert_eq!(world.sandbox.lists().len(), 1);
    assert_eq!(world.sandbox.members_of_cohort("c1"), Some(expected(&now)));
    let removed = expected(&members).len() - expected(&members[..150]).len();
    let stdout = String::from_utf8_lossy(&third.stdout);
    assert!(stdout.contains(&format!("sent +1 -{removed}")), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_source_exports_with_props_and_sends_the_property() {
    let world = World::new(&cohort_toml("c1", "user_id = \"property:email\"")).await;
    let members: Vec<FakeMember> = (0..120)
        .map(|i| {
            let member = FakeMember::new(1000 + i, format!("u{i}"));
            if i % 10 == 0 {
                member
            } else {
                member.with_property("email", format!("person{i}@example.com"))
            }
        })
        .collect();
    world.sandbox.put_cohort(cohort("c1", members.clone()));

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    let emails: BTreeSet<String> = (0..120)
        .filter(|i| i % 10 != 0)
        .map(|i| format!("person{i}@example.com"))
        .collect();
    assert_eq!(world.sandbox.members_of_cohort("c1"), Some(emails));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("12 anonymous skipped"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_property_column_fails_naming_it_and_pushes_nothing() {
    let world = World::new(&cohort_toml("c1", "user_id = \"property:nope\"")).await;
    let members: Vec<FakeMember> = (0..50)
        .map(|i| FakeMember::new(i, format!("u{i}")).with_property("email", "x@y"))
        .collect();
    world.sandbox.put_cohort(cohort("c1", members));

    let output = world.cli(&["sync"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let all = all_output(&output);
    assert!(all.contains("nope"), "{all}");
    assert!(all.contains("column"), "{all}");
    assert!(world.sandbox.oneflow_requests().is_empty());
    assert!(world.sandbox.lists().is_empty());

    // While the setting stays wrong, runs fail on the same export without spending
    // quota on new ones.
    let output = world.cli(&["sync"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(
        world.sandbox.export_requests("c1"),
        1,
        "no new export for the same config"
    );

    // Fixing the setting is enough: the next run does not reuse the export that was
    // requested without the right property column.
    world.write_config(&cohort_toml("c1", "user_id = \"property:email\""));
    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    let want: BTreeSet<String> = ["x@y".to_owned()].into();
    assert_eq!(world.sandbox.members_of_cohort("c1"), Some(want));
    assert_eq!(
        world.sandbox.export_requests("c1"),
        2,
        "a new export, with email"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_rewrite_every_id() {
    let transform = "[cohorts.transform]\ntrim = true\nstrip_prefix = \"u_\"\n\
                     lowercase = true\nadd_prefix = \"amp:\"\n";
    let world = World::new(&cohort_toml("c1", transform)).await;
    let members = vec![
        FakeMember::new(1, "  u_Alice "),
        FakeMember::new(2, "u_BOB"),
        FakeMember::new(3, "Carol"),
        FakeMember::new(4, ""),
    ];
    world.sandbox.put_cohort(cohort("c1", members));

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    let want: BTreeSet<String> = ["amp:alice", "amp:bob", "amp:carol"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(world.sandbox.members_of_cohort("c1"), Some(want));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("1 anonymous skipped"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_table_relative_to_the_config_maps_ids_and_counts_unmapped() {
    let world = World::new(&cohort_toml("c1", "lookup = \"ids.csv\"")).await;
    std::fs::write(
        world.dir.path().join("ids.csv"),
        "amplitude_value,oneflow_user_id\nu1,of-1\nu2,of-2\nu3,of-3\n",
    )
    .unwrap();
    let members = vec![
        FakeMember::new(1, "u1"),
        FakeMember::new(2, "u2"),
        FakeMember::new(3, "u3"),
        FakeMember::new(4, "u4"),
        FakeMember::new(5, "u5"),
        FakeMember::new(6, ""),
    ];
    world.sandbox.put_cohort(cohort("c1", members));

    // Run from elsewhere: the table is found next to the config, not in the cwd.
    let mut command = world.command(&["sync"]);
    command.current_dir(std::env::temp_dir());
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let want: BTreeSet<String> = ["of-1", "of-2", "of-3"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(world.sandbox.members_of_cohort("c1"), Some(want));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("2 unmapped"), "{stdout}");
    assert!(stdout.contains("1 anonymous skipped"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohorts_lists_the_project() {
    let world = World::new(&cohort_toml("c1", "")).await;
    world
        .sandbox
        .put_cohort(cohort("c1", sample_members(42, 0.0, 1)));
    let mut archived = FakeCohort::new("old9", "Old buyers", sample_members(7, 0.0, 2));
    archived.archived = true;
    world.sandbox.put_cohort(archived);

    let output = world.cli(&["cohorts"]).await;
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = |id: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no line for {id}: {stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let c1 = line("c1");
    assert_eq!(c1[1], "42", "{stdout}");
    assert!(
        c1.contains(&"no") && stdout.contains("Cohort c1"),
        "{stdout}"
    );
    let old = line("old9");
    assert_eq!(old[1], "7", "{stdout}");
    assert!(
        old.contains(&"yes") && stdout.contains("Old buyers"),
        "{stdout}"
    );
    assert!(world.sandbox.oneflow_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_the_cohort_settings() {
    let world = World::new(&cohort_toml(
        "c1",
        "name = \"Buyers\"\ntimezone = \"Europe/London\"\nuser_id = \"property:email\"",
    ))
    .await;
    let output = world.cli(&["check"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("is valid"), "{stdout}");
    assert!(stdout.contains("c1 -> Buyers"), "{stdout}");
    assert!(stdout.contains("Europe/London"), "{stdout}");
    assert!(stdout.contains("user property email"), "{stdout}");
    assert!(
        !stdout.contains(&world.sandbox.options().amplitude_secret_key),
        "{stdout}"
    );
}

#[test]
fn help_for_every_subcommand_and_version() {
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .env_remove("COHORT_SYNC_CONFIG")
            .output()
            .unwrap()
    };
    for command in [
        "sync", "check", "cohorts", "status", "run", "health", "demo",
    ] {
        let output = run(&[command, "--help"]);
        assert!(output.status.success(), "{command}: {}", text(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains(&format!("cohort-sync {command}")),
            "{command}: {stdout}"
        );
    }
    let output = run(&["--help"]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("sync"));

    let output = run(&["--version"]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("cohort-sync {}", env!("CARGO_PKG_VERSION"))
    );

    let output = run(&["no-such-command"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_fails_mid_push_resumes_into_the_same_list_and_export() {
    let world = World::new("").await;
    let members = sample_members(2_500, 0.02, 11);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    let base = world.base_toml().replace(
        "batch_size = 1000\n",
        "batch_size = 1000\nmax_retries = 0\nconcurrency = 1\n",
    );
    world.write_config_with_base(&base, &cohort_toml("c1", ""));
    // The first add is refused and retries are off: the run fails after the list exists.
    world.sandbox.faults().fail_next(OfOp::Add, 1, 500, None);

    let first = world.cli(&["sync"]).await;
    assert_eq!(first.status.code(), Some(1), "{}", text(&first));
    assert_eq!(world.sandbox.lists().len(), 1);
    assert_eq!(world.sandbox.export_requests("c1"), 1);

    let second = world.cli(&["sync"]).await;
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(
        world.sandbox.lists().len(),
        1,
        "{:?}",
        world.sandbox.lists()
    );
    assert_eq!(
        world.sandbox.export_requests("c1"),
        1,
        "the pending export is reused"
    );
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
    let status = world.status_json().await;
    assert_eq!(
        status["cohorts"][0]["acknowledged"],
        expected(&members).len(),
        "{status}"
    );
    assert!(status["cohorts"][0]["pending_export"].is_null(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_json_prints_one_object_per_cohort_with_its_route() {
    let world = World::new(&cohort_toml("c1", "name = \"Buyers\"")).await;
    world
        .sandbox
        .put_cohort(cohort("c1", sample_members(300, 0.0, 8)));
    let output = world.cli(&["sync", "--json"]).await;
    assert!(output.status.success(), "{}", text(&output));
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(line["cohort_id"], "c1", "{line}");
    assert_eq!(line["project"], "default", "{line}");
    assert_eq!(line["account"], "default", "{line}");
    assert_eq!(line["result"], "synced", "{line}");
    assert_eq!(line["added"], 300, "{line}");
}
