//! Signed GETs over the real stack: a URL in imgproxy's format, signed with a tenant's signing
//! key from the identity admin API, is answered with the image a resizer fetched from an origin
//! on loopback, billed to the key's tenant with the source's host as a dimension; the request
//! event carries the URL, not the bytes. Tampered, expired, revoked and unlisted-source URLs are
//! 403 with nothing fetched and a usage record each. URLs made by imgproxy's own Node URL builder
//! (`@imgproxy/imgproxy-node`, from npm) are accepted unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use imgpipe::Config;
use imgpipe::host::Service;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support;

/// A URL path whose option (one imgproxy lacks) is refused once the signature checked out: 400
/// while the key is valid, 403 while the view does not know it or after its revocation; never
/// fetched.
pub(crate) const PROBE: &str = "/imgpipe_no_such_option:1/plain/http://127.0.0.1:9/never.jpg";

/// A development signing secret (base64 of 40 bytes); tests only.
const SIGNING_SECRET: &str = "dGVzdC1zaWduaW5nLXNlY3JldC1vZi10aGUtc3RhY2stdGVzdHMtMDAwMA==";

/// An origin on loopback serving `photo` at `/img/photo.jpg` as `text/plain` (the resizer must
/// sniff, never trust the type), counting the requests it gets.
pub(crate) struct Origin {
    pub(crate) addr: SocketAddr,
    pub(crate) hits: Arc<AtomicUsize>,
}

impl Origin {
    pub(crate) async fn start(photo: Vec<u8>) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = axum::Router::new().route(
            "/img/photo.jpg",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let photo = photo.clone();
                async move { ([("content-type", "text/plain")], photo) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, hits }
    }

    pub(crate) fn photo_url(&self) -> String {
        format!("http://{}/img/photo.jpg", self.addr)
    }
}

/// The whole pipeline in this process, with signing configured and loopback sources allowed.
pub(crate) struct Pipeline {
    pub(crate) config: Config,
    pub(crate) api: SocketAddr,
    pub(crate) identity: SocketAddr,
    pub(crate) hosted: support::Hosted,
}

impl Pipeline {
    pub(crate) async fn start(test: &str) -> Self {
        Self::start_with(test, |_| {}).await
    }

    /// [`Self::start`], with `adjust` applied to the configuration before the services start.
    pub(crate) async fn start_with(test: &str, adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = support::provisioned(test).await;
        let api = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
        let identity = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
        config.api.listen = api;
        config.identity.listen = identity;
        config.identity.admin_token = support::ADMIN_TOKEN.into();
        config.signing.secret = SIGNING_SECRET.into();
        config.resizer.source_allow_private = vec!["127.0.0.0/8".parse().unwrap()];
        config.aggregator.batch_max_age = Duration::from_millis(200);
        adjust(&mut config);
        let hosted = support::host(config.clone(), &Service::ALL).await;
        Self {
            config,
            api,
            identity,
            hosted,
        }
    }

