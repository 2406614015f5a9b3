//! The fake Amplitude: list cohorts, start an export, poll it, download its file.
//!
//! Auth is HTTP Basic with a project's API and secret keys; errors use Amplitude's
//! envelope. A download answers the file inline or with a 302 to a fresh link on the fake
//! S3, depending on the cohort's [`Delivery`](super::Delivery).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::Shared;
use super::cohort::{Delivery, all_property_keys, render_file};
use super::faults::{AmpEndpoint, FaultKind, Injected};
use super::http_util::{basic_credentials, query_pairs, random_hex, with_retry_after};
use super::s3::body_response;
use super::store::{Link, StoredCohort};

type Shr = State<Arc<Shared>>;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/3/cohorts", get(list_cohorts))
        .route("/api/5/cohorts/request/{id}", get(request_export))
        .route("/api/5/cohorts/request/{id}/file", get(download))
        .route("/api/5/cohorts/request-status/{id}", get(request_status))
        .fallback(|| async { envelope(StatusCode::NOT_FOUND, "Not found", "No such endpoint.") })
        .with_state(shared)
}

/// Amplitude's error envelope.
fn envelope(status: StatusCode, message: &str, details: &str) -> Response {
    let kind = match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        429 => "too_many_requests",
        500 => "internal_server_error",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        _ => "error",
    };
    let error = json!({
        "http_code": status.as_u16(),
        "type": kind,
        "message": message,
        "metadata": {"details": details},
    });
    (status, Json(json!({ "error": error }))).into_response()
}

/// Why a request is not served: a fault to inject, or a failed authentication.
enum Refusal {
    Injected(Injected),
    Forbidden {
        message: &'static str,
        details: &'static str,
    },
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Injected(injected) => {
                let message = injected.status.canonical_reason().unwrap_or("Error");
                let response = envelope(injected.status, message, "Injected by the sandbox.");
                with_retry_after(response, injected.retry_after.as_deref())
            }
            Refusal::Forbidden { message, details } => {
                envelope(StatusCode::FORBIDDEN, message, details)
            }
        }
    }
}

/// The index of the project these Basic credentials open.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<usize, Refusal> {
    let combination = "Invalid API/Secret Key combination";
    let Some((api_key, secret_key)) = basic_credentials(headers) else {
        let details = "Basic credentials missing.";
        return Err(Refusal::Forbidden {
            message: combination,
            details,
        });
    };
    let state = shared.lock();
    match state.project_index(&api_key) {
        None => Err(Refusal::Forbidden {
            message: "Invalid API Key",
            details: "Unknown API key.",
        }),
        Some(index) if state.projects[index].secret_key != secret_key => {
            let details = "The secret key does not match the API key.";
            Err(Refusal::Forbidden {
                message: combination,
                details,
            })
        }
        Some(index) => Ok(index),
    }
}

/// Fault injection, then authentication, for one endpoint.
async fn admit(
    shared: &Shared,
    endpoint: AmpEndpoint,
    headers: &HeaderMap,
) -> Result<usize, Refusal> {
    if let Some(answer) = shared.inject(endpoint.into()).await {
        return Err(Refusal::Injected(answer));
    }
    authenticate(shared, headers)
}

fn cohort_json(cohort: &StoredCohort, app_id: u64) -> Value {
    json!({
        "id": cohort.id,
        "name": cohort.name,
        "size": cohort.listed_size(),
        "lastComputed": cohort.last_computed,
        "lastMod": cohort.last_computed,
        "createdAt": cohort.created_at,
        "archived": cohort.archived,
        "published": true,
        "hidden": false,
        "finished": true,
        "appId": app_id,
        "owners": [],
        "description": "",
    })
}

async fn list_cohorts(State(shared): Shr, headers: HeaderMap) -> Response {
    let project = match admit(&shared, AmpEndpoint::List, &headers).await {
        Ok(project) => project,
        Err(refusal) => return refusal.into_response(),
    };
    let body = {
        let state = shared.lock();
        let project = &state.projects[project];
        let cohorts: Vec<Value> = project
            .cohorts
            .iter()
            .map(|c| cohort_json(c, project.app_id))
            .collect();
        json!({ "cohorts": cohorts })
    };
    Json(body).into_response()
}

/// The property columns an export query asks for: none unless `props=1`; with `props=1`,
/// the `propKeys` named, or every key the cohort's members have if none is named.
fn requested_props(query: Option<&str>) -> Option<Vec<String>> {
    let pairs = query_pairs(query);
    let props = pairs.iter().any(|(k, v)| k == "props" && v == "1");
    let keys = pairs
        .into_iter()
        .filter(|(k, _)| k == "propKeys")
        .map(|(_, v)| v)
        .collect();
    props.then_some(keys)
}

