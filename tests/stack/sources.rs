//! Sources by reference over the real stack: a `ResizeRequested` whose image is a URL (as the
//! api writes for a signed GET) is written straight to `image.requests`; a resizer hosted in
//! this process fetches it from an origin on 127.0.0.1, and its reply and usage record say how
//! that went. With the built-in default the resizer refuses loopback, and the origin never sees
//! a request. Every destination is a loopback address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)] // tests and benches fail by panicking

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use imgpipe::Config;
use imgpipe::host::Service;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use schemas::Codec;
use schemas::events::{ResizeRequested, ResizeResult, UsageRecorded, UsageSource, outcomes};

use crate::support::{self, images};

/// An origin on 127.0.0.1: `/photo.jpg` is a 64×48 JPEG served as `text/plain`; anything else
/// is 404. Counts the requests it gets.
struct Origin {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl Origin {
    async fn start() -> Self {
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        let app = Router::new()
            .route(
                "/photo.jpg",
                get(|| async { ([("content-type", "text/plain")], photo()) }),
            )
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    next.run(request)
                },
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, requests }
    }
}

fn photo() -> Vec<u8> {
    images::encode(&images::rgb(64, 48), image::ImageFormat::Jpeg)
}

/// A resizer of a fresh namespace, with `allow` as its source allow list, plus readers of the
/// replies and the usage records (subscribed before anything is produced).
async fn resizer(
    test: &str,
    allow: &[&str],
) -> (Config, support::Hosted, StreamConsumer, StreamConsumer) {
    let mut config = support::provisioned(test).await;
    config.resizer.workers = 1;
    config.resizer.source_allow_private = allow.iter().map(|net| net.parse().unwrap()).collect();
    let replies: StreamConsumer = config
        .kafka
        .group_consumer_config(
            "source-replies",
            chassis::kafka::ConsumerProfile::AtLeastOnce,
        )
        .create()
        .unwrap();
    replies
        .subscribe(&[&config.kafka.name(schemas::topics::IMAGE_RESULTS)])
        .unwrap();
    let (_, usage) = support::usage_reader(&config, "source-usage");
    let hosted = support::host(config.clone(), &[Service::Resizer]).await;
    (config, hosted, replies, usage)
}

/// A request for `url` (no inline image), 8 px wide, answered on partition 0.
fn by_url(config: &Config, id: &str, url: &str) -> ResizeRequested {
    let mut request = support::resize_request(config, id, "tenant-src", 0);
    request.image = Vec::new();
    request.source_url = Some(url.to_owned());
    request
}

/// The next record of `consumer` keyed `id` (request id for replies, tenant for usage, so usage
/// is matched on its decoded request id), decoded.
async fn next_for<E: schemas::Event>(
    consumer: &StreamConsumer,
    codec: &Codec,
    matches: impl Fn(&E) -> bool,
) -> E {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a record within 30 s")
            .unwrap();
        let event: E = codec.decode(message.payload().unwrap()).await.unwrap();
        if matches(&event) {
            return event;
        }
    }
}