    pub(crate) async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let mut request = reqwest::Client::new()
            .request(method, format!("http://{}{path}", self.identity))
            .bearer_auth(support::ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A tenant allowed to fetch from `allowed`, and a signing key of it.
    pub(crate) async fn tenant_with_signing_key(&self, allowed: &str) -> (String, SigningKey) {
        let tenant = self
            .admin(
                reqwest::Method::POST,
                "/admin/v1/tenants",
                Some(
                    json!({"name": "web", "rate_limit_per_second": 1000, "burst": 1000,
                            "allowed_sources": [allowed]}),
                ),
            )
            .await;
        let tenant_id = tenant["id"].as_str().unwrap().to_owned();
        let key = self
            .admin(
                reqwest::Method::POST,
                &format!("/admin/v1/tenants/{tenant_id}/signing-keys"),
                None,
            )
            .await;
        let key = SigningKey {
            key_id: key["key_id"].as_str().unwrap().to_owned(),
            key: hex::decode(key["key"].as_str().unwrap()).unwrap(),
            salt: hex::decode(key["salt"].as_str().unwrap()).unwrap(),
        };
        (tenant_id, key)
    }

    /// The URL of `path` (imgproxy's, after the signature) signed with `key`.
    pub(crate) fn signed_url(&self, key: &SigningKey, path: &str) -> String {
        let signature = ingest::api::imgproxy::sign(&key.key, &key.salt, path);
        format!(
            "http://{}/v1/img/{}/{signature}{path}",
            self.api, key.key_id
        )
    }

    /// Waits until the api's view knows `key` (its first signed GET is no longer refused as an
    /// unknown key), using a URL whose options are refused, so that nothing is fetched.
    pub(crate) async fn wait_for_signing_key(&self, key: &SigningKey) {
        let probe = self.signed_url(key, PROBE);
        let http = reqwest::Client::new();
        support::eventually(
            Duration::from_secs(20),
            "the signing key to reach the api",
            || async {
                let status = http.get(&probe).send().await.ok()?.status();
                (status == StatusCode::BAD_REQUEST).then_some(())
            },
        )
        .await;
    }

    /// `(outcome, status, source_host, bytes_in)` of `tenant`'s requests so far.
    pub(crate) async fn usage_rows(&self, tenant: &str) -> Vec<(String, String, String, String)> {
        let db = &self.config.clickhouse.database;
        let sql = format!(
            "SELECT outcome, toString(status), source_host, toString(bytes_in) \
             FROM {db}.usage_by_request WHERE tenant_id = '{tenant}' \
             ORDER BY outcome, status FORMAT TSV"
        );
        support::clickhouse(&self.config, &sql)
            .await
            .lines()
            .map(|line| {
                let c: Vec<&str> = line.split('\t').collect();
                (c[0].into(), c[1].into(), c[2].into(), c[3].into())
            })
            .collect()
    }

    /// [`Self::usage_rows`], once there are `n`.
    pub(crate) async fn usage(
        &self,
        tenant: &str,
        n: usize,
    ) -> Vec<(String, String, String, String)> {
        support::eventually(
            Duration::from_secs(30),
            "the tenant's usage in ClickHouse",
            || async {
                let rows = self.usage_rows(tenant).await;
                (rows.len() == n).then_some(rows)
            },
        )
        .await
    }
}

pub(crate) struct SigningKey {
    pub(crate) key_id: String,
    pub(crate) key: Vec<u8>,
    pub(crate) salt: Vec<u8>,
}

async fn get(url: &str) -> (StatusCode, String, Vec<u8>) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

pub(crate) fn problem_code(body: &[u8]) -> String {
    let problem: Value = serde_json::from_slice(body).unwrap();
    problem["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_signed_get_is_fetched_by_a_resizer_and_billed_with_the_source_host() {
    let pipeline = Pipeline::start("signed_get_ok").await;
    let photo = support::images::jpeg(640, 480);
    let origin = Origin::start(photo.clone()).await;
    let (tenant, key) = pipeline
        .tenant_with_signing_key(&format!("http://{}/img/", origin.addr))
        .await;
    pipeline.wait_for_signing_key(&key).await;

    let url = pipeline.signed_url(
        &key,
        &format!("/rs:fill:64:48/q:70/plain/{}@webp", origin.photo_url()),
    );
    let response = reqwest::get(&url).await.unwrap();
    let (status, content_type) = (
        response.status(),
        response.headers()["content-type"].clone(),
    );
    let timing = response.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.bytes().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, "image/webp");
    // The origin's download is a stage of its own, between the produce and the pool's queue.
    let stages: Vec<&str> = timing
        .split(", ")
        .map(|entry| entry.split(';').next().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "accept", "produce", "fetch", "queue", "decode", "resize", "encode", "handoff", "total"
        ],
        "{timing}"
    );
    let image = support::images::decode(&body, image::ImageFormat::WebP);
    assert_eq!((image.width(), image.height()), (64, 48));
    assert_eq!(origin.hits.load(Ordering::SeqCst), 1);

