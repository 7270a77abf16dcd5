//! Signed GETs as browsers and CDNs cache them, over the real stack: `Cache-Control`, an `ETag`
//! from the origin's validator, `Vary: Accept` exactly when the format came from `Accept`, and a
//! client's `If-None-Match` answered 304 after the origin's own 304, with no request produced
//! (so no resizer sees it) and billed `not_modified`; an origin that changed gives a new `ETag`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode as AxumStatus, header};
use reqwest::StatusCode;

use crate::signed_get::{Pipeline, problem_code, request_record_sizes};
use crate::support;

/// What Chrome sends for an `<img>`.
const BROWSER_ACCEPT: &str = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8";

/// An origin on loopback that serves one photo at `/img/photo.jpg` with a strong `ETag`, answers
/// a matching `If-None-Match` with 304, and logs each request as `full` or `conditional`.
struct ValidatingOrigin {
    addr: SocketAddr,
    state: Arc<Mutex<OriginState>>,
}

struct OriginState {
    photo: Vec<u8>,
    etag: String,
    log: Vec<&'static str>,
}

impl ValidatingOrigin {
    async fn start(photo: Vec<u8>) -> Self {
        let state = Arc::new(Mutex::new(OriginState {
            photo,
            etag: "\"photo-v1\"".into(),
            log: Vec::new(),
        }));
        let shared = state.clone();
        let app = axum::Router::new()
            .route(
                "/img/photo.jpg",
                axum::routing::get(move |headers: HeaderMap| {
                    let shared = shared.clone();
                    async move {
                        let mut state = shared.lock().unwrap();
                        let condition = headers
                            .get(header::IF_NONE_MATCH)
                            .map(|v| v.to_str().unwrap().to_owned());
                        let etag = state.etag.clone();
                        if let Some(condition) = condition {
                            state.log.push("conditional");
                            if condition == etag {
                                return (
                                    AxumStatus::NOT_MODIFIED,
                                    [(header::ETAG, etag)],
                                    Vec::new(),
                                );
                            }
                        } else {
                            state.log.push("full");
                        }
                        (AxumStatus::OK, [(header::ETAG, etag)], state.photo.clone())
                    }
                }),
            )
            .route(
                "/img/missing.jpg",
                axum::routing::get(|| async { AxumStatus::NOT_FOUND }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}/img/{name}", self.addr)
    }

    fn log(&self) -> Vec<&'static str> {
        self.state.lock().unwrap().log.clone()
    }

    /// The origin's image changes: new bytes, new validator.
    fn replace(&self, photo: Vec<u8>, etag: &str) {
        let mut state = self.state.lock().unwrap();
        state.photo = photo;
        state.etag = etag.into();
    }
}

/// One answer as a client sees it.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn get(url: &str, accept: &str, if_none_match: Option<&str>) -> Answer {
    let mut request = reqwest::Client::new().get(url).header("accept", accept);
    if let Some(tag) = if_none_match {
        request = request.header("if-none-match", tag);
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

#[tokio::test]
async fn a_revalidation_the_origin_confirms_is_a_304_that_never_reaches_a_resizer() {
    let pipeline = Pipeline::start("web_caching_304").await;
    let origin = ValidatingOrigin::start(support::images::jpeg(640, 480)).await;
    let (tenant, key) = pipeline
        .tenant_with_signing_key(&format!("http://{}/img/", origin.addr))
        .await;
    pipeline.wait_for_signing_key(&key).await;
    // No format in the URL: negotiated from Accept.
    let url = pipeline.signed_url(
        &key,
        &format!("/rs:fill:64:48/plain/{}", origin.url("photo.jpg")),
    );

    let first = get(&url, "image/webp,image/*,*/*;q=0.8", None).await;
    assert_eq!(
        first.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.header("content-type"), Some("image/webp"));
    assert_eq!(first.header("vary"), Some("Accept"));
    assert_eq!(first.header("cache-control"), Some("public, max-age=86400"));
    let etag = first
        .header("etag")
        .expect("an ETag from the origin's")
        .to_owned();
    assert!(
        !etag.starts_with("W/"),
        "the origin's tag is strong: {etag}"
    );
    assert_eq!(origin.log(), ["full"]);

    // The browser revalidates: the api asks the origin with the origin's own tag, hears 304,
    // and answers 304 itself: no body, the same tag and caching headers, nothing produced.
    let again = get(&url, "image/webp,image/*,*/*;q=0.8", Some(&etag)).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert_eq!(again.header("vary"), Some("Accept"));
    assert_eq!(again.header("cache-control"), Some("public, max-age=86400"));
    assert_eq!(origin.log(), ["full", "conditional"]);

    // Another Accept class is another representation: the tag does not revalidate it.
    let jpeg = get(&url, "image/*", Some(&etag)).await;
    assert_eq!(jpeg.status, StatusCode::OK);
    assert_eq!(jpeg.header("content-type"), Some("image/jpeg"));
    assert_ne!(jpeg.header("etag"), Some(etag.as_str()));
    assert_eq!(origin.log(), ["full", "conditional", "full"]);

    // The origin's image changes: the old tag is not confirmed, the image is made again and its
    // tag is new.
    origin.replace(support::images::jpeg(320, 320), "\"photo-v2\"");
    let changed = get(&url, "image/webp,image/*,*/*;q=0.8", Some(&etag)).await;
    assert_eq!(changed.status, StatusCode::OK);
    let new_etag = changed.header("etag").unwrap().to_owned();
    assert_ne!(new_etag, etag);
    assert_eq!(
        origin.log(),
        ["full", "conditional", "full", "conditional", "full"]
    );
    let again = get(&url, "image/webp,image/*,*/*;q=0.8", Some(&new_etag)).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);

    // Three requests were produced (the 304s were not): no resizer ever saw a revalidation.
    assert_eq!(request_record_sizes(&pipeline.config).await.len(), 3);
    // Billed: two 304s as `not_modified`, three images, and the probe that waited for the key.
    let rows = pipeline.usage(&tenant, 6).await;
    let count = |outcome: &str, status: &str| {
        rows.iter()
            .filter(|r| r.0 == outcome && r.1 == status)
            .count()
    };
    assert_eq!(count("not_modified", "304"), 2, "{rows:?}");
    assert_eq!(count("ok", "200"), 3, "{rows:?}");
    pipeline.hosted.stop().await;
}

