//! Client for Amplitude's Behavioral Cohorts API: list, request, poll, download.
//!
//! Every call goes through the project's shared [`Limiter`] and the retry policy of
//! [`crate::retry`]. A download that answers with a redirect is fetched from the
//! pre-signed URL without the Basic auth header, and that URL (which carries a
//! signature) is never logged or put in an error.

mod limiter;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::{Response, StatusCode, header::LOCATION};
use serde::Deserialize;

use crate::config::{AmplitudeConfig, Secret};
use crate::retry::{self, Backoff, Verdict};

pub use limiter::Limiter;

/// Throttled answers tolerated for one call before it fails.
const MAX_THROTTLED: u32 = 50;
/// The longest pause between two status polls.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// Which endpoint a call went to, for errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /api/3/cohorts`.
    List,
    /// `GET /api/5/cohorts/request/{cohort}`.
    Request,
    /// `GET /api/5/cohorts/request-status/{request}`.
    Status,
    /// `GET /api/5/cohorts/request/{request}/file`.
    File,
    /// The pre-signed download link the file endpoint redirects to.
    Download,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Endpoint::List => "list cohorts",
            Endpoint::Request => "request export",
            Endpoint::Status => "export status",
            Endpoint::File => "export file",
            Endpoint::Download => "export download link",
        })
    }
}

/// What went wrong talking to Amplitude.
#[derive(Debug, thiserror::Error)]
pub enum AmplitudeError {
    /// 401/403: the credentials or the region are wrong.
    #[error(
        "Amplitude rejected the credentials ({endpoint}: HTTP {status}: {message}); check \
         {block}.api_key, {block}.secret_key and {block}.region"
    )]
    Unauthorized {
        /// The config block of the project: `amplitude` or `amplitude_projects.NAME`.
        block: String,
        /// The endpoint called.
        endpoint: Endpoint,
        /// 401 or 403.
        status: u16,
        /// Amplitude's own explanation.
        message: String,
    },
    /// 404 on a cohort or an export request.
    #[error("Amplitude does not know {what} ({endpoint}: HTTP 404: {message})")]
    NotFound {
        /// The endpoint called.
        endpoint: Endpoint,
        /// The cohort or request that is unknown.
        what: String,
        /// Amplitude's own explanation.
        message: String,
    },
    /// Another answer that retrying cannot fix, or retries ran out.
    #[error("Amplitude {endpoint} failed: HTTP {status}: {message}")]
    Http {
        /// The endpoint called.
        endpoint: Endpoint,
        /// The last status received.
        status: u16,
        /// Amplitude's own explanation.
        message: String,
    },
    /// No HTTP answer (connection refused, reset, timeout), after retries.
    #[error("Amplitude {endpoint} failed: {}", retry::describe_transport(source))]
    Transport {
        /// The endpoint called.
        endpoint: Endpoint,
        /// The transport error, with any URL removed.
        source: reqwest::Error,
    },
    /// The answer was not what the API documents.
    #[error("Amplitude {endpoint} answered something unexpected: {message}")]
    Unexpected {
        /// The endpoint called.
        endpoint: Endpoint,
        /// What was wrong with it.
        message: String,
    },
    /// The export did not complete within `export_timeout`.
    #[error(
        "export {request_id} did not complete within {timeout:?} (last status: {last_status}); \
         it will be resumed with the same request id"
    )]
    Timeout {
        /// The export request.
        request_id: String,
        /// The configured timeout.
        timeout: Duration,
        /// The last `async_status` seen.
        last_status: String,
    },
}

impl AmplitudeError {
    /// Whether the project's credentials are wrong, so every cohort of it must stop.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, AmplitudeError::Unauthorized { .. })
    }
}

/// One cohort as the list endpoint describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortInfo {
    /// The cohort id.
    pub id: String,
    /// Its name in Amplitude.
    pub name: String,
    /// Its member count, when Amplitude gives one.
    pub size: Option<u64>,
    /// When it was last computed, as Amplitude wrote it; compared for equality only.
    pub last_computed: Option<String>,
    /// Whether it is archived.
    pub archived: bool,
}