async fn request_export(
    State(shared): Shr,
    Path(cohort_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    *shared
        .lock()
        .export_calls
        .entry(cohort_id.clone())
        .or_insert(0) += 1;
    let project = match admit(&shared, AmpEndpoint::Request, &headers).await {
        Ok(project) => project,
        Err(refusal) => return refusal.into_response(),
    };

    // The members are copied only when this set of columns was never rendered: a
    // 2,000,000-member cohort is served from its cached body.
    let requested = requested_props(query.as_deref());
    let found = {
        let state = shared.lock();
        state.cohort(project, &cohort_id).map(|c| {
            let props = match &requested {
                _ if c.file.all_properties => Vec::new(),
                Some(keys) if keys.is_empty() => all_property_keys(&c.members),
                Some(keys) => keys.clone(),
                None => Vec::new(),
            };
            let cached = c.raw_file.clone().or_else(|| c.bodies.get(&props).cloned());
            let members = cached.is_none().then(|| c.members.clone());
            (props, cached, members, c.file, c.generation)
        })
    };
    let Some((props, cached, members, file, generation)) = found else {
        return envelope(
            StatusCode::NOT_FOUND,
            "Cohort not found",
            "No cohort has this id.",
        );
    };

    let body = match (cached, members) {
        (Some(body), _) => body,
        (None, members) => {
            let (members, keys) = (members.unwrap_or_default(), props.clone());
            let rendered =
                tokio::task::spawn_blocking(move || render_file(&members, &keys, &file)).await;
            let Ok(body) = rendered else {
                return envelope(StatusCode::INTERNAL_SERVER_ERROR, "Render failed", "");
            };
            shared
                .lock()
                .cache_body(project, &cohort_id, generation, props, body.clone());
            body
        }
    };

    let (polls_before_complete, _, never_complete) = shared.faults.poll_settings();
    let completed = polls_before_complete == 0 && !never_complete;
    let request_id = shared
        .lock()
        .new_job(project, &cohort_id, body, file, completed);
    let answer = json!({ "request_id": request_id, "cohort_id": cohort_id });
    (StatusCode::ACCEPTED, Json(answer)).into_response()
}

async fn request_status(
    State(shared): Shr,
    Path(request_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    *shared
        .lock()
        .status_calls
        .entry(request_id.clone())
        .or_insert(0) += 1;
    let project = match admit(&shared, AmpEndpoint::Status, &headers).await {
        Ok(project) => project,
        Err(refusal) => return refusal.into_response(),
    };

    let (polls_before_complete, status_string, never_complete) = shared.faults.poll_settings();
    let progress = {
        let mut state = shared.lock();
        state
            .jobs
            .get_mut(&request_id)
            .filter(|job| job.project == project)
            .map(|job| {
                job.polls += 1;
                if !never_complete && job.polls > polls_before_complete {
                    job.completed = true;
                }
                (job.completed, job.cohort_id.clone())
            })
    };
    let Some((completed, cohort_id)) = progress else {
        return envelope(
            StatusCode::NOT_FOUND,
            "Request not found",
            "No export has this id.",
        );
    };

    let (status, text) = if completed {
        (StatusCode::OK, "JOB COMPLETED")
    } else {
        (StatusCode::ACCEPTED, "JOB INPROGRESS")
    };
    if status_string.is_some() {
        shared.faults.count(FaultKind::StatusString);
    }
    let text = status_string.as_deref().unwrap_or(text);
    let answer = json!({ "request_id": request_id, "cohort_id": cohort_id, "async_status": text });
    (status, Json(answer)).into_response()
}

async fn download(
    State(shared): Shr,
    Path(request_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    *shared
        .lock()
        .file_calls
        .entry(request_id.clone())
        .or_insert(0) += 1;
    let project = match admit(&shared, AmpEndpoint::File, &headers).await {
        Ok(project) => project,
        Err(refusal) => return refusal.into_response(),
    };

    let job = {
        let state = shared.lock();
        let job = state
            .jobs
            .get(&request_id)
            .filter(|job| job.project == project);
        job.map(|job| (job.completed, job.body.clone(), job.file))
    };
    let Some((completed, body, file)) = job else {
        return envelope(
            StatusCode::NOT_FOUND,
            "Request not found",
            "No export has this id.",
        );
    };
    if !completed {
        return envelope(
            StatusCode::BAD_REQUEST,
            "Job not completed",
            "Poll until JOB COMPLETED.",
        );
    }
    if file.delivery == Delivery::Inline {
        return body_response(&shared.faults, body, &file);
    }

    let (lifetime, born_expired) = shared.faults.mint_link();
    let location = {
        let mut state = shared.lock();
        let token = random_hex(&mut state.rng, 32);
        let signature = random_hex(&mut state.rng, 64);
        let url = format!(
            "{}/exports/{token}?X-Amz-Expires={}&X-Amz-Signature={signature}",
            shared.s3_base,
            lifetime.as_secs()
        );
        let minted = tokio::time::Instant::now();
        let link = Link {
            body,
            file,
            signature,
            minted,
            lifetime,
            born_expired,
        };
        state.links.insert(token, link);
        url
    };
    (StatusCode::FOUND, [(LOCATION, location)]).into_response()
}
