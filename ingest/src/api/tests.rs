//! Handler tests through `tower::ServiceExt::oneshot`, no socket and no broker: the seams
//! (authenticator, publisher, usage) are fakes, the reply router is the real one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures::future::BoxFuture;
use schemas::events::{
    ImageFormat, ResizeError, ResizeRequested, ResizeResult, ResizedImage, StageTimings,
    UsageRecorded,
};
use tower::ServiceExt;

use super::config::ApiConfig;
use super::metrics::ApiMetrics;
use super::publisher::{PublishError, RequestPublisher};
use super::replies::ReplyRouter;
use super::routes::{AppState, app};
use crate::auth::{AuthError, Authenticator, Principal};

const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F'];

struct FakeAuth;

impl Authenticator for FakeAuth {
    fn authenticate(&self, api_key: &str) -> Result<Principal, AuthError> {
        match api_key {
            "good" => Ok(Principal {
                tenant_id: "tenant-a".into(),
                key_id: "key-a".into(),
            }),
            "suspended" => Err(AuthError::Forbidden),
            "limited" => Err(AuthError::RateLimited {
                retry_after: Duration::from_millis(1500),
            }),
            "stale" => Err(AuthError::Unavailable),
            _ => Err(AuthError::InvalidKey),
        }
    }

    /// Every key but "wrong" and "stale" names an existing key of its own tenant.
    fn claimed(&self, api_key: &str) -> Option<Principal> {
        (!matches!(api_key, "wrong" | "stale")).then(|| Principal {
            tenant_id: format!("tenant-of-{api_key}").into(),
            key_id: format!("key-{api_key}").into(),
        })
    }
}

/// How the fake resizer answers a published request.
#[derive(Clone, Copy)]
enum Answer {
    Image,
    Error,
    Silence,
    KafkaDown,
    Refused,
}

struct FakePublisher {
    router: Arc<ReplyRouter>,
    answer: Answer,
    published: Mutex<Vec<ResizeRequested>>,
    usage: Mutex<Vec<UsageRecorded>>,
}

impl RequestPublisher for FakePublisher {
    fn publish<'a>(
        &'a self,
        request: &'a ResizeRequested,
        _traceparent: &'a str,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            self.published.lock().unwrap().push(request.clone());
            let mut result = ResizeResult {
                request_id: request.request_id.clone(),
                tenant_id: request.tenant_id.clone(),
                completed_at_ms: 0,
                image: None,
                error: None,
                timings: StageTimings {
                    queue_us: 1500,
                    decode_us: 2000,
                    resize_us: 3000,
                    encode_us: 4000,
                    fetch_us: 0,
                },
                source_validator: None,
            };
            match self.answer {
                Answer::Image => {
                    result.image = Some(ResizedImage {
                        format: ImageFormat::Webp,
                        width: 1,
                        height: 1,
                        bytes: b"RIFF-fake-webp".to_vec(),
                    });
                }
                Answer::Error => {
                    result.error = Some(ResizeError {
                        status: 422,
                        code: "undecodable_image".into(),
                        message: "could not decode".into(),
                    });
                }
                Answer::Silence => return Ok(()),
                Answer::KafkaDown => return Err(PublishError::Unavailable("down".into())),
                Answer::Refused => return Err(PublishError::Rejected("no such partition".into())),
            }
            let router = self.router.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                router.deliver(result);
            });
            Ok(())
        })
    }

    fn record_usage<'a>(&'a self, usage: &'a UsageRecorded) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.usage.lock().unwrap().push(usage.clone()) })
    }
}

struct Harness {
    app: axum::Router,
    publisher: Arc<FakePublisher>,
}

