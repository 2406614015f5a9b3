//! The fake Amplitude and the fake S3.

use super::*;

fn members() -> Vec<FakeMember> {
    vec![
        FakeMember::new(11, "alice")
            .with_property("plan", "pro")
            .with_property("city", "Paris"),
        FakeMember::new(12, "").with_property("plan", "free"),
        FakeMember::new(13, "bob \"the\" builder"),
    ]
}

fn inline(file: FileOptions) -> FileOptions {
    FileOptions {
        delivery: Delivery::Inline,
        ..file
    }
}

/// Starts an export, polls it to completion and returns its request id.
async fn completed_export(sandbox: &Sandbox, cohort_id: &str, query: &str) -> String {
    let started = amp_get(
        sandbox,
        &format!("/api/5/cohorts/request/{cohort_id}{query}"),
    )
    .await;
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let started = json_of(started).await;
    assert_eq!(started["cohort_id"], cohort_id);
    let request_id = started["request_id"]
        .as_str()
        .expect("request id")
        .to_owned();
    let status_path = format!("/api/5/cohorts/request-status/{request_id}");
    for _ in 0..10 {
        if amp_get(sandbox, &status_path).await.status() == StatusCode::OK {
            return request_id;
        }
    }
    panic!("export never completed");
}

/// Downloads an export's file, following a redirect to S3 by hand, and gunzips it.
async fn download_text(sandbox: &Sandbox, request_id: &str) -> String {
    let path = format!("/api/5/cohorts/request/{request_id}/file");
    let mut response = amp_get(sandbox, &path).await;
    if response.status() == StatusCode::FOUND {
        let location = response.headers()["location"]
            .to_str()
            .expect("ascii")
            .to_owned();
        response = client().get(location).send().await.expect("S3 answers");
    }
    assert_eq!(response.status(), StatusCode::OK);
    gunzip(&response.bytes().await.expect("body"))
}

#[tokio::test]
async fn lists_cohorts_with_their_fields() {
    let sandbox = sandbox().await;
    sandbox.put_cohort(FakeCohort::new("c1", "Buyers", members()));
    let unsized_cohort = FakeCohort {
        archived: true,
        listed_size: Some(None),
        last_computed: Some(1_700_000_000),
        ..FakeCohort::new("c2", "Old", Vec::new())
    };
    sandbox.put_cohort(unsized_cohort);

    let response = amp_get(&sandbox, "/api/3/cohorts").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_of(response).await;
    let cohorts = body["cohorts"].as_array().expect("cohorts array");
    assert_eq!(cohorts.len(), 2);
    assert_eq!(cohorts[0]["id"], "c1");
    assert_eq!(cohorts[0]["name"], "Buyers");
    assert_eq!(cohorts[0]["size"], 3);
    assert_eq!(cohorts[0]["archived"], false);
    assert!(cohorts[0]["lastComputed"].as_i64().expect("lastComputed") > 1_600_000_000);
    for field in [
        "lastMod",
        "createdAt",
        "published",
        "hidden",
        "finished",
        "appId",
        "owners",
    ] {
        assert!(!cohorts[0][field].is_null(), "{field} is listed");
    }
    assert!(cohorts[1]["size"].is_null());
    assert_eq!(cohorts[1]["archived"], true);
    assert_eq!(cohorts[1]["lastComputed"], 1_700_000_000);
}

