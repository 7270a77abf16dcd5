//! The product's core over the real stack: a client's HTTP call is answered with the resized
//! image although the work happens in the `resizers` group behind Kafka. Covers every fit mode
//! and format, every error code the api promises, poison input, overload and the deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)] // tests and benches fail by panicking

use std::net::SocketAddr;
use std::time::Duration;

use image::{GenericImageView, ImageFormat};
use imgpipe::Config;
use imgpipe::host::Service;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::FutureRecord;
use reqwest::StatusCode;

use crate::support::{self, images};

struct Pipeline {
    hosted: support::Hosted,
    config: Config,
    api: SocketAddr,
    identity: SocketAddr,
    key: support::TenantKey,
    http: reqwest::Client,
}

/// Identity, resizer and api of a fresh namespace, in this process, plus a tenant with a key.
async fn pipeline(test: &str, services: &[Service], tweak: impl FnOnce(&mut Config)) -> Pipeline {
    let mut config = support::provisioned(test).await;
    let api = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let identity = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    config.api.listen = api;
    config.identity.listen = identity;
    config.identity.admin_token = support::ADMIN_TOKEN.into();
    config.resizer.workers = 2;
    tweak(&mut config);
    let hosted = support::host(config.clone(), services).await;
    let key = support::create_tenant_key(identity, test, 1000, 1000).await;
    let http = reqwest::Client::new();
    let pipeline = Pipeline {
        hosted,
        config,
        api,
        identity,
        key,
        http,
    };
    // The api authenticates from its replica of identity.changes: wait until it knows the key.
    let api_key = pipeline.key.api_key.clone();
    support::eventually(
        Duration::from_secs(10),
        "the new key to work on the api",
        || {
            let http = pipeline.http.clone();
            let api_key = api_key.clone();
            async move {
                let response = http
                    .post(format!("http://{api}/v1/resize?width=1"))
                    .bearer_auth(api_key)
                    .body(Vec::<u8>::new())
                    .send()
                    .await
                    .ok()?;
                (response.status() != StatusCode::UNAUTHORIZED).then_some(())
            }
        },
    )
    .await;
    pipeline
}

const ALL: &[Service] = &[Service::Identity, Service::Resizer, Service::Api];

impl Pipeline {
    async fn resize(&self, query: &str, body: Vec<u8>) -> reqwest::Response {
        self.resize_as(&self.key.api_key, query, body).await
    }

    async fn resize_as(&self, key: &str, query: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(format!("http://{}/v1/resize?{query}", self.api))
            .bearer_auth(key)
            .body(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("the api answers")
    }

    /// Sends a request that must fail, and returns its problem's code after checking its shape.
    async fn problem(&self, key: &str, query: &str, body: Vec<u8>) -> (StatusCode, String) {
        let response = self.resize_as(key, query, body).await;
        let status = response.status();
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{status} must be a problem document"
        );
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["request_id"], request_id.as_str());
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{json}"
        );
        (status, json["code"].as_str().unwrap().to_owned())
    }
}

async fn expect_image(response: reqwest::Response, format: ImageFormat, size: (u32, u32)) {
    let status = response.status();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let timing = response.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.bytes().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, format.to_mime_type());
    for stage in [
        "accept;dur=",
        "produce;dur=",
        "queue;dur=",
        "decode;dur=",
        "resize;dur=",
        "encode;dur=",
        "handoff;dur=",
        "total;dur=",
    ] {
        assert!(timing.contains(stage), "{timing}");
    }
    assert!(
        !timing.contains("fetch;"),
        "nothing fetched for a POST: {timing}"
    );
    let decoded = images::decode(&body, format);
    assert_eq!(decoded.dimensions(), size, "{content_type}");
}

