//! The one HTTP face of every server, over the real stack: idle and half-sent connections are
//! closed on the api, identity and ops ports; a stalled body is answered 408 and frees its
//! concurrency slot; every error, the framework's own included, is problem+json with a request id;
//! the bearer scheme is case-insensitive, query values are percent-decoded, a repeated parameter
//! is refused, and the request metric says `ok` only for real successes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)] // tests fail by panicking

use std::net::SocketAddr;
use std::time::Duration;

use imgpipe::host::Service;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support;

struct Stack {
    api: SocketAddr,
    identity: SocketAddr,
    hosted: support::Hosted,
    key: String,
}

async fn stack(test: &str, max_concurrent_requests: usize) -> Stack {
    let mut config = support::provisioned(test).await;
    let api = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let identity = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    config.api.listen = api;
    config.api.max_concurrent_requests = max_concurrent_requests;
    config.identity.listen = identity;
    config.identity.admin_token = support::ADMIN_TOKEN.into();
    config.http.header_read_timeout = Duration::from_millis(500);
    config.http.body_read_timeout = Duration::from_millis(500);
    let services = [Service::Identity, Service::Resizer, Service::Api];
    let hosted = support::host(config, &services).await;
    let tenant = support::create_tenant_key(identity, "face", 1000, 1000).await;
    support::wait_for_key(api, &tenant.api_key).await;
    Stack {
        api,
        identity,
        hosted,
        key: tenant.api_key,
    }
}

/// Everything the peer sends until it closes, or `None` if it is still open after `limit`.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut out))
        .await
        .ok()
        .map(|_| String::from_utf8_lossy(&out).into_owned())
}

/// A problem+json answer with `status` and `code` whose body and header carry one request id.
async fn assert_problem(response: reqwest::Response, status: StatusCode, code: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let header_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert_eq!(body["request_id"], header_id.as_str(), "{body}");
    assert!(!header_id.is_empty());
}

#[tokio::test]
async fn idle_and_half_sent_connections_are_closed_on_every_port() {
    let stack = stack("face_idle", 16).await;
    for port in [stack.api, stack.identity, stack.hosted.ops] {
        let mut idle = TcpStream::connect(port).await.unwrap();
        assert!(
            until_closed(&mut idle, Duration::from_secs(5))
                .await
                .is_some(),
            "an idle connection to {port} stayed open"
        );
        let mut half = TcpStream::connect(port).await.unwrap();
        half.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        assert!(
            until_closed(&mut half, Duration::from_secs(5))
                .await
                .is_some(),
            "a half-sent header to {port} stayed open"
        );
    }
    stack.hosted.stop().await;
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_frees_its_slot_and_shed_requests_carry_an_id() {
    let stack = stack("face_stalled", 1).await;
    let mut stalled = TcpStream::connect(stack.api).await.unwrap();
    let head = format!(
        "POST /v1/resize?width=8 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-length: 1000\r\n\r\npartial",
        stack.key
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The one slot is held by the stalled body: the next request is shed, with a request id.
    let http = reqwest::Client::new();
    let image = support::images::jpeg(64, 64);
    let resize = |query: &str| {
        http.post(format!("http://{}/v1/resize?{query}", stack.api))
            .bearer_auth(&stack.key)
            .body(image.clone())
            .send()
    };
    assert_problem(
        resize("width=8").await.unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
    )
    .await;

    let answer = until_closed(&mut stalled, Duration::from_secs(5))
        .await
        .expect("the stalled request was answered");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");

    // The slot is free again.
    assert_eq!(resize("width=8").await.unwrap().status(), StatusCode::OK);
    stack.hosted.stop().await;
}

#[tokio::test]
async fn every_error_is_problem_json_and_only_successes_count_as_ok() {
    let stack = stack("face_errors", 16).await;
    let http = reqwest::Client::new();
    let api = stack.api;
    let image = support::images::jpeg(64, 64);

    // The framework's own errors.
    let wrong_method = http.get(format!("http://{api}/v1/resize")).send().await;
    assert_problem(
        wrong_method.unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    for base in [api, stack.identity, stack.hosted.ops] {
        let missing = http
            .get(format!("http://{base}/no/such/route"))
            .send()
            .await;
        let missing = missing.unwrap();
        // The admin plane asks for its token before it says what exists.
        let code = if base == stack.identity {
            "unauthenticated"
        } else {
            "not_found"
        };
        let status = if base == stack.identity {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::NOT_FOUND
        };
        assert_problem(missing, status, code).await;
    }
    let long = format!("http://{api}/v1/resize?width=8&x={}", "a".repeat(9000));
    let long = http.post(long).body(image.clone()).send().await.unwrap();
    assert_problem(long, StatusCode::URI_TOO_LONG, "uri_too_long").await;
    let big = http
        .post(format!("http://{api}/v1/resize?width=8"))
        .header("x-filler", "f".repeat(17 * 1024))
        .body(image.clone())
        .send()
        .await
        .unwrap();
    assert_problem(
        big,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    )
    .await;

    // Bearer in any case; percent-encoded values; a repeated parameter refused.
    let resize = |query: &str, auth: String, body: Vec<u8>| {
        http.post(format!("http://{api}/v1/resize?{query}"))
            .header("authorization", auth)
            .body(body)
            .send()
    };
    let lower = format!("bearer {}", stack.key);
    let ok = resize("width=%38", lower.clone(), image.clone())
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let decoded = image::load_from_memory(&ok.bytes().await.unwrap()).unwrap();
    assert_eq!(decoded.width(), 8);
    let twice = resize("width=8&width=9", lower.clone(), image.clone()).await;
    assert_problem(twice.unwrap(), StatusCode::BAD_REQUEST, "bad_parameters").await;

    // A resizer's refusal is not a success in the request metric.
    let mut truncated = image.clone();
    truncated.truncate(image.len() / 2);
    let refused = resize("width=8", lower, truncated).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let refused: Value = refused.json().await.unwrap();
    let refused_code = refused["code"].as_str().unwrap();
    let metrics = http
        .get(format!("http://{}/metrics", stack.hosted.ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |outcome: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("imgpipe_api_request_seconds_count"))
            .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(count("ok"), 1, "{metrics}");
    assert_eq!(count(refused_code), 1, "{metrics}");
    stack.hosted.stop().await;
}