#[tokio::test]
async fn authentication_failures_use_the_envelope() {
    let sandbox = sandbox().await;
    sandbox.add_amplitude_project("other-key", "other-secret");
    assert!(sandbox.put_cohort_in("other-key", FakeCohort::new("o1", "Other", members())));
    assert!(!sandbox.put_cohort_in("missing-key", FakeCohort::new("x", "X", Vec::new())));
    let url = format!("{}/api/3/cohorts", sandbox.amplitude_url());

    let missing = client().get(&url).send().await.expect("answered");
    assert_eq!(missing.status(), StatusCode::FORBIDDEN);
    let body = json_of(missing).await;
    assert_eq!(body["error"]["http_code"], 403);
    assert_eq!(body["error"]["type"], "forbidden");
    assert_eq!(
        body["error"]["message"],
        "Invalid API/Secret Key combination"
    );
    assert!(body["error"]["metadata"]["details"].is_string());

    let wrong_secret = client()
        .get(&url)
        .basic_auth("other-key", Some("nope"))
        .send()
        .await;
    let body = json_of(wrong_secret.expect("answered")).await;
    assert_eq!(
        body["error"]["message"],
        "Invalid API/Secret Key combination"
    );
    let unknown = client()
        .get(&url)
        .basic_auth("who", Some("other-secret"))
        .send()
        .await;
    let unknown = unknown.expect("answered");
    assert_eq!(unknown.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        json_of(unknown).await["error"]["message"],
        "Invalid API Key"
    );

    let other = client()
        .get(&url)
        .basic_auth("other-key", Some("other-secret"))
        .send()
        .await;
    let body = json_of(other.expect("answered")).await;
    assert_eq!(body["cohorts"][0]["id"], "o1");
    assert_eq!(
        json_of(amp_get(&sandbox, "/api/3/cohorts").await).await["cohorts"],
        Value::Array(vec![])
    );
}

#[tokio::test]
async fn export_polls_then_downloads_inline() {
    let sandbox = sandbox().await;
    sandbox.put_cohort(FakeCohort {
        file: inline(FileOptions::default()),
        ..FakeCohort::new("c1", "Buyers", members())
    });

    let started = json_of(amp_get(&sandbox, "/api/5/cohorts/request/c1?props=0").await).await;
    let request_id = started["request_id"]
        .as_str()
        .expect("request id")
        .to_owned();
    let file_path = format!("/api/5/cohorts/request/{request_id}/file");
    assert_eq!(
        amp_get(&sandbox, &file_path).await.status(),
        StatusCode::BAD_REQUEST
    );

    let status_path = format!("/api/5/cohorts/request-status/{request_id}");
    let first = amp_get(&sandbox, &status_path).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(json_of(first).await["async_status"], "JOB INPROGRESS");
    let second = amp_get(&sandbox, &status_path).await;
    assert_eq!(second.status(), StatusCode::OK);
    let second = json_of(second).await;
    assert_eq!(second["async_status"], "JOB COMPLETED");
    assert_eq!(second["cohort_id"], "c1");

    let response = amp_get(&sandbox, &file_path).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("content-encoding").is_none());
    let body = response.bytes().await.expect("body");
    assert_eq!(&body[..2], &[0x1f, 0x8b]);
    let expected = "\"amplitude_id\",\"user_id\"\n\"11\",\"alice\"\n\"12\",\"\"\n\
                    \"13\",\"bob \"\"the\"\" builder\"\n";
    assert_eq!(gunzip(&body), expected);

    assert_eq!(sandbox.export_requests("c1"), 1);
    assert_eq!(sandbox.file_requests(&request_id), 2);
    assert_eq!(sandbox.status_polls(&request_id), 2);
    assert_eq!(sandbox.s3_requests(), 0);
}