#[tokio::test]
async fn every_fit_mode_and_format_round_trips() {
    let p = pipeline("pipeline_fits", ALL, |_| {}).await;
    let photo = images::jpeg(800, 600);
    let cases = [
        ("width=300&height=300", ImageFormat::Jpeg, (300, 225)),
        ("width=200", ImageFormat::Jpeg, (200, 150)),
        ("height=60&format=png", ImageFormat::Png, (80, 60)),
        (
            "width=200&height=200&fit=cover&gravity=north&format=webp",
            ImageFormat::WebP,
            (200, 200),
        ),
        (
            "width=200&height=100&fit=contain&format=png",
            ImageFormat::Png,
            (200, 100),
        ),
        (
            "width=120&height=300&fit=fill&quality=60",
            ImageFormat::Jpeg,
            (120, 300),
        ),
        // No enlargement unless asked.
        ("width=1600", ImageFormat::Jpeg, (800, 600)),
        ("width=1600&enlarge=true", ImageFormat::Jpeg, (1600, 1200)),
    ];
    for (query, format, size) in cases {
        expect_image(p.resize(query, photo.clone()).await, format, size).await;
    }

    // Other inputs: alpha PNG flattened to JPEG, GIF → PNG by default, WebP → WebP, 16-bit gray.
    let alpha = images::encode(&images::rgba(64, 32), ImageFormat::Png);
    expect_image(
        p.resize("width=32&format=jpeg", alpha).await,
        ImageFormat::Jpeg,
        (32, 16),
    )
    .await;
    let gif = images::encode(&images::rgba(40, 40), ImageFormat::Gif);
    expect_image(p.resize("width=20", gif).await, ImageFormat::Png, (20, 20)).await;
    let webp = images::encode(&images::rgba(50, 100), ImageFormat::WebP);
    expect_image(
        p.resize("height=50", webp).await,
        ImageFormat::WebP,
        (25, 50),
    )
    .await;
    let gray16 = image::DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(30, 30, |x, _| {
        image::Luma([u16::try_from(x).unwrap() * 2000])
    }));
    let png16 = images::encode(&gray16, ImageFormat::Png);
    expect_image(
        p.resize("width=15", png16).await,
        ImageFormat::Png,
        (15, 15),
    )
    .await;
    p.hosted.stop().await;
}

#[tokio::test]
async fn every_error_is_a_clean_problem_with_a_stable_code() {
    let p = pipeline("pipeline_errors", ALL, |c| {
        c.api.max_body_bytes = 512 * 1024
    })
    .await;
    let key = p.key.api_key.clone();
    let photo = images::jpeg(64, 64);
    let mut truncated = images::jpeg(400, 300);
    truncated.truncate(truncated.len() / 3);

    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        (
            &key,
            "width=0",
            photo.clone(),
            StatusCode::BAD_REQUEST,
            "bad_parameters",
        ),
        (
            &key,
            "width=10&fit=squash",
            photo.clone(),
            StatusCode::BAD_REQUEST,
            "bad_parameters",
        ),
        (
            "imgp_nope_nope",
            "width=10",
            photo.clone(),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            &key,
            "width=10",
            vec![0xFF; 600 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            &key,
            "width=10",
            b"BM\x00\x00 not an image".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            &key,
            "width=10",
            truncated,
            StatusCode::UNPROCESSABLE_ENTITY,
            "truncated_image",
        ),
        (
            &key,
            "width=10",
            // Its APP0 segment claims 8,289 bytes: the file ends inside its headers.
            b"\xFF\xD8\xFF\xE0 a JPEG in name only".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "truncated_image",
        ),
        (
            &key,
            "width=10",
            b"\xFF\xD8\xFF\xE0\x00\x04ab\xFF\xDA\x00\x02 no frame header".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "undecodable_image",
        ),
        (
            &key,
            "width=10",
            images::png_bomb(20_000, 20_000),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_pixels",
        ),
    ];
    for (key, query, body, status, code) in cases {
        assert_eq!(
            p.problem(key, query, body).await,
            (status, code.to_owned()),
            "{query} {code}"
        );
    }

    // 429: a tenant allowed one request per second, burst one.
    let slow = support::create_tenant_key(p.identity, "slow", 1, 1).await;
    let mut codes = Vec::new();
    for _ in 0..40 {
        let response = p.resize_as(&slow.api_key, "width=10", photo.clone()).await;
        let retry_after = response.headers().get("retry-after").cloned();
        codes.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry_after.is_some(), "429 carries Retry-After");
            break;
        }
        // Until the view knows the new key, it is 401; then the first is 200, the next 429.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        codes.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{codes:?}"
    );

    // 403: suspend the tenant; the key stops working once the api's view has the change.
    p.http
        .patch(format!(
            "http://{}/admin/v1/tenants/{}",
            p.identity, p.key.tenant_id
        ))
        .bearer_auth(support::ADMIN_TOKEN)
        .json(&serde_json::json!({"status": "suspended"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    support::eventually(
        Duration::from_secs(5),
        "suspension to reach the api",
        || async {
            let response = p.resize_as(&key, "width=10", photo.clone()).await;
            (response.status() == StatusCode::FORBIDDEN).then_some(())
        },
    )
    .await;
    let (status, code) = p.problem(&key, "width=10", photo.clone()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    p.hosted.stop().await;
}

/// Outputs the service must not make are refused per request, at once, and the resizer goes on:
/// a canvas over the output pixel limit is refused from the plan before any pixel is allocated,
/// and an encoded image bigger than one reply record is a 422 rather than a transaction that can
/// never commit (which used to burn CPU until the client got a 504 and held up other requests).
#[tokio::test]
async fn outputs_over_the_limits_are_refused_at_once_and_the_resizer_moves_on() {
    let p = pipeline("pipeline_output_limits", ALL, |c| {
        c.api.max_body_bytes = 1024 * 1024;
        c.kafka.max_message_bytes = 2 * 1024 * 1024;
    })
    .await;
    let key = p.key.api_key.clone();

    let started = std::time::Instant::now();
    let tiny = images::encode(&images::rgb(1, 1), ImageFormat::Png);
    assert!(tiny.len() < 100, "{}", tiny.len());
    let (status, code) = p
        .problem(
            &key,
            "width=8192&height=8192&fit=fill&enlarge=true",
            tiny.clone(),
        )
        .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "too_many_output_pixels")
    );

    // Full-entropy noise upscaled to a 2000×2000 PNG: megabytes, over a 2 MiB reply record.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let noise = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(500, 500, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let [r, g, b, ..] = state.to_le_bytes();
        image::Rgb([r, g, b])
    }));
    let noisy = images::encode(&noise, ImageFormat::Png);
    let (status, code) = p
        .problem(&key, "width=2000&enlarge=true&format=png", noisy.clone())
        .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "output_too_large")
    );
    // Answered from one attempt, far inside the 10 s deadline that used to expire.
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    // The partition moved on: the same image at a size that fits, and another request, work.
    expect_image(
        p.resize("width=400&format=png", noisy).await,
        ImageFormat::Png,
        (400, 400),
    )
    .await;
    expect_image(p.resize("width=8", tiny).await, ImageFormat::Png, (1, 1)).await;
    p.hosted.stop().await;
}

