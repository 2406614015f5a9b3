//! Fake Amplitude, S3 and 1Flow servers for the demo, the end-to-end tests and the benchmark.
//!
//! [`Sandbox::start`] binds three axum servers on 127.0.0.1 ports of its choosing. Export
//! files are rendered once when a cohort is put and served from memory; 1Flow lists are
//! in-memory sets. [`Faults`] makes the servers misbehave; the inspection methods of
//! [`Sandbox`] tell what they saw. The servers stop when the sandbox is dropped.

mod amplitude;
mod cohort;
mod faults;
mod http_util;
mod oneflow;
mod s3;
mod store;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use cohort::{Delivery, FakeCohort, FakeMember, FileOptions, sample_members};
pub use faults::{
    AmpEndpoint, DEFAULT_POLLS_BEFORE_COMPLETE, DEFAULT_S3_LINK_LIFETIME, Endpoint, FaultKind,
    Faults, OfOp,
};
pub use oneflow::{FakeListInfo, OneflowRequest};

use faults::Injected;
use store::State;

/// The credentials the sandbox's default Amplitude project and 1Flow account accept.
#[derive(Clone, PartialEq, Eq)]
pub struct SandboxOptions {
    /// The API key of the default Amplitude project (the Basic user name).
    pub amplitude_api_key: String,
    /// The secret key of the default Amplitude project (the Basic password).
    pub amplitude_secret_key: String,
    /// The API key of the default 1Flow account (the Basic user name, empty password).
    pub oneflow_api_key: String,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            amplitude_api_key: "sandbox-amplitude-key".into(),
            amplitude_secret_key: "sandbox-amplitude-secret".into(),
            oneflow_api_key: "sandbox-1flow-key".into(),
        }
    }
}

impl fmt::Debug for SandboxOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxOptions").finish_non_exhaustive()
    }
}

/// What every handler shares: the state, the fault switches and the stop signal.
struct Shared {
    state: Mutex<State>,
    faults: Faults,
    stop: CancellationToken,
    /// `http://127.0.0.1:PORT` of the fake S3, for the links `/file` mints.
    s3_base: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies latency, hang and `fail_next` for `endpoint`, in that order. `Some` is the
    /// answer to give instead of the real one.
    async fn inject(&self, endpoint: Endpoint) -> Option<Injected> {
        let delay = self.faults.latency_of(endpoint);
        if !delay.is_zero() {
            self.faults.count(FaultKind::Latency(endpoint));
            if !self.pause(delay).await {
                return Some(Injected::shutting_down());
            }
        }
        if self.faults.is_hung(endpoint) {
            self.faults.count(FaultKind::Hang(endpoint));
            self.stop.cancelled().await;
            return Some(Injected::shutting_down());
        }
        self.faults.take_failure(endpoint)
    }

    /// Sleeps for `delay`; false if the sandbox stopped first.
    ///
    /// tokio's timer rounds up to the next millisecond and wakes late by about as much
    /// again, which would make a "20 ms" 1Flow answer after 22 ms. The last stretch is
    /// slept on a blocking thread instead, which the kernel wakes within microseconds.
    async fn pause(&self, delay: Duration) -> bool {
        const COARSE_MARGIN: Duration = Duration::from_millis(3);
        let deadline = std::time::Instant::now() + delay;
        let coarse = delay.saturating_sub(COARSE_MARGIN);
        let precise = async move {
            tokio::time::sleep(coarse).await;
            let rest = deadline.saturating_duration_since(std::time::Instant::now());
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
        };
        tokio::select! {
            () = precise => true,
            () = self.stop.cancelled() => false,
        }
    }
}

