//! Test support: a temporary directory with a state store, and plans built from small
//! configs written there, for the scheduler, metrics and server tests.

use std::collections::HashMap;

use super::scheduler::Plan;
use crate::state::Store;

/// A temporary directory holding a SQLite state store and the configs tests write.
pub struct Rig {
    dir: tempfile::TempDir,
    /// The state store in the directory.
    pub store: Store,
}

impl Rig {
    /// Opens the store on the real clock (SQLite's pool has timers of its own), then
    /// pauses tokio's clock for the rest of the test.
    pub async fn new() -> Rig {
        let rig = Rig::unpaused().await;
        tokio::time::pause();
        rig
    }

    /// Opens the store and leaves tokio's clock running.
    pub async fn unpaused() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("state.db"))
            .await
            .unwrap();
        Rig { dir, store }
    }

    /// Plans for `(id, schedule, extra keys)` cohorts.
    pub fn plans(&self, cohorts: &[(&str, &str, &str)]) -> Vec<Plan> {
        let mut text = "[amplitude]\napi_key = \"a\"\nsecret_key = \"s\"\n\
                        [oneflow]\napi_key = \"o\"\n[state]\npath = \"state.db\"\n"
            .to_owned();
        for (id, schedule, extra) in cohorts {
            text.push_str(&format!(
                "[[cohorts]]\namplitude_id = \"{id}\"\nschedule = \"{schedule}\"\n{extra}\n"
            ));
        }
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        let config = crate::config::load(&path, &HashMap::new()).unwrap();
        super::plans(&config, &self.store, "test").unwrap()
    }
}