/// A schema-valid request whose reply cannot be written (its reply partition does not exist)
/// used to make the resizer abort and retry the same transaction forever: every later request
/// got 504. Now the unwritable output is dead-lettered inside the transaction, with its target
/// and the error in headers, and the partition's offset moves past it.
#[tokio::test]
async fn an_unwritable_reply_is_dead_lettered_and_the_partition_moves_on() {
    let p = pipeline("pipeline_unwritable", ALL, |_| {}).await;
    let requests_topic = p.config.kafka.name(schemas::topics::IMAGE_REQUESTS);
    let request = support::resize_request(&p.config, "unwritable-1", &p.key.tenant_id, 999);
    let poison_offset =
        support::produce_request(&p.config, &p.config.registry, &request, Some(0)).await;

    // The DLQ gets the reply, with where it was going and why it could not get there.
    let dlq_topic = p.config.kafka.name(schemas::topics::IMAGE_REQUESTS_DLQ);
    let consumer: StreamConsumer = p
        .config
        .kafka
        .group_consumer_config("dlq-reader", chassis::kafka::ConsumerProfile::AtLeastOnce)
        .create()
        .unwrap();
    consumer.subscribe(&[&dlq_topic]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
        .await
        .expect("the unwritable reply reaches the DLQ")
        .unwrap();
    let headers = message.headers().expect("DLQ records carry headers");
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(message.key(), Some(&b"unwritable-1"[..]));
    assert_eq!(header("error.class").as_deref(), Some("unwritable_output"));
    assert_eq!(header("target.partition").as_deref(), Some("999"));
    assert_eq!(header("source.offset"), Some(poison_offset.to_string()));
    assert!(
        header("error.message").is_some_and(|m| m.to_lowercase().contains("partition")),
        "{:?}",
        header("error.message")
    );

    // The resizers' committed position on that partition moved past it, and work goes on.
    let group: std::sync::Arc<rdkafka::consumer::BaseConsumer> = std::sync::Arc::new(
        p.config
            .kafka
            .group_consumer_config(
                processors::resizer::GROUP,
                chassis::kafka::ConsumerProfile::AtLeastOnce,
            )
            .create()
            .unwrap(),
    );
    let mut partitions = rdkafka::TopicPartitionList::new();
    partitions.add_partition(&requests_topic, 0);
    let committed = support::eventually(Duration::from_secs(10), "the offset to move on", || {
        let (group, partitions) = (group.clone(), partitions.clone());
        let topic = requests_topic.clone();
        async move {
            // A blocking call: off the runtime that also hosts the services under test.
            let committed = tokio::task::spawn_blocking(move || {
                group.committed_offsets(partitions, Duration::from_secs(5))
            })
            .await
            .ok()?
            .ok()?;
            match committed.find_partition(&topic, 0)?.offset() {
                rdkafka::Offset::Offset(next) if next > poison_offset => Some(next),
                _ => None,
            }
        }
    })
    .await;
    assert!(committed > poison_offset);
    for _ in 0..4 {
        expect_image(
            p.resize("width=16", images::jpeg(64, 48)).await,
            ImageFormat::Jpeg,
            (16, 12),
        )
        .await;
    }
    p.hosted.stop().await;
}

#[tokio::test]
async fn overload_is_shed_with_a_fast_503_not_queued() {
    let p = pipeline("pipeline_overload", ALL, |c| {
        c.api.max_concurrent_requests = 1
    })
    .await;
    let photo = images::jpeg(1600, 1200);
    let requests = (0..8).map(|_| p.resize("width=1200", photo.clone()));
    let statuses: Vec<StatusCode> = futures::future::join_all(requests)
        .await
        .iter()
        .map(reqwest::Response::status)
        .collect();
    let shed = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert!(
        shed >= 1,
        "with one slot, concurrent requests are shed: {statuses:?}"
    );
    assert_eq!(
        ok + shed,
        statuses.len(),
        "nothing else happens: {statuses:?}"
    );
    let (status, code) = p.problem(&p.key.api_key, "width=10", vec![]).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_parameters"),
        "still serving"
    );
    p.hosted.stop().await;
}

