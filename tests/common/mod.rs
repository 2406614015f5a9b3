//! Shared helpers for the end-to-end tests: a sandbox, a config pointing at it, and
//! the real `cohort-sync` binary run against both.
#![allow(dead_code)]

pub mod daemon;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use cohort_sync::sandbox::{FakeCohort, FakeMember, OfOp, Sandbox, SandboxOptions};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_cohort-sync");

/// A sandbox, a temporary directory and a config file in it.
pub struct World {
    /// The fake servers.
    pub sandbox: Sandbox,
    /// Holds the config, the state file and anything else a test writes.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// Extra keys of the `[amplitude]` section.
    pub amplitude_keys: String,
    /// Extra keys of the `[oneflow]` section.
    pub oneflow_keys: String,
}

impl World {
    /// A sandbox with default keys and a config with the given `[[cohorts]]` entries
    /// (and any extra TOML) appended to sandbox-pointing defaults.
    pub async fn new(extra_toml: &str) -> World {
        World::with_keys("", "", extra_toml).await
    }

    /// Like [`World::new`], with extra keys (TOML lines) in the `[amplitude]` and
    /// `[oneflow]` sections.
    pub async fn with_keys(amplitude_keys: &str, oneflow_keys: &str, extra_toml: &str) -> World {
        let sandbox = Sandbox::start(SandboxOptions::default())
            .await
            .expect("sandbox starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("cohort-sync.toml");
        let world = World {
            sandbox,
            dir,
            config,
            amplitude_keys: amplitude_keys.to_owned(),
            oneflow_keys: oneflow_keys.to_owned(),
        };
        world.write_config(extra_toml);
        world
    }

    /// The default sections, pointing at the sandbox, with fast polling.
    pub fn base_toml(&self) -> String {
        let o = self.sandbox.options();
        format!(
            "[amplitude]\napi_key = \"{}\"\nsecret_key = \"{}\"\nbase_url = \"{}\"\n\
             poll_interval = \"50ms\"\nexport_timeout = \"20s\"\n{}\n\n\
             [oneflow]\napi_key = \"{}\"\nbase_url = \"{}\"\nbatch_size = 1000\n{}\n\n\
             [state]\npath = \"state.db\"\n\n[server]\nlisten = \"\"\n\n",
            o.amplitude_api_key,
            o.amplitude_secret_key,
            self.sandbox.amplitude_url(),
            self.amplitude_keys,
            o.oneflow_api_key,
            self.sandbox.oneflow_url(),
            self.oneflow_keys,
        )
    }

    /// Rewrites the config file: the base sections plus `extra_toml`.
    pub fn write_config(&self, extra_toml: &str) {
        std::fs::write(&self.config, format!("{}{}", self.base_toml(), extra_toml))
            .expect("write config");
    }

    /// The state file the config names.
    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// Runs `cohort-sync ARGS --config <config>` to completion (on a blocking thread).
    pub async fn cli(&self, args: &[&str]) -> Output {
        let mut command = self.command(args);
        tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
            .await
            .expect("join")
    }

    /// Starts `cohort-sync ARGS --config <config>` without waiting (stdout and stderr
    /// piped).
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts")
    }

    /// The command line for `args` against this world's config.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .env_remove("COHORT_SYNC_CONFIG")
            .current_dir(self.dir.path());
        command
    }
}

/// A cohort of `members` with the sandbox's default file options.
pub fn cohort(id: &str, members: Vec<FakeMember>) -> FakeCohort {
    FakeCohort::new(id, format!("Cohort {id}"), members)
}

/// A `[[cohorts]]` entry with a daily schedule and any extra keys.
pub fn cohort_toml(id: &str, extra: &str) -> String {
    format!("[[cohorts]]\namplitude_id = \"{id}\"\nschedule = \"daily\"\n{extra}\n")
}

/// The 1Flow ids a list should hold for these members: the non-anonymous user ids.
pub fn expected(members: &[FakeMember]) -> BTreeSet<String> {
    members
        .iter()
        .filter(|m| !m.user_id.is_empty())
        .map(|m| m.user_id.clone())
        .collect()
}

