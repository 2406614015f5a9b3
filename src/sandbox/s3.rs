//! The fake S3 that serves the pre-signed links `/file` redirects to, and the body
//! response both it and an inline `/file` use.
//!
//! Like S3, it refuses a request that carries an Authorization header on top of the
//! signature in the query, and a link past its lifetime.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};

use super::Shared;
use super::cohort::FileOptions;
use super::faults::{AmpEndpoint, Faults};
use super::http_util::{query_pairs, with_retry_after};

/// How long a download that breaks midway waits between its half body and the break, so
/// that the half reaches the client first.
const RESET_PAUSE: Duration = Duration::from_millis(30);

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/exports/{token}", get(get_object))
        .fallback(|| async { s3_error(StatusCode::NOT_FOUND, "NoSuchKey", "No such key.") })
        .with_state(shared)
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    (status, [(CONTENT_TYPE, "application/xml")], body).into_response()
}

async fn get_object(
    State(shared): State<Arc<Shared>>,
    Path(token): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let authorized = headers.contains_key(AUTHORIZATION);
    {
        let mut state = shared.lock();
        state.s3_requests += 1;
        state.s3_saw_authorization |= authorized;
    }
    if authorized {
        let message = "Only one auth mechanism allowed; only the X-Amz-Algorithm query \
                       parameter, Signature query string parameter or the Authorization \
                       header should be specified";
        return s3_error(StatusCode::BAD_REQUEST, "InvalidArgument", message);
    }
    if let Some(answer) = shared.inject(AmpEndpoint::S3.into()).await {
        let message = answer.status.canonical_reason().unwrap_or("Error");
        let response = s3_error(answer.status, "InjectedFault", message);
        return with_retry_after(response, answer.retry_after.as_deref());
    }

    let pairs = query_pairs(query.as_deref());
    let signature = pairs
        .iter()
        .find(|(k, _)| k == "X-Amz-Signature")
        .map(|(_, v)| v.as_str());
    let link = {
        let state = shared.lock();
        state.links.get(&token).map(|link| {
            let expired = link.born_expired || link.minted.elapsed() > link.lifetime;
            (
                link.signature.clone(),
                expired,
                link.body.clone(),
                link.file,
            )
        })
    };
    let Some((expected, expired, body, file)) = link else {
        return s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        );
    };
    if signature != Some(expected.as_str()) {
        let message =
            "The request signature we calculated does not match the signature you provided.";
        return s3_error(StatusCode::FORBIDDEN, "SignatureDoesNotMatch", message);
    }
    if expired {
        return s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired");
    }
    body_response(&shared.faults, body, &file)
}

/// A 200 with an export body: halved if the file is `truncate`, broken midway if a
/// `reset_download_midway` fault is pending.
pub(super) fn body_response(faults: &Faults, body: Bytes, file: &FileOptions) -> Response {
    let body = if file.truncate {
        body.slice(..body.len() / 2)
    } else {
        body
    };
    let content_type = if file.gzip {
        "application/octet-stream"
    } else {
        "text/csv"
    };
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, content_type)
        .header(CONTENT_LENGTH, body.len());
    if file.gzip && file.content_encoding_header {
        response = response.header(CONTENT_ENCODING, "gzip");
    }

    let payload = if faults.take_reset() {
        let half = body.slice(..body.len() / 2);
        let broken = stream::once(async {
            tokio::time::sleep(RESET_PAUSE).await;
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "download reset by the sandbox",
            ))
        });
        Body::from_stream(stream::iter([Ok::<Bytes, io::Error>(half)]).chain(broken))
    } else {
        Body::from(body)
    };
    response
        .body(payload)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