#[tokio::test]
async fn no_reply_within_the_deadline_is_a_504() {
    // No resizer runs in this namespace: nobody will answer.
    let services = &[Service::Identity, Service::Api];
    let p = pipeline("pipeline_deadline", services, |c| {
        c.api.request_timeout = Duration::from_millis(700);
    })
    .await;
    let started = std::time::Instant::now();
    let (status, code) = p
        .problem(&p.key.api_key, "width=10", images::jpeg(32, 32))
        .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded")
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(650) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // A resizer that comes back later (a backlog after an outage) takes the expired request up,
    // answers deadline_exceeded and records it stamped no later than the deadline: within the
    // request's timeout of the api's record, so the usage rollups pair the two (a record
    // stamped when the resizer ran, seconds or minutes later, was counted as a second request).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resizer = support::host(p.config.clone(), &[Service::Resizer]).await;
    let (codec, consumer) = support::usage_reader(&p.config, "deadline-usage-check");
    let mut records: Vec<schemas::events::UsageRecorded> = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    // The key probe's 400 has a record too: wait for the resizer's.
    while !records
        .iter()
        .any(|r| r.source == schemas::events::UsageSource::Resizer)
    {
        assert!(
            std::time::Instant::now() < until,
            "the api's and the resizer's usage records within 30 s: {records:?}"
        );
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await
        {
            records.push(codec.decode(message.payload().unwrap()).await.unwrap());
        }
    }
    let late = records
        .iter()
        .find(|r| r.source == schemas::events::UsageSource::Resizer)
        .unwrap();
    let api = records
        .iter()
        .find(|r| r.source == schemas::events::UsageSource::Api && r.request_id == late.request_id)
        .unwrap_or_else(|| panic!("no api record of the resizer's request in {records:?}"));
    assert_eq!(api.request_id, late.request_id);
    assert_eq!(
        (api.outcome.as_str(), late.outcome.as_str()),
        ("deadline_exceeded", "deadline_exceeded")
    );
    assert_eq!(
        (late.cpu_time_us, late.pixels_in, late.bytes_out),
        (0, 0, 0),
        "no work on an expired request, none billed"
    );
    assert!(
        late.event_time_ms <= api.event_time_ms + 50
            && api.event_time_ms - late.event_time_ms <= 700,
        "the resizer ran 2 s after the deadline, its record is stamped at the deadline: \
         api {} resizer {}",
        api.event_time_ms,
        late.event_time_ms
    );
    resizer.stop().await;
    p.hosted.stop().await;
}