#[derive(Deserialize)]
struct ListBody {
    cohorts: Vec<RawCohort>,
}

#[derive(Deserialize)]
struct RawCohort {
    id: serde_json::Value,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    size: Option<serde_json::Value>,
    #[serde(default, rename = "lastComputed")]
    last_computed: Option<serde_json::Value>,
    #[serde(default)]
    archived: Option<bool>,
}

fn json_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl From<RawCohort> for CohortInfo {
    fn from(raw: RawCohort) -> CohortInfo {
        CohortInfo {
            id: json_text(&raw.id).unwrap_or_default(),
            name: raw.name.unwrap_or_default(),
            size: raw.size.as_ref().and_then(serde_json::Value::as_u64),
            last_computed: raw.last_computed.as_ref().and_then(json_text),
            archived: raw.archived.unwrap_or(false),
        }
    }
}

#[derive(Deserialize)]
struct RequestBody {
    request_id: String,
}

#[derive(Deserialize)]
struct StatusBody {
    #[serde(default)]
    async_status: Option<String>,
}

/// A client for one Amplitude project.
pub struct AmplitudeClient {
    http: reqwest::Client,
    download: reqwest::Client,
    base_url: String,
    api_key: Secret,
    secret_key: Secret,
    poll_interval: Duration,
    export_timeout: Duration,
    max_retries: u32,
    limiter: Arc<Limiter>,
    block: String,
}

impl AmplitudeClient {
    /// A client for the project `config` describes, sharing `limiter`.
    ///
    /// # Errors
    ///
    /// When the HTTP client cannot be built (no TLS backend).
    pub fn new(config: &AmplitudeConfig, limiter: Arc<Limiter>) -> Result<Self, reqwest::Error> {
        let build = |redirects| {
            reqwest::Client::builder()
                .user_agent(concat!("cohort-sync/", env!("CARGO_PKG_VERSION")))
                .redirect(redirects)
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(config.request_timeout)
                .build()
        };
        Ok(AmplitudeClient {
            http: build(reqwest::redirect::Policy::none())?,
            download: build(reqwest::redirect::Policy::limited(3))?,
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            api_key: config.api_key.clone(),
            secret_key: config.secret_key.clone(),
            poll_interval: config.poll_interval,
            export_timeout: config.export_timeout,
            max_retries: config.max_retries,
            limiter,
            block: "amplitude".to_owned(),
        })
    }

    /// Names the config block this client's project comes from, for error messages
    /// (`amplitude` unless set, or `amplitude_projects.NAME`).
    pub fn with_block(mut self, block: impl Into<String>) -> Self {
        self.block = block.into();
        self
    }

    /// Lists the project's cohorts. This call costs no export quota.
    ///
    /// # Errors
    ///
    /// See [`AmplitudeError`].
    pub async fn list_cohorts(&self) -> Result<Vec<CohortInfo>, AmplitudeError> {
        let url = retry::endpoint(&self.base_url, &["api", "3", "cohorts"]);
        let response = self.call(Endpoint::List, &url, &[], "the project").await?;
        let body: ListBody = read_json(Endpoint::List, response).await?;
        Ok(body.cohorts.into_iter().map(CohortInfo::from).collect())
    }

    /// Starts an export of `cohort_id`, with the named user properties. Each call
    /// spends one export of the monthly quota.
    ///
    /// # Errors
    ///
    /// See [`AmplitudeError`]; an unknown cohort is [`AmplitudeError::NotFound`].
    pub async fn request_export(
        &self,
        cohort_id: &str,
        properties: &[String],
    ) -> Result<String, AmplitudeError> {
        self.limiter.export().await;
        let url = retry::endpoint(
            &self.base_url,
            &["api", "5", "cohorts", "request", cohort_id],
        );
        let mut query = vec![("props", if properties.is_empty() { "0" } else { "1" })];
        query.extend(properties.iter().map(|p| ("propKeys", p.as_str())));
        let what = format!("cohort {cohort_id}");
        let response = self.call(Endpoint::Request, &url, &query, &what).await?;
        let body: RequestBody = read_json(Endpoint::Request, response).await?;
        Ok(body.request_id)
    }

