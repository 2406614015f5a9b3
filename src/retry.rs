//! Retry policy shared by the Amplitude and 1Flow clients.
//!
//! What to do with an HTTP answer is a pure function of its status and headers
//! ([`classify`]); how long to wait between error retries comes from an exponential
//! backoff with jitter ([`Backoff`]). Throttling is told apart from errors so that a
//! busy server slows a run down without using up its error retries.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// What a client should do with one HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx (or, where the caller expects it, a redirect).
    Success,
    /// Throttled (429): wait `after` if the server said so, and do not count an error.
    Throttled {
        /// The server's Retry-After, if any.
        after: Option<Duration>,
    },
    /// A transient failure (408, 425, 5xx): retry with backoff, counting an error.
    Transient {
        /// The server's Retry-After, if any.
        after: Option<Duration>,
    },
    /// The body is too large (413): split it and try the halves.
    TooLarge,
    /// Retrying cannot help (other 4xx).
    Permanent,
}

/// Classifies an HTTP answer by its status and headers.
pub fn classify(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Verdict {
    let after = || retry_after(headers, now);
    match status.as_u16() {
        200..=299 => Verdict::Success,
        429 => Verdict::Throttled { after: after() },
        413 => Verdict::TooLarge,
        408 | 425 | 500..=599 => Verdict::Transient { after: after() },
        _ => Verdict::Permanent,
    }
}

/// Reads `Retry-After` as delay seconds or as an HTTP date relative to `now`.
///
/// A date in the past means "now" (zero); an unreadable value is ignored.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>()
        && seconds.is_finite()
        && seconds >= 0.0
    {
        return Some(Duration::from_secs_f64(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Exponential delays with jitter between error retries.
pub struct Backoff {
    delays: backon::ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Delays from about `min` doubling up to `max`, each with random jitter.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let delays = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_jitter()
            .without_max_times()
            .build();
        Backoff { delays, max }
    }

    /// The delay before the next retry: the server's hint when it gave one (never more
    /// than `cap`), else the next step of the backoff.
    pub fn next_delay(&mut self, hint: Option<Duration>, cap: Duration) -> Duration {
        match hint {
            Some(hint) => hint.min(cap),
            None => self.delays.next().unwrap_or(self.max).min(self.max),
        }
    }
}

/// Whether a transport-level error (no HTTP answer) may succeed when tried again.
pub fn transport_is_transient(error: &reqwest::Error) -> bool {
    error.is_timeout() || error.is_connect() || error.is_request() || error.is_body()
}

/// A transport error (no HTTP answer) in words, with its causes: reqwest's own text
/// ("error sending request") does not say whether the server timed out, refused the
/// connection or broke it. Pass an error stripped of its URL with `without_url`, as
/// the URL may carry a signature; the causes never name it.
pub fn describe_transport(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out: no answer within request_timeout".to_owned();
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}

/// `base` followed by `segments`, each percent-encoded as one path segment (a cohort
/// id holding `/` or `?` stays one segment). `base` is a validated http(s) URL.
pub fn endpoint(base: &str, segments: &[&str]) -> String {
    match reqwest::Url::parse(base) {
        Ok(mut url) => {
            if let Ok(mut path) = url.path_segments_mut() {
                path.pop_if_empty().extend(segments);
            }
            url.to_string()
        }
        Err(_) => format!("{base}/{}", segments.join("/")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(retry_after: Option<&str>) -> HeaderMap {
        let mut map = HeaderMap::new();
        if let Some(value) = retry_after {
            map.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn statuses_map_to_verdicts() {
        let now = SystemTime::now();
        let table = [
            (200, None, Verdict::Success),
            (201, None, Verdict::Success),
            (429, None, Verdict::Throttled { after: None }),
            (
                429,
                Some("7"),
                Verdict::Throttled {
                    after: Some(Duration::from_secs(7)),
                },
            ),
            (503, None, Verdict::Transient { after: None }),
            (
                503,
                Some("2"),
                Verdict::Transient {
                    after: Some(Duration::from_secs(2)),
                },
            ),
            (408, None, Verdict::Transient { after: None }),
            (413, None, Verdict::TooLarge),
            (400, None, Verdict::Permanent),
            (401, None, Verdict::Permanent),
            (404, None, Verdict::Permanent),
            (422, None, Verdict::Permanent),
        ];
        for (status, header, expected) in table {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                classify(status, &headers(header), now),
                expected,
                "{status}"
            );
        }
    }

    #[test]
    fn retry_after_reads_an_http_date() {
        let now = httpdate::parse_http_date("Wed, 02 Dec 2026 10:00:00 GMT").unwrap();
        let later = headers(Some("Wed, 02 Dec 2026 10:00:30 GMT"));
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(30)));
        let earlier = headers(Some("Wed, 02 Dec 2026 09:00:00 GMT"));
        assert_eq!(retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers(Some("soon")), now), None);
    }

    #[tokio::test]
    async fn transport_errors_name_their_cause() {
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/secret-path", unused.local_addr().unwrap());
        drop(unused);
        let error = reqwest::get(&url).await.unwrap_err().without_url();
        let text = describe_transport(&error);
        assert!(text.to_lowercase().contains("refused"), "{text}");
        assert!(!text.contains("secret-path"), "{text}");
    }

    #[test]
    fn endpoints_encode_each_segment() {
        assert_eq!(
            endpoint(
                "http://h:1",
                &["api", "5", "cohorts", "request", "a/b?c#d e"]
            ),
            "http://h:1/api/5/cohorts/request/a%2Fb%3Fc%23d%20e"
        );
        assert_eq!(
            endpoint("http://h:1/proxy/", &["lists"]),
            "http://h:1/proxy/lists"
        );
    }

    #[test]
    fn backoff_grows_and_respects_caps() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = backoff.next_delay(None, Duration::MAX);
        assert!(first >= Duration::from_millis(100), "{first:?}");
        for _ in 0..20 {
            assert!(backoff.next_delay(None, Duration::MAX) <= Duration::from_secs(2));
        }
        let hinted = backoff.next_delay(Some(Duration::from_secs(600)), Duration::from_secs(5));
        assert_eq!(hinted, Duration::from_secs(5));
    }
}
