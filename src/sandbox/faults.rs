//! Switches that make the fake servers misbehave on purpose, and counters of what fired.
//!
//! Every switch can be flipped at any time through `&Faults` (one small mutex inside, never
//! held across an await). A switch that fires bumps a [`FaultKind`] counter, read with
//! [`Faults::fired`], so a test can prove that its client really met the fault.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;

/// An endpoint of the fake Amplitude, including the fake S3 that serves redirected files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AmpEndpoint {
    /// `GET /api/3/cohorts`.
    List,
    /// `GET /api/5/cohorts/request/{cohort_id}`: start an export.
    Request,
    /// `GET /api/5/cohorts/request-status/{request_id}`.
    Status,
    /// `GET /api/5/cohorts/request/{request_id}/file`.
    File,
    /// `GET` of a pre-signed link on the fake S3.
    S3,
}

/// An operation of the fake 1Flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OfOp {
    /// `POST /lists`.
    Create,
    /// `POST /lists/{list_id}/add`.
    Add,
    /// `POST /lists/{list_id}/remove`.
    Remove,
}

/// Any endpoint of the sandbox; built from an [`AmpEndpoint`] or an [`OfOp`] with `into()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// An Amplitude or S3 endpoint.
    Amplitude(AmpEndpoint),
    /// A 1Flow operation.
    Oneflow(OfOp),
}

impl From<AmpEndpoint> for Endpoint {
    fn from(endpoint: AmpEndpoint) -> Self {
        Endpoint::Amplitude(endpoint)
    }
}

impl From<OfOp> for Endpoint {
    fn from(op: OfOp) -> Self {
        Endpoint::Oneflow(op)
    }
}

/// What fired, for [`Faults::fired`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// A `fail_next` answer on this endpoint.
    Fail(Endpoint),
    /// A request on this endpoint was held unanswered.
    Hang(Endpoint),
    /// A request on this endpoint was delayed by the configured latency.
    Latency(Endpoint),
    /// A poll answered the replacement `status_string`.
    StatusString,
    /// A pre-signed link was minted already expired.
    ExpiredLink,
    /// A download sent half its body and then broke the connection.
    ResetDownload,
    /// A 1Flow batch was refused with 413 for carrying too many ids.
    TooManyIds,
}

impl FaultKind {
    /// `FaultKind::Fail` for an Amplitude endpoint or a 1Flow operation.
    pub fn fail(endpoint: impl Into<Endpoint>) -> Self {
        FaultKind::Fail(endpoint.into())
    }

    /// `FaultKind::Hang` for an Amplitude endpoint or a 1Flow operation.
    pub fn hang(endpoint: impl Into<Endpoint>) -> Self {
        FaultKind::Hang(endpoint.into())
    }

    /// `FaultKind::Latency` for an Amplitude endpoint or a 1Flow operation.
    pub fn latency(endpoint: impl Into<Endpoint>) -> Self {
        FaultKind::Latency(endpoint.into())
    }
}

/// The polls answered "JOB INPROGRESS" before an export completes, unless changed.
pub const DEFAULT_POLLS_BEFORE_COMPLETE: u32 = 1;

/// How long a minted S3 link stays valid, unless changed.
pub const DEFAULT_S3_LINK_LIFETIME: Duration = Duration::from_secs(60);

/// An answer the sandbox gives instead of the real one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Injected {
    pub(super) status: StatusCode,
    pub(super) retry_after: Option<String>,
}

impl Injected {
    /// The answer to a held request when the sandbox stops.
    pub(super) fn shutting_down() -> Self {
        Injected {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: None,
        }
    }
}

#[derive(Debug)]
struct Failure {
    /// Requests still to let through before the first failure.
    skip: u32,
    remaining: u32,
    status: u16,
    retry_after: Option<String>,
}

#[derive(Debug)]
struct State {
    polls_before_complete: u32,
    status_string: Option<String>,
    never_complete: bool,
    s3_link_lifetime: Duration,
    expire_next_links: u32,
    reset_download_midway: u32,
    max_ids_per_request: Option<usize>,
    failures: HashMap<Endpoint, Failure>,
    hung: HashSet<Endpoint>,
    latency: HashMap<Endpoint, Duration>,
    fired: HashMap<FaultKind, usize>,
}