    /// Polls an export until it completes, backing off from `poll_interval`.
    ///
    /// # Errors
    ///
    /// [`AmplitudeError::Timeout`] after `export_timeout`, or any call error.
    pub async fn wait_for_export(&self, request_id: &str) -> Result<(), AmplitudeError> {
        let url = retry::endpoint(
            &self.base_url,
            &["api", "5", "cohorts", "request-status", request_id],
        );
        let deadline = tokio::time::Instant::now() + self.export_timeout;
        let what = format!("export request {request_id}");
        let mut interval = self.poll_interval;
        let mut warned = false;
        loop {
            let response = self.call(Endpoint::Status, &url, &[], &what).await?;
            let status = response.status();
            let body: StatusBody = read_json(Endpoint::Status, response).await?;
            let text = body.async_status.unwrap_or_default();
            match text.as_str() {
                "JOB COMPLETED" => return Ok(()),
                "JOB INPROGRESS" if status == StatusCode::ACCEPTED || status.is_success() => {}
                _ if !warned => {
                    tracing::warn!(request_id, async_status = %text, "Unknown export status; still polling.");
                    warned = true;
                }
                _ => {}
            }

            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(AmplitudeError::Timeout {
                    request_id: request_id.to_owned(),
                    timeout: self.export_timeout,
                    last_status: text,
                });
            }
            tokio::time::sleep(interval.min(deadline - now)).await;
            interval = (interval * 3 / 2).min(MAX_POLL_INTERVAL.max(self.poll_interval));
        }
    }

    /// Fetches the export file of a completed request, following a redirect to the
    /// pre-signed link without credentials. The body is returned unread, to stream.
    ///
    /// A link that has expired is replaced by calling the file endpoint again.
    ///
    /// # Errors
    ///
    /// See [`AmplitudeError`].
    pub async fn download(&self, request_id: &str) -> Result<Response, AmplitudeError> {
        let url = retry::endpoint(
            &self.base_url,
            &["api", "5", "cohorts", "request", request_id, "file"],
        );
        let what = format!("export request {request_id}");
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut failures = 0;
        loop {
            let response = self.call(Endpoint::File, &url, &[], &what).await?;
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let Some(location) = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                return Err(unexpected(Endpoint::File, "a redirect without a Location"));
            };
            let target = location.to_owned();
            drop(response);

            let error = match self.download.get(&target).send().await {
                Ok(answer) if answer.status().is_success() => return Ok(answer),
                Ok(answer) => {
                    let status = answer.status().as_u16();
                    let message = error_message(answer).await;
                    AmplitudeError::Http {
                        endpoint: Endpoint::Download,
                        status,
                        message,
                    }
                }
                Err(error) => AmplitudeError::Transport {
                    endpoint: Endpoint::Download,
                    source: error.without_url(),
                },
            };
            failures += 1;
            if failures > self.max_retries {
                return Err(error);
            }
            tracing::warn!(request_id, %error, "Download link failed; asking for a fresh one.");
            tokio::time::sleep(backoff.next_delay(None, Duration::MAX)).await;
        }
    }

    /// One authenticated GET with retries for throttling and transient failures.
    async fn call(
        &self,
        endpoint: Endpoint,
        url: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<Response, AmplitudeError> {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let (mut errors, mut throttled) = (0, 0);
        loop {
            let sent = {
                let _slot = self.limiter.call().await;
                self.http
                    .get(url)
                    .query(query)
                    .basic_auth(self.api_key.expose(), Some(self.secret_key.expose()))
                    .send()
                    .await
            };
            let (error, hint, throttle) = match sent {
                Err(error) if retry::transport_is_transient(&error) => {
                    let error = AmplitudeError::Transport {
                        endpoint,
                        source: error.without_url(),
                    };
                    (error, None, false)
                }
                Err(error) => {
                    return Err(AmplitudeError::Transport {
                        endpoint,
                        source: error.without_url(),
                    });
                }
                Ok(response) => {
                    let status = response.status();
                    if status.is_redirection() && endpoint == Endpoint::File {
                        return Ok(response);
                    }
                    match retry::classify(status, response.headers(), SystemTime::now()) {
                        Verdict::Success => return Ok(response),
                        Verdict::Throttled { after } => {
                            let message = error_message(response).await;
                            let error = http_error(&self.block, endpoint, status, message, what);
                            (error, after, true)
                        }
                        Verdict::Transient { after } => {
                            let message = error_message(response).await;
                            (
                                http_error(&self.block, endpoint, status, message, what),
                                after,
                                false,
                            )
                        }
                        Verdict::TooLarge | Verdict::Permanent => {
                            let message = error_message(response).await;
                            return Err(http_error(&self.block, endpoint, status, message, what));
                        }
                    }
                }
            };

            if throttle {
                throttled += 1;
            } else {
                errors += 1;
            }
            if errors > self.max_retries || throttled > MAX_THROTTLED {
                return Err(error);
            }
            let delay = backoff.next_delay(hint, Duration::from_secs(300));
            tracing::warn!(%endpoint, %error, retry_in_ms = delay.as_millis() as u64, "Amplitude call failed; retrying.");
            tokio::time::sleep(delay).await;
        }
    }
}

