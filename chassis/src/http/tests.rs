//! The HTTP face over real sockets (timeouts, connection limit) and in process (problem bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, Request};
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt as _;

use super::*;

fn quick() -> HttpConfig {
    HttpConfig {
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    }
}

fn routes() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/echo", post(|body: axum::body::Bytes| async move { body }))
        .route(
            "/busy",
            get(|| async { Problem::unavailable("overloaded", "Busy.") }),
        )
}

/// Serves `routes()` with `config` on a loopback port; returns its address and the shutdown.
async fn server(config: HttpConfig) -> (std::net::SocketAddr, Shutdown) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let app = face(routes(), &config, RequestIds::Generate);
        serve(listener, app, &config, stop).await.unwrap();
    });
    (address, shutdown)
}

/// Reads until the peer closes (or `limit` passes): everything it sent.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_header_read_timeout() {
    let (address, _shutdown) = server(quick()).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    let started = Instant::now();
    let sent = read_to_close(&mut stream, Duration::from_secs(5)).await;
    assert!(sent.is_some(), "an idle connection stayed open for 5 s");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn a_keep_alive_connection_is_closed_when_idle_between_requests() {
    let (address, _shutdown) = server(quick()).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let sent = read_to_close(&mut stream, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(sent.starts_with("HTTP/1.1 200"), "{sent}");
    assert!(sent.ends_with("hello"), "{sent}");
}

#[tokio::test]
async fn a_half_sent_header_is_dropped() {
    let (address, _shutdown) = server(quick()).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let sent = read_to_close(&mut stream, Duration::from_secs(5)).await;
    assert!(
        sent.is_some(),
        "a connection with half a header stayed open"
    );
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_problem_json() {
    let (address, _shutdown) = server(quick()).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nhalf")
        .await
        .unwrap();
    let sent = read_to_close(&mut stream, Duration::from_secs(5))
        .await
        .expect("a stalled body held the connection for 5 s");
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert!(sent.contains("application/problem+json"), "{sent}");
    assert!(sent.contains(r#""code":"request_timeout""#), "{sent}");
    assert!(sent.contains("x-request-id"), "{sent}");
}

#[tokio::test]
async fn connections_past_the_limit_wait_until_one_closes() {
    let config = HttpConfig {
        max_connections: 1,
        header_read_timeout: Duration::from_secs(30),
        ..HttpConfig::default()
    };
    let (address, _shutdown) = server(config).await;
    let first = TcpStream::connect(address).await.unwrap();
    // Let the server accept the first, so the second is the one over the limit.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = TcpStream::connect(address).await.unwrap();
    second
        .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut byte)).await;
    assert!(early.is_err(), "served a connection past the limit");
    drop(first);
    let sent = read_to_close(&mut second, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(sent.starts_with("HTTP/1.1 200"), "{sent}");
}

async fn call(app: Router, request: Request<Body>) -> (StatusCode, HeaderMap, serde_json::Value) {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, json)
}

fn get_request(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// A problem+json body with this status and code, whose request id matches the header.
fn assert_problem(status: StatusCode, headers: &HeaderMap, body: &serde_json::Value, code: &str) {
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "application/problem+json",
        "{body}"
    );
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(!body["message"].as_str().unwrap().is_empty(), "{body}");
    let id = body["request_id"].as_str().unwrap();
    assert!(!id.is_empty());
    assert_eq!(headers[REQUEST_ID_HEADER], id);
}

#[tokio::test]
async fn the_frameworks_own_errors_are_problems_too() {
    let app = face(routes(), &HttpConfig::default(), RequestIds::Generate);
    let (status, headers, body) = call(app.clone(), get_request("/nowhere")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_problem(status, &headers, &body, "not_found");

    let (status, headers, body) = call(app.clone(), get_request("/echo")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_problem(status, &headers, &body, "method_not_allowed");

    let long = format!("/hello?{}", "a".repeat(9000));
    let (status, headers, body) = call(app.clone(), get_request(&long)).await;
    assert_eq!(status, StatusCode::URI_TOO_LONG);
    assert_problem(status, &headers, &body, "uri_too_long");

    let big = Request::get("/hello")
        .header("x-big", "b".repeat(17 * 1024))
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = call(app.clone(), big).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_problem(status, &headers, &body, "headers_too_large");

    let (status, headers, body) = call(app, get_request("/busy")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_problem(status, &headers, &body, "overloaded");
    assert_eq!(headers[header::RETRY_AFTER], "1");
}

#[tokio::test]
async fn request_ids_come_from_the_caller_only_where_allowed() {
    let with_id = || {
        Request::get("/hello")
            .header(REQUEST_ID_HEADER, "caller-7")
            .body(Body::empty())
            .unwrap()
    };
    let admin = face(
        routes(),
        &HttpConfig::default(),
        RequestIds::AcceptFromCaller,
    );
    let (_, headers, _) = call(admin, with_id()).await;
    assert_eq!(headers[REQUEST_ID_HEADER], "caller-7");
    let data = face(routes(), &HttpConfig::default(), RequestIds::Generate);
    let (_, headers, _) = call(data, with_id()).await;
    assert_ne!(headers[REQUEST_ID_HEADER], "caller-7");
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let token = |value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        bearer_token(&headers).map(str::to_owned)
    };
    assert_eq!(token("Bearer k1").as_deref(), Some("k1"));
    assert_eq!(token("bearer k1").as_deref(), Some("k1"));
    assert_eq!(token("BEARER   k1 ").as_deref(), Some("k1"));
    assert_eq!(token("Basic k1"), None);
    assert_eq!(token("Bearer "), None);
    assert_eq!(token("Bearerk1"), None);
    assert_eq!(bearer_token(&HeaderMap::new()), None);
}