impl Default for State {
    fn default() -> Self {
        State {
            polls_before_complete: DEFAULT_POLLS_BEFORE_COMPLETE,
            status_string: None,
            never_complete: false,
            s3_link_lifetime: DEFAULT_S3_LINK_LIFETIME,
            expire_next_links: 0,
            reset_download_midway: 0,
            max_ids_per_request: None,
            failures: HashMap::new(),
            hung: HashSet::new(),
            latency: HashMap::new(),
            fired: HashMap::new(),
        }
    }
}

/// The fault switches of a sandbox, reached with `Sandbox::faults()`.
///
/// Amplitude: polls before completion, a replacement status text, never completing, the S3
/// link lifetime, links minted expired, downloads broken midway. Any endpoint (Amplitude,
/// S3 or a 1Flow operation): `fail_next`, `hang`, `latency`. 1Flow: a cap on ids per batch.
/// Injected failures come before authentication, as a proxy in front would answer.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<State>,
}

const ONEFLOW_OPS: [OfOp; 3] = [OfOp::Create, OfOp::Add, OfOp::Remove];

impl Faults {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts every switch back to its default; the fired counters are kept.
    pub fn reset(&self) {
        let mut state = self.lock();
        let fired = std::mem::take(&mut state.fired);
        *state = State {
            fired,
            ..State::default()
        };
    }

    /// Status polls answered "JOB INPROGRESS" (202) before a job completes (default 1).
    pub fn set_polls_before_complete(&self, polls: u32) {
        self.lock().polls_before_complete = polls;
    }

    /// Replaces the `async_status` text of every poll (the status code still follows the
    /// job's progress: 202 while running, 200 once it would be complete); `None` restores it.
    pub fn set_status_string(&self, status: Option<&str>) {
        self.lock().status_string = status.map(str::to_owned);
    }

    /// While on, jobs that have not completed yet stay "JOB INPROGRESS" forever.
    pub fn set_never_complete(&self, on: bool) {
        self.lock().never_complete = on;
    }

    /// How long links minted from now on stay valid on the fake S3 (default 60 s).
    pub fn set_s3_link_lifetime(&self, lifetime: Duration) {
        self.lock().s3_link_lifetime = lifetime;
    }

    /// The next `count` minted S3 links are already expired.
    pub fn expire_next_links(&self, count: u32) {
        self.lock().expire_next_links = count;
    }

    /// The next `count` file downloads (inline or from S3) send half the body, then break
    /// the connection.
    pub fn reset_download_midway(&self, count: u32) {
        self.lock().reset_download_midway = count;
    }

    /// The next `count` requests to `endpoint` are answered `status` (with the endpoint's
    /// error body, and `Retry-After: retry_after` if given). Replaces a pending `fail_next`.
    pub fn fail_next(
        &self,
        endpoint: impl Into<Endpoint>,
        count: u32,
        status: u16,
        retry_after: Option<&str>,
    ) {
        self.fail_next_after(endpoint, 0, count, status, retry_after);
    }

    /// [`Faults::fail_next`], but the first `skip` requests to `endpoint` are served
    /// normally before the `count` failures begin.
    pub fn fail_next_after(
        &self,
        endpoint: impl Into<Endpoint>,
        skip: u32,
        count: u32,
        status: u16,
        retry_after: Option<&str>,
    ) {
        let failure = Failure {
            skip,
            remaining: count,
            status,
            retry_after: retry_after.map(Into::into),
        };
        self.lock().failures.insert(endpoint.into(), failure);
    }

    /// While on, requests to `endpoint` are accepted and never answered (until the sandbox
    /// stops, when they get 503).
    pub fn hang(&self, endpoint: impl Into<Endpoint>, on: bool) {
        let endpoint = endpoint.into();
        let mut state = self.lock();
        if on {
            state.hung.insert(endpoint);
        } else {
            state.hung.remove(&endpoint);
        }
    }

    /// Every request to `endpoint` is answered only after `delay` (zero turns it off). Each
    /// request sleeps on its own: concurrent requests are not serialized.
    pub fn latency(&self, endpoint: impl Into<Endpoint>, delay: Duration) {
        self.lock().latency.insert(endpoint.into(), delay);
    }

    /// [`Faults::latency`] for every 1Flow operation.
    pub fn set_oneflow_latency(&self, delay: Duration) {
        for op in ONEFLOW_OPS {
            self.latency(op, delay);
        }
    }

    /// [`Faults::hang`] for every 1Flow operation.
    pub fn set_oneflow_hang(&self, on: bool) {
        for op in ONEFLOW_OPS {
            self.hang(op, on);
        }
    }

    /// 1Flow answers 413 to an add or remove carrying more ids than this; `None`: no limit.
    pub fn set_max_ids_per_request(&self, max: Option<usize>) {
        self.lock().max_ids_per_request = max;
    }