#[tokio::test]
async fn a_source_by_url_is_fetched_resized_and_billed_with_its_host() {
    let origin = Origin::start().await;
    let (config, hosted, replies, usage) =
        resizer("sources_fetched", &["127.0.0.0/8", "::1/128"]).await;
    let codec = Codec::new(&config.registry, &config.kafka.namespace);
    let host = origin.addr.to_string();

    let ok = by_url(&config, "src-ok", &format!("http://{host}/photo.jpg"));
    support::produce_request(&config, &config.registry, &ok, None).await;
    let missing = by_url(&config, "src-missing", &format!("http://{host}/gone.jpg"));
    support::produce_request(&config, &config.registry, &missing, None).await;

    let reply: ResizeResult = next_for(&replies, &codec, |r: &ResizeResult| {
        r.request_id == "src-ok"
    })
    .await;
    let image = reply.image.expect("the resized image");
    assert_eq!((image.width, image.height), (8, 6));
    assert_eq!(
        image::guess_format(&image.bytes).unwrap(),
        image::ImageFormat::Jpeg
    );
    let billed: UsageRecorded =
        next_for(&usage, &codec, |u: &UsageRecorded| u.request_id == "src-ok").await;
    assert_eq!(
        (billed.outcome.as_str(), billed.status),
        (outcomes::RESIZED, 200)
    );
    assert_eq!(billed.source_host.as_deref(), Some(host.as_str()));
    assert_eq!(billed.bytes_in, photo().len() as i64, "the fetched bytes");
    assert_eq!(billed.pixels_in, 64 * 48);
    assert_eq!(billed.source, UsageSource::Resizer);

    let codec = Codec::new(&config.registry, &config.kafka.namespace);
    let reply: ResizeResult = next_for(&replies, &codec, |r: &ResizeResult| {
        r.request_id == "src-missing"
    })
    .await;
    let error = reply.error.expect("an error");
    assert_eq!(
        (error.status, error.code.as_str()),
        (404, "source_not_found")
    );
    assert_eq!(
        error.message,
        format!("The source {host} answered 404: no such image")
    );
    let billed: UsageRecorded = next_for(&usage, &codec, |u: &UsageRecorded| {
        u.request_id == "src-missing"
    })
    .await;
    assert_eq!(
        (billed.outcome.as_str(), billed.status),
        ("source_not_found", 404)
    );
    assert_eq!(billed.source_host.as_deref(), Some(host.as_str()));
    assert_eq!((billed.bytes_in, billed.cpu_time_us), (0, 0));
    assert_eq!(origin.requests.load(Ordering::SeqCst), 2);

    let ops = format!("http://{}", hosted.ops);
    let fetched = support::metric(
        &ops,
        "imgpipe_resizer_source_fetch_seconds_count{outcome=\"ok\"}",
    )
    .await;
    assert_eq!(fetched, Some(1.0));
    let bytes = support::metric(&ops, "imgpipe_resizer_source_bytes_total").await;
    assert_eq!(bytes, Some(photo().len() as f64));
    hosted.stop().await;
}

#[tokio::test]
async fn a_source_on_a_refused_address_is_answered_403_and_billed_as_refused() {
    let origin = Origin::start().await;
    // The built-in default: nothing private, loopback included.
    let (config, hosted, replies, usage) = resizer("sources_refused", &[]).await;
    let codec = Codec::new(&config.registry, &config.kafka.namespace);
    let port = origin.addr.port();
    let cases = [
        (
            "refused-name",
            format!("http://localhost:{port}/photo.jpg"),
            format!("localhost:{port}"),
        ),
        (
            "refused-mapped",
            format!("http://[::ffff:127.0.0.1]:{port}/photo.jpg"),
            format!("[::ffff:7f00:1]:{port}"),
        ),
        (
            "refused-decimal",
            format!("http://2130706433:{port}/photo.jpg"),
            format!("127.0.0.1:{port}"),
        ),
        (
            "refused-octal",
            format!("http://0177.0.0.1:{port}/photo.jpg"),
            format!("127.0.0.1:{port}"),
        ),
    ];
    for (id, url, _) in &cases {
        support::produce_request(&config, &config.registry, &by_url(&config, id, url), None).await;
    }
    for (id, _, host) in &cases {
        let reply: ResizeResult =
            next_for(&replies, &codec, |r: &ResizeResult| r.request_id == *id).await;
        assert_eq!(reply.image, None);
        let error = reply.error.expect("an error");
        assert_eq!(
            (error.status, error.code.as_str()),
            (403, "source_address_refused"),
            "{id}"
        );
        assert_eq!(
            error.message,
            format!(
                "The source host {host} is a loopback address, which this service does not fetch from"
            )
        );
        let billed: UsageRecorded =
            next_for(&usage, &codec, |u: &UsageRecorded| u.request_id == *id).await;
        assert_eq!(
            (billed.outcome.as_str(), billed.status),
            ("source_address_refused", 403)
        );
        assert_eq!(billed.source_host.as_deref(), Some(host.as_str()));
        assert_eq!((billed.bytes_in, billed.bytes_out), (0, 0));
    }
    assert_eq!(
        origin.requests.load(Ordering::SeqCst),
        0,
        "the origin was never asked"
    );
    let refused = support::metric(
        &format!("http://{}", hosted.ops),
        "imgpipe_resizer_source_fetch_seconds_count{outcome=\"source_address_refused\"}",
    )
    .await;
    assert_eq!(refused, Some(cases.len() as f64));
    hosted.stop().await;
}
