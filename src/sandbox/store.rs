//! The sandbox's in-memory state: projects and their cohorts, export jobs, S3 links,
//! 1Flow accounts and lists, and the counters the inspection methods read.
//!
//! It lives behind one std mutex in `Shared`; nothing here awaits, and the expensive work
//! (rendering files, comparing member lists) happens outside the lock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::cohort::{FakeCohort, FakeMember, FileOptions, render_file};
use super::http_util::random_hex;
use super::oneflow::{FakeListInfo, OneflowRequest};
use super::{SandboxOptions, Shared};

/// Seconds since the Unix epoch, now.
pub(super) fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(super) struct Project {
    pub(super) api_key: String,
    pub(super) secret_key: String,
    pub(super) app_id: u64,
    pub(super) cohorts: Vec<StoredCohort>,
}

pub(super) struct StoredCohort {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) archived: bool,
    pub(super) listed_size: Option<Option<u64>>,
    pub(super) last_computed: i64,
    pub(super) created_at: i64,
    pub(super) members: Arc<Vec<FakeMember>>,
    pub(super) file: FileOptions,
    /// Tells a replaced cohort from its replacement, so a late render is not cached.
    pub(super) generation: u64,
    /// Rendered bodies by property columns; the no-property body is rendered at put time.
    pub(super) bodies: HashMap<Vec<String>, Bytes>,
    /// The body every export serves instead of a rendered one, if set.
    pub(super) raw_file: Option<Bytes>,
}

impl StoredCohort {
    pub(super) fn listed_size(&self) -> Option<u64> {
        self.listed_size.unwrap_or(Some(self.members.len() as u64))
    }
}

/// An export started by `/api/5/cohorts/request/{id}`; its body is the file at that time.
pub(super) struct Job {
    pub(super) project: usize,
    pub(super) cohort_id: String,
    pub(super) body: Bytes,
    pub(super) file: FileOptions,
    pub(super) polls: u32,
    pub(super) completed: bool,
}

/// A pre-signed link on the fake S3.
pub(super) struct Link {
    pub(super) body: Bytes,
    pub(super) file: FileOptions,
    pub(super) signature: String,
    pub(super) minted: Instant,
    pub(super) lifetime: Duration,
    pub(super) born_expired: bool,
}

pub(super) struct FakeList {
    pub(super) id: String,
    pub(super) account: usize,
    pub(super) name: String,
    pub(super) cohort_id: Option<String>,
    pub(super) members: Membership,
    pub(super) deleted: bool,
}

/// A list's members. Batches are queued as they arrive and applied, in order, only
/// when someone looks: answering a batch costs one push under the sandbox's lock, so
/// the fake 1Flow is never what limits a benchmark.
#[derive(Default)]
pub(super) struct Membership {
    settled: HashSet<String, xxhash_rust::xxh3::Xxh3DefaultBuilder>,
    queued: Vec<(bool, Vec<String>)>,
}

impl Membership {
    /// Queues ids to add.
    pub(super) fn add(&mut self, ids: Vec<String>) {
        self.queued.push((true, ids));
    }

    /// Queues ids to remove.
    pub(super) fn remove(&mut self, ids: Vec<String>) {
        self.queued.push((false, ids));
    }

    /// The members, with every queued batch applied.
    pub(super) fn settled(
        &mut self,
    ) -> &mut HashSet<String, xxhash_rust::xxh3::Xxh3DefaultBuilder> {
        for (add, ids) in self.queued.drain(..) {
            if add {
                self.settled.extend(ids);
            } else {
                for id in &ids {
                    self.settled.remove(id);
                }
            }
        }
        &mut self.settled
    }
}

pub(super) struct State {
    /// Index 0 is the default project.
    pub(super) projects: Vec<Project>,
    /// API keys; index 0 is the default account.
    pub(super) accounts: Vec<String>,
    pub(super) export_calls: HashMap<String, usize>,
    pub(super) status_calls: HashMap<String, usize>,
    pub(super) file_calls: HashMap<String, usize>,
    pub(super) jobs: HashMap<String, Job>,
    pub(super) links: HashMap<String, Link>,
    pub(super) s3_requests: usize,
    pub(super) s3_saw_authorization: bool,
    pub(super) lists: Vec<FakeList>,
    pub(super) oneflow_log: Vec<OneflowRequest>,
    next_id: u64,
    pub(super) rng: fastrand::Rng,
}

impl State {
    pub(super) fn new(options: &SandboxOptions) -> Self {
        let mut state = State {
            projects: Vec::new(),
            accounts: Vec::new(),
            export_calls: HashMap::new(),
            status_calls: HashMap::new(),
            file_calls: HashMap::new(),
            jobs: HashMap::new(),
            links: HashMap::new(),
            s3_requests: 0,
            s3_saw_authorization: false,
            lists: Vec::new(),
            oneflow_log: Vec::new(),
            next_id: 1,
            rng: fastrand::Rng::new(),
        };
        state.add_project(&options.amplitude_api_key, &options.amplitude_secret_key);
        state.add_account(&options.oneflow_api_key);
        state
    }

