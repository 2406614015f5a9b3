//! Secrets never reach the output: with `RUST_LOG=trace` and failures forced on every
//! endpoint, nothing `sync`, `check`, `status` or `cohorts` prints carries a key, an
//! Authorization value or the signature of a pre-signed download link.

mod common;

use std::collections::HashMap;
use std::process::Output;

use cohort_sync::sandbox::{AmpEndpoint, FakeMember, OfOp, sample_members};
use common::{World, all_output, cohort, cohort_toml, text};

/// Standard base64 with padding, as HTTP Basic uses it.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Everything that must never be printed, with a name for the failure message.
fn forbidden(world: &World) -> Vec<(String, String)> {
    let o = world.sandbox.options();
    let amplitude_basic =
        base64(format!("{}:{}", o.amplitude_api_key, o.amplitude_secret_key).as_bytes());
    let oneflow_basic = base64(format!("{}:", o.oneflow_api_key).as_bytes());
    let mut list = vec![
        ("the Amplitude API key".into(), o.amplitude_api_key.clone()),
        (
            "the Amplitude secret key".into(),
            o.amplitude_secret_key.clone(),
        ),
        ("the 1Flow API key".into(), o.oneflow_api_key.clone()),
        ("the Amplitude Authorization value".into(), amplitude_basic),
        ("the 1Flow Authorization value".into(), oneflow_basic),
        ("an Authorization scheme".into(), "Basic ".into()),
        ("a signature parameter".into(), "X-Amz-Signature=".into()),
    ];
    for signature in world.sandbox.s3_signatures() {
        list.push(("a minted S3 signature".into(), signature));
    }
    list
}

/// Asserts that no output seen so far carries anything [`forbidden`].
fn assert_clean(world: &World, outputs: &[(String, Output)]) {
    let forbidden = forbidden(world);
    for (label, output) in outputs {
        let all = all_output(output);
        for (what, value) in &forbidden {
            if let Some(at) = all.find(value.as_str()) {
                let start = all[..at]
                    .char_indices()
                    .rev()
                    .nth(200)
                    .map_or(0, |(i, _)| i);
                let end = (at + value.len() + 200).min(all.len());
                let context = all.get(start..end).unwrap_or(&all[at..]);
                panic!("{label} printed {what}:\n...{context}...");
            }
        }
    }
}

/// Runs `args` with trace logging and keeps the output under `label`.
async fn traced(world: &World, label: &str, args: &[&str], outputs: &mut Vec<(String, Output)>) {
    let mut command = world.command(args);
    command.env("RUST_LOG", "trace");
    let output = tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .expect("join");
    if args[0] == "sync" {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("TRACE"),
            "{label}: trace logging is on\n{}",
            text(&output)
        );
    }
    outputs.push((label.to_owned(), output));
}

const AMPLITUDE: [AmpEndpoint; 5] = [
    AmpEndpoint::List,
    AmpEndpoint::Request,
    AmpEndpoint::Status,
    AmpEndpoint::File,
    AmpEndpoint::S3,
];

/// A world with a 300-member cohort `c1`, one retry and short timeouts.
async fn sync_world() -> World {
    let world = World::new("").await;
    world.write_tuned(
        &["max_retries = 1", "request_timeout = \"1s\""],
        &["max_retries = 1"],
        &cohort_toml("c1", ""),
    );
    let members = sample_members(300, 0.05, 9);
    world.sandbox.put_cohort(cohort("c1", members));
    world
}