fn unexpected(endpoint: Endpoint, message: &str) -> AmplitudeError {
    AmplitudeError::Unexpected {
        endpoint,
        message: message.to_owned(),
    }
}

fn http_error(
    block: &str,
    endpoint: Endpoint,
    status: StatusCode,
    message: String,
    what: &str,
) -> AmplitudeError {
    let status = status.as_u16();
    match status {
        401 | 403 => AmplitudeError::Unauthorized {
            block: block.to_owned(),
            endpoint,
            status,
            message,
        },
        404 => AmplitudeError::NotFound {
            endpoint,
            what: what.to_owned(),
            message,
        },
        _ => AmplitudeError::Http {
            endpoint,
            status,
            message,
        },
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    endpoint: Endpoint,
    response: Response,
) -> Result<T, AmplitudeError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|error| AmplitudeError::Transport {
            endpoint,
            source: error.without_url(),
        })?;
    serde_json::from_slice(&bytes)
        .map_err(|error| unexpected(endpoint, &format!("invalid JSON: {error}")))
}

/// The human part of an error answer: Amplitude's envelope message, or the start of
/// the body.
async fn error_message(response: Response) -> String {
    let bytes = response.bytes().await.unwrap_or_default();
    describe_error_body(&bytes)
}

/// Extracts a short message from an error body, preferring structured fields.
pub fn describe_error_body(bytes: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let error = value.get("error").unwrap_or(&value);
        let message = error.get("message").and_then(|m| m.as_str());
        let details = error.pointer("/metadata/details").and_then(|d| d.as_str());
        match (message, details) {
            (Some(m), Some(d)) if m != d => return format!("{m} ({d})"),
            (Some(m), _) => return m.to_owned(),
            (None, Some(d)) => return d.to_owned(),
            (None, None) => {}
        }
        if let Some(text) = error.as_str() {
            return text.to_owned();
        }
    }
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return "no message".to_owned();
    }
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cohort_list_tolerates_types() {
        let body = r#"{"cohorts":[
            {"id":"abc","name":"A","size":12,"lastComputed":1700000000,"archived":false,"extra":1},
            {"id":"def","name":"B","size":null,"lastComputed":null,"archived":true}]}"#;
        let list: ListBody = serde_json::from_str(body).unwrap();
        let cohorts: Vec<CohortInfo> = list.cohorts.into_iter().map(Into::into).collect();
        assert_eq!(cohorts[0].last_computed.as_deref(), Some("1700000000"));
        assert_eq!(cohorts[0].size, Some(12));
        assert_eq!(cohorts[1].size, None);
        assert!(cohorts[1].archived);
    }

    #[test]
    fn error_bodies_are_summarised() {
        let envelope = br#"{"error":{"http_code":403,"type":"forbidden","message":"Invalid API Key","metadata":{"details":"bad key"}}}"#;
        assert_eq!(describe_error_body(envelope), "Invalid API Key (bad key)");
        assert_eq!(describe_error_body(br#"{"message":"nope"}"#), "nope");
        assert_eq!(describe_error_body(b""), "no message");
        assert_eq!(describe_error_body(b"plain text"), "plain text");
    }
}