fn harness(answer: Answer, owned: Vec<i32>) -> Harness {
    let router = ReplyRouter::new("ns.image.results".into(), 16);
    router.set_owned(owned);
    let publisher = Arc::new(FakePublisher {
        router: router.clone(),
        answer,
        published: Mutex::default(),
        usage: Mutex::default(),
    });
    let config = ApiConfig {
        max_body_bytes: 1024,
        request_timeout: Duration::from_millis(300),
        ..ApiConfig::default()
    };
    let state = AppState {
        auth: Arc::new(FakeAuth),
        publisher: publisher.clone(),
        replies: router,
        usage: None,
        metrics: ApiMetrics::register(&prometheus::Registry::new()).unwrap(),
        config: Arc::new(config),
        sources: chassis::source::Fetcher::new(&chassis::source::FetchSettings {
            allow_private: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            max_redirects: 0,
        })
        .unwrap(),
        signing: None,
    };
    Harness {
        app: app(state, &chassis::http::HttpConfig::default()),
        publisher,
    }
}

fn resize_request(query: &str, key: Option<&str>, body: Vec<u8>) -> Request<Body> {
    let mut builder = Request::post(format!("/v1/resize?{query}"));
    if let Some(key) = key {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    builder.body(Body::from(body)).unwrap()
}

async fn call(h: &Harness, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = h.app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    (status, headers, body)
}

async fn problem_of(
    h: &Harness,
    request: Request<Body>,
) -> (StatusCode, serde_json::Value, axum::http::HeaderMap) {
    let (status, headers, body) = call(h, request).await;
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "application/problem+json",
        "{status}"
    );
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        json["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{json}"
    );
    assert!(
        json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{json}"
    );
    (status, json, headers)
}

#[tokio::test]
async fn a_resized_image_comes_back_with_timing_and_request_id() {
    let h = harness(Answer::Image, vec![3]);
    let (status, headers, body) = call(
        &h,
        resize_request("width=100&format=webp", Some("good"), JPEG.to_vec()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "image/webp");
    assert_eq!(body, b"RIFF-fake-webp");
    let timing = headers["server-timing"].to_str().unwrap();
    for stage in [
        "accept;dur=",
        "produce;dur=",
        "queue;dur=1.500",
        "decode;dur=2.000",
        "resize;dur=3.000",
        "encode;dur=4.000",
        "handoff;dur=",
        "total;dur=",
    ] {
        assert!(timing.contains(stage), "{timing}");
    }
    let published = h.publisher.published.lock().unwrap();
    let request = &published[0];
    assert_eq!(
        headers["x-request-id"].to_str().unwrap(),
        request.request_id
    );
    assert_eq!(
        (request.tenant_id.as_str(), request.key_id.as_str()),
        ("tenant-a", "key-a")
    );
    assert_eq!(
        request.reply_partition, 3,
        "the reply goes to a partition this instance owns"
    );
    assert_eq!(request.reply_topic, "ns.image.results");
    assert_eq!(request.image, JPEG);
    assert!(
        h.publisher.usage.lock().unwrap().is_empty(),
        "resizers record successful requests"
    );
}

#[tokio::test]
async fn a_resizer_error_becomes_its_problem() {
    let h = harness(Answer::Error, vec![0]);
    let (status, json, _) =
        problem_of(&h, resize_request("width=10", Some("good"), JPEG.to_vec())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json["code"], "undecodable_image");
}

#[tokio::test]
async fn authentication_failures_map_to_401_403_429_503() {
    let h = harness(Answer::Image, vec![0]);
    for (key, status, code) in [
        (None, StatusCode::UNAUTHORIZED, "unauthenticated"),
        (Some("wrong"), StatusCode::UNAUTHORIZED, "unauthenticated"),
        (Some("suspended"), StatusCode::FORBIDDEN, "forbidden"),
        (
            Some("limited"),
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
        ),
        (
            Some("stale"),
            StatusCode::SERVICE_UNAVAILABLE,
            "auth_unavailable",
        ),
    ] {
        let (got, json, headers) =
            problem_of(&h, resize_request("width=10", key, JPEG.to_vec())).await;
        assert_eq!(
            (got, json["code"].as_str().unwrap()),
            (status, code),
            "{key:?}"
        );
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(headers[header::RETRY_AFTER], "2", "1.5 s rounds up");
        }
    }
    assert!(h.publisher.published.lock().unwrap().is_empty());
    // Refusals of keys that exist are recorded against them (a guessed secret, a suspended
    // tenant, a flood over the limit); unknown keys and an unavailable view are not.
    let recorded: Vec<(String, String, String, i32, i64)> = h
        .publisher
        .usage
        .lock()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u.tenant_id.clone(),
                u.key_id.clone(),
                u.outcome.clone(),
                u.status,
                u.bytes_in,
            )
        })
        .collect();
    assert_eq!(
        recorded,
        vec![
            (
                "tenant-of-suspended".into(),
                "key-suspended".into(),
                "forbidden".into(),
                403,
                0
            ),
            (
                "tenant-of-limited".into(),
                "key-limited".into(),
                "rate_limited".into(),
                429,
                0
            ),
        ]
    );
}

