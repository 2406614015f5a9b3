//! Bad configurations through the real binary: `check` and `sync` exit 2 with a message
//! naming the key (and its line), and nothing reaches the sandbox.

mod common;

use std::process::Output;

use cohort_sync::sandbox::sample_members;
use common::{BIN, World, all_output, cohort, cohort_toml, expected, text};

/// The 1-based line of the first line of `config` containing `needle`.
fn line_of(config: &str, needle: &str) -> usize {
    config
        .lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in the config:\n{config}"))
        + 1
}

/// A world whose config is `base` (a variant of the sandbox defaults) plus `extra`,
/// with cohort `c1` in the sandbox.
async fn world_with(base: impl FnOnce(&World) -> String, extra: &str) -> World {
    let world = World::new("").await;
    world
        .sandbox
        .put_cohort(cohort("c1", sample_members(20, 0.0, 1)));
    let base = base(&world);
    world.write_config_with_base(&base, extra);
    world
}

/// Runs `check` and `sync` and asserts both exit 2, naming every one of `needles`,
/// without touching the sandbox. Returns the `check` output.
async fn both_refuse(world: &World, needles: &[&str]) -> Output {
    let check = world.cli(&["check"]).await;
    let sync = world.cli(&["sync"]).await;
    for (command, output) in [("check", &check), ("sync", &sync)] {
        assert_eq!(output.status.code(), Some(2), "{command}: {}", text(output));
        assert!(output.stdout.is_empty(), "{command}: {}", text(output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{command}: no {needle:?} in {stderr}"
            );
        }
        let all = all_output(output);
        let options = world.sandbox.options();
        for secret in [&options.amplitude_secret_key, &options.oneflow_api_key] {
            assert!(
                !all.contains(secret.as_str()),
                "{command} leaked a secret: {all}"
            );
        }
    }
    assert_eq!(world.sandbox.export_requests("c1"), 0);
    assert!(world.sandbox.oneflow_requests().is_empty());
    assert!(!common::exists(&world.state_path()), "no state was created");
    check
}

fn config_text(world: &World) -> String {
    std::fs::read_to_string(&world.config).unwrap()
}

