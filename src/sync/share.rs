//! One export, several pushes: a cohort synced to more than one 1Flow account is
//! exported once per change, and every account's run diffs against the same parse.
//!
//! Runs look up the export by (project, cohort, lastComputed, mapping). The first run
//! to ask does the export; runs that ask while it works wait for it and share its
//! result, success or failure. A `sync` pass keeps results for the whole pass; the
//! daemon drops each one when the run that made it ends, since the runs that share it
//! fire together.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::CohortTarget;
use super::run::Stop;
use super::summary::{Outcome, Scope};
use crate::amplitude::CohortInfo;
use crate::export::Parsed;

/// A shared export: the parse and the `lastComputed` it was requested for.
pub type SharedExport = (Arc<Parsed>, Option<String>);

type Outcomes = Result<SharedExport, (Outcome, String, Scope)>;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    project: String,
    cohort_id: String,
    computed: Option<String>,
    mapping: String,
}

/// Exports shared between runs of one cohort to several accounts.
#[derive(Default)]
pub struct ExportShare {
    entries: Mutex<HashMap<Key, Arc<OnceCell<Outcomes>>>>,
    keep: bool,
}

impl std::fmt::Debug for ExportShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.entries.lock().map_or(0, |e| e.len());
        write!(f, "ExportShare({entries} exports, keep: {})", self.keep)
    }
}

impl ExportShare {
    /// A share that keeps every export until it is dropped (one `sync` pass).
    pub fn for_pass() -> ExportShare {
        ExportShare {
            entries: Mutex::default(),
            keep: true,
        }
    }

    /// A share that forgets an export when the run that made it ends (the daemon).
    pub fn for_daemon() -> ExportShare {
        ExportShare {
            entries: Mutex::default(),
            keep: false,
        }
    }

    /// The export for `target`, made by `export` unless another run made or is making it.
    ///
    /// # Errors
    ///
    /// The stop of whichever run made the export, when it failed.
    pub async fn get_or_export<F, Fut>(
        &self,
        target: &CohortTarget,
        info: &CohortInfo,
        export: F,
    ) -> Result<SharedExport, Stop>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Parsed, Option<String>), Stop>>,
    {
        let key = Key {
            project: target.key.project.clone(),
            cohort_id: target.cohort.amplitude_id.clone(),
            computed: info.last_computed.clone(),
            mapping: format!(
                "{:?}|{:?}|{:?}",
                target.cohort.user_id, target.cohort.transform, target.cohort.lookup
            ),
        };
        let cell = {
            let mut entries = self.entries.lock().expect("share lock");
            Arc::clone(entries.entry(key.clone()).or_default())
        };
        let mut made_here = false;
        let outcome = cell
            .get_or_init(|| async {
                made_here = true;
                match export().await {
                    Ok((parsed, computed)) => Ok((Arc::new(parsed), computed)),
                    Err(stop) => Err((stop.outcome, stop.message, stop.scope)),
                }
            })
            .await
            .clone();
        if made_here && !self.keep {
            self.entries.lock().expect("share lock").remove(&key);
        } else if !made_here {
            tracing::info!("Using the export another account's run of this cohort made.");
        }
        outcome.map_err(|(outcome, message, scope)| Stop {
            outcome,
            message,
            scope,
        })
    }
}