/// A running set of fake servers. Dropping it (or [`Sandbox::shutdown`]) stops them.
pub struct Sandbox {
    shared: Arc<Shared>,
    options: SandboxOptions,
    amplitude_addr: SocketAddr,
    s3_addr: SocketAddr,
    oneflow_addr: SocketAddr,
    tasks: Vec<JoinHandle<io::Result<()>>>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("amplitude", &self.amplitude_addr)
            .field("s3", &self.s3_addr)
            .field("oneflow", &self.oneflow_addr)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Binds the fake Amplitude, S3 and 1Flow servers and starts serving on the current
    /// tokio runtime.
    ///
    /// # Errors
    ///
    /// Fails when a listener cannot be bound.
    pub async fn start(options: SandboxOptions) -> io::Result<Sandbox> {
        let amplitude = TcpListener::bind(("127.0.0.1", 0)).await?;
        let s3 = TcpListener::bind(("127.0.0.1", 0)).await?;
        let oneflow = TcpListener::bind(("127.0.0.1", 0)).await?;
        let (amplitude_addr, s3_addr) = (amplitude.local_addr()?, s3.local_addr()?);
        let oneflow_addr = oneflow.local_addr()?;

        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(&options)),
            faults: Faults::default(),
            stop: CancellationToken::new(),
            s3_base: format!("http://{s3_addr}"),
        });
        let tasks = vec![
            serve(amplitude, amplitude::router(shared.clone()), &shared.stop),
            serve(s3, s3::router(shared.clone()), &shared.stop),
            serve(oneflow, oneflow::router(shared.clone()), &shared.stop),
        ];
        Ok(Sandbox {
            shared,
            options,
            amplitude_addr,
            s3_addr,
            oneflow_addr,
            tasks,
        })
    }

    /// Stops the servers and waits until they have closed their connections.
    pub async fn shutdown(mut self) {
        self.shared.stop.cancel();
        for task in std::mem::take(&mut self.tasks) {
            // A server that failed or panicked has stopped too, which is all we wait for.
            let _ = task.await;
        }
    }

    /// The fake Amplitude's base URL, `http://127.0.0.1:PORT`.
    pub fn amplitude_url(&self) -> String {
        format!("http://{}", self.amplitude_addr)
    }

    /// The fake S3's base URL (links to it come from `/file` redirects).
    pub fn s3_url(&self) -> String {
        self.shared.s3_base.clone()
    }

    /// The fake 1Flow's base URL, `http://127.0.0.1:PORT`.
    pub fn oneflow_url(&self) -> String {
        format!("http://{}", self.oneflow_addr)
    }

    /// The credentials of the default project and account.
    pub fn options(&self) -> &SandboxOptions {
        &self.options
    }

    /// The fault switches.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Adds an Amplitude project with its own cohorts (or changes the secret of one).
    pub fn add_amplitude_project(&self, api_key: &str, secret_key: &str) {
        self.shared.lock().add_project(api_key, secret_key);
    }

    /// Adds a 1Flow account with its own lists.
    pub fn add_oneflow_account(&self, api_key: &str) {
        self.shared.lock().add_account(api_key);
    }

    /// Puts a cohort in the default project, replacing one with the same id. Its file is
    /// rendered now. `lastComputed` is `cohort.last_computed` if set; otherwise it advances
    /// when the members differ from the replaced cohort's, and stays when they do not.
    pub fn put_cohort(&self, cohort: FakeCohort) {
        store::put_cohort(&self.shared, 0, cohort);
    }

    /// [`Sandbox::put_cohort`] into the project with this API key; false if there is none.
    pub fn put_cohort_in(&self, project_api_key: &str, cohort: FakeCohort) -> bool {
        let project = self.shared.lock().project_index(project_api_key);
        project
            .map(|index| store::put_cohort(&self.shared, index, cohort))
            .is_some()
    }

    /// Edits the members of a cohort of the default project, renders its file again and
    /// advances `lastComputed`. False if there is no such cohort.
    pub fn update_members(&self, cohort_id: &str, edit: impl FnOnce(&mut Vec<FakeMember>)) -> bool {
        let Some(mut cohort) = self.shared.lock().cohort_copy(0, cohort_id) else {
            return false;
        };
        edit(&mut cohort.members);
        let previous = cohort.last_computed.unwrap_or(0);
        cohort.last_computed = Some(store::unix_now().max(previous + 1));
        store::put_cohort(&self.shared, 0, cohort);
        true
    }

    /// Removes a cohort from the default project; false if there was none.
    pub fn remove_cohort(&self, cohort_id: &str) -> bool {
        self.shared.lock().remove_cohort(0, cohort_id)
    }

    /// Calls to `/api/5/cohorts/request/{cohort_id}` with this id, whatever they answered.
    pub fn export_requests(&self, cohort_id: &str) -> usize {
        self.shared
            .lock()
            .export_calls
            .get(cohort_id)
            .copied()
            .unwrap_or(0)
    }

    /// Calls to `/api/5/cohorts/request/{request_id}/file`, whatever they answered.
    pub fn file_requests(&self, request_id: &str) -> usize {
        self.shared
            .lock()
            .file_calls
            .get(request_id)
            .copied()
            .unwrap_or(0)
    }

    /// The request ids of the exports started for this cohort, oldest first.
    pub fn export_request_ids(&self, cohort_id: &str) -> Vec<String> {
        let state = self.shared.lock();
        let mut ids: Vec<String> = state
            .jobs
            .iter()
            .filter(|(_, job)| job.cohort_id == cohort_id)
            .map(|(id, _)| id.clone())
            .collect();
        // Request ids start with a zero-padded sequence number.
        ids.sort();
        ids
    }

    /// The `X-Amz-Signature` of every link the fake S3 minted, for "never leaks" checks.
    pub fn s3_signatures(&self) -> Vec<String> {
        let state = self.shared.lock();
        state.links.values().map(|l| l.signature.clone()).collect()
    }

    /// Status polls of this request, whatever they answered.
    pub fn status_polls(&self, request_id: &str) -> usize {
        self.shared
            .lock()
            .status_calls
            .get(request_id)
            .copied()
            .unwrap_or(0)
    }

    /// Requests the fake S3 received.
    pub fn s3_requests(&self) -> usize {
        self.shared.lock().s3_requests
    }

    /// Whether any request to the fake S3 carried an Authorization header.
    pub fn s3_saw_authorization(&self) -> bool {
        self.shared.lock().s3_saw_authorization
    }

    /// The lists of the default 1Flow account, in creation order, deleted ones included.
    pub fn lists(&self) -> Vec<FakeListInfo> {
        self.shared.lock().list_infos(0)
    }

    /// The lists of the 1Flow account with this key (empty if there is none).
    pub fn lists_in(&self, account_api_key: &str) -> Vec<FakeListInfo> {
        let mut state = self.shared.lock();
        state
            .account_index(account_api_key)
            .map(|a| state.list_infos(a))
            .unwrap_or_default()
    }

    /// The members of a list of any account (empty if there is none).
    pub fn list_members(&self, list_id: &str) -> BTreeSet<String> {
        let mut state = self.shared.lock();
        state
            .list_mut(list_id)
            .map(|l| l.members.settled().iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The members of the latest live list of the default account created with this
    /// `cohort_id`; `None` if there is none.
    pub fn members_of_cohort(&self, cohort_id: &str) -> Option<BTreeSet<String>> {
        let mut state = self.shared.lock();
        let list =
            state.lists.iter_mut().rev().find(|l| {
                l.account == 0 && !l.deleted && l.cohort_id.as_deref() == Some(cohort_id)
            })?;
        Some(list.members.settled().iter().cloned().collect())
    }

    /// Every request the fake 1Flow received, in arrival order. A request still waiting
    /// (latency, hang) shows status 0.
    pub fn oneflow_requests(&self) -> Vec<OneflowRequest> {
        self.shared.lock().oneflow_log.clone()
    }

    /// Removes ids from a list directly, as someone editing it on the 1Flow side would;
    /// nothing is logged as a request. Returns how many were members; 0 if there is no
    /// such list.
    pub fn remove_members<S: AsRef<str>>(&self, list_id: &str, ids: &[S]) -> usize {
        let mut state = self.shared.lock();
        let Some(list) = state.list_mut(list_id) else {
            return 0;
        };
        let members = list.members.settled();
        ids.iter().filter(|id| members.remove(id.as_ref())).count()
    }

    /// Deletes a list: later adds and removes to it answer 404. False if there is none.
    pub fn delete_list(&self, list_id: &str) -> bool {
        let mut state = self.shared.lock();
        state
            .list_mut(list_id)
            .map(|list| list.deleted = true)
            .is_some()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

fn serve(
    listener: TcpListener,
    router: Router,
    stop: &CancellationToken,
) -> JoinHandle<io::Result<()>> {
    let stop = stop.clone();
    // Nagle's algorithm would hold back small answers behind delayed ACKs: the
    // benchmark's 1Flow must answer as soon as it is done.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    })
}
