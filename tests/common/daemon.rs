//! A `cohort-sync run` process for the daemon and replica tests: JSON logs collected
//! as they come, signals, and waits with a deadline.

use std::io::{BufRead, BufReader};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::World;

/// The longest any single wait on a daemon may take.
pub const WAIT: Duration = Duration::from_secs(12);

/// A running `cohort-sync run` with its stderr collected line by line.
pub struct Daemon {
    /// A name shown in assertion messages (the replica name, or "daemon").
    pub name: String,
    /// The process.
    pub child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts the daemon with JSON logs, the server on a free port, and `env`.
    pub fn start(world: &World, env: &[(&str, &str)]) -> Daemon {
        let mut command = world.command(&["run"]);
        command
            .env("COHORT_SYNC__LOG__FORMAT", "json")
            .env("COHORT_SYNC__SERVER__LISTEN", "127.0.0.1:0")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("the daemon starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push(line);
            }
        });
        let name = env
            .iter()
            .find(|(k, _)| *k == "COHORT_SYNC_REPLICA")
            .map_or("daemon", |(_, v)| v)
            .to_owned();
        Daemon { name, child, logs }
    }

    /// Every log line so far, each parsed as one JSON object.
    pub fn log_objects(&self) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line}"))
            })
            .collect()
    }

    /// The log, for assertion messages.
    pub fn log_text(&self) -> String {
        format!(
            "--- {}\n{}",
            self.name,
            self.logs.lock().unwrap().join("\n")
        )
    }

    /// Waits for a log line matching `wanted` and returns it.
    pub async fn wait_log(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self.log_objects().into_iter().find(&wanted) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no log line {what} within {WAIT:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many log lines match `wanted`.
    pub fn count_logs(&self, wanted: impl Fn(&Value) -> bool) -> usize {
        self.log_objects().iter().filter(|v| wanted(v)).count()
    }

    /// The address the server bound, from the "Serving" line.
    pub async fn bound(&self) -> String {
        let line = self
            .wait_log("with the bound address", |v| v["bound"].is_string())
            .await;
        line["bound"].as_str().unwrap().to_owned()
    }

    /// Sends a signal by name (`TERM`, `HUP`, `INT`).
    pub fn signal(&self, name: &str) {
        let sent = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {limit:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then expects exit 0 within the default grace period.
    pub async fn stop(&mut self) {
        self.signal("TERM");
        let status = self.exit_within(Duration::from_secs(8)).await;
        assert_eq!(status.code(), Some(0), "{}", self.log_text());
    }
}

impl Daemon {
    /// SIGKILL: the process dies at once, leaving its leases to expire.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// Waits until the daemon has started, and returns its server's address.
    pub async fn started(&self) -> String {
        self.wait_log("saying it started", |v| v["message"] == "Started.")
            .await;
        self.bound().await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