    // dpr multiplies the box; base64 sources work as plain ones do.
    let encoded = base64_url(&origin.photo_url());
    let url = pipeline.signed_url(&key, &format!("/rs:fit:100:100/dpr:2/{encoded}.png"));
    let (status, content_type, body) = get(&url).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, "image/png");
    let image = support::images::decode(&body, image::ImageFormat::Png);
    assert_eq!((image.width(), image.height()), (200, 150));

    // Billed to the signing key's tenant: two requests with the origin's host; the bytes in are
    // what the resizer fetched (the api's record has none: it never saw them).
    let rows = pipeline.usage(&tenant, 3).await;
    let host = origin.addr.to_string();
    let photo_bytes = photo.len().to_string();
    let ok: Vec<_> = rows.iter().filter(|r| r.0 == "ok").collect();
    assert_eq!(ok.len(), 2, "{rows:?}");
    for row in ok {
        assert_eq!(
            (row.2.as_str(), row.3.as_str()),
            (host.as_str(), &*photo_bytes)
        );
    }
    // The third is the probe that waited for the key: refused, never fetched.
    assert!(
        rows.iter()
            .any(|r| r.0 == "unsupported_option" && r.1 == "400"),
        "{rows:?}"
    );

    // The request events carried the URL, not the image.
    let sizes = request_record_sizes(&pipeline.config).await;
    assert_eq!(sizes.len(), 2, "{sizes:?}");
    assert!(sizes.iter().all(|&size| size < 2048), "{sizes:?}");
    pipeline.hosted.stop().await;
}

#[tokio::test]
async fn tampered_expired_revoked_and_unlisted_urls_are_refused_without_fetching() {
    let pipeline = Pipeline::start("signed_get_refused").await;
    let origin = Origin::start(support::images::jpeg(64, 64)).await;
    let (tenant, key) = pipeline
        .tenant_with_signing_key(&format!("http://{}/img/", origin.addr))
        .await;
    pipeline.wait_for_signing_key(&key).await;
    let path = format!("/rs:fit:32:32/plain/{}", origin.photo_url());

    // Tampered: the signature of one path on another.
    let signed = pipeline.signed_url(&key, &path);
    let tampered = signed.replace("rs:fit:32:32", "rs:fit:4000:4000");
    let (status, _, body) = get(&tampered).await;
    assert_eq!(
        (status, problem_code(&body).as_str()),
        (StatusCode::FORBIDDEN, "invalid_signature")
    );
    // Signed with someone else's key.
    let forged = SigningKey {
        key_id: key.key_id.clone(),
        key: vec![7; 32],
        salt: key.salt.clone(),
    };
    let (status, _, body) = get(&pipeline.signed_url(&forged, &path)).await;
    assert_eq!(
        (status, problem_code(&body).as_str()),
        (StatusCode::FORBIDDEN, "invalid_signature")
    );
    // Expired an hour ago.
    let expired = pipeline.signed_url(&key, &format!("/exp:{}{path}", now_s() - 3600));
    let (status, _, body) = get(&expired).await;
    assert_eq!(
        (status, problem_code(&body).as_str()),
        (StatusCode::FORBIDDEN, "url_expired")
    );
    // A source outside the tenant's allowed prefixes (same origin, other folder).
    let unlisted = pipeline.signed_url(
        &key,
        &format!(
            "/rs:fit:32:32/plain/http://{}/private/photo.jpg",
            origin.addr
        ),
    );
    let (status, _, body) = get(&unlisted).await;
    assert_eq!(
        (status, problem_code(&body).as_str()),
        (StatusCode::FORBIDDEN, "source_not_allowed")
    );
    // An unknown key id.
    let unknown = SigningKey {
        key_id: "0123456789abcdef".into(),
        ..forged
    };
    let (status, _, body) = get(&pipeline.signed_url(&unknown, &path)).await;
    assert_eq!(
        (status, problem_code(&body).as_str()),
        (StatusCode::FORBIDDEN, "invalid_signature")
    );
    assert_eq!(origin.hits.load(Ordering::SeqCst), 0, "nothing was fetched");

    // The good URL works until its key is revoked, then gets what a bad signature gets. The
    // revocation is awaited with the probe (400 while the key is valid, recorded, never fetched).
    assert_eq!(get(&signed).await.0, StatusCode::OK);
    pipeline
        .admin(
            reqwest::Method::DELETE,
            &format!("/admin/v1/signing-keys/{}", key.key_id),
            None,
        )
        .await;
    let probe = pipeline.signed_url(&key, PROBE);
    // One probe answered 400 when the key arrived, and each until the revocation did.
    let probes = AtomicUsize::new(1);
    support::eventually(Duration::from_secs(5), "the revocation", || async {
        let status = get(&probe).await.0;
        if status == StatusCode::BAD_REQUEST {
            probes.fetch_add(1, Ordering::SeqCst);
        }
        (status == StatusCode::FORBIDDEN).then_some(())
    })
    .await;
    let (status, _, body) = get(&signed).await;
    assert_eq!(
        (status, problem_code(&body).as_str()),
        (StatusCode::FORBIDDEN, "invalid_signature")
    );
    assert_eq!(origin.hits.load(Ordering::SeqCst), 1);

    // Every refusal of a key the tenant owns is on the tenant's usage, never billed (the unknown
    // key's has no tenant to go to): tampered, forged, revoked (and the last probe); expired;
    // unlisted; the probes while the key was valid; and the one image.
    let rows = pipeline
        .usage(&tenant, 7 + probes.load(Ordering::SeqCst))
        .await;
    let count = |outcome: &str| rows.iter().filter(|r| r.0 == outcome).count();
    assert_eq!(
        [
            count("invalid_signature"),
            count("url_expired"),
            count("source_not_allowed"),
            count("ok"),
        ],
        [4, 1, 1, 1],
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .filter(|r| r.0 != "ok")
            .all(|r| r.1 == "403" || r.0 == "unsupported_option"),
        "{rows:?}"
    );
    pipeline.hosted.stop().await;
}