#[tokio::test]
async fn poison_goes_to_the_dlq_and_the_resizer_moves_on() {
    let p = pipeline("pipeline_poison", ALL, |_| {}).await;
    let requests_topic = p.config.kafka.name(schemas::topics::IMAGE_REQUESTS);
    let producer = p.config.kafka.producer().unwrap();
    for (i, poison) in [&b"not avro at all"[..], b"\x00\x00\x00\x7f\xffgarbage", b""]
        .iter()
        .enumerate()
    {
        producer
            .send(
                FutureRecord::to(&requests_topic)
                    .key(&format!("poison-{i}"))
                    .payload(*poison)
                    .partition(0),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
    // Work queued behind the poison on the same partition still gets done.
    expect_image(
        p.resize("width=16", images::jpeg(64, 48)).await,
        ImageFormat::Jpeg,
        (16, 12),
    )
    .await;

    let dlq_topic = p.config.kafka.name(schemas::topics::IMAGE_REQUESTS_DLQ);
    let consumer: StreamConsumer = p
        .config
        .kafka
        .group_consumer_config("dlq-reader", chassis::kafka::ConsumerProfile::AtLeastOnce)
        .create()
        .unwrap();
    consumer.subscribe(&[&dlq_topic]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("three DLQ records")
            .unwrap();
        let headers = message
            .headers()
            .expect("DLQ records carry the error in headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(
            header("source.topic").as_deref(),
            Some(requests_topic.as_str())
        );
        assert!(header("error.message").is_some_and(|m| !m.is_empty()));
        seen.push(String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned());
    }
    seen.sort();
    assert_eq!(seen, ["poison-0", "poison-1", "poison-2"]);
    p.hosted.stop().await;
}

/// A client's W3C trace travels with its request: the api continues it on the request record,
/// the resizer on the reply; every hop keeps the trace id and adds its own span id.
#[tokio::test]
async fn a_clients_trace_travels_through_kafka_and_back() {
    let p = pipeline("pipeline_trace", ALL, |_| {}).await;
    let client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let reader = |group: &str, topic: &str| {
        let consumer: StreamConsumer = p
            .config
            .kafka
            .group_consumer_config(group, chassis::kafka::ConsumerProfile::AtLeastOnce)
            .create()
            .unwrap();
        consumer.subscribe(&[&p.config.kafka.name(topic)]).unwrap();
        consumer
    };
    let requests = reader("trace-requests", schemas::topics::IMAGE_REQUESTS);
    let replies = reader("trace-replies", schemas::topics::IMAGE_RESULTS);
    let response = p
        .http
        .post(format!("http://{}/v1/resize?width=8", p.api))
        .bearer_auth(&p.key.api_key)
        .header("traceparent", client)
        .body(images::jpeg(64, 48))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // The traceparent of the record with this request id (the key of both topics).
    let traceparent_of = |consumer: StreamConsumer| {
        let request_id = request_id.clone();
        async move {
            loop {
                let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
                    .await
                    .expect("the record arrives")
                    .unwrap();
                if message.key() != Some(request_id.as_bytes()) {
                    continue;
                }
                let headers = message.headers().expect("headers");
                let value = headers
                    .iter()
                    .find(|h| h.key == "traceparent")
                    .and_then(|h| h.value)
                    .expect("a traceparent header");
                return String::from_utf8(value.to_vec()).unwrap();
            }
        }
    };
    let on_request = traceparent_of(requests).await;
    let on_reply = traceparent_of(replies).await;
    for (hop, value) in [("request", &on_request), ("reply", &on_reply)] {
        let fields: Vec<&str> = value.split('-').collect();
        assert_eq!(fields.len(), 4, "{hop}: {value}");
        assert_eq!(fields[1], trace_id, "{hop}: the client's trace continues");
        assert_ne!(value, client, "{hop}: a span of its own");
    }
    assert_ne!(on_request, on_reply, "the resizer is a hop of its own");
    p.hosted.stop().await;
}

#[tokio::test]
async fn replies_do_not_wait_for_the_transaction_and_usage_stays_exactly_once() {
    // A transaction only every minute: an answer that waited for one could not come in time.
    let p = pipeline("pipeline_reply_first", ALL, |c| {
        c.resizer.transaction_max_delay = Duration::from_secs(60);
        c.resizer.transaction_max_records = 10_000;
    })
    .await;
    let started = std::time::Instant::now();
    let response = p.resize("width=16&format=png", images::jpeg(64, 48)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        committed_resizer_records(&p.config, &request_id).await,
        0,
        "the resizer's usage record is not committed yet, though the client has its image"
    );
    // Shutdown drains: the open work is committed, once.
    p.hosted.stop().await;
    assert_eq!(committed_resizer_records(&p.config, &request_id).await, 1);
}

/// How many committed usage records a resizer wrote for `request_id` (read_committed, the whole
/// topic, until it is quiet for 3 s).
async fn committed_resizer_records(config: &Config, request_id: &str) -> usize {
    use schemas::events::{UsageRecorded, UsageSource};
    let codec = schemas::Codec::new(&config.registry, &config.kafka.namespace);
    let consumer: StreamConsumer = config
        .kafka
        .reader_config(Duration::from_millis(100))
        .create()
        .unwrap();
    consumer
        .subscribe(&[&codec.topic::<UsageRecorded>()])
        .unwrap();
    let mut seen = 0;
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await
    {
        let usage: UsageRecorded = codec.decode(message.payload().unwrap()).await.unwrap();
        if usage.request_id == request_id && usage.source == UsageSource::Resizer {
            seen += 1;
        }
    }
    seen
}

/// The api's reply consumer is a static member (`api.instance_id` set). When another member
/// joins with its `group.instance.id`, the broker fences it: a fatal consumer error, which before
/// left the api not ready for good (found by the chaos suite after a 45 s partition of the group
/// coordinator). The api replaces the consumer in-process and answers again by itself.
#[tokio::test]
async fn an_api_whose_reply_consumer_is_fenced_replaces_it_and_answers_again() {
    let p = pipeline("pipeline_reply_fenced", ALL, |c| {
        c.api.instance_id = "fenced-api".into();
    })
    .await;
    let photo = images::jpeg(64, 48);
    let response = p.resize("width=32", photo.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);

    // An intruder with the api's static identity takes its place in the group: the broker
    // fences the api's consumer (fatal). Replacing it, the api fences the intruder in turn,
    // which is how the test knows the api took its place back (without the fix nothing does).
    let mut intruder_config = p.config.kafka.group_consumer_config(
        ingest::api::replies::GROUP,
        chassis::kafka::ConsumerProfile::LatestNoCommit,
    );
    intruder_config.set("group.instance.id", "api-fenced-api");
    let intruder: StreamConsumer = intruder_config.create().unwrap();
    intruder
        .subscribe(&[&p.config.kafka.name(schemas::topics::IMAGE_RESULTS)])
        .unwrap();
    let fenced = support::eventually(
        Duration::from_secs(60),
        "the api's new reply consumer to fence the intruder",
        || {
            let intruder = &intruder;
            async move {
                let _ = tokio::time::timeout(Duration::from_millis(200), intruder.recv()).await;
                intruder.client().fatal_error()
            }
        },
    )
    .await;
    assert_eq!(
        fenced.0,
        rdkafka::types::RDKafkaErrorCode::FencedInstanceId,
        "{fenced:?}"
    );
    drop(intruder);

    // The replacement rejoins with the same identity and the api answers again, by itself.
    support::eventually(Duration::from_secs(60), "the api to answer again", || {
        let (http, api, key, photo) = (p.http.clone(), p.api, p.key.api_key.clone(), photo.clone());
        async move {
            let response = http
                .post(format!("http://{api}/v1/resize?width=32"))
                .bearer_auth(key)
                .body(photo)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .ok()?;
            (response.status() == StatusCode::OK).then_some(())
        }
    })
    .await;
    p.hosted.stop().await;
}
