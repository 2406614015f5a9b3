//! Client for the 1Flow cohort endpoint: create a list, add and remove batches.
//!
//! Each batch is one JSON body of at most `batch_size` ids and `max_batch_bytes`
//! bytes, sent with an `Idempotency-Key` derived from its content, so the key stays
//! the same across retries and restarts. Answers are handled by class: throttling
//! waits as told, transient failures back off, 413 splits the batch, a 404 means the
//! list is gone, and anything else fails the batch with the server's message.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use serde::Deserialize;

use crate::amplitude::describe_error_body;
use crate::config::{OneflowConfig, Secret};
use crate::retry::{self, Backoff, Verdict};
use crate::state::Op;

/// Bytes of a body besides its ids: `{"userIds":[` and `]}`.
const BODY_OVERHEAD: usize = 14;

/// What went wrong sending to 1Flow.
#[derive(Debug, thiserror::Error)]
pub enum OneflowError {
    /// 401/403: the API key is wrong; every cohort of the account stops.
    #[error("1Flow rejected the API key (HTTP {status}: {message}); check {block}.api_key")]
    Unauthorized {
        /// The config block of the account: `oneflow` or `oneflow_accounts.NAME`.
        block: String,
        /// 401 or 403.
        status: u16,
        /// 1Flow's explanation.
        message: String,
    },
    /// 404 on add or remove: the list no longer exists on the 1Flow side.
    #[error("1Flow list {list_id} no longer exists")]
    ListGone {
        /// The list that is gone.
        list_id: String,
    },
    /// A permanent rejection (400, 422, …) of a request.
    #[error("1Flow rejected {what}: HTTP {status}: {message}")]
    Rejected {
        /// What was being sent.
        what: String,
        /// The status received.
        status: u16,
        /// 1Flow's explanation.
        message: String,
    },
    /// Transient failures did not stop within `max_retries`.
    #[error("1Flow kept failing on {what} after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// What was being sent.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// 1Flow asked to wait longer than `max_retry_after`: the rest of the run is
    /// deferred to the next fire.
    #[error("1Flow asked to wait {retry_after:?}, more than the configured cap {cap:?}; deferring")]
    Deferred {
        /// How long 1Flow asked to wait.
        retry_after: Duration,
        /// The configured cap.
        cap: Duration,
    },
    /// The answer to a list creation could not be understood.
    #[error("1Flow answered the list creation with something unexpected: {0}")]
    Unexpected(String),
}

impl OneflowError {
    /// Whether the account's key is wrong, so all its cohorts must stop.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, OneflowError::Unauthorized { .. })
    }
}

/// Counters of what sending one batch took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    /// Requests answered with a transient failure and retried.
    pub retries: u32,
    /// Requests answered with 429 and retried.
    pub throttled: u32,
    /// Times a batch was split after a 413.
    pub splits: u32,
}

impl std::ops::AddAssign for SendReport {
    fn add_assign(&mut self, other: SendReport) {
        self.retries += other.retries;
        self.throttled += other.throttled;
        self.splits += other.splits;
    }
}

#[derive(Deserialize)]
struct CreatedList {
    #[serde(rename = "listId", alias = "list_id", alias = "id")]
    list_id: serde_json::Value,
}

/// A client for one 1Flow account.
pub struct OneflowClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Secret,
    max_retries: u32,
    max_retry_after: Duration,
    block: String,
}

impl OneflowClient {
    /// A client for the account `config` describes.
    ///
    /// # Errors
    ///
    /// When the HTTP client cannot be built.
    pub fn new(config: &OneflowConfig) -> Result<OneflowClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("cohort-sync/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .timeout(config.request_timeout)
            .pool_max_idle_per_host(config.concurrency.max(1) * 2)
            .build()?;
        Ok(OneflowClient {
            http,
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            api_key: config.api_key.clone(),
            max_retries: config.max_retries,
            max_retry_after: config.max_retry_after,
            block: "oneflow".to_owned(),
        })
    }

    /// Names the config block this client's account comes from, for error messages
    /// (`oneflow` unless set, or `oneflow_accounts.NAME`).
    pub fn with_block(mut self, block: impl Into<String>) -> Self {
        self.block = block.into();
        self
    }