fn config_name(world: &World) -> String {
    world.config.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toml_syntax_error_names_the_line() {
    let world = world_with(World::base_toml, &cohort_toml("c1", "name = \"Buyers")).await;
    let line = line_of(&config_text(&world), "name = \"Buyers");
    let file_line = format!("{}:{line}:", config_name(&world));
    both_refuse(&world, &[&file_line, "TOML syntax error"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syntax_error_on_a_secret_line_does_not_quote_the_secret() {
    let world = world_with(
        |w| {
            w.base_toml().replace(
                &format!(
                    "secret_key = \"{}\"",
                    w.sandbox.options().amplitude_secret_key
                ),
                &format!(
                    "secret_key = \"{}\" trailing",
                    w.sandbox.options().amplitude_secret_key
                ),
            )
        },
        &cohort_toml("c1", ""),
    )
    .await;
    let line = line_of(&config_text(&world), "secret_key");
    let file_line = format!("{}:{line}:", config_name(&world));
    both_refuse(&world, &[&file_line, "TOML syntax error"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_names_the_key_and_line() {
    let extra = cohort_toml("c1", "[cohorts.transform]\nuppercase = true");
    let world = world_with(World::base_toml, &extra).await;
    let line = line_of(&config_text(&world), "uppercase");
    let located = format!(
        "{}:{line}: cohorts[0].transform.uppercase: unknown key",
        config_name(&world)
    );
    both_refuse(&world, &[&located]).await;

    let world = world_with(
        World::base_toml,
        &format!("{}shedule = \"daily\"\n", cohort_toml("c1", "")),
    )
    .await;
    let line = line_of(&config_text(&world), "shedule");
    let located = format!(
        "{}:{line}: cohorts[0].shedule: unknown key",
        config_name(&world)
    );
    both_refuse(&world, &[&located]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_type_names_the_key_and_line() {
    let extra = cohort_toml("c1", "max_removal_ratio = \"half\"");
    let world = world_with(World::base_toml, &extra).await;
    let line = line_of(&config_text(&world), "max_removal_ratio");
    let located = format!(
        "{}:{line}: cohorts[0].max_removal_ratio",
        config_name(&world)
    );
    both_refuse(&world, &[&located, "expected"]).await;

    let world = world_with(
        |w| {
            w.base_toml()
                .replace("batch_size = 1000", "batch_size = [1000]")
        },
        &cohort_toml("c1", ""),
    )
    .await;
    let line = line_of(&config_text(&world), "batch_size");
    let located = format!("{}:{line}: oneflow.batch_size", config_name(&world));
    both_refuse(&world, &[&located]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_duration_names_the_key_and_line() {
    let world = world_with(
        |w| {
            w.base_toml()
                .replace("poll_interval = \"50ms\"", "poll_interval = \"fast\"")
        },
        &cohort_toml("c1", ""),
    )
    .await;
    let line = line_of(&config_text(&world), "poll_interval");
    let located = format!("{}:{line}: amplitude.poll_interval", config_name(&world));
    both_refuse(&world, &[&located, "fast"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cron_schedule_names_the_key_and_line() {
    let extra = "[[cohorts]]\namplitude_id = \"c1\"\nschedule = \"61 * * * *\"\n";
    let world = world_with(World::base_toml, extra).await;
    let line = line_of(&config_text(&world), "61 * * * *");
    let located = format!("{}:{line}: cohorts[0].schedule", config_name(&world));
    both_refuse(&world, &[&located]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_time_zone_names_the_key_and_line() {
    let extra = cohort_toml("c1", "timezone = \"Mars/Olympus_Mons\"");
    let world = world_with(World::base_toml, &extra).await;
    let line = line_of(&config_text(&world), "Mars/");
    let located = format!("{}:{line}: cohorts[0].timezone", config_name(&world));
    both_refuse(&world, &[&located, "Mars/Olympus_Mons"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_cohort_id_names_the_second_entry() {
    let extra = format!(
        "{}{}",
        cohort_toml("c1", "name = \"First\""),
        cohort_toml("c1", "name = \"Second\"")
    );
    let world = world_with(World::base_toml, &extra).await;
    let text = config_text(&world);
    let second = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("[[cohorts]]"))
        .nth(1)
        .map(|(i, _)| i + 1)
        .unwrap();
    let first = line_of(&text, "[[cohorts]]");
    let located = format!(
        "{}:{second}: cohorts[1]: duplicates cohorts[0]",
        config_name(&world)
    );
    let first_line = format!("(line {first})");
    both_refuse(&world, &[&located, &first_line, "amplitude_id"]).await;
}

/// The base config without `[amplitude] secret_key`.
fn without_secret(world: &World) -> String {
    let secret = format!(
        "secret_key = \"{}\"\n",
        world.sandbox.options().amplitude_secret_key
    );
    let base = world.base_toml();
    assert!(base.contains(&secret));
    base.replace(&secret, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_names_the_variable_that_supplies_it() {
    let world = world_with(without_secret, &cohort_toml("c1", "")).await;
    both_refuse(
        &world,
        &["amplitude.secret_key", "COHORT_SYNC__AMPLITUDE__SECRET_KEY"],
    )
    .await;

    let no_oneflow_key = |w: &World| {
        let key = format!("api_key = \"{}\"\n", w.sandbox.options().oneflow_api_key);
        w.base_toml().replace(&key, "")
    };
    let world = world_with(no_oneflow_key, &cohort_toml("c1", "")).await;
    both_refuse(
        &world,
        &["oneflow.api_key", "COHORT_SYNC__ONEFLOW__API_KEY"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_supplies_a_missing_secret() {
    let world = world_with(without_secret, &cohort_toml("c1", "")).await;
    let secret = world.sandbox.options().amplitude_secret_key.clone();
    let run = |args: &'static [&'static str]| {
        let mut command = world.command(args);
        command.env("COHORT_SYNC__AMPLITUDE__SECRET_KEY", &secret);
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };

    let check = run(&["check"]).await.unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    assert!(!all_output(&check).contains(&secret), "{}", text(&check));

    let sync = run(&["sync"]).await.unwrap();
    assert!(sync.status.success(), "{}", text(&sync));
    assert!(!all_output(&sync).contains(&secret), "{}", text(&sync));
    let members = sample_members(20, 0.0, 1);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );

    // A wrong value from the environment is reported against its variable, not the file.
    let mut command = world.command(&["check"]);
    command.env("COHORT_SYNC__ONEFLOW__BATCH_SIZE", "lots");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("oneflow.batch_size"), "{stderr}");
    assert!(
        stderr.contains("COHORT_SYNC__ONEFLOW__BATCH_SIZE"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_lookup_table_names_the_key_and_file() {
    let world = world_with(
        World::base_toml,
        &cohort_toml("c1", "lookup = \"missing-ids.csv\""),
    )
    .await;
    let line = line_of(&config_text(&world), "lookup");
    let located = format!("{}:{line}: cohorts[0].lookup", config_name(&world));
    both_refuse(&world, &[&located, "missing-ids.csv"]).await;

    // A directory is not a readable table either.
    let world = world_with(World::base_toml, &cohort_toml("c1", "lookup = \"tables\"")).await;
    std::fs::create_dir(world.dir.path().join("tables")).unwrap();
    let line = line_of(&config_text(&world), "lookup");
    let located = format!("{}:{line}: cohorts[0].lookup", config_name(&world));
    both_refuse(&world, &[&located, "tables"]).await;

    // A malformed row is found by `check`, not by the first run.
    let world = world_with(World::base_toml, &cohort_toml("c1", "lookup = \"ids.csv\"")).await;
    std::fs::write(world.dir.path().join("ids.csv"), "a1,of-1\na2,of-2,extra\n").unwrap();
    let line = line_of(&config_text(&world), "lookup");
    let located = format!("{}:{line}: cohorts[0].lookup", config_name(&world));
    both_refuse(&world, &[&located, "ids.csv", "line 2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_path_from_the_environment_when_no_flag() {
    let world = world_with(World::base_toml, &cohort_toml("c1", "name = \"From env\"")).await;
    let config = world.config.clone();
    let dir = world.dir.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .arg("check")
            .env("COHORT_SYNC_CONFIG", &config)
            .env_remove("RUST_LOG")
            .current_dir(dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("Config {} is valid", config_name(&world))),
        "{stdout}"
    );
    assert!(stdout.contains("c1 -> From env"), "{stdout}");

    // `--config` wins over the variable.
    let mut command = world.command(&["check"]);
    command.env("COHORT_SYNC_CONFIG", world.dir.path().join("nowhere.toml"));
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    // A variable naming a missing file is a configuration error naming it.
    let missing = world.dir.path().join("nowhere.toml");
    let shown = missing.display().to_string();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .arg("check")
            .env("COHORT_SYNC_CONFIG", &missing)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains(&shown));
}