/// Adds a member, so that the next run exports and pushes again.
fn change(world: &World, n: u64) {
    world.sandbox.update_members("c1", |m| {
        m.push(FakeMember::new(900 + n, format!("late-{n}")))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_prints_no_secret_through_transient_failures() {
    let world = sync_world().await;
    let faults = world.sandbox.faults();
    let mut outputs = Vec::new();

    // 500s everywhere, an expired link, a broken download: the run still succeeds.
    for endpoint in AMPLITUDE {
        faults.fail_next(endpoint, 1, 500, None);
    }
    faults.expire_next_links(1);
    faults.reset_download_midway(1);
    faults.fail_next(OfOp::Create, 1, 500, None);
    faults.fail_next(OfOp::Add, 1, 500, None);
    traced(&world, "sync after 500s", &["sync"], &mut outputs).await;
    assert!(outputs[0].1.status.success(), "{}", text(&outputs[0].1));
    assert!(
        world.sandbox.s3_requests() >= 3,
        "the signed links were used"
    );

    // A signed link that never answers: a transport error about that URL.
    change(&world, 1);
    faults.hang(AmpEndpoint::S3, true);
    traced(&world, "sync with a hung S3", &["sync"], &mut outputs).await;
    assert_eq!(
        outputs[1].1.status.code(),
        Some(1),
        "{}",
        text(&outputs[1].1)
    );
    faults.reset();

    // 1Flow 500s until the retries run out.
    change(&world, 2);
    faults.fail_next(OfOp::Add, 5, 500, None);
    traced(&world, "sync after 1Flow 500s", &["sync"], &mut outputs).await;
    assert_eq!(
        outputs[2].1.status.code(),
        Some(1),
        "{}",
        text(&outputs[2].1)
    );
    assert_clean(&world, &outputs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_prints_no_secret_when_refused() {
    let world = sync_world().await;
    let faults = world.sandbox.faults();
    let mut outputs = Vec::new();

    for (round, endpoint) in AMPLITUDE.into_iter().enumerate() {
        change(&world, round as u64);
        faults.fail_next(endpoint, 2, 403, None);
        let label = format!("sync after a 403 on {endpoint:?}");
        traced(&world, &label, &["sync"], &mut outputs).await;
        assert_eq!(outputs[round].1.status.code(), Some(1), "{label}");
        faults.reset();
    }

    // 1Flow: a revoked key on add, then on the creation of a list (fresh state).
    faults.fail_next(OfOp::Add, 1, 401, None);
    traced(&world, "sync after a 1Flow 401", &["sync"], &mut outputs).await;
    faults.fail_next(OfOp::Create, 1, 401, None);
    let base = world.base_toml().replace("state.db", "other-state.db");
    world.write_config_with_base(&base, &cohort_toml("c1", ""));
    traced(
        &world,
        "sync after a 1Flow 401 on create",
        &["sync"],
        &mut outputs,
    )
    .await;
    assert!(outputs.iter().all(|(_, o)| o.status.code() == Some(1)));
    assert_clean(&world, &outputs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_status_and_cohorts_never_print_a_secret() {
    let world = World::new(&cohort_toml("c1", "")).await;
    world
        .sandbox
        .put_cohort(cohort("c1", sample_members(50, 0.0, 2)));
    let mut outputs = Vec::new();
    traced(&world, "sync", &["sync"], &mut outputs).await;
    traced(&world, "check", &["check"], &mut outputs).await;
    traced(&world, "status", &["status"], &mut outputs).await;
    traced(&world, "status --json", &["status", "--json"], &mut outputs).await;
    traced(&world, "cohorts", &["cohorts"], &mut outputs).await;
    for status in [403, 401, 500, 429] {
        world
            .sandbox
            .faults()
            .fail_next(AmpEndpoint::List, 10, status, Some("0"));
        traced(
            &world,
            &format!("cohorts after {status}"),
            &["cohorts"],
            &mut outputs,
        )
        .await;
    }
    world.sandbox.faults().reset();
    assert_eq!(
        outputs[0].1.status.code(),
        Some(0),
        "{}",
        text(&outputs[0].1)
    );
    assert_eq!(
        outputs[5].1.status.code(),
        Some(1),
        "{}",
        text(&outputs[5].1)
    );
    assert_clean(&world, &outputs);
}

#[test]
fn config_debug_output_is_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let (key, secret, oneflow) = ("amp-key-51f0", "amp-secret-9c2e", "of-key-77aa");
    std::fs::write(
        &path,
        format!(
            "[amplitude]\napi_key = \"{key}\"\nsecret_key = \"{secret}\"\n\
             [oneflow]\napi_key = \"{oneflow}\"\n\
             [state]\nurl = \"postgres://u:pg-pass-3e1d@localhost/db\"\n\
             [[cohorts]]\namplitude_id = \"c1\"\nschedule = \"daily\"\n"
        ),
    )
    .unwrap();
    let env = HashMap::from([(
        "COHORT_SYNC__AMPLITUDE_PROJECTS__OTHER__SECRET_KEY".to_owned(),
        "env-secret-0d4b".to_owned(),
    )]);
    let loaded = cohort_sync::config::load(&path, &HashMap::new()).expect("loads");
    let debug = format!("{loaded:?} {loaded:#?}");
    assert!(debug.contains("[redacted]"), "{debug}");
    for value in [key, secret, oneflow, "pg-pass-3e1d"] {
        assert!(!debug.contains(value), "{value} in {debug}");
    }

    // What a panic would print about a failed load carries no secret either.
    let failed = cohort_sync::config::load(&path, &env).expect_err("a project without its key");
    let shown = format!("{failed} {failed:?}");
    for value in [key, secret, oneflow, "pg-pass-3e1d", "env-secret-0d4b"] {
        assert!(!shown.contains(value), "{value} in {shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "printed the Amplitude Authorization value")]
async fn the_check_itself_catches_a_leaked_authorization_value() {
    use std::os::unix::process::ExitStatusExt;
    let world = World::new("").await;
    let o = world.sandbox.options();
    let basic = base64(format!("{}:{}", o.amplitude_api_key, o.amplitude_secret_key).as_bytes());
    let leaky = Output {
        status: std::process::ExitStatus::from_raw(0),
        stdout: Vec::new(),
        stderr: format!("authorization: {basic}\n").into_bytes(),
    };
    assert_clean(&world, &[("leaky".to_owned(), leaky)]);
}

#[test]
fn base64_follows_rfc_4648() {
    let cases = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
    ];
    for (plain, encoded) in cases {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
}