#[tokio::test]
async fn a_wrong_secret_for_an_existing_key_is_recorded_against_that_key() {
    let h = harness(Answer::Image, vec![0]);
    let (status, json, _) = problem_of(
        &h,
        resize_request("width=10", Some("guessed"), JPEG.to_vec()),
    )
    .await;
    assert_eq!(
        (status, json["code"].as_str().unwrap()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    let usage = h.publisher.usage.lock().unwrap().clone();
    assert_eq!(usage.len(), 1);
    assert_eq!(
        (usage[0].tenant_id.as_str(), usage[0].key_id.as_str()),
        ("tenant-of-guessed", "key-guessed")
    );
    assert_eq!(
        (usage[0].outcome.as_str(), usage[0].status),
        ("unauthenticated", 401)
    );
    assert_eq!(usage[0].request_id, json["request_id"].as_str().unwrap());
}

#[tokio::test]
async fn bad_input_is_refused_before_producing_and_recorded_as_usage() {
    let h = harness(Answer::Image, vec![0]);
    let cases = [
        (
            resize_request("width=0", Some("good"), JPEG.to_vec()),
            StatusCode::BAD_REQUEST,
            "bad_parameters",
        ),
        (
            resize_request("widht=10", Some("good"), JPEG.to_vec()),
            StatusCode::BAD_REQUEST,
            "bad_parameters",
        ),
        (
            resize_request("width=10", Some("good"), Vec::new()),
            StatusCode::BAD_REQUEST,
            "bad_parameters",
        ),
        (
            resize_request("width=10", Some("good"), vec![0xFF; 2048]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            resize_request("width=10", Some("good"), b"BM not an image".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ];
    let count = cases.len();
    for (request, status, code) in cases {
        let (got, json, _) = problem_of(&h, request).await;
        assert_eq!((got, json["code"].as_str().unwrap()), (status, code));
    }
    assert!(
        h.publisher.published.lock().unwrap().is_empty(),
        "nothing reaches Kafka"
    );
    let usage = h.publisher.usage.lock().unwrap();
    assert_eq!(usage.len(), count, "each refusal is billed to the tenant");
    assert!(
        usage
            .iter()
            .all(|u| u.tenant_id == "tenant-a" && u.status >= 400)
    );
    assert_eq!(usage[3].outcome, "payload_too_large");
}

#[tokio::test]
async fn heic_and_avif_bodies_are_produced_for_the_resizers() {
    let h = harness(Answer::Image, vec![0]);
    let ftyp = |major: &[u8; 4], compatible: &[u8; 4]| {
        let mut b = 24u32.to_be_bytes().to_vec();
        b.extend_from_slice(b"ftyp");
        b.extend_from_slice(major);
        b.extend_from_slice(b"\0\0\0\0mif1");
        b.extend_from_slice(compatible);
        b.extend_from_slice(b"\0\0\0\0meta");
        b
    };
    for body in [ftyp(b"heic", b"heic"), ftyp(b"avif", b"miaf")] {
        let (status, _, _) = call(
            &h,
            resize_request("width=100&format=webp", Some("good"), body.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let published = h.publisher.published.lock().unwrap();
        assert_eq!(published.last().unwrap().image, body);
    }
    // HEIC is read, never written.
    for query in ["width=100&format=heic", "width=100&format=heif"] {
        let (status, json, _) =
            problem_of(&h, resize_request(query, Some("good"), JPEG.to_vec())).await;
        assert_eq!(
            (status, json["code"].as_str().unwrap()),
            (StatusCode::BAD_REQUEST, "bad_parameters")
        );
        let message = json["message"].as_str().unwrap();
        assert!(
            message.contains("reads HEIC but does not write it"),
            "{json}"
        );
    }
    assert_eq!(h.publisher.published.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_well_known_unsupported_format_is_a_415_that_names_it() {
    let h = harness(Answer::Image, vec![0]);
    let bmp = b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0".to_vec();
    let tiff = b"II*\0\x08\0\0\0".to_vec();
    let jxl = b"\xff\x0a\xfa\x7f".to_vec();
    for (body, name) in [(bmp, "BMP"), (tiff, "TIFF"), (jxl, "JPEG XL")] {
        let (status, json, _) =
            problem_of(&h, resize_request("width=10", Some("good"), body)).await;
        assert_eq!(
            (status, json["code"].as_str().unwrap()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        );
        assert!(json["message"].as_str().unwrap().contains(name), "{json}");
    }
    assert!(h.publisher.published.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_413() {
    let h = harness(Answer::Image, vec![0]);
    // No Content-Length: the limit is enforced while reading.
    let chunks = futures::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![0xFFu8; 256])));
    let request = Request::post("/v1/resize?width=10")
        .header(header::AUTHORIZATION, "Bearer good")
        .body(Body::from_stream(chunks))
        .unwrap();
    let (status, json, _) = problem_of(&h, request).await;
    assert_eq!(
        (status, json["code"].as_str().unwrap()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
}

#[tokio::test]
async fn a_record_kafka_refuses_for_good_is_a_500_not_a_retry() {
    let h = harness(Answer::Refused, vec![0]);
    let (status, json, headers) =
        problem_of(&h, resize_request("width=10", Some("good"), JPEG.to_vec())).await;
    assert_eq!(
        (status, json["code"].as_str().unwrap()),
        (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
    );
    assert!(
        !headers.contains_key(header::RETRY_AFTER),
        "not worth retrying"
    );
}

#[tokio::test]
async fn kafka_down_is_a_fast_503_and_no_reply_is_a_504() {
    let h = harness(Answer::KafkaDown, vec![0]);
    let started = std::time::Instant::now();
    let (status, json, headers) =
        problem_of(&h, resize_request("width=10", Some("good"), JPEG.to_vec())).await;
    assert_eq!(
        (status, json["code"].as_str().unwrap()),
        (StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable")
    );
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "not after a timeout"
    );

    let h = harness(Answer::Silence, vec![0]);
    let (status, json, _) =
        problem_of(&h, resize_request("width=10", Some("good"), JPEG.to_vec())).await;
    assert_eq!(
        (status, json["code"].as_str().unwrap()),
        (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded")
    );
}

#[tokio::test]
async fn without_reply_partitions_the_api_is_not_ready() {
    let h = harness(Answer::Image, Vec::new());
    let (status, json, _) =
        problem_of(&h, resize_request("width=10", Some("good"), JPEG.to_vec())).await;
    assert_eq!(
        (status, json["code"].as_str().unwrap()),
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    );
}

#[tokio::test]
async fn the_openapi_document_is_served() {
    let h = harness(Answer::Image, vec![0]);
    let (status, _, body) = call(
        &h,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/resize"]["post"]["responses"]["413"].is_object());
}