#[tokio::test]
async fn unknown_cohorts_and_requests_answer_404() {
    let sandbox = sandbox().await;
    let response = amp_get(&sandbox, "/api/5/cohorts/request/nope").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_of(response).await["error"]["http_code"], 404);
    assert_eq!(sandbox.export_requests("nope"), 1);
    let status = amp_get(&sandbox, "/api/5/cohorts/request-status/nope").await;
    assert_eq!(status.status(), StatusCode::NOT_FOUND);
    let file = amp_get(&sandbox, "/api/5/cohorts/request/nope/file").await;
    assert_eq!(file.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn redirect_mints_fresh_links_that_s3_serves_without_authorization() {
    let sandbox = sandbox().await;
    sandbox.put_cohort(FakeCohort::new("c1", "Buyers", members()));
    let request_id = completed_export(&sandbox, "c1", "").await;
    let file_path = format!("/api/5/cohorts/request/{request_id}/file");

    let first = amp_get(&sandbox, &file_path).await;
    assert_eq!(first.status(), StatusCode::FOUND);
    let location = first.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        location.starts_with(&format!("{}/exports/", sandbox.s3_url())),
        "{location}"
    );
    assert!(
        location.contains("X-Amz-Expires=60&X-Amz-Signature="),
        "{location}"
    );
    assert_ne!(sandbox.s3_url(), sandbox.amplitude_url());
    let second = amp_get(&sandbox, &file_path).await;
    assert_ne!(
        second.headers()["location"].to_str().expect("ascii"),
        location
    );

    let with_auth = client()
        .get(&location)
        .basic_auth("k", Some("s"))
        .send()
        .await;
    let with_auth = with_auth.expect("answered");
    assert_eq!(with_auth.status(), StatusCode::BAD_REQUEST);
    let text = with_auth.text().await.expect("body");
    assert!(text.contains("InvalidArgument") && text.contains("Only one auth mechanism allowed"));
    assert!(sandbox.s3_saw_authorization());

    let plain = client().get(&location).send().await.expect("answered");
    assert_eq!(plain.status(), StatusCode::OK);
    let body = gunzip(&plain.bytes().await.expect("body"));
    assert!(body.starts_with("\"amplitude_id\",\"user_id\"\n\"11\",\"alice\"\n"));
    assert_eq!(sandbox.s3_requests(), 2);

    let forged = location.replace("X-Amz-Signature=", "X-Amz-Signature=0");
    let forged = client().get(&forged).send().await.expect("answered");
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn s3_refuses_expired_links() {
    let sandbox = sandbox().await;
    sandbox.put_cohort(FakeCohort::new("c1", "Buyers", members()));
    let request_id = completed_export(&sandbox, "c1", "").await;
    let file_path = format!("/api/5/cohorts/request/{request_id}/file");
    let location = |r: &reqwest::Response| r.headers()["location"].to_str().unwrap().to_owned();

    sandbox.faults().expire_next_links(1);
    let expired = location(&amp_get(&sandbox, &file_path).await);
    let answer = client().get(&expired).send().await.expect("answered");
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(
        answer
            .text()
            .await
            .expect("body")
            .contains("Request has expired")
    );
    assert_eq!(sandbox.faults().fired(FaultKind::ExpiredLink), 1);
    let fresh = location(&amp_get(&sandbox, &file_path).await);
    assert_eq!(
        client()
            .get(&fresh)
            .send()
            .await
            .expect("answered")
            .status(),
        StatusCode::OK
    );

    sandbox
        .faults()
        .set_s3_link_lifetime(Duration::from_millis(50));
    let short = location(&amp_get(&sandbox, &file_path).await);
    tokio::time::sleep(Duration::from_millis(120)).await;
    let late = client().get(&short).send().await.expect("answered");
    assert_eq!(late.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn file_shapes_follow_the_options() {
    let sandbox = sandbox().await;
    let plain = FileOptions {
        gzip: false,
        bom: true,
        crlf: true,
        ..inline(FileOptions::default())
    };
    sandbox.put_cohort(FakeCohort {
        file: plain,
        ..FakeCohort::new("plain", "P", members())
    });
    let encoded = FileOptions {
        content_encoding_header: true,
        ..inline(FileOptions::default())
    };
    sandbox.put_cohort(FakeCohort {
        file: encoded,
        ..FakeCohort::new("enc", "E", members())
    });

    let request_id = completed_export(&sandbox, "plain", "").await;
    let response = amp_get(
        &sandbox,
        &format!("/api/5/cohorts/request/{request_id}/file"),
    )
    .await;
    let text = response.text().await.expect("utf-8 body");
    assert!(text.starts_with("\u{feff}\"amplitude_id\",\"user_id\"\r\n\"11\",\"alice\"\r\n"));

    let request_id = completed_export(&sandbox, "enc", "").await;
    let response = amp_get(
        &sandbox,
        &format!("/api/5/cohorts/request/{request_id}/file"),
    )
    .await;
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(&response.bytes().await.expect("body")[..2], &[0x1f, 0x8b]);
}

#[tokio::test]
async fn property_columns_follow_the_query() {
    let sandbox = sandbox().await;
    sandbox.put_cohort(FakeCohort::new("c1", "Buyers", members()));

    let named = completed_export(&sandbox, "c1", "?props=1&propKeys=plan&propKeys=missing").await;
    let text = download_text(&sandbox, &named).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "\"amplitude_id\",\"user_id\",\"plan\",\"missing\""
    );
    assert_eq!(lines[1], "\"11\",\"alice\",\"pro\",\"\"");
    assert_eq!(lines[3], "\"13\",\"bob \"\"the\"\" builder\",\"\",\"\"");

    let all = completed_export(&sandbox, "c1", "?props=1").await;
    let text = download_text(&sandbox, &all).await;
    assert!(text.starts_with("\"amplitude_id\",\"user_id\",\"city\",\"plan\"\n"));
    let none = completed_export(&sandbox, "c1", "?props=0&propKeys=plan").await;
    assert!(
        download_text(&sandbox, &none)
            .await
            .starts_with("\"amplitude_id\",\"user_id\"\n")
    );
}

#[tokio::test]
async fn exports_snapshot_the_file_and_last_computed_tracks_changes() {
    let sandbox = sandbox().await;
    sandbox.faults().set_polls_before_complete(0);
    let file = inline(FileOptions::default());
    sandbox.put_cohort(FakeCohort {
        file,
        ..FakeCohort::new("c1", "Buyers", members())
    });
    let listed = |body: Value| {
        body["cohorts"][0]["lastComputed"]
            .as_i64()
            .expect("lastComputed")
    };
    let first = listed(json_of(amp_get(&sandbox, "/api/3/cohorts").await).await);

    let started = json_of(amp_get(&sandbox, "/api/5/cohorts/request/c1").await).await;
    let old_request = started["request_id"]
        .as_str()
        .expect("request id")
        .to_owned();
    assert!(sandbox.update_members("c1", |m| m.push(FakeMember::new(14, "carol"))));
    assert!(!sandbox.update_members("missing", |m| m.clear()));
    let second = listed(json_of(amp_get(&sandbox, "/api/3/cohorts").await).await);
    assert!(second > first);

    assert!(
        !download_text(&sandbox, &old_request)
            .await
            .contains("carol")
    );
    let new_request = completed_export(&sandbox, "c1", "").await;
    assert!(
        download_text(&sandbox, &new_request)
            .await
            .contains("\"14\",\"carol\"")
    );

    let mut same = members();
    same.push(FakeMember::new(14, "carol"));
    sandbox.put_cohort(FakeCohort {
        file,
        ..FakeCohort::new("c1", "Renamed", same)
    });
    assert_eq!(
        listed(json_of(amp_get(&sandbox, "/api/3/cohorts").await).await),
        second
    );
    sandbox.put_cohort(FakeCohort {
        file,
        ..FakeCohort::new("c1", "Renamed", members())
    });
    assert!(listed(json_of(amp_get(&sandbox, "/api/3/cohorts").await).await) > second);
}

#[tokio::test]
async fn fail_next_answers_the_status_with_retry_after() {
    let sandbox = sandbox().await;
    sandbox
        .faults()
        .fail_next(AmpEndpoint::Request, 2, 429, Some("7"));
    sandbox.put_cohort(FakeCohort::new("c1", "Buyers", members()));

    for _ in 0..2 {
        let response = amp_get(&sandbox, "/api/5/cohorts/request/c1").await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "7");
        assert_eq!(json_of(response).await["error"]["http_code"], 429);
    }
    let response = amp_get(&sandbox, "/api/5/cohorts/request/c1").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        sandbox
            .faults()
            .fired(FaultKind::fail(AmpEndpoint::Request)),
        2
    );
    assert_eq!(sandbox.export_requests("c1"), 3);

    sandbox.faults().fail_next(AmpEndpoint::S3, 1, 503, None);
    let request_id = completed_export(&sandbox, "c1", "").await;
    let redirect = amp_get(
        &sandbox,
        &format!("/api/5/cohorts/request/{request_id}/file"),
    )
    .await;
    let location = redirect.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let failed = client().get(&location).send().await.expect("answered");
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(failed.headers().get("retry-after").is_none());
    assert_eq!(
        client()
            .get(&location)
            .send()
            .await
            .expect("answered")
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn downloads_can_break_midway_or_end_early() {
    let sandbox = sandbox().await;
    let members = sample_members(5_000, 0.1, 1);
    let file = inline(FileOptions {
        gzip: false,
        ..FileOptions::default()
    });
    sandbox.put_cohort(FakeCohort {
        file,
        ..FakeCohort::new("c1", "Big", members.clone())
    });
    let request_id = completed_export(&sandbox, "c1", "").await;
    let file_path = format!("/api/5/cohorts/request/{request_id}/file");
    let full = amp_get(&sandbox, &file_path)
        .await
        .bytes()
        .await
        .expect("body")
        .len();

    sandbox.faults().reset_download_midway(1);
    let broken = amp_get(&sandbox, &file_path).await;
    assert_eq!(broken.status(), StatusCode::OK);
    assert!(
        broken.bytes().await.is_err(),
        "a broken download must fail to read"
    );
    assert_eq!(sandbox.faults().fired(FaultKind::ResetDownload), 1);
    assert_eq!(
        amp_get(&sandbox, &file_path)
            .await
            .bytes()
            .await
            .expect("body")
            .len(),
        full
    );

    let truncated = FileOptions {
        truncate: true,
        ..file
    };
    sandbox.put_cohort(FakeCohort {
        file: truncated,
        ..FakeCohort::new("c1", "Big", members)
    });
    let request_id = completed_export(&sandbox, "c1", "").await;
    let path = format!("/api/5/cohorts/request/{request_id}/file");
    let half = amp_get(&sandbox, &path)
        .await
        .bytes()
        .await
        .expect("clean end");
    assert_eq!(half.len(), full / 2);
}

#[tokio::test]
async fn status_faults_replace_the_text_or_never_complete() {
    let sandbox = sandbox().await;
    sandbox.put_cohort(FakeCohort::new("c1", "Buyers", members()));
    sandbox.faults().set_polls_before_complete(0);
    sandbox.faults().set_never_complete(true);
    let started = json_of(amp_get(&sandbox, "/api/5/cohorts/request/c1").await).await;
    let status_path = format!(
        "/api/5/cohorts/request-status/{}",
        started["request_id"].as_str().unwrap()
    );
    for _ in 0..3 {
        assert_eq!(
            amp_get(&sandbox, &status_path).await.status(),
            StatusCode::ACCEPTED
        );
    }

    sandbox.faults().set_never_complete(false);
    sandbox.faults().set_status_string(Some("JOB FAILED"));
    let response = amp_get(&sandbox, &status_path).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_of(response).await["async_status"], "JOB FAILED");
    assert_eq!(sandbox.faults().fired(FaultKind::StatusString), 1);
}

#[tokio::test]
async fn hang_and_latency_hold_answers() {
    let sandbox = sandbox().await;
    sandbox.faults().hang(AmpEndpoint::List, true);
    let url = format!("{}/api/3/cohorts", sandbox.amplitude_url());
    let held = client()
        .get(&url)
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(held.expect_err("no answer").is_timeout());

    sandbox.faults().hang(AmpEndpoint::List, false);
    sandbox
        .faults()
        .latency(AmpEndpoint::List, Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(
        amp_get(&sandbox, "/api/3/cohorts").await.status(),
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(
        sandbox
            .faults()
            .fired(FaultKind::latency(AmpEndpoint::List)),
        1
    );
}