    /// Creates a list for a cohort and returns its id. Not idempotent: call it once
    /// per cohort and persist the id.
    ///
    /// # Errors
    ///
    /// See [`OneflowError`].
    pub async fn create_list(&self, name: &str, cohort_id: &str) -> Result<String, OneflowError> {
        let body = serde_json::json!({ "name": name, "cohort_id": cohort_id }).to_string();
        let url = retry::endpoint(&self.base_url, &["lists"]);
        let what = format!("the creation of list \"{name}\"");
        let posted = self.post(&url, body.into_bytes(), None, &what, "").await;
        let (bytes, _) = posted.map_err(|error| match error {
            PostError::TooLarge => OneflowError::Rejected {
                what: what.clone(),
                status: 413,
                message: "the request is too large".into(),
            },
            PostError::Failed(error) => error,
        })?;
        let created: CreatedList = serde_json::from_slice(&bytes)
            .map_err(|error| OneflowError::Unexpected(error.to_string()))?;
        match created.list_id {
            serde_json::Value::String(id) if !id.is_empty() => Ok(id),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            other => Err(OneflowError::Unexpected(format!("listId is {other}"))),
        }
    }

    /// Sends one batch of ids to a list, splitting it if 1Flow says it is too large.
    ///
    /// # Errors
    ///
    /// See [`OneflowError`].
    pub async fn send_batch(
        &self,
        list_id: &str,
        op: Op,
        ids: &[&[u8]],
    ) -> Result<SendReport, OneflowError> {
        let mut report = SendReport::default();
        let mut pending = vec![ids];
        while let Some(part) = pending.pop() {
            let url = retry::endpoint(&self.base_url, &["lists", list_id, op_path(op)]);
            let key = idempotency_key(list_id, op, part);
            let what = format!("a batch of {} {}s", part.len(), op_path(op));
            match self
                .post(&url, encode_body(part), Some(&key), &what, list_id)
                .await
            {
                Ok((_, sent)) => report += sent,
                Err(PostError::TooLarge) if part.len() > 1 => {
                    report.splits += 1;
                    let (left, right) = part.split_at(part.len() / 2);
                    pending.push(right);
                    pending.push(left);
                }
                Err(PostError::TooLarge) => {
                    return Err(OneflowError::Rejected {
                        what,
                        status: 413,
                        message: "a single id is too large".into(),
                    });
                }
                Err(PostError::Failed(error)) => return Err(error),
            }
        }
        Ok(report)
    }

    async fn post(
        &self,
        url: &str,
        body: Vec<u8>,
        idempotency_key: Option<&str>,
        what: &str,
        list_id: &str,
    ) -> Result<(bytes::Bytes, SendReport), PostError> {
        let body = bytes::Bytes::from(body);
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(120));
        let mut report = SendReport::default();
        loop {
            let mut request = self
                .http
                .post(url)
                .basic_auth(self.api_key.expose(), Some(""))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }

            let (last, hint) = match request.send().await {
                Err(error) => (retry::describe_transport(&error.without_url()), None),
                Ok(response) => {
                    let status = response.status();
                    match retry::classify(status, response.headers(), SystemTime::now()) {
                        Verdict::Success => {
                            let bytes = response.bytes().await.unwrap_or_default();
                            return Ok((bytes, report));
                        }
                        Verdict::TooLarge => return Err(PostError::TooLarge),
                        Verdict::Throttled { after } => {
                            let wait =
                                after.unwrap_or_else(|| backoff.next_delay(None, Duration::MAX));
                            if wait > self.max_retry_after {
                                return Err(OneflowError::Deferred {
                                    retry_after: wait,
                                    cap: self.max_retry_after,
                                }
                                .into());
                            }
                            report.throttled += 1;
                            tracing::warn!(
                                wait_ms = wait.as_millis() as u64,
                                "1Flow is throttling; waiting."
                            );
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        Verdict::Transient { after } => {
                            let message =
                                describe_error_body(&response.bytes().await.unwrap_or_default());
                            (format!("HTTP {}: {message}", status.as_u16()), after)
                        }
                        Verdict::Permanent => {
                            let message =
                                describe_error_body(&response.bytes().await.unwrap_or_default());
                            return Err(
                                permanent(&self.block, status, message, what, list_id).into()
                            );
                        }
                    }
                }
            };

            if report.retries >= self.max_retries {
                return Err(OneflowError::RetriesExhausted {
                    what: what.to_owned(),
                    attempts: report.retries + 1,
                    last,
                }
                .into());
            }
            report.retries += 1;
            let delay = backoff.next_delay(hint, self.max_retry_after);
            tracing::warn!(error = %last, retry_in_ms = delay.as_millis() as u64, "1Flow request failed; retrying.");
            tokio::time::sleep(delay).await;
        }
    }
}

enum PostError {
    TooLarge,
    Failed(OneflowError),
}

impl From<OneflowError> for PostError {
    fn from(error: OneflowError) -> PostError {
        PostError::Failed(error)
    }
}

