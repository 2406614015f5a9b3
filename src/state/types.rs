//! The plain values the state store reads and writes.
//!
//! Nothing here touches the database; these are what the pipeline passes around.

use std::fmt;

use crate::members;

/// Identifies one synced cohort: an Amplitude cohort pushed to one 1Flow account.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CohortKey {
    /// The Amplitude project name from the configuration ("default" with a single project).
    pub project: String,
    /// The Amplitude cohort id.
    pub cohort_id: String,
    /// The 1Flow account name from the configuration ("default" with a single account).
    pub account: String,
}

/// The project name used when the configuration has a single Amplitude project.
pub const DEFAULT_PROJECT: &str = "default";
/// The account name used when the configuration has a single 1Flow account.
pub const DEFAULT_ACCOUNT: &str = "default";

impl CohortKey {
    /// A key from its three parts.
    pub fn new(project: &str, cohort_id: &str, account: &str) -> CohortKey {
        CohortKey {
            project: project.to_owned(),
            cohort_id: cohort_id.to_owned(),
            account: account.to_owned(),
        }
    }

    /// A key in the default project and account.
    pub fn single(cohort_id: &str) -> CohortKey {
        CohortKey::new(DEFAULT_PROJECT, cohort_id, DEFAULT_ACCOUNT)
    }
}

impl fmt::Display for CohortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.project, self.cohort_id, self.account)
    }
}

/// The right to change one cohort's state, until another holder takes it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The cohort it covers.
    pub key: CohortKey,
    /// Who holds it: one process of a replica, as [`super::process_holder`] names it.
    pub holder: String,
    /// Grows at every change of holder; a write carrying an older fence is refused.
    pub fence: i64,
    /// When it lapses unless renewed, in milliseconds since the epoch.
    pub expires_at: i64,
}

/// What is known about one cohort, without its member ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CohortState {
    /// The 1Flow list the cohort is pushed to, once created.
    pub list_id: Option<String>,
    /// Amplitude's `lastComputed` of the last export that was fully synced.
    pub synced_computed: Option<String>,
    /// The export requested and not yet fully synced.
    pub pending: Option<PendingExport>,
    /// How many ids are acknowledged (snapshot plus journal).
    pub acknowledged: u64,
    /// How many confirmed batches are journaled since the last compaction.
    pub journal_batches: u64,
}

/// An export requested from Amplitude and not yet fully synced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingExport {
    /// Amplitude's request id, to poll and download it.
    pub request_id: String,
    /// When it was requested, in milliseconds since the epoch.
    pub started_at: i64,
    /// The cohort's `lastComputed` when it was requested.
    pub computed: Option<String>,
    /// The user properties it was requested with, comma-separated (`None` when
    /// unknown, for exports recorded before this was kept).
    pub properties: Option<String>,
}

/// Whether a confirmed batch added ids to the list or removed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The ids joined the list.
    Add,
    /// The ids left the list.
    Remove,
}

impl Op {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Remove => "remove",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Op> {
        match text {
            "add" => Some(Op::Add),
            "remove" => Some(Op::Remove),
            _ => None,
        }
    }
}

/// A batch 1Flow confirmed, to journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckBatch {
    /// Added or removed.
    pub op: Op,
    /// The ids, as [`members::encode`] writes them.
    pub ids: Vec<u8>,
    /// How many ids `ids` holds.
    pub count: u32,
}

impl AckBatch {
    /// Encodes `ids` into a batch.
    pub fn new<'a>(op: Op, ids: impl IntoIterator<Item = &'a [u8]>) -> AckBatch {
        let mut count = 0u32;
        let ids = members::encode(ids.into_iter().inspect(|_| count += 1));
        AckBatch { op, ids, count }
    }
}

/// The result of a run that has started but not finished (or whose process died).
pub const RUN_IN_PROGRESS: &str = "running";

/// What one run saw and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Distinct mapped members in the export.
    pub members: u64,
    /// Rows without a user id.
    pub anonymous: u64,
    /// Rows whose id could not be mapped to a 1Flow id.
    pub unmapped: u64,
    /// Rows with an id 1Flow would refuse.
    pub invalid: u64,
    /// Ids confirmed added.
    pub adds: u64,
    /// Ids confirmed removed.
    pub removes: u64,
    /// Batches sent.
    pub batches: u64,
    /// Requests retried.
    pub retries: u64,
}

/// One entry of a cohort's run history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunRecord {
    /// The run id, unique per cohort.
    pub run_id: String,
    /// When it started, in milliseconds since the epoch.
    pub started_at: i64,
    /// When it finished; `None` when still running. [`super::Store::finish_run`] fills in
    /// the store's clock when this is `None`.
    pub finished_at: Option<i64>,
    /// "ok", "failed", "unchanged", "held", "skipped", or [`RUN_IN_PROGRESS`].
    pub result: String,
    /// What it saw and did.
    pub counts: RunCounts,
    /// Why it failed or was held, when it was.
    pub error: Option<String>,
    /// The process that ran it (see [`super::replica_name`]); the lease's holder.
    pub holder: String,
}

/// A count stored in a signed 64-bit column.
pub(crate) fn to_db(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// A count read back from a signed 64-bit column; negative values read as zero.
pub(crate) fn from_db(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
