//! The guards end to end: suspicious runs are held or fail before anything is pushed,
//! and no removal is ever derived from a cohort Amplitude archived or does not know.

mod common;

use cohort_sync::sandbox::{FakeCohort, FakeMember, FileOptions, sample_members};
use common::{World, cohort, cohort_toml, expected, text};

/// Syncs `members` as cohort `id` once, successfully.
async fn first_sync(world: &World, id: &str, members: &[FakeMember]) {
    world.sandbox.put_cohort(cohort(id, members.to_vec()));
    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(world.sandbox.members_of_cohort(id), Some(expected(members)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_removal_is_held_until_allowed() {
    let world = World::new(&cohort_toml("c1", "")).await;
    let members = sample_members(1_000, 0.0, 21);
    first_sync(&world, "c1", &members).await;

    let kept = members[600..].to_vec();
    world.sandbox.update_members("c1", |m| {
        m.drain(..600);
    });
    let before = world.sandbox.oneflow_requests().len();
    let held = world.cli(&["sync"]).await;
    assert_eq!(held.status.code(), Some(1), "{}", text(&held));
    let stdout = String::from_utf8_lossy(&held.stdout);
    assert!(stdout.contains("c1: held"), "{stdout}");
    assert!(
        stdout.contains("would remove 600 of 1000 acknowledged members"),
        "{stdout}"
    );
    assert!(stdout.contains("--allow-mass-removal"), "{stdout}");
    assert!(stdout.contains("max_removal_ratio"), "{stdout}");
    assert_eq!(
        world.sandbox.oneflow_requests().len(),
        before,
        "nothing pushed"
    );
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
    let status = world.cohort_status("c1").await;
    assert_eq!(status["acknowledged"], 1_000, "{status}");
    assert_eq!(status["last_run"]["result"], "held", "{status}");

    let allowed = world.cli(&["sync", "c1", "--allow-mass-removal"]).await;
    assert!(allowed.status.success(), "{}", text(&allowed));
    assert_eq!(world.sandbox.members_of_cohort("c1"), Some(expected(&kept)));
    assert_eq!(
        world.sandbox.export_requests("c1"),
        2,
        "the held export is reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_within_the_ratio_or_below_the_floor_go_through() {
    let cohorts = format!("{}{}", cohort_toml("big", ""), cohort_toml("small", ""));
    let world = World::new(&cohorts).await;
    let big = sample_members(1_000, 0.0, 22);
    let small = sample_members(99, 0.0, 23);
    world.sandbox.put_cohort(cohort("big", big.clone()));
    world.sandbox.put_cohort(cohort("small", small.clone()));
    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));

    // Half of the big one (not more than half), and 90% of one under 100 members.
    world.sandbox.update_members("big", |m| {
        m.drain(..500);
    });
    world.sandbox.update_members("small", |m| {
        m.drain(..90);
    });
    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        world.sandbox.members_of_cohort("big"),
        Some(expected(&big[500..]))
    );
    assert_eq!(
        world.sandbox.members_of_cohort("small"),
        Some(expected(&small[90..]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_export_of_a_non_empty_cohort_is_held() {
    let world = World::new(&cohort_toml("c1", "")).await;
    let members = sample_members(40, 0.0, 24);
    first_sync(&world, "c1", &members).await;

    world.sandbox.update_members("c1", Vec::clear);
    let before = world.sandbox.oneflow_requests().len();
    let held = world.cli(&["sync"]).await;
    assert_eq!(held.status.code(), Some(1), "{}", text(&held));
    let stdout = String::from_utf8_lossy(&held.stdout);
    assert!(stdout.contains("c1: held"), "{stdout}");
    assert!(stdout.contains("the export is empty"), "{stdout}");
    assert!(stdout.contains("40 acknowledged members"), "{stdout}");
    assert!(
        stdout.contains("cohort-sync sync c1 --allow-mass-removal"),
        "{stdout}"
    );
    assert_eq!(world.sandbox.oneflow_requests().len(), before);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_cohort_is_skipped_and_nothing_is_removed() {
    let world = World::new(&cohort_toml("c1", "")).await;
    let members = sample_members(500, 0.0, 25);
    first_sync(&world, "c1", &members).await;

    let mut archived = cohort("c1", members[..10].to_vec());
    archived.archived = true;
    world.sandbox.put_cohort(archived);
    let before = world.sandbox.oneflow_requests().len();
    let output = world.cli(&["sync"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("c1: skipped"), "{stdout}");
    assert!(stdout.contains("archived"), "{stdout}");
    assert!(stdout.contains("nothing is removed"), "{stdout}");
    assert_eq!(world.sandbox.oneflow_requests().len(), before);
    assert_eq!(world.sandbox.export_requests("c1"), 1, "no export started");
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cohort_amplitude_does_not_know_is_skipped() {
    let cohorts = format!("{}{}", cohort_toml("c1", ""), cohort_toml("ghost", ""));
    let world = World::new(&cohorts).await;
    let members = sample_members(300, 0.0, 26);
    world.sandbox.put_cohort(cohort("c1", members.clone()));

    let output = world.cli(&["sync"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("c1: synced"), "{stdout}");
    assert!(stdout.contains("ghost: skipped"), "{stdout}");
    assert!(
        stdout.contains("Amplitude does not know cohort ghost"),
        "{stdout}"
    );
    assert_eq!(world.sandbox.export_requests("ghost"), 0);

    // A synced cohort that disappears from Amplitude keeps its list as it is.
    assert!(world.sandbox.remove_cohort("c1"));
    let before = world.sandbox.oneflow_requests().len();
    let output = world.cli(&["sync", "c1"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("Amplitude does not know cohort c1"),
        "{stdout}"
    );
    assert_eq!(world.sandbox.oneflow_requests().len(), before);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_far_from_the_listed_one_fails_before_anything_is_pushed() {
    let world = World::new(&cohort_toml("c1", "")).await;
    let mut listed = FakeCohort::new("c1", "C1", sample_members(2_000, 0.0, 27));
    listed.listed_size = Some(Some(10_000));
    world.sandbox.put_cohort(listed);

    let output = world.cli(&["sync"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("c1: failed"), "{stdout}");
    assert!(
        stdout.contains("the export has 2000 rows but Amplitude lists 10000 members"),
        "{stdout}"
    );
    assert!(stdout.contains("amplitude.size_tolerance"), "{stdout}");
    assert!(
        world.sandbox.oneflow_requests().is_empty(),
        "nothing pushed"
    );
    assert!(world.sandbox.lists().is_empty(), "no list created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_export_fails_before_anything_is_pushed() {
    let cohorts = format!("{}{}", cohort_toml("gz", ""), cohort_toml("plain", ""));
    // A broken download is tried again; once is enough here.
    let world = World::with_keys("max_retries = 1", "", &cohorts).await;
    for (id, gzip) in [("gz", true), ("plain", false)] {
        let mut truncated = FakeCohort::new(id, id, sample_members(4_000, 0.0, 28));
        truncated.file = FileOptions {
            gzip,
            truncate: true,
            ..FileOptions::default()
        };
        world.sandbox.put_cohort(truncated);
    }

    let output = world.cli(&["sync"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("gz: failed"), "{stdout}");
    assert!(stdout.contains("plain: failed"), "{stdout}");
    // Gzipped, the cut shows in the stream; plain, only the row count tells.
    assert!(stdout.contains("reading the export failed"), "{stdout}");
    assert!(
        stdout.contains("rows but Amplitude lists 4000 members"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("nothing was pushed").count(), 2, "{stdout}");
    assert!(world.sandbox.oneflow_requests().is_empty(), "{stdout}");
    assert!(world.sandbox.lists().is_empty(), "no list created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_run_does_not_pin_a_stale_export_once_the_cohort_is_fixed() {
    let world = World::new(&cohort_toml("c1", "")).await;
    let members = sample_members(1_000, 0.0, 29);
    first_sync(&world, "c1", &members).await;

    // A broken cohort definition drops most members: held.
    world.sandbox.update_members("c1", |m| {
        m.drain(..900);
    });
    let held = world.cli(&["sync"]).await;
    assert_eq!(held.status.code(), Some(1), "{}", text(&held));

    // The definition is fixed and Amplitude recomputes it: the next run syncs the fixed
    // cohort (one new member) instead of the held export, and is not held again.
    let mut fixed = members.clone();
    fixed.push(FakeMember::new(999_999_999, "fixed-1"));
    let put = fixed.clone();
    world.sandbox.update_members("c1", move |m| *m = put);
    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&fixed))
    );
    assert_eq!(world.sandbox.export_requests("c1"), 3);
}