fn permanent(
    block: &str,
    status: StatusCode,
    message: String,
    what: &str,
    list_id: &str,
) -> OneflowError {
    match status.as_u16() {
        401 | 403 => OneflowError::Unauthorized {
            block: block.to_owned(),
            status: status.as_u16(),
            message,
        },
        404 if !list_id.is_empty() => OneflowError::ListGone {
            list_id: list_id.to_owned(),
        },
        code => OneflowError::Rejected {
            what: what.to_owned(),
            status: code,
            message,
        },
    }
}

fn op_path(op: Op) -> &'static str {
    match op {
        Op::Add => "add",
        Op::Remove => "remove",
    }
}

/// A key that names one batch's content, stable across retries and restarts.
pub fn idempotency_key(list_id: &str, op: Op, ids: &[&[u8]]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(list_id.as_bytes());
    hasher.update(op_path(op).as_bytes());
    for id in ids {
        hasher.update(&(id.len() as u32).to_le_bytes());
        hasher.update(id);
    }
    format!("{:032x}", hasher.digest128())
}

/// The JSON body `{"userIds":[...]}` for ids that are valid UTF-8.
pub fn encode_body(ids: &[&[u8]]) -> Vec<u8> {
    let mut body =
        Vec::with_capacity(BODY_OVERHEAD + ids.iter().map(|id| id.len() + 3).sum::<usize>());
    body.extend_from_slice(b"{\"userIds\":[");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let text = String::from_utf8_lossy(id);
        serde_json::to_writer(&mut body, text.as_ref()).expect("writing to a Vec cannot fail");
    }
    body.extend_from_slice(b"]}");
    body
}

/// The JSON size of one id in a body: its bytes, quotes, a comma, and escapes.
fn encoded_len(id: &[u8]) -> usize {
    let escapes = id
        .iter()
        .filter(|&&b| b == b'"' || b == b'\\' || b < 0x20)
        .count();
    id.len() + 3 + escapes * 5
}

/// Cuts `ids` into consecutive batches of at most `batch_size` ids and `max_bytes`
/// bytes of body each.
pub fn plan_batches<'a>(
    ids: impl Iterator<Item = &'a [u8]>,
    batch_size: usize,
    max_bytes: usize,
) -> Vec<Range<usize>> {
    let (batch_size, mut batches) = (batch_size.max(1), Vec::new());
    let (mut start, mut count, mut bytes) = (0, 0, BODY_OVERHEAD);
    for (i, id) in ids.enumerate() {
        let size = encoded_len(id);
        if count > 0 && (count == batch_size || bytes + size > max_bytes) {
            batches.push(start..i);
            (start, count, bytes) = (i, 0, BODY_OVERHEAD);
        }
        count += 1;
        bytes += size;
    }
    if count > 0 {
        batches.push(start..start + count);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_json() {
        let ids: Vec<&[u8]> = vec![b"a", b"quote\"d", b"back\\slash"];
        let body = encode_body(&ids);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["userIds"][1], "quote\"d");
        assert_eq!(value["userIds"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn batches_respect_count_and_bytes() {
        let ids: Vec<Vec<u8>> = (0..25)
            .map(|i| format!("user-{i:04}").into_bytes())
            .collect();
        let by_count = plan_batches(ids.iter().map(Vec::as_slice), 10, 1_000_000);
        assert_eq!(by_count, [0..10, 10..20, 20..25]);

        let by_bytes = plan_batches(ids.iter().map(Vec::as_slice), 1000, BODY_OVERHEAD + 3 * 12);
        assert!(
            by_bytes.iter().all(|r| r.len() == 3 || r.end == 25),
            "{by_bytes:?}"
        );
        for range in &by_bytes {
            let batch: Vec<&[u8]> = ids[range.clone()].iter().map(Vec::as_slice).collect();
            assert!(encode_body(&batch).len() <= BODY_OVERHEAD + 3 * 12);
        }
        assert!(plan_batches(std::iter::empty(), 10, 100).is_empty());
    }

    #[test]
    fn idempotency_keys_follow_content() {
        let a: Vec<&[u8]> = vec![b"x", b"y"];
        let b: Vec<&[u8]> = vec![b"xy"];
        assert_eq!(
            idempotency_key("l", Op::Add, &a),
            idempotency_key("l", Op::Add, &a)
        );
        assert_ne!(
            idempotency_key("l", Op::Add, &a),
            idempotency_key("l", Op::Add, &b)
        );
        assert_ne!(
            idempotency_key("l", Op::Add, &a),
            idempotency_key("l", Op::Remove, &a)
        );
    }
}