/// Stdout and stderr of a finished command, for assertion messages.
pub fn text(output: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Whether a path exists (for "wrote nothing" checks).
pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// Stdout and stderr of a finished command, together (for "never appears" checks).
pub fn all_output(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Ids carried by the logged 1Flow requests of `op`, whatever they were answered.
pub fn ids_sent(requests: &[cohort_sync::sandbox::OneflowRequest], op: OfOp) -> usize {
    requests.iter().filter(|r| r.op == op).map(|r| r.ids).sum()
}

/// Ids carried by the logged 1Flow requests of `op` that were answered 2xx.
pub fn ids_confirmed(requests: &[cohort_sync::sandbox::OneflowRequest], op: OfOp) -> usize {
    requests
        .iter()
        .filter(|r| r.op == op && (200..300).contains(&r.status))
        .map(|r| r.ids)
        .sum()
}

impl World {
    /// Rewrites the config file with `base` (a variant of [`World::base_toml`]) plus
    /// `extra_toml`.
    pub fn write_config_with_base(&self, base: &str, extra_toml: &str) {
        std::fs::write(&self.config, format!("{base}{extra_toml}")).expect("write config");
    }

    /// `cohort-sync status --json`, parsed; panics when it fails.
    pub async fn status_json(&self) -> serde_json::Value {
        let output = self.cli(&["status", "--json"]).await;
        assert!(output.status.success(), "{}", text(&output));
        serde_json::from_slice(&output.stdout).expect("status --json prints JSON")
    }

    /// The status entry of one cohort, by Amplitude id.
    pub async fn cohort_status(&self, cohort_id: &str) -> serde_json::Value {
        let status = self.status_json().await;
        status["cohorts"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["amplitude_id"] == cohort_id).cloned())
            .unwrap_or_else(|| panic!("no cohort {cohort_id} in {status}"))
    }

    /// The 1Flow list id the state store holds for a cohort.
    pub async fn list_id(&self, cohort_id: &str) -> String {
        let status = self.cohort_status(cohort_id).await;
        status["list_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no list id in {status}"))
            .to_owned()
    }
}

/// `toml` with `key = value` lines set in `[section]`: a line for a key the section
/// already has replaces it, others go right after the section header.
pub fn set_keys(toml: &str, section: &str, lines: &[&str]) -> String {
    let header = format!("[{section}]");
    let mut out: Vec<String> = toml.lines().map(str::to_owned).collect();
    let start = out
        .iter()
        .position(|l| l.trim() == header)
        .unwrap_or_else(|| panic!("no {header} in {toml}"));
    for line in lines {
        let key = line.split('=').next().unwrap_or("").trim();
        let end = out[start + 1..]
            .iter()
            .position(|l| l.trim_start().starts_with('['))
            .map_or(out.len(), |i| start + 1 + i);
        let existing = out[start + 1..end]
            .iter()
            .position(|l| l.split('=').next().unwrap_or("").trim() == key);
        match existing {
            Some(i) => out[start + 1 + i] = (*line).to_owned(),
            None => out.insert(start + 1, (*line).to_owned()),
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

impl World {
    /// Rewrites the config: the base sections with these `[amplitude]` and `[oneflow]`
    /// keys set (see [`set_keys`]), plus `extra_toml`.
    pub fn write_tuned(&self, amplitude: &[&str], oneflow: &[&str], extra_toml: &str) {
        let base = set_keys(&self.base_toml(), "amplitude", amplitude);
        let base = set_keys(&base, "oneflow", oneflow);
        self.write_config_with_base(&base, extra_toml);
    }

    /// Every 1Flow request of this operation that was answered `status`.
    pub fn oneflow_answered(
        &self,
        op: cohort_sync::sandbox::OfOp,
        status: u16,
    ) -> Vec<cohort_sync::sandbox::OneflowRequest> {
        self.sandbox
            .oneflow_requests()
            .into_iter()
            .filter(|r| r.op == op && r.status == status)
            .collect()
    }
}
