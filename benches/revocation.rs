//! Revocation propagation: how long after the identity admin API confirms `DELETE
//! /admin/v1/keys/{id}` (an API key) or `DELETE /admin/v1/signing-keys/{id}` (a signing key of
//! signed GET URLs) every api instance refuses the key.
//!
//! Runs the real identity service (in process, on a local port), then measures, for API keys and
//! then for signing keys:
//! 1. two independent `IdentityView`s, each with its own consumer, as two api instances have,
//!    polled directly: the propagation itself;
//! 2. two whole api instances (each hosted as `imgpipe api` is, with its own HTTP listener, view
//!    and reply-group membership), polled over HTTP: what a client sees. A valid API key with an
//!    empty body gets 400; a revoked one 401. A URL signed with a valid signing key, for a source
//!    outside the tenant's `allowed_sources`, gets 403 `source_not_allowed` (nothing is
//!    fetched); once the key is revoked, 403 `invalid_signature`.
//!
//! Each phase issues its own keys, warms the caches with them, then revokes them one at a time,
//! recording the time from the admin call's return until every instance refuses the key. Needs
//! the local stack (`compose/local/stack up`) and uses its own namespace.
//!
//! `cargo bench --bench revocation` (`IMGPIPE_BENCH_KEYS=N` for another count)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chassis::{ServiceContext, Shutdown};
use ingest::api::imgproxy;
use ingest::auth::{AuthConfig, AuthError, Authenticator, IdentityView};
use ingest::identity::{self, IdentityConfig};
use ingest::signing::{SigningConfig, SigningKey};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
/// The signing secret of identity and of both api instances (hex, 32 bytes).
const SIGNING_SECRET: &str = "62656e63682d7369676e696e672d7365637265742d3031323334353637383921";
/// The tenant's only allowed source prefix; the signed URLs name another source, so the api
/// refuses them before producing anything and no origin is ever asked.
const ALLOWED_SOURCE: &str = "http://127.0.0.1:9/allowed/";
/// Signed path of every signing-key probe (imgproxy's format), outside `ALLOWED_SOURCE`.
const PROBE_PATH: &str = "/rs:fit:64:64/plain/http://127.0.0.1:9/elsewhere.jpg";
/// A key still accepted after this long counts as a failure of the bound.
const GIVE_UP: Duration = Duration::from_secs(10);

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let keys: usize = std::env::var("IMGPIPE_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let config = provisioned().await;

    let identity_ctx = ServiceContext::new(Shutdown::new());
    let identity_config = IdentityConfig {
        admin_token: ADMIN_TOKEN.into(),
        ..IdentityConfig::default()
    };
    let state = identity::open(
        &config.kafka,
        &config.registry,
        &identity_config,
        &identity_ctx,
    )
    .await
    .expect("identity starts")
    .with_signing(config.signing.secret().expect("a valid signing secret"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = identity_ctx.shutdown.clone();
    tokio::spawn(async move {
        let http = chassis::http::HttpConfig::default();
        chassis::http::serve(listener, identity::app(state, &http), &http, shutdown)
            .await
            .unwrap();
    });

    let auth_config = AuthConfig::default();
    let mut views = Vec::new();
    let mut contexts = Vec::new();
    for _ in 0..2 {
        let ctx = ServiceContext::new(identity_ctx.shutdown.clone());
        let view = IdentityView::start(
            &config.kafka,
            &config.registry,
            &auth_config,
            &config.signing,
            &ctx,
        )
        .await
        .expect("view starts");
        tokio::time::timeout(Duration::from_secs(30), view.wait_caught_up())
            .await
            .expect("view catches up");
        views.push(view);
        contexts.push(ctx);
    }

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let tenant: Value = http
        .post(format!("{url}/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({
            "name": "bench",
            "rate_limit_per_second": 1_000_000,
            "burst": 1_000_000,
            "allowed_sources": [ALLOWED_SOURCE]
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tenant_id = tenant["id"].as_str().unwrap().to_owned();
    let issued = issue_keys(&http, &url, &tenant_id, keys).await;
    // Every key accepted (and cached) on both instances before any revocation.
    let warm_until = Instant::now() + GIVE_UP;
    for view in &views {
        for (_, api_key) in &issued {
            while view.authenticate(api_key).is_err() {
                assert!(Instant::now() < warm_until, "keys did not propagate");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    let mut admin_latency = Vec::new();
    let mut views_seen = Propagation::new(views.len());
    for (key_id, api_key) in &issued {
        let (sent, returned) = revoke(&http, &url, key_id).await;
        admin_latency.push(returned - sent);
        views_seen.record(poll_all(&views, api_key, returned).await);
    }
    println!("revocation propagation, {keys} keys, 2 api-side views");
    println!("  {}", summary("admin DELETE call", &mut admin_latency));
    views_seen.print("view", "rejects");

    let apis = start_apis(&config).await;
    let issued = issue_keys(&http, &url, &tenant_id, keys).await;
    let warm_until = Instant::now() + GIVE_UP;
    for api in &apis {
        for (_, api_key) in &issued {
            while api_status(&http, *api, api_key).await != 400 {
                assert!(Instant::now() < warm_until, "keys did not reach the apis");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let mut apis_seen = Propagation::new(apis.len());
    for (key_id, api_key) in &issued {
        let (_, returned) = revoke(&http, &url, key_id).await;
        let polls = apis.iter().map(|api| async {
            loop {
                let status = api_status(&http, *api, api_key).await;
                let elapsed = returned.elapsed();
                if status == 401 {
                    return elapsed;
                }
                assert!(
                    elapsed < GIVE_UP,
                    "revocation not seen over HTTP within {GIVE_UP:?}"
                );
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        });
        apis_seen.record(futures::future::join_all(polls).await);
    }
    println!("revocation propagation, {keys} keys, 2 api instances polled over HTTP");
    apis_seen.print("api", "answers 401");

    // Signing keys: the same two measurements.
    let signing = issue_signing_keys(&http, &url, &tenant_id, keys).await;
    let warm_until = Instant::now() + GIVE_UP;
    for view in &views {
        for (key_id, key) in &signing {
            while check_signed(view, key_id, key).is_err() {
                assert!(
                    Instant::now() < warm_until,
                    "signing keys did not propagate"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let mut views_seen = Propagation::new(views.len());
    for (key_id, key) in &signing {
        let (_, returned) = revoke_signing(&http, &url, key_id).await;
        views_seen.record(poll_all_signed(&views, key_id, key, returned).await);
    }
    println!("signing key revocation propagation, {keys} keys, 2 api-side views");
    views_seen.print("view", "rejects");

    let signing = issue_signing_keys(&http, &url, &tenant_id, keys).await;
    let warm_until = Instant::now() + GIVE_UP;
    for api in &apis {
        for (key_id, key) in &signing {
            while signed_get_code(&http, *api, key_id, key).await != "source_not_allowed" {
                assert!(
                    Instant::now() < warm_until,
                    "signing keys did not reach the apis"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let mut apis_seen = Propagation::new(apis.len());
    for (key_id, key) in &signing {
        let (_, returned) = revoke_signing(&http, &url, key_id).await;
        let polls = apis.iter().map(|api| async {
            loop {
                let code = signed_get_code(&http, *api, key_id, key).await;
                let elapsed = returned.elapsed();
                if code == "invalid_signature" {
                    return elapsed;
                }
                assert!(
                    elapsed < GIVE_UP,
                    "signing key revocation not seen over HTTP within {GIVE_UP:?} (last: {code})"
                );
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        });
        apis_seen.record(futures::future::join_all(polls).await);
    }
    println!("signing key revocation propagation, {keys} keys, 2 api instances polled over HTTP");
    apis_seen.print("api", "answers invalid_signature");
    identity_ctx.shutdown.trigger();
}

/// Revokes signing key `key_id` through the admin API; returns when the call was sent and when
/// it returned.
async fn revoke_signing(http: &reqwest::Client, url: &str, key_id: &str) -> (Instant, Instant) {
    let sent = Instant::now();
    let status = http
        .delete(format!("{url}/admin/v1/signing-keys/{key_id}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .status();
    let returned = Instant::now();
    assert_eq!(status.as_u16(), 204);
    (sent, returned)
}

async fn issue_signing_keys(
    http: &reqwest::Client,
    url: &str,
    tenant_id: &str,
    keys: usize,
) -> Vec<(String, SigningKey)> {
    let mut issued = Vec::new();
    for _ in 0..keys {
        let body: Value = http
            .post(format!("{url}/admin/v1/tenants/{tenant_id}/signing-keys"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let bytes = |field: &str| -> [u8; 32] {
            hex::decode(body[field].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        };
        issued.push((
            body["key_id"].as_str().unwrap().to_owned(),
            SigningKey {
                key: bytes("key"),
                salt: bytes("salt"),
            },
        ));
    }
    issued
}

/// What an api-side view says of signing key `key_id` for a URL signed with `issued`.
fn check_signed(view: &IdentityView, key_id: &str, issued: &SigningKey) -> Result<(), AuthError> {
    view.authenticate_signed(key_id, &|derived: &SigningKey| derived == issued)
        .map(|_| ())
}

/// The problem code the api answers to a GET of `PROBE_PATH` signed with `key`.
async fn signed_get_code(
    http: &reqwest::Client,
    api: std::net::SocketAddr,
    key_id: &str,
    key: &SigningKey,
) -> String {
    let signature = imgproxy::sign(&key.key, &key.salt, PROBE_PATH);
    let Ok(response) = http
        .get(format!(
            "http://{api}/v1/img/{key_id}/{signature}{PROBE_PATH}"
        ))
        .send()
        .await
    else {
        return String::new();
    };
    let body: Value = response.json().await.unwrap_or_default();
    body["code"].as_str().unwrap_or_default().to_owned()
}

/// As `poll_all`, for a signing key: each view's time from `since` until it refuses `key_id`.
async fn poll_all_signed(
    views: &[Arc<IdentityView>],
    key_id: &str,
    issued: &SigningKey,
    since: Instant,
) -> Vec<Duration> {
    let pollers: Vec<_> = views
        .iter()
        .map(|view| {
            let (view, key_id, issued) = (view.clone(), key_id.to_owned(), issued.clone());
            tokio::task::spawn_blocking(move || {
                loop {
                    let result = check_signed(&view, &key_id, &issued);
                    let now = Instant::now();
                    if result == Err(AuthError::InvalidKey) {
                        return now - since;
                    }
                    assert!(
                        now - since < GIVE_UP,
                        "signing key revocation not seen within {GIVE_UP:?}: {result:?}"
                    );
                    std::thread::sleep(Duration::from_micros(20));
                }
            })
        })
        .collect();
    let mut times = Vec::new();
    for poller in pollers {
        times.push(poller.await.unwrap());
    }
    times
}

/// Revokes `key_id` through the admin API; returns when the call was sent and when it returned.
async fn revoke(http: &reqwest::Client, url: &str, key_id: &str) -> (Instant, Instant) {
    let sent = Instant::now();
    let status = http
        .delete(format!("{url}/admin/v1/keys/{key_id}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .status();
    let returned = Instant::now();
    assert_eq!(status.as_u16(), 204);
    (sent, returned)
}

/// Per-instance propagation times, and the time until every instance saw each revocation.
struct Propagation {
    per_instance: Vec<Vec<Duration>>,
    every: Vec<Duration>,
}

impl Propagation {
    fn new(instances: usize) -> Self {
        Self {
            per_instance: vec![Vec::new(); instances],
            every: Vec::new(),
        }
    }

    /// One revocation: how long each instance took, in instance order.
    fn record(&mut self, times: Vec<Duration>) {
        for (samples, took) in self.per_instance.iter_mut().zip(&times) {
            samples.push(*took);
        }
        self.every.push(times.into_iter().max().unwrap_or_default());
    }

    fn print(&mut self, instance: &str, event: &str) {
        for (i, samples) in self.per_instance.iter_mut().enumerate() {
            println!("  {}", summary(&format!("{instance} {i} {event}"), samples));
        }
        println!(
            "  {}",
            summary(&format!("every {instance} {event}"), &mut self.every)
        );
    }
}

/// Two api instances hosted as `imgpipe api` hosts one, on their own ports.
async fn start_apis(config: &imgpipe::Config) -> Vec<std::net::SocketAddr> {
    let mut apis = Vec::new();
    for i in 0..2 {
        let mut config = config.clone();
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        config.api.listen = free();
        config.api.instance_id = format!("bench-{i}");
        config.ops.listen = Some(free());
        let ops = config.ops.listen.unwrap();
        apis.push(config.api.listen);
        tokio::spawn(async move {
            imgpipe::host::run(config, &[imgpipe::host::Service::Api], Shutdown::new()).await
        });
        let started = Instant::now();
        while !reqwest::get(format!("http://{ops}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "api {i} not ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    apis
}

async fn issue_keys(
    http: &reqwest::Client,
    url: &str,
    tenant_id: &str,
    keys: usize,
) -> Vec<(String, String)> {
    let mut issued = Vec::new();
    for _ in 0..keys {
        let body: Value = http
            .post(format!("{url}/admin/v1/tenants/{tenant_id}/keys"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        issued.push((
            body["key_id"].as_str().unwrap().to_owned(),
            body["api_key"].as_str().unwrap().to_owned(),
        ));
    }
    issued
}

/// The api's status for `api_key` with an empty body: 400 while the key is valid, 401 once not.
async fn api_status(http: &reqwest::Client, api: std::net::SocketAddr, api_key: &str) -> u16 {
    http.post(format!("http://{api}/v1/resize?width=1"))
        .bearer_auth(api_key)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Defaults pointing at the local stack (`IMGPIPE_TEST_KAFKA` / `IMGPIPE_TEST_REGISTRY` override
/// them, as for the integration tests), in a fresh namespace with its topics and schemas.
async fn provisioned() -> imgpipe::Config {
    let mut config = imgpipe::Config::default();
    let id = uuid::Uuid::new_v4().simple().to_string();
    config.kafka.namespace = format!("bench-revocation-{}.", &id[..8]);
    config.signing = SigningConfig {
        secret: SIGNING_SECRET.into(),
    };
    if let Ok(brokers) = std::env::var("IMGPIPE_TEST_KAFKA") {
        config.kafka.brokers = brokers;
    }
    if let Ok(url) = std::env::var("IMGPIPE_TEST_REGISTRY") {
        config.registry.url = url;
    }
    tokio::time::timeout(
        Duration::from_secs(60),
        imgpipe::provision::ensure_all(&config.kafka, &config.registry),
    )
    .await
    .expect("provisioning timed out: is the stack up? (compose/local/stack up)")
    .expect("provisioning failed: is the stack up? (compose/local/stack up)");
    config
}

/// Polls each view on its own thread until it refuses `api_key`; returns each view's time from
/// `since`. A 20 µs pause between polls keeps the pollers from starving the consumers.
async fn poll_all(views: &[Arc<IdentityView>], api_key: &str, since: Instant) -> Vec<Duration> {
    let pollers: Vec<_> = views
        .iter()
        .map(|view| {
            let view = view.clone();
            let api_key = api_key.to_owned();
            tokio::task::spawn_blocking(move || {
                loop {
                    let result = view.authenticate(&api_key);
                    let now = Instant::now();
                    if result == Err(AuthError::InvalidKey) {
                        return now - since;
                    }
                    assert!(
                        now - since < GIVE_UP,
                        "revocation not seen within {GIVE_UP:?}: {result:?}"
                    );
                    std::thread::sleep(Duration::from_micros(20));
                }
            })
        })
        .collect();
    let mut times = Vec::new();
    for poller in pollers {
        times.push(poller.await.unwrap());
    }
    times
}

fn summary(what: &str, samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() as f64 * q).ceil() as usize).saturating_sub(1);
        samples[index.min(samples.len() - 1)]
    };
    format!(
        "{what:<22} p50 {:>9.3} ms  p99 {:>9.3} ms  max {:>9.3} ms  (n={})",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        samples.len()
    )
}