#[tokio::test]
async fn urls_from_imgproxys_node_url_builder_are_accepted() {
    let pipeline = Pipeline::start("signed_get_builder").await;
    let origin = Origin::start(support::images::jpeg(800, 600)).await;
    let (_, key) = pipeline
        .tenant_with_signing_key(&format!("http://{}/img/", origin.addr))
        .await;
    pipeline.wait_for_signing_key(&key).await;

    // imgproxy's own builder, installed from npm by the bench's script into the cache folder.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/web/signed_urls.sh");
    let output = tokio::process::Command::new(script)
        .args([
            "--base",
            &format!("http://{}/v1/img/{}", pipeline.api, key.key_id),
            "--key",
            &hex::encode(&key.key),
            "--salt",
            &hex::encode(&key.salt),
            "--type",
            "fit",
            &origin.photo_url(),
        ])
        .output()
        .await
        .expect("benches/web/signed_urls.sh runs (node and npm are prerequisites)");
    assert!(
        output.status.success(),
        "the URL builder failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let urls: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(!urls.is_empty());
    for url in &urls {
        let (status, content_type, body) = get(url).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{url}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(content_type, "image/jpeg", "{url}");
        let image = support::images::decode(&body, image::ImageFormat::Jpeg);
        assert_eq!((image.width(), image.height()), (512, 384), "{url}");
    }
    pipeline.hosted.stop().await;
}

fn now_s() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    i64::try_from(now.unwrap().as_secs()).unwrap()
}

/// URL-safe base64 without padding, as imgproxy's encoded sources.
fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// Sizes (key + value) of every record on the test's image.requests.
pub(crate) async fn request_record_sizes(config: &Config) -> Vec<usize> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let kafka = config.kafka.clone();
    tokio::task::spawn_blocking(move || {
        let topic = kafka.name(schemas::topics::IMAGE_REQUESTS);
        let consumer: BaseConsumer = kafka
            .client_config()
            .set("group.id", format!("{topic}-sizes"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        let (mut sizes, deadline) = (Vec::new(), std::time::Instant::now());
        while deadline.elapsed() < Duration::from_secs(10) {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(message)) => sizes.push(
                    message.key().map_or(0, <[u8]>::len) + message.payload().map_or(0, <[u8]>::len),
                ),
                Some(Err(error)) => panic!("reading image.requests: {error}"),
                None if !sizes.is_empty() => break,
                None => {}
            }
        }
        sizes
    })
    .await
    .unwrap()
}
