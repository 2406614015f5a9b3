//! The fake 1Flow.

use super::*;

/// A POST on the fake 1Flow with the default account's key and an empty password.
async fn of_post(sandbox: &Sandbox, path: &str, body: Value) -> reqwest::Response {
    of_post_as(sandbox, &sandbox.options().oneflow_api_key, path, body).await
}

async fn of_post_as(sandbox: &Sandbox, key: &str, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", sandbox.oneflow_url()))
        .basic_auth(key, Some(""))
        .header("content-type", "application/json")
        .header("Idempotency-Key", format!("key-{path}"))
        .body(body.to_string())
        .send()
        .await
        .expect("request is answered")
}

async fn create_list(sandbox: &Sandbox, cohort_id: &str) -> String {
    let body = serde_json::json!({ "name": "Buyers", "cohort_id": cohort_id });
    let response = of_post(sandbox, "/lists", body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    json_of(response).await["listId"]
        .as_str()
        .expect("listId")
        .to_owned()
}

fn ids(ids: &[&str]) -> Value {
    serde_json::json!({ "userIds": ids })
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn create_add_remove_keep_a_membership_set() {
    let sandbox = sandbox().await;
    let list = create_list(&sandbox, "c1").await;
    let add = format!("/lists/{list}/add");

    let response = of_post(&sandbox, &add, ids(&["a", "b", "c"])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_of(response).await["ok"], true);
    of_post(&sandbox, &add, ids(&["b", "d"])).await;
    let removed = of_post(
        &sandbox,
        &format!("/lists/{list}/remove"),
        ids(&["a", "zz"]),
    )
    .await;
    assert_eq!(removed.status(), StatusCode::OK);
    assert_eq!(sandbox.list_members(&list), set(&["b", "c", "d"]));
    assert_eq!(sandbox.members_of_cohort("c1"), Some(set(&["b", "c", "d"])));
    assert_eq!(sandbox.members_of_cohort("c2"), None);

    let second = create_list(&sandbox, "c1").await;
    assert_ne!(second, list);
    assert_eq!(sandbox.members_of_cohort("c1"), Some(BTreeSet::new()));
    let lists = sandbox.lists();
    assert_eq!(lists.len(), 2);
    assert_eq!(
        (lists[0].members, lists[0].cohort_id.as_deref()),
        (3, Some("c1"))
    );
    assert_eq!(lists[0].name, "Buyers");

    let log = sandbox.oneflow_requests();
    let ops: Vec<OfOp> = log.iter().map(|r| r.op).collect();
    assert_eq!(
        ops,
        [
            OfOp::Create,
            OfOp::Add,
            OfOp::Add,
            OfOp::Remove,
            OfOp::Create
        ]
    );
    assert_eq!(log[0].list_id.as_deref(), Some(list.as_str()));
    assert_eq!((log[1].ids, log[1].status), (3, 200));
    assert_eq!(log[1].idempotency_key, Some(format!("key-{add}")));
    assert_eq!(log[1].account.as_deref(), Some("sandbox-1flow-key"));
    assert!(!format!("{:?}", log[1]).contains("sandbox-1flow-key"));
}

#[tokio::test]
async fn wrong_keys_answer_401() {
    let sandbox = sandbox().await;
    let body = serde_json::json!({ "name": "Buyers" });
    let response = of_post_as(&sandbox, "wrong", "/lists", body.clone()).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(response).await["message"], "invalid api key");

    let with_password = client()
        .post(format!("{}/lists", sandbox.oneflow_url()))
        .basic_auth("sandbox-1flow-key", Some("secret"))
        .body(body.to_string())
        .send()
        .await
        .expect("answered");
    assert_eq!(with_password.status(), StatusCode::UNAUTHORIZED);
    assert!(sandbox.lists().is_empty());
    let log = sandbox.oneflow_requests();
    assert_eq!((log[0].status, log[0].account.as_ref()), (401, None));
}

#[tokio::test]
async fn deleted_unknown_and_foreign_lists_answer_404() {
    let sandbox = sandbox().await;
    sandbox.add_oneflow_account("second-key");
    let list = create_list(&sandbox, "c1").await;
    of_post(&sandbox, &format!("/lists/{list}/add"), ids(&["a"])).await;

    let foreign = of_post_as(
        &sandbox,
        "second-key",
        &format!("/lists/{list}/add"),
        ids(&["x"]),
    )
    .await;
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    let created = of_post_as(
        &sandbox,
        "second-key",
        "/lists",
        serde_json::json!({"name": "N"}),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(sandbox.lists_in("second-key").len(), 1);
    assert_eq!(sandbox.lists().len(), 1);

    assert!(sandbox.delete_list(&list));
    let after = of_post(&sandbox, &format!("/lists/{list}/remove"), ids(&["a"])).await;
    assert_eq!(after.status(), StatusCode::NOT_FOUND);
    assert_eq!(sandbox.members_of_cohort("c1"), None);
    assert!(sandbox.lists()[0].deleted);
    let unknown = of_post(&sandbox, "/lists/nope/add", ids(&["a"])).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn invalid_batches_answer_400_or_413() {
    let sandbox = sandbox().await;
    let list = create_list(&sandbox, "c1").await;
    let add = format!("/lists/{list}/add");

    assert_eq!(
        of_post(&sandbox, &add, ids(&[])).await.status(),
        StatusCode::BAD_REQUEST
    );
    let long = "x".repeat(1025);
    assert_eq!(
        of_post(&sandbox, &add, ids(&[&long])).await.status(),
        StatusCode::BAD_REQUEST
    );
    let exact = "x".repeat(1024);
    assert_eq!(
        of_post(&sandbox, &add, ids(&[&exact])).await.status(),
        StatusCode::OK
    );
    let wrong_field = serde_json::json!({ "user_ids": ["a"] });
    assert_eq!(
        of_post(&sandbox, &add, wrong_field).await.status(),
        StatusCode::BAD_REQUEST
    );

    sandbox.faults().set_max_ids_per_request(Some(2));
    let too_many = of_post(&sandbox, &add, ids(&["a", "b", "c"])).await;
    assert_eq!(too_many.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        of_post(&sandbox, &add, ids(&["a", "b"])).await.status(),
        StatusCode::OK
    );
    assert_eq!(sandbox.faults().fired(FaultKind::TooManyIds), 1);
    assert_eq!(sandbox.list_members(&list).len(), 3);
}

#[tokio::test]
async fn fail_next_answers_the_status_with_retry_after() {
    let sandbox = sandbox().await;
    let list = create_list(&sandbox, "c1").await;
    sandbox.faults().fail_next(OfOp::Add, 1, 429, Some("2"));

    let add = format!("/lists/{list}/add");
    let throttled = of_post(&sandbox, &add, ids(&["a"])).await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.headers()["retry-after"], "2");
    assert!(sandbox.list_members(&list).is_empty());
    assert_eq!(
        of_post(&sandbox, &add, ids(&["a"])).await.status(),
        StatusCode::OK
    );

    let statuses: Vec<u16> = sandbox
        .oneflow_requests()
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [201, 429, 200]);
    assert_eq!(sandbox.faults().fired(FaultKind::fail(OfOp::Add)), 1);
}

#[tokio::test]
async fn latency_does_not_serialize_concurrent_requests() {
    let sandbox = sandbox().await;
    let list = create_list(&sandbox, "c1").await;
    sandbox
        .faults()
        .set_oneflow_latency(Duration::from_millis(100));

    let started = Instant::now();
    let batches = (0..10).map(|i| {
        let id = format!("user-{i}");
        let path = format!("/lists/{list}/add");
        let sandbox = &sandbox;
        async move { of_post(sandbox, &path, ids(&[&id])).await.status() }
    });
    let statuses = futures_util::future::join_all(batches).await;
    let elapsed = started.elapsed();

    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(600),
        "latency serialized requests: {elapsed:?}"
    );
    assert_eq!(sandbox.list_members(&list).len(), 10);
}

#[tokio::test]
async fn hang_holds_requests_unanswered() {
    let sandbox = sandbox().await;
    sandbox.faults().set_oneflow_hang(true);
    let request = client()
        .post(format!("{}/lists", sandbox.oneflow_url()))
        .basic_auth("sandbox-1flow-key", Some(""))
        .body(r#"{"name":"N"}"#)
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(request.expect_err("no answer").is_timeout());
    assert_eq!(sandbox.oneflow_requests()[0].status, 0);
    assert_eq!(sandbox.faults().fired(FaultKind::hang(OfOp::Create)), 1);
}

#[tokio::test]
async fn remove_members_edits_a_list_without_a_request() {
    let sandbox = sandbox().await;
    let list = create_list(&sandbox, "c1").await;
    of_post(
        &sandbox,
        &format!("/lists/{list}/add"),
        ids(&["a", "b", "c"]),
    )
    .await;
    let logged = sandbox.oneflow_requests().len();

    assert_eq!(sandbox.remove_members(&list, &["a", "c", "zz"]), 2);
    assert_eq!(sandbox.list_members(&list), set(&["b"]));
    assert_eq!(sandbox.oneflow_requests().len(), logged);
    assert_eq!(sandbox.remove_members("nope", &["b"]), 0);
}
