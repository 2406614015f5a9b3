//! Several Amplitude projects and 1Flow accounts in one daemon, and one-time syncs.

mod common;

use std::time::Duration;

use cohort_sync::sandbox::sample_members;
use common::{World, cohort, cohort_toml, expected, text};

const MOBILE_KEY: &str = "mobile-amplitude-key";
const MOBILE_SECRET: &str = "mobile-amplitude-secret";
const STAGING_KEY: &str = "staging-1flow-key";

/// Named blocks for a second Amplitude project and a second 1Flow account, both on
/// the world's sandbox.
fn named_blocks(world: &World, staging_key: &str) -> String {
    format!(
        "[amplitude_projects.mobile]\napi_key = \"{MOBILE_KEY}\"\nsecret_key = \"{MOBILE_SECRET}\"\n\
         base_url = \"{}\"\npoll_interval = \"50ms\"\n\n\
         [oneflow_accounts.staging]\napi_key = \"{staging_key}\"\nbase_url = \"{}\"\nmax_retries = 1\n\n",
        world.sandbox.amplitude_url(),
        world.sandbox.oneflow_url(),
    )
}

async fn world_with_blocks(cohorts: &str, staging_key: &str) -> World {
    let world = World::new("").await;
    world
        .sandbox
        .add_amplitude_project(MOBILE_KEY, MOBILE_SECRET);
    world.sandbox.add_oneflow_account(STAGING_KEY);
    world.write_config(&format!("{}{cohorts}", named_blocks(&world, staging_key)));
    world
}

fn members_in(world: &World, account: &str, cohort_id: &str) -> std::collections::BTreeSet<String> {
    let lists = world.sandbox.lists_in(account);
    let list = lists
        .iter()
        .rfind(|l| l.cohort_id.as_deref() == Some(cohort_id) && !l.deleted)
        .unwrap_or_else(|| panic!("no list for {cohort_id} in account {account}: {lists:?}"));
    world.sandbox.list_members(&list.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_export_serves_two_accounts() {
    let cohorts = format!(
        "{}{}",
        cohort_toml("c1", ""),
        cohort_toml("c1", "oneflow_account = \"staging\"")
    );
    let world = world_with_blocks(&cohorts, STAGING_KEY).await;
    let members = sample_members(3_000, 0.02, 5);
    world.sandbox.put_cohort(cohort("c1", members.clone()));

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        world.sandbox.export_requests("c1"),
        1,
        "one export, two pushes"
    );
    let default_key = world.sandbox.options().oneflow_api_key.clone();
    assert_eq!(members_in(&world, &default_key, "c1"), expected(&members));
    assert_eq!(members_in(&world, STAGING_KEY, "c1"), expected(&members));

    // Each account keeps its own acknowledged set: a change reaches both.
    world.sandbox.update_members("c1", |m| m.truncate(2_900));
    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(world.sandbox.export_requests("c1"), 2);
    let now = expected(&members[..2_900]);
    assert_eq!(members_in(&world, &default_key, "c1"), now);
    assert_eq!(members_in(&world, STAGING_KEY, "c1"), now);

    let status = world.status_json().await;
    let routes: Vec<(String, String)> = status["cohorts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["project"].as_str().unwrap().into(),
                c["account"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            ("default".into(), "default".into()),
            ("default".into(), "staging".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_project_exports_with_its_own_keys() {
    let cohorts = cohort_toml("m1", "amplitude_project = \"mobile\"");
    let world = world_with_blocks(&cohorts, STAGING_KEY).await;
    let members = sample_members(500, 0.0, 9);
    assert!(
        world
            .sandbox
            .put_cohort_in(MOBILE_KEY, cohort("m1", members.clone()))
    );

    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        world.sandbox.members_of_cohort("m1"),
        Some(expected(&members))
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("[mobile -> default]"),
        "the summary names the route: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_on_one_account_leaves_the_other_syncing() {
    let cohorts = format!(
        "{}{}",
        cohort_toml("c1", ""),
        cohort_toml("c1", "oneflow_account = \"staging\"")
    );
    let world = world_with_blocks(&cohorts, "not-the-staging-key").await;
    let members = sample_members(1_000, 0.0, 3);
    world.sandbox.put_cohort(cohort("c1", members.clone()));

    let output = world.cli(&["sync"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let default_key = world.sandbox.options().oneflow_api_key.clone();
    assert_eq!(members_in(&world, &default_key, "c1"), expected(&members));
    assert!(world.sandbox.lists_in(STAGING_KEY).is_empty());
    let all = common::all_output(&output);
    assert!(
        all.contains("oneflow_accounts.staging.api_key"),
        "names the block: {all}"
    );
    assert!(
        !all.contains("not-the-staging-key"),
        "never prints the key: {all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_fires_exactly_once_across_a_reload_that_does_not_touch_it() {
    let once = cohort_toml("c1", "").replace("schedule = \"daily\"", "schedule = \"once\"");
    let world = World::new(&once).await;
    let members = sample_members(200, 0.0, 2);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    world.sandbox.put_cohort(cohort("c2", members.clone()));

    let check = world.cli(&["check"]).await;
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("once"),
        "{}",
        text(&check)
    );

    let mut daemon = world.spawn(&["run"]);
    wait_for(|| world.sandbox.members_of_cohort("c1") == Some(expected(&members))).await;
    assert_eq!(world.sandbox.export_requests("c1"), 1);

    // The cohort changes, and the file is edited elsewhere: `once` does not fire again.
    world.sandbox.update_members("c1", |m| m.truncate(150));
    let with_c2 = format!(
        "{once}{}",
        cohort_toml("c2", "").replace("\"daily\"", "\"once\"")
    );
    world.write_config(&with_c2);
    wait_for(|| world.sandbox.members_of_cohort("c2") == Some(expected(&members))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        world.sandbox.export_requests("c1"),
        1,
        "c1 did not fire again"
    );

    // Editing its own entry makes it fire again.
    let renamed = once.replace(
        "schedule = \"once\"",
        "schedule = \"once\"\nname = \"Renamed\"",
    );
    world.write_config(&format!(
        "{renamed}{}",
        cohort_toml("c2", "").replace("\"daily\"", "\"once\"")
    ));
    wait_for(|| world.sandbox.export_requests("c1") == 2).await;
    wait_for(|| world.sandbox.members_of_cohort("c1") == Some(expected(&members[..150]))).await;

    let _ = daemon.kill();
    let _ = daemon.wait();
}

async fn wait_for(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_block_state_carries_over_when_named_blocks_are_added() {
    let world = World::new(&cohort_toml("c1", "")).await;
    world
        .sandbox
        .add_amplitude_project(MOBILE_KEY, MOBILE_SECRET);
    world.sandbox.add_oneflow_account(STAGING_KEY);
    let members = sample_members(800, 0.0, 4);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));

    world.write_config(&format!(
        "{}{}",
        named_blocks(&world, STAGING_KEY),
        cohort_toml("c1", "")
    ));
    let output = world.cli(&["sync"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("unchanged"),
        "{}",
        text(&output)
    );
    assert_eq!(world.sandbox.export_requests("c1"), 1, "no resync");
    assert_eq!(world.sandbox.lists().len(), 1, "no second list");
}