#[tokio::test]
async fn vary_accept_is_sent_exactly_when_the_format_came_from_accept() {
    let pipeline = Pipeline::start("web_caching_vary").await;
    let origin = ValidatingOrigin::start(support::images::jpeg(640, 480)).await;
    let (_, key) = pipeline
        .tenant_with_signing_key(&format!("http://{}/img/", origin.addr))
        .await;
    pipeline.wait_for_signing_key(&key).await;
    let source = origin.url("photo.jpg");

    // Named in the URL: the same answer whatever Accept says, so no Vary.
    let named = pipeline.signed_url(&key, &format!("/rs:fit:64:64/plain/{source}@png"));
    let answer = get(&named, BROWSER_ACCEPT, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("image/png"));
    assert_eq!(answer.header("vary"), None);

    // Negotiated: a small output within AVIF's encode budget is AVIF for a browser that
    // accepts it; a large one is WebP (AVIF would take longer than the budget); a client that
    // accepts neither gets the source's format. Each says Vary: Accept.
    let small = pipeline.signed_url(&key, &format!("/rs:fit:64:64/plain/{source}"));
    let large = pipeline.signed_url(&key, &format!("/rs:fit:640:480/plain/{source}"));
    for (url, accept, expected) in [
        (&small, BROWSER_ACCEPT, "image/avif"),
        (&large, BROWSER_ACCEPT, "image/webp"),
        (&small, "image/*,*/*;q=0.8", "image/jpeg"),
    ] {
        let answer = get(url, accept, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{url} {accept}");
        assert_eq!(
            answer.header("content-type"),
            Some(expected),
            "{url} {accept}"
        );
        assert_eq!(answer.header("vary"), Some("Accept"), "{url} {accept}");
    }
    pipeline.hosted.stop().await;
}

#[tokio::test]
async fn errors_are_cached_briefly_or_not_at_all() {
    let pipeline = Pipeline::start("web_caching_errors").await;
    let origin = ValidatingOrigin::start(support::images::jpeg(64, 64)).await;
    let (_, key) = pipeline
        .tenant_with_signing_key(&format!("http://{}/img/", origin.addr))
        .await;
    pipeline.wait_for_signing_key(&key).await;

    let missing = pipeline.signed_url(
        &key,
        &format!("/rs:fit:32:32/plain/{}", origin.url("missing.jpg")),
    );
    let answer = get(&missing, BROWSER_ACCEPT, None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(problem_code(&answer.body), "source_not_found");
    assert_eq!(answer.header("cache-control"), Some("public, max-age=10"));
    assert_eq!(answer.header("etag"), None);

    let tampered = pipeline
        .signed_url(
            &key,
            &format!("/rs:fit:32:32/plain/{}", origin.url("photo.jpg")),
        )
        .replace("rs:fit:32:32", "rs:fit:33:33");
    let answer = get(&tampered, BROWSER_ACCEPT, None).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.header("cache-control"), Some("public, max-age=10"));
    pipeline.hosted.stop().await;
}
