//! `cohort-sync run` as a process against the sandbox: fast schedules, reload by file
//! edit and by SIGHUP, rejected edits, overlapping fires, shutdown during a slow batch
//! and restart, the health, readiness and metrics endpoints, `health`, and the systemd
//! notifications. Logs are JSON lines, read as they come.

mod common;

use std::collections::HashSet;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use cohort_sync::sandbox::{AmpEndpoint, FakeMember, OfOp, sample_members};
use common::daemon::{Daemon, WAIT};
use common::{World, cohort, expected};
use serde_json::Value;

/// Every second: a 6-field cron, so tests need not wait for minutes.
const EVERY_SECOND: &str = "* * * * * *";

/// A `[[cohorts]]` entry firing every second.
fn fast_cohort(id: &str, extra: &str) -> String {
    format!("[[cohorts]]\namplitude_id = \"{id}\"\nschedule = \"{EVERY_SECOND}\"\n{extra}\n")
}

/// A finished run of `cohort` that synced (not merely found it unchanged).
fn synced_run(cohort: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v: &Value| {
        v["message"] == "Run finished." && v["result"] == "synced" && v["span"]["cohort"] == cohort
    }
}

/// Waits until the sandbox's list for `cohort` holds exactly `want`.
async fn wait_members(world: &World, daemon: &Daemon, cohort: &str, want: &HashSet<String>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let members = world.sandbox.members_of_cohort(cohort).unwrap_or_default();
        if members.len() == want.len() && members.iter().all(|m| want.contains(m)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{cohort} has {} members, not the {} expected:\n{}",
            members.len(),
            want.len(),
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn expected_set(members: &[FakeMember]) -> HashSet<String> {
    expected(members).into_iter().collect()
}

/// Replaces the config file the way editors do: write a sibling, rename over it.
fn replace_config(world: &World, extra_toml: &str) {
    let temp = world.dir.path().join(".cohort-sync.toml.tmp");
    std::fs::write(&temp, format!("{}{}", world.base_toml(), extra_toml)).unwrap();
    std::fs::rename(&temp, &world.config).unwrap();
}

async fn get(url: &str) -> (u16, String, String) {
    let response = reqwest::get(url).await.expect("the server answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// The value of the first series of `name` whose labels include every one of `labels`.
fn series(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .map(|value| value.parse().unwrap())
}

/// The messages received so far on a notify socket.
fn notifications(socket: &UnixDatagram) -> Vec<String> {
    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(len) = socket.recv(&mut buffer) {
        messages.push(String::from_utf8_lossy(&buffer[..len]).into_owned());
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_syncs_serves_health_and_metrics_and_tells_systemd() {
    let world = World::new(&fast_cohort("c1", "name = \"Buyers\"")).await;
    let members = sample_members(300, 0.05, 7);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    let socket_path = world.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_nonblocking(true).unwrap();

    let mut daemon = Daemon::start(
        &world,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let addr = daemon.bound().await;
    daemon.wait_log("of a synced run", synced_run("c1")).await;
    wait_members(&world, &daemon, "c1", &expected_set(&members)).await;

    assert_eq!(get(&format!("http://{addr}/healthz")).await.0, 200);
    let (status, _, body) = get(&format!("http://{addr}/readyz")).await;
    assert_eq!((status, body.trim()), (200, "ready"));
    let (status, content_type, metrics) = get(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200);
    assert!(content_type.contains("text"), "{content_type}");
    let c1 = "cohort=\"c1\"";
    let acknowledged = expected(&members).len() as f64;
    let synced = series(
        &metrics,
        "cohort_sync_runs_total",
        &[c1, "result=\"synced\""],
    );
    assert_eq!(synced, Some(1.0), "{metrics}");
    assert_eq!(
        series(&metrics, "cohort_sync_acknowledged_members", &[c1]),
        Some(acknowledged)
    );
    assert_eq!(
        series(&metrics, "cohort_sync_adds_total", &[c1]),
        Some(acknowledged)
    );
    assert_eq!(
        series(&metrics, "cohort_sync_removes_total", &[c1]),
        Some(0.0)
    );
    assert_eq!(
        series(&metrics, "cohort_sync_retries_total", &[c1]),
        Some(0.0)
    );
    assert!(series(&metrics, "cohort_sync_last_run_duration_seconds", &[c1]).is_some());
    let last_success = series(
        &metrics,
        "cohort_sync_last_success_timestamp_seconds",
        &[c1],
    );
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(last_success.is_some_and(|t| (now - 60.0..=now + 1.0).contains(&t)));
    let project = "project=\"default\"";
    assert_eq!(
        series(&metrics, "cohort_sync_exports_used", &[project]),
        Some(1.0)
    );
    assert_eq!(
        series(&metrics, "cohort_sync_export_budget", &[project]),
        Some(500.0)
    );
    assert!(
        metrics.lines().all(|line| !line.contains("user-")),
        "no member id in the metrics"
    );

    let health = world.cli(&["health", "--addr", &addr]).await;
    assert!(health.status.success(), "{}", common::text(&health));

    daemon.stop().await;
    let messages = notifications(&socket);
    assert!(
        messages.first().is_some_and(|m| m.contains("READY=1")),
        "{messages:?}"
    );
    assert!(messages.iter().any(|m| m == "WATCHDOG=1\n"), "{messages:?}");
    assert_eq!(messages.last().map(String::as_str), Some("STOPPING=1\n"));
    let finished = daemon.count_logs(|v| v["message"] == "Run finished.");
    assert!(finished >= 1);
    assert!(daemon.count_logs(|v| v["message"] == "Stopped cleanly.") == 1);

    let health = world.cli(&["health", "--addr", &addr]).await;
    assert_eq!(health.status.code(), Some(1), "{}", common::text(&health));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_file_adds_a_cohort_and_a_broken_edit_is_rejected() {
    let world = World::new(&fast_cohort("c1", "")).await;
    let first = sample_members(200, 0.0, 1);
    let second = sample_members(120, 0.0, 2);
    world.sandbox.put_cohort(cohort("c1", first.clone()));
    world.sandbox.put_cohort(cohort("c2", second.clone()));

    let mut daemon = Daemon::start(&world, &[]);
    daemon.wait_log("of c1 synced", synced_run("c1")).await;
    assert!(world.sandbox.members_of_cohort("c2").is_none());

    replace_config(
        &world,
        &format!("{}{}", fast_cohort("c1", ""), fast_cohort("c2", "")),
    );
    daemon
        .wait_log("of the reload", |v| {
            v["message"] == "Reloaded the config." && v["why"] == "file changed"
        })
        .await;
    wait_members(&world, &daemon, "c2", &expected_set(&second)).await;

    // A schedule under a minute is invalid: the daemon says what and where, and goes on.
    let broken = format!(
        "{}{}",
        fast_cohort("c1", ""),
        "[[cohorts]]\namplitude_id = \"c2\"\nschedule = \"every 5s\"\n"
    );
    replace_config(&world, &broken);
    let rejected = daemon
        .wait_log("rejecting the edit", |v| v["level"] == "ERROR")
        .await;
    let error = rejected["error"].as_str().unwrap_or_default();
    assert!(error.contains("cohorts[1].schedule"), "{rejected}");
    assert!(error.contains("at least 1 minute"), "{rejected}");

    let mut changed = first.clone();
    changed.truncate(150);
    changed.extend(sample_members(230, 0.0, 3).into_iter().skip(200));
    world.sandbox.update_members("c1", |m| *m = changed.clone());
    wait_members(&world, &daemon, "c1", &expected_set(&changed)).await;

    daemon.stop().await;
    assert_eq!(
        daemon.count_logs(|v| v["level"] == "ERROR"),
        1,
        "{}",
        daemon.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_new_credentials_and_tells_systemd() {
    // The 1Flow key in the file is wrong: runs fail and the account is held.
    let world = World::new("").await;
    let good_key = world.sandbox.options().oneflow_api_key.clone();
    let wrong = world.base_toml().replace(&good_key, "not-the-key");
    std::fs::write(&world.config, format!("{wrong}{}", fast_cohort("c1", ""))).unwrap();
    let members = sample_members(100, 0.0, 4);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    let socket_path = world.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_nonblocking(true).unwrap();

    let mut daemon = Daemon::start(&world, &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);
    daemon
        .wait_log("of the refused run", |v| {
            v["message"] == "Run failed." && v["span"]["cohort"] == "c1"
        })
        .await;
    daemon
        .wait_log("holding the account", |v| {
            v["message"] == "Not running until the config is reloaded with working credentials."
        })
        .await;
    assert!(
        !daemon.log_text().contains("not-the-key"),
        "the key never appears in logs"
    );

    // A SIGHUP with the file unchanged reloads it, and systemd hears about it.
    daemon.signal("HUP");
    daemon
        .wait_log("of the SIGHUP reload", |v| {
            v["message"] == "Reloaded the config." && v["why"] == "SIGHUP"
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let messages = notifications(&socket);
    let reloading = messages
        .iter()
        .position(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC="));
    assert!(
        reloading.is_some_and(|at| messages[at + 1..].contains(&"READY=1\n".to_owned())),
        "{messages:?}"
    );

    // The key fixed in the file applies at the next run.
    std::fs::write(
        &world.config,
        format!("{}{}", world.base_toml(), fast_cohort("c1", "")),
    )
    .unwrap();
    daemon.signal("HUP");
    wait_members(&world, &daemon, "c1", &expected_set(&members)).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_fires_are_skipped_and_counted_while_an_export_is_slow() {
    let world = World::new(&fast_cohort("c1", "")).await;
    let members = sample_members(200, 0.0, 5);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    // Two status polls of 1.2 s each: an export takes about 2.5 s, fires come every second.
    world
        .sandbox
        .faults()
        .latency(AmpEndpoint::Status, Duration::from_millis(1200));

    let mut daemon = Daemon::start(&world, &[]);
    let addr = daemon.bound().await;
    daemon.wait_log("of the first sync", synced_run("c1")).await;
    assert_eq!(world.sandbox.export_requests("c1"), 1);

    let mut changed = members.clone();
    changed.truncate(180);
    world.sandbox.update_members("c1", |m| *m = changed.clone());
    wait_members(&world, &daemon, "c1", &expected_set(&changed)).await;
    let deadline = Instant::now() + WAIT;
    while daemon.count_logs(synced_run("c1")) < 2 {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (_, _, metrics) = get(&format!("http://{addr}/metrics")).await;
    let c1 = "cohort=\"c1\"";
    let skipped = series(&metrics, "cohort_sync_skipped_fires_total", &[c1]).unwrap();
    assert!(skipped >= 2.0, "{metrics}");
    // One export per synced run: no run ever started while another was going.
    let synced = series(
        &metrics,
        "cohort_sync_runs_total",
        &[c1, "result=\"synced\""],
    );
    assert_eq!(synced, Some(2.0), "{metrics}");
    assert_eq!(world.sandbox.export_requests("c1"), 2);
    for result in ["skipped", "failed", "interrupted", "held"] {
        let label = format!("result=\"{result}\"");
        assert_eq!(
            series(&metrics, "cohort_sync_runs_total", &[c1, &label]),
            None
        );
    }
    let warned = daemon.count_logs(|v| {
        v["level"] == "WARN"
            && v["message"] == "The previous run is still going; this fire is skipped."
    });
    assert!(warned as f64 >= skipped, "{}", daemon.log_text());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_batch_exits_in_grace_and_a_restart_finishes() {
    let world = World::new(&format!(
        "[daemon]\nshutdown_grace = \"5s\"\n\n{}",
        fast_cohort("c1", "")
    ))
    .await;
    let members = sample_members(2000, 0.0, 6);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    world
        .sandbox
        .faults()
        .latency(OfOp::Add, Duration::from_millis(1500));
    let small_batches = [
        ("COHORT_SYNC__ONEFLOW__BATCH_SIZE", "200"),
        ("COHORT_SYNC__ONEFLOW__CONCURRENCY", "2"),
    ];

    let mut daemon = Daemon::start(&world, &small_batches);
    let deadline = Instant::now() + WAIT;
    while !world
        .sandbox
        .oneflow_requests()
        .iter()
        .any(|r| r.op == OfOp::Add)
    {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped_at = Instant::now();
    daemon.signal("TERM");
    let status = daemon.exit_within(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
    assert!(stopped_at.elapsed() < Duration::from_secs(4));
    let partial = world
        .sandbox
        .members_of_cohort("c1")
        .unwrap_or_default()
        .len();
    assert!(
        partial > 0 && partial < 2000,
        "{partial} members after the stop"
    );
    daemon
        .wait_log("of the interrupted run", |v| v["result"] == "interrupted")
        .await;
    assert_eq!(daemon.count_logs(|v| v["message"] == "Stopped cleanly."), 1);

    world.sandbox.faults().latency(OfOp::Add, Duration::ZERO);
    let mut restarted = Daemon::start(&world, &small_batches);
    wait_members(&world, &restarted, "c1", &expected_set(&members)).await;
    restarted
        .wait_log("of the finishing run", synced_run("c1"))
        .await;
    restarted.stop().await;

    // Every batch 1Flow confirmed was sent once: the restart sent only the rest, and it
    // reused the pending export instead of starting another.
    let confirmed: Vec<_> = world
        .sandbox
        .oneflow_requests()
        .into_iter()
        .filter(|r| r.op == OfOp::Add && (200..300).contains(&r.status))
        .collect();
    assert_eq!(confirmed.iter().map(|r| r.ids).sum::<usize>(), 2000);
    assert_eq!(world.sandbox.export_requests("c1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_1_when_no_daemon_answers() {
    let world = World::new("").await;
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let output = world.cli(&["health", "--addr", &addr]).await;
    assert_eq!(output.status.code(), Some(1), "{}", common::text(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("unhealthy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_the_next_three_fire_times_in_utc_and_the_zone() {
    let world = World::new(
        "[[cohorts]]\namplitude_id = \"c1\"\nschedule = \"30 2 * * *\"\n\
         timezone = \"Europe/London\"\n\n\
         [[cohorts]]\namplitude_id = \"c2\"\nschedule = \"once\"\n",
    )
    .await;
    let output = world.cli(&["check"]).await;
    assert!(output.status.success(), "{}", common::text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let fires: Vec<_> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| (l.starts_with("next:") || l.starts_with("then:")) && l.contains(" UTC "))
        .collect();
    assert_eq!(fires.len(), 3, "{stdout}");
    for line in &fires {
        assert!(line.contains(":30:00 UTC"), "{line}");
        assert!(line.contains(" 02:30:00 +0"), "{line}");
        assert!(line.ends_with("Europe/London)"), "{line}");
    }
    assert!(
        stdout.contains("fires once, when the daemon starts"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_batch_ends_at_the_grace_period_and_a_second_signal_exits_at_once() {
    let world = World::new(&format!(
        "[daemon]\nshutdown_grace = \"1s\"\n\n{}",
        fast_cohort("c1", "")
    ))
    .await;
    world
        .sandbox
        .put_cohort(cohort("c1", sample_members(50, 0.0, 8)));
    world.sandbox.faults().hang(OfOp::Add, true);
    let add_sent = |world: &World| {
        world
            .sandbox
            .oneflow_requests()
            .iter()
            .any(|r| r.op == OfOp::Add)
    };

    let mut daemon = Daemon::start(&world, &[]);
    let deadline = Instant::now() + WAIT;
    while !add_sent(&world) {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped_at = Instant::now();
    daemon.signal("TERM");
    let status = daemon.exit_within(Duration::from_secs(4)).await;
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
    assert!(stopped_at.elapsed() >= Duration::from_secs(1));
    daemon
        .wait_log("about the grace period", |v| {
            v["level"] == "WARN" && v["runs"] == 1
        })
        .await;

    let mut again = Daemon::start(&world, &[]);
    let deadline = Instant::now() + WAIT;
    while world
        .sandbox
        .oneflow_requests()
        .iter()
        .filter(|r| r.op == OfOp::Add)
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", again.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    again.signal("INT");
    again
        .wait_log("of the stop", |v| v["signal"] == "SIGINT")
        .await;
    let stopped_at = Instant::now();
    again.signal("TERM");
    let status = again.exit_within(Duration::from_secs(2)).await;
    assert_eq!(status.code(), Some(130), "{}", again.log_text());
    assert!(stopped_at.elapsed() < Duration::from_millis(900));
}
