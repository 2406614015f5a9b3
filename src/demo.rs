//! `cohort-sync demo`: the whole pipeline against a local sandbox, with no accounts.
//!
//! It starts fake Amplitude, S3 and 1Flow servers on 127.0.0.1, writes a config in a
//! temporary directory, and runs real syncs over HTTP: a first sync, a pass where the
//! cohort has not changed (no export is spent), and a sync after members joined and
//! left (only the difference is sent). Each step checks 1Flow's membership.

use std::collections::{BTreeSet, HashMap};
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::sandbox::{FakeCohort, FakeMember, Sandbox, SandboxOptions, sample_members};
use crate::state::Store;
use crate::sync::{Engine, RunOptions, Summary, Trigger};

const COHORT_ID: &str = "demo42";

/// Runs the demo with a sample cohort of `members` members.
pub async fn run(members: usize) -> ExitCode {
    match demo(members.max(10)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(count: usize) -> Result<(), String> {
    let sandbox = Sandbox::start(SandboxOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("cohort-sync.toml");
    std::fs::write(&path, demo_config(&sandbox)).map_err(|e| e.to_string())?;

    println!("cohort-sync demo: a local sandbox with fake Amplitude, S3 and 1Flow servers");
    println!(
        "  Amplitude: {}    1Flow: {}",
        sandbox.amplitude_url(),
        sandbox.oneflow_url()
    );
    println!("  config:    {}", path.display());

    let mut sample = sample_members(count, 0.02, 7);
    sandbox.put_cohort(cohort(sample.clone()));
    let anonymous = sample.iter().filter(|m| m.user_id.is_empty()).count();
    println!(
        "\nStep 1. Amplitude cohort {COHORT_ID} has {count} members, {anonymous} of them anonymous."
    );
    println!(
        "        First sync: export (request, poll, 302 to S3, gzip CSV), then push every member."
    );

    let env = HashMap::new();
    let config = crate::config::load(&path, &env).map_err(|e| e.to_string())?;
    let state_path = config
        .state
        .path
        .clone()
        .ok_or("the demo config has no state path")?;
    let store = Store::open_sqlite(&state_path)
        .await
        .map_err(|e| e.to_string())?;
    let engine = Engine::new(&config, store, "demo").map_err(|e| e.to_string())?;

    let first = pass(&engine).await;
    expect_members(&sandbox, &sample)?;
    println!(
        "        1Flow now holds exactly the {} identified members.",
        first.acknowledged
    );

    println!("\nStep 2. Nothing changed in Amplitude. Sync again:");
    let exports_before = sandbox.export_requests(COHORT_ID);
    pass(&engine).await;
    if sandbox.export_requests(COHORT_ID) != exports_before {
        return Err("an unchanged cohort started an export".into());
    }
    println!("        No export was started: the monthly quota (500) is spent only on changes.");

    let leave = count / 20;
    let joined: Vec<FakeMember> = (0..leave)
        .map(|i| FakeMember {
            amplitude_id: 9_000_000 + i as u64,
            user_id: format!("new-user-{i:05}"),
            properties: Vec::new(),
        })
        .collect();
    sample.drain(..leave);
    sample.extend(joined);
    sandbox.put_cohort(cohort(sample.clone()));
    println!("\nStep 3. In Amplitude, {leave} members left and {leave} joined. Sync again:");
    let third = pass(&engine).await;
    expect_members(&sandbox, &sample)?;
    println!(
        "        Only the difference was sent: +{} -{} (leavers who were anonymous were never in\n        1Flow). 1Flow matches Amplitude again ({} members).",
        third.added, third.removed, third.acknowledged
    );

    println!("\nStep 4. What `cohort-sync status` shows now (the state store keeps the");
    println!("        acknowledged members, the export ledger and the run history):\n");
    let status = crate::cli::status_text(&config, &engine.store)
        .await
        .map_err(|e| e.to_string())?;
    for line in status.lines() {
        println!("        {line}");
    }

    println!("\nDone: a full sync, an unchanged pass that spent no export, and a diff sync.");
    println!("Next: `cohort-sync cohorts --config FILE` lists your Amplitude cohorts, and");
    println!("`cohort-sync check --config FILE` validates your config (start from config/).");
    Ok(())
}

async fn pass(engine: &Engine) -> Summary {
    let options = RunOptions::new(Trigger::Manual, CancellationToken::new());
    let summary = engine.pass(&engine.targets, &options).await.remove(0);
    println!("        -> {}", summary.line());
    summary
}

fn cohort(members: Vec<FakeMember>) -> FakeCohort {
    FakeCohort {
        id: COHORT_ID.into(),
        name: "Demo: repeat buyers".into(),
        members,
        ..FakeCohort::default()
    }
}

fn expect_members(sandbox: &Sandbox, sample: &[FakeMember]) -> Result<(), String> {
    let expected: BTreeSet<String> = sample
        .iter()
        .filter(|m| !m.user_id.is_empty())
        .map(|m| m.user_id.clone())
        .collect();
    let actual = sandbox.members_of_cohort(COHORT_ID).unwrap_or_default();
    if actual == expected {
        Ok(())
    } else {
        Err(format!(
            "1Flow holds {} members, {} expected ({} missing, {} extra)",
            actual.len(),
            expected.len(),
            expected.difference(&actual).count(),
            actual.difference(&expected).count()
        ))
    }
}

fn demo_config(sandbox: &Sandbox) -> String {
    let options = sandbox.options();
    format!(
        r#"# Written by `cohort-sync demo`; points at the local sandbox.
[amplitude]
api_key = "{amp_key}"
secret_key = "{amp_secret}"
base_url = "{amp_url}"
poll_interval = "200ms"

[oneflow]
api_key = "{oneflow_key}"
base_url = "{oneflow_url}"
batch_size = 500

[state]
path = "state.db"

[log]
level = "warn"

[[cohorts]]
amplitude_id = "{COHORT_ID}"
name = "Repeat buyers"
schedule = "daily"
"#,
        amp_key = options.amplitude_api_key,
        amp_secret = options.amplitude_secret_key,
        amp_url = sandbox.amplitude_url(),
        oneflow_key = options.oneflow_api_key,
        oneflow_url = sandbox.oneflow_url(),
    )
}