    /// How many times this fault fired since the sandbox started.
    pub fn fired(&self, kind: FaultKind) -> usize {
        self.lock().fired.get(&kind).copied().unwrap_or(0)
    }

    pub(super) fn count(&self, kind: FaultKind) {
        *self.lock().fired.entry(kind).or_insert(0) += 1;
    }

    pub(super) fn latency_of(&self, endpoint: Endpoint) -> Duration {
        self.lock()
            .latency
            .get(&endpoint)
            .copied()
            .unwrap_or_default()
    }

    pub(super) fn is_hung(&self, endpoint: Endpoint) -> bool {
        self.lock().hung.contains(&endpoint)
    }

    /// Consumes one pending `fail_next` answer for `endpoint`, if any.
    pub(super) fn take_failure(&self, endpoint: Endpoint) -> Option<Injected> {
        let mut state = self.lock();
        let failure = state.failures.get_mut(&endpoint)?;
        if failure.remaining == 0 {
            return None;
        }
        if take_one(&mut failure.skip) {
            return None;
        }
        failure.remaining -= 1;
        let status = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let injected = Injected {
            status,
            retry_after: failure.retry_after.clone(),
        };
        *state.fired.entry(FaultKind::Fail(endpoint)).or_insert(0) += 1;
        Some(injected)
    }

    /// `(polls_before_complete, status_string, never_complete)`.
    pub(super) fn poll_settings(&self) -> (u32, Option<String>, bool) {
        let state = self.lock();
        (
            state.polls_before_complete,
            state.status_string.clone(),
            state.never_complete,
        )
    }

    /// The lifetime of a link minted now, and whether it is minted already expired.
    pub(super) fn mint_link(&self) -> (Duration, bool) {
        let mut state = self.lock();
        let expired = take_one(&mut state.expire_next_links);
        if expired {
            *state.fired.entry(FaultKind::ExpiredLink).or_insert(0) += 1;
        }
        (state.s3_link_lifetime, expired)
    }

    /// Whether the download starting now must break midway.
    pub(super) fn take_reset(&self) -> bool {
        let mut state = self.lock();
        let reset = take_one(&mut state.reset_download_midway);
        if reset {
            *state.fired.entry(FaultKind::ResetDownload).or_insert(0) += 1;
        }
        reset
    }

    pub(super) fn max_ids_per_request(&self) -> Option<usize> {
        self.lock().max_ids_per_request
    }
}

fn take_one(counter: &mut u32) -> bool {
    if *counter == 0 {
        return false;
    }
    *counter -= 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_next_fires_exactly_n_times_and_counts() {
        let faults = Faults::default();
        faults.fail_next(OfOp::Add, 2, 429, Some("3"));

        let first = faults
            .take_failure(OfOp::Add.into())
            .expect("first failure");
        assert_eq!(first.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(first.retry_after.as_deref(), Some("3"));
        assert!(faults.take_failure(OfOp::Add.into()).is_some());
        assert!(faults.take_failure(OfOp::Add.into()).is_none());
        assert!(faults.take_failure(OfOp::Remove.into()).is_none());
        assert_eq!(faults.fired(FaultKind::fail(OfOp::Add)), 2);
    }

    #[test]
    fn fail_next_after_lets_the_first_requests_through() {
        let faults = Faults::default();
        faults.fail_next_after(OfOp::Add, 2, 1, 400, None);
        assert!(faults.take_failure(OfOp::Add.into()).is_none());
        assert!(faults.take_failure(OfOp::Add.into()).is_none());
        let third = faults.take_failure(OfOp::Add.into()).expect("third fails");
        assert_eq!(third.status, StatusCode::BAD_REQUEST);
        assert!(faults.take_failure(OfOp::Add.into()).is_none());
        assert_eq!(faults.fired(FaultKind::fail(OfOp::Add)), 1);
    }

    #[test]
    fn reset_restores_defaults_and_keeps_counts() {
        let faults = Faults::default();
        faults.expire_next_links(1);
        assert!(faults.mint_link().1);
        faults.set_polls_before_complete(7);
        faults.hang(AmpEndpoint::File, true);
        faults.reset();

        assert_eq!(faults.poll_settings().0, DEFAULT_POLLS_BEFORE_COMPLETE);
        assert!(!faults.is_hung(AmpEndpoint::File.into()));
        assert_eq!(faults.fired(FaultKind::ExpiredLink), 1);
    }
}
