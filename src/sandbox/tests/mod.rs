//! End-to-end tests of the sandbox servers, driven with reqwest over real sockets.

mod amplitude;
mod oneflow;

use std::io::Read;
use std::time::{Duration, Instant};

use flate2::read::MultiGzDecoder;
use reqwest::StatusCode;
use serde_json::Value;

use super::*;

async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxOptions::default())
        .await
        .expect("sandbox starts")
}

/// A client that does not follow redirects, as the download tests need.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client builds")
}

/// A GET on the fake Amplitude with the default project's credentials.
async fn amp_get(sandbox: &Sandbox, path: &str) -> reqwest::Response {
    let options = sandbox.options();
    client()
        .get(format!("{}{path}", sandbox.amplitude_url()))
        .basic_auth(
            &options.amplitude_api_key,
            Some(&options.amplitude_secret_key),
        )
        .send()
        .await
        .expect("request is answered")
}

async fn json_of(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("json body")
}

fn gunzip(bytes: &[u8]) -> String {
    let mut text = String::new();
    MultiGzDecoder::new(bytes)
        .read_to_string(&mut text)
        .expect("valid gzip");
    text
}

#[tokio::test]
async fn shutdown_finishes_with_a_request_held_by_a_hang() {
    let sandbox = sandbox().await;
    sandbox.faults().hang(AmpEndpoint::List, true);
    let url = format!("{}/api/3/cohorts", sandbox.amplitude_url());
    let held = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        sandbox.faults().fired(FaultKind::hang(AmpEndpoint::List)),
        1
    );

    tokio::time::timeout(Duration::from_secs(5), sandbox.shutdown())
        .await
        .expect("stops");
    let status = held
        .await
        .expect("task")
        .expect("held request is answered at shutdown");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
#[ignore = "timing of a two-million-member put; run with --ignored --nocapture"]
async fn put_cohort_with_two_million_members_is_fast() {
    let sandbox = sandbox().await;
    let members = sample_members(2_000_000, 0.1, 7);
    let started = Instant::now();
    sandbox.put_cohort(FakeCohort::new("big", "Two million", members));
    let elapsed = started.elapsed();
    println!("put_cohort with 2,000,000 members took {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(30),
        "put_cohort took {elapsed:?}"
    );

    let started = Instant::now();
    sandbox.update_members("big", |members| members.truncate(1_999_000));
    println!(
        "update_members on 2,000,000 members took {:?}",
        started.elapsed()
    );
}
