//! The fake 1Flow: create lists, add and remove user ids, per account.
//!
//! Auth is HTTP Basic with an account's API key and an empty password. Membership is a
//! set per list, so repeated batches are harmless; creating is not idempotent. Every
//! request is logged as a [`OneflowRequest`] in arrival order.

use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::Shared;
use super::faults::{FaultKind, OfOp};
use super::http_util::{basic_credentials, with_retry_after};
use super::store::FakeList;

/// The longest user id accepted, in bytes.
const MAX_ID_BYTES: usize = 1024;

/// Bodies above this are refused before parsing; far above any sane batch.
const BODY_LIMIT_BYTES: usize = 64 * 1024 * 1024;

/// One request the fake 1Flow received.
#[derive(Clone, PartialEq, Eq)]
pub struct OneflowRequest {
    /// The operation.
    pub op: OfOp,
    /// The list added to or removed from; for a create, the list it made (if it did).
    pub list_id: Option<String>,
    /// How many user ids the body carried (0 for a create or an unreadable body).
    pub ids: usize,
    /// The `Idempotency-Key` header, if sent.
    pub idempotency_key: Option<String>,
    /// The status answered; 0 while the request is still held (latency or hang).
    pub status: u16,
    /// The API key of the account it authenticated as; `None` if it did not.
    pub account: Option<String>,
}

impl fmt::Debug for OneflowRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneflowRequest")
            .field("op", &self.op)
            .field("list_id", &self.list_id)
            .field("ids", &self.ids)
            .field("idempotency_key", &self.idempotency_key)
            .field("status", &self.status)
            .field("authenticated", &self.account.is_some())
            .finish()
    }
}

/// A list of a fake 1Flow account, as [`Sandbox::lists`](super::Sandbox::lists) shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeListInfo {
    /// The list id 1Flow answered.
    pub id: String,
    /// The name from the create body.
    pub name: String,
    /// The `cohort_id` from the create body, if any.
    pub cohort_id: Option<String>,
    /// How many user ids the list holds.
    pub members: usize,
    /// Deleted with `delete_list`.
    pub deleted: bool,
}

#[derive(Deserialize)]
struct CreateBody {
    name: String,
    cohort_id: Option<String>,
}

#[derive(Deserialize)]
struct IdsBody {
    #[serde(rename = "userIds")]
    user_ids: Vec<String>,
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/lists", post(create))
        .route("/lists/{list_id}/add", post(add))
        .route("/lists/{list_id}/remove", post(remove))
        .fallback(|| async { message(StatusCode::NOT_FOUND, "not found") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .with_state(shared)
}

fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "message": text }))).into_response()
}

fn account_of(shared: &Shared, headers: &HeaderMap) -> Option<usize> {
    let (api_key, password) = basic_credentials(headers)?;
    if !password.is_empty() {
        return None;
    }
    shared.lock().account_index(&api_key)
}

/// Logs the request as arrived and returns its index in the log.
fn log_arrival(
    shared: &Shared,
    op: OfOp,
    list_id: Option<String>,
    ids: usize,
    headers: &HeaderMap,
    account: Option<usize>,
) -> usize {
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut state = shared.lock();
    let account = account.map(|a| state.accounts[a].clone());
    let request = OneflowRequest {
        op,
        list_id,
        ids,
        idempotency_key,
        status: 0,
        account,
    };
    state.oneflow_log.push(request);
    state.oneflow_log.len() - 1
}

/// Faults and auth, common to every operation; `Some` is the answer to give.
async fn admit(shared: &Shared, op: OfOp, account: Option<usize>) -> Option<Response> {
    if let Some(answer) = shared.inject(op.into()).await {
        let text = answer
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_lowercase();
        return Some(with_retry_after(
            message(answer.status, &text),
            answer.retry_after.as_deref(),
        ));
    }
    account
        .is_none()
        .then(|| message(StatusCode::UNAUTHORIZED, "invalid api key"))
}

async fn create(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let account = account_of(&shared, &headers);
    let index = log_arrival(&shared, OfOp::Create, None, 0, &headers, account);
    let response = match admit(&shared, OfOp::Create, account).await {
        Some(response) => response,
        None => match serde_json::from_slice::<CreateBody>(&body) {
            Err(_) => message(StatusCode::BAD_REQUEST, "body must be {\"name\": \"...\"}"),
            Ok(request) => {
                let mut state = shared.lock();
                let list_id = format!("list-{:04}", state.next_id());
                state.lists.push(FakeList {
                    id: list_id.clone(),
                    account: account.unwrap_or(0),
                    name: request.name,
                    cohort_id: request.cohort_id,
                    members: Default::default(),
                    deleted: false,
                });
                state.oneflow_log[index].list_id = Some(list_id.clone());
                (StatusCode::CREATED, Json(json!({ "listId": list_id }))).into_response()
            }
        },
    };
    shared.lock().oneflow_log[index].status = response.status().as_u16();
    response
}

async fn add(
    State(shared): State<Arc<Shared>>,
    Path(list_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    change(&shared, OfOp::Add, list_id, &headers, &body).await
}

async fn remove(
    State(shared): State<Arc<Shared>>,
    Path(list_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    change(&shared, OfOp::Remove, list_id, &headers, &body).await
}

async fn change(
    shared: &Shared,
    op: OfOp,
    list_id: String,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let account = account_of(shared, headers);
    let parsed = serde_json::from_slice::<IdsBody>(body).map(|b| b.user_ids);
    let ids = parsed.as_ref().map_or(0, Vec::len);
    let index = log_arrival(shared, op, Some(list_id.clone()), ids, headers, account);

    let response = match admit(shared, op, account).await {
        Some(response) => response,
        None => apply(shared, op, &list_id, account.unwrap_or(0), parsed.ok()),
    };
    shared.lock().oneflow_log[index].status = response.status().as_u16();
    response
}

fn apply(
    shared: &Shared,
    op: OfOp,
    list_id: &str,
    account: usize,
    ids: Option<Vec<String>>,
) -> Response {
    let mut state = shared.lock();
    let Some(list) = state
        .list_mut(list_id)
        .filter(|l| l.account == account && !l.deleted)
    else {
        return message(StatusCode::NOT_FOUND, "list not found");
    };
    let Some(ids) = ids else {
        return message(StatusCode::BAD_REQUEST, "body must be {\"userIds\": [...]}");
    };
    if shared
        .faults
        .max_ids_per_request()
        .is_some_and(|max| ids.len() > max)
    {
        shared.faults.count(FaultKind::TooManyIds);
        return message(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too many userIds in one request",
        );
    }
    if ids.is_empty() {
        return message(StatusCode::BAD_REQUEST, "userIds must not be empty");
    }
    if ids.iter().any(|id| id.len() > MAX_ID_BYTES) {
        return message(
            StatusCode::BAD_REQUEST,
            "a user id is longer than 1024 bytes",
        );
    }

    match op {
        OfOp::Remove => list.members.remove(ids),
        _ => list.members.add(ids),
    }
    Json(json!({ "ok": true })).into_response()
}
