//! The first slice end to end: `cohort-sync sync` against the sandbox, over HTTP.

mod common;

use cohort_sync::sandbox::sample_members;
use common::{World, cohort, cohort_toml, expected, text};

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
