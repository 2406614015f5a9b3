//! The process against its own state file: one process per SQLite file, and a state
//! file that cannot be written (read-only, or the disk is full) fails the run clearly
//! and leaves the acknowledged state intact.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cohort_sync::sandbox::sample_members;
use common::{World, all_output, cohort, cohort_toml, expected, text};

const LOCKED: &str = "another cohort-sync process is using the state file";

async fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_or_sync_on_the_same_sqlite_file_refuses() {
    let world = World::new(&cohort_toml("c1", "")).await;
    world
        .sandbox
        .put_cohort(cohort("c1", sample_members(100, 0.0, 1)));
    let mut first = world.spawn(&["run"]);
    wait_for_file(&world.state_path()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let second = world.cli(&["run"]).await;
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    assert!(all_output(&second).contains(LOCKED), "{}", text(&second));

    let sync = world.cli(&["sync"]).await;
    assert_eq!(sync.status.code(), Some(1), "{}", text(&sync));
    assert!(all_output(&sync).contains(LOCKED), "{}", text(&sync));

    // Reading is allowed while the daemon runs.
    let status = world.cli(&["status"]).await;
    assert!(status.status.success(), "{}", text(&status));

    assert!(
        first.try_wait().unwrap().is_none(),
        "the first daemon keeps running"
    );
    let _ = first.kill();
    let _ = first.wait();
}

/// Sets or clears the immutable attribute, which refuses writes even to root.
fn immutable(path: &Path, on: bool) {
    let flag = if on { "+i" } else { "-i" };
    let status = Command::new("chattr")
        .arg(flag)
        .arg(path)
        .status()
        .expect("chattr runs");
    assert!(status.success(), "chattr {flag} {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_state_file_fails_the_run_and_keeps_the_state() {
    let world = World::new(&cohort_toml("c1", "")).await;
    let members = sample_members(2_000, 0.0, 2);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    let first = world.cli(&["sync"]).await;
    assert!(first.status.success(), "{}", text(&first));

    world.sandbox.update_members("c1", |m| m.truncate(1_500));
    let state = world.state_path();
    let frozen: Vec<PathBuf> = std::fs::read_dir(world.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("state.db"))
        .chain([world.dir.path().to_owned()])
        .collect();
    frozen.iter().for_each(|p| immutable(p, true));
    let output = world.cli(&["sync"]).await;
    frozen.iter().rev().for_each(|p| immutable(p, false));

    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let all = all_output(&output);
    assert!(
        all.contains("state"),
        "the error names the state store: {all}"
    );
    assert!(!all.contains("panicked"), "{all}");
    assert!(state.exists());
    let status = world.status_json().await;
    assert_eq!(status["cohorts"][0]["acknowledged"], 2_000, "{status}");

    let healed = world.cli(&["sync"]).await;
    assert!(healed.status.success(), "{}", text(&healed));
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members[..1_500]))
    );
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mount a tmpfs at {}", path.display());
        SmallDisk(path)
    }

    /// Writes a file until the disk is full, then frees `leave` bytes of it.
    fn fill(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(leave)).unwrap();
        file.sync_all().unwrap();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_run_and_keeps_the_state() {
    let world = World::new("").await;
    let disk = SmallDisk::mount(world.dir.path().join("disk"), "8m");
    let base = world
        .base_toml()
        .replace("path = \"state.db\"", "path = \"disk/state.db\"");
    world.write_config_with_base(&base, &cohort_toml("c1", "max_removal_ratio = 1.0"));
    let members = sample_members(20_000, 0.0, 3);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    let first = world.cli(&["sync"]).await;
    assert!(first.status.success(), "{}", text(&first));

    let joined: Vec<_> = sample_members(60_000, 0.0, 4)
        .into_iter()
        .map(|mut m| {
            m.user_id = format!("joined-{}-with-a-longer-id-to-fill-pages", m.user_id);
            m
        })
        .collect();
    world
        .sandbox
        .update_members("c1", |m| m.extend(joined.iter().cloned()));
    // Nothing at all left: the store cannot even open. A little left: it opens, and a
    // write during the run fails.
    for leave in [0, 256 * 1024] {
        let filler = disk.fill(leave);
        let output = world.cli(&["sync"]).await;
        std::fs::remove_file(filler).unwrap();
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        let all = all_output(&output);
        assert!(
            all.contains("disk is full") || all.contains("disk full"),
            "{all}"
        );
        assert!(!all.contains("panicked"), "{all}");
    }

    let status = world.status_json().await;
    let acknowledged = status["cohorts"][0]["acknowledged"].as_u64().unwrap();
    assert!(
        acknowledged >= 20_000,
        "nothing acknowledged was lost: {status}"
    );
    let healed = world.cli(&["sync"]).await;
    assert!(healed.status.success(), "{}", text(&healed));
    let mut all_members = members.clone();
    all_members.extend(joined);
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&all_members))
    );
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_sync_after_the_batches_in_flight() {
    let world = World::new(&cohort_toml("c1", "")).await;
    let members = sample_members(30_000, 0.0, 5);
    world.sandbox.put_cohort(cohort("c1", members.clone()));
    world
        .sandbox
        .faults()
        .set_oneflow_latency(Duration::from_millis(200));

    let child = world.spawn(&["sync"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while world.sandbox.lists().first().is_none_or(|l| l.members == 0) {
        assert!(Instant::now() < deadline, "the push never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = Instant::now();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "stopped within the batch latency"
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("interrupted"),
        "{}",
        text(&output)
    );
    let partial = world.sandbox.members_of_cohort("c1").unwrap().len();
    assert!(partial > 0 && partial < 30_000, "{partial}");
    let acknowledged = world.status_json().await["cohorts"][0]["acknowledged"]
        .as_u64()
        .unwrap();
    assert_eq!(
        acknowledged as usize, partial,
        "every confirmed batch was recorded"
    );

    world.sandbox.faults().set_oneflow_latency(Duration::ZERO);
    let finish = world.cli(&["sync"]).await;
    assert!(finish.status.success(), "{}", text(&finish));
    assert_eq!(
        world.sandbox.members_of_cohort("c1"),
        Some(expected(&members))
    );
    assert_eq!(
        world.sandbox.export_requests("c1"),
        1,
        "the export was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tells_a_killed_run_from_a_running_one_and_missing_state_from_empty() {
    let world = World::new(&cohort_toml("c1", "")).await;
    let missing = world.cli(&["status"]).await;
    assert!(missing.status.success(), "{}", text(&missing));
    assert!(all_output(&missing).contains("never"), "{}", text(&missing));
    assert!(
        all_output(&missing).contains("there is no state at"),
        "{}",
        text(&missing)
    );
    assert!(!world.state_path().exists(), "status created no state");

    world
        .sandbox
        .put_cohort(cohort("c1", sample_members(20_000, 0.0, 6)));
    world
        .sandbox
        .faults()
        .set_oneflow_latency(Duration::from_millis(200));
    let mut child = world.spawn(&["sync"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while world.sandbox.lists().first().is_none_or(|l| l.members == 0) {
        assert!(Instant::now() < deadline, "the push never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let running = world.status_json().await;
    assert_eq!(
        running["cohorts"][0]["last_run"]["result"], "running",
        "{running}"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    let stopped = world.status_json().await;
    let result = stopped["cohorts"][0]["last_run"]["result"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(result.starts_with("stopped"), "{stopped}");
}