    /// A fresh number, unique within the sandbox.
    pub(super) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub(super) fn add_project(&mut self, api_key: &str, secret_key: &str) {
        if let Some(index) = self.project_index(api_key) {
            self.projects[index].secret_key = secret_key.to_owned();
            return;
        }
        self.projects.push(Project {
            api_key: api_key.to_owned(),
            secret_key: secret_key.to_owned(),
            app_id: 100_000 + self.projects.len() as u64,
            cohorts: Vec::new(),
        });
    }

    pub(super) fn add_account(&mut self, api_key: &str) {
        if self.account_index(api_key).is_none() {
            self.accounts.push(api_key.to_owned());
        }
    }

    pub(super) fn project_index(&self, api_key: &str) -> Option<usize> {
        self.projects.iter().position(|p| p.api_key == api_key)
    }

    pub(super) fn account_index(&self, api_key: &str) -> Option<usize> {
        self.accounts.iter().position(|a| a == api_key)
    }

    pub(super) fn cohort(&self, project: usize, cohort_id: &str) -> Option<&StoredCohort> {
        self.projects[project]
            .cohorts
            .iter()
            .find(|c| c.id == cohort_id)
    }

    /// The cohort as a [`FakeCohort`], members copied, `last_computed` set.
    pub(super) fn cohort_copy(&self, project: usize, cohort_id: &str) -> Option<FakeCohort> {
        let stored = self.cohort(project, cohort_id)?;
        Some(FakeCohort {
            id: stored.id.clone(),
            name: stored.name.clone(),
            members: stored.members.as_ref().clone(),
            archived: stored.archived,
            listed_size: stored.listed_size,
            last_computed: Some(stored.last_computed),
            file: stored.file,
            raw_file: stored.raw_file.clone(),
        })
    }

    pub(super) fn remove_cohort(&mut self, project: usize, cohort_id: &str) -> bool {
        let cohorts = &mut self.projects[project].cohorts;
        let before = cohorts.len();
        cohorts.retain(|c| c.id != cohort_id);
        cohorts.len() != before
    }

    /// Caches a body rendered for `props`, unless the cohort was replaced meanwhile.
    pub(super) fn cache_body(
        &mut self,
        project: usize,
        cohort_id: &str,
        generation: u64,
        props: Vec<String>,
        body: Bytes,
    ) {
        let cohorts = &mut self.projects[project].cohorts;
        let cohort = cohorts.iter_mut().find(|c| c.id == cohort_id);
        if let Some(cohort) = cohort.filter(|c| c.generation == generation) {
            cohort.bodies.insert(props, body);
        }
    }

    /// Starts an export job and returns its request id.
    pub(super) fn new_job(
        &mut self,
        project: usize,
        cohort_id: &str,
        body: Bytes,
        file: FileOptions,
        completed: bool,
    ) -> String {
        let request_id = format!("{:06}-{}", self.next_id(), random_hex(&mut self.rng, 12));
        let job = Job {
            project,
            cohort_id: cohort_id.to_owned(),
            body,
            file,
            polls: 0,
            completed,
        };
        self.jobs.insert(request_id.clone(), job);
        request_id
    }

    pub(super) fn list_mut(&mut self, list_id: &str) -> Option<&mut FakeList> {
        self.lists.iter_mut().find(|l| l.id == list_id)
    }

    pub(super) fn list_infos(&mut self, account: usize) -> Vec<FakeListInfo> {
        let lists = self.lists.iter_mut().filter(|l| l.account == account);
        lists
            .map(|l| FakeListInfo {
                id: l.id.clone(),
                name: l.name.clone(),
                cohort_id: l.cohort_id.clone(),
                members: l.members.settled().len(),
                deleted: l.deleted,
            })
            .collect()
    }
}

/// Renders the cohort's file and stores it in the project, replacing a cohort with the
/// same id. The render and the member comparison run outside the lock.
pub(super) fn put_cohort(shared: &Shared, project: usize, cohort: FakeCohort) {
    let columns = if cohort.file.all_properties {
        super::cohort::all_property_keys(&cohort.members)
    } else {
        Vec::new()
    };
    let base = match &cohort.raw_file {
        Some(raw) => raw.clone(),
        None => render_file(&cohort.members, &columns, &cohort.file),
    };
    let previous = {
        let state = shared.lock();
        state
            .cohort(project, &cohort.id)
            .map(|c| (c.members.clone(), c.last_computed, c.created_at))
    };

    let now = unix_now();
    let (last_computed, created_at) = match previous {
        Some((members, last_computed, created_at)) => {
            let unchanged = *members == cohort.members;
            let advanced = if unchanged {
                last_computed
            } else {
                now.max(last_computed + 1)
            };
            (cohort.last_computed.unwrap_or(advanced), created_at)
        }
        None => (cohort.last_computed.unwrap_or(now), now),
    };

    let mut state = shared.lock();
    let generation = state.next_id();
    let stored = StoredCohort {
        id: cohort.id,
        name: cohort.name,
        archived: cohort.archived,
        listed_size: cohort.listed_size,
        last_computed,
        created_at,
        members: Arc::new(cohort.members),
        file: cohort.file,
        generation,
        bodies: HashMap::from([(Vec::new(), base)]),
        raw_file: cohort.raw_file,
    };
    let cohorts = &mut state.projects[project].cohorts;
    match cohorts.iter_mut().find(|c| c.id == stored.id) {
        Some(slot) => *slot = stored,
        None => cohorts.push(stored),
    }
}
