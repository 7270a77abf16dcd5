//! Identity end to end, against the real Kafka and schema registry: the identity service writes
//! `identity.changes` through its fenced transactional producer, and independent api-side
//! `IdentityView`s (one per simulated api instance, each with its own consumer) replicate it.
//! API keys, signing keys of signed GET URLs and tenants' allowed sources alike.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use chassis::{ServiceContext, Shutdown};
use imgpipe::Config;
use ingest::auth::{AuthConfig, AuthError, Authenticator, IdentityView, SigningPrincipal};
use ingest::identity::{self, IdentityConfig};
use ingest::signing::{SigningConfig, SigningKey};
use serde_json::{Value, json};

use crate::support::{eventually, provisioned};

const ADMIN_TOKEN: &str = "integration-admin-token-0123456789";
const PROPAGATION: Duration = Duration::from_secs(10);
/// The deployment's signing secret, on the identity service and on every api-side view.
const SIGNING_SECRET: &str = "5f4dcc3b5aa765d61d8327deb882cf99a1b2c3d4e5f60718293a4b5c6d7e8f90";
/// The revocation bound of the design: a revoked key is refused everywhere within 1 s at p99.
const REVOCATION_P99_BOUND: Duration = Duration::from_secs(1);

fn signing() -> SigningConfig {
    SigningConfig {
        secret: SIGNING_SECRET.into(),
    }
}

/// An identity service serving on a random local port.
struct Identity {
    url: String,
    ctx: ServiceContext,
    http: reqwest::Client,
}

impl Identity {
    async fn start(config: &Config) -> Self {
        let ctx = ServiceContext::new(Shutdown::new());
        let identity_config = IdentityConfig {
            admin_token: ADMIN_TOKEN.into(),
            ..IdentityConfig::default()
        };
        let state = tokio::time::timeout(
            Duration::from_secs(60),
            identity::open(&config.kafka, &config.registry, &identity_config, &ctx),
        )
        .await
        .expect("identity start timed out")
        .expect("identity starts")
        .with_signing(signing().secret().expect("a valid secret"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = ctx.shutdown.clone();
        tokio::spawn(async move {
            let http = chassis::http::HttpConfig::default();
            chassis::http::serve(listener, identity::app(state, &http), &http, shutdown)
                .await
                .unwrap();
        });
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Self { url, ctx, http }
    }

    /// Sends an admin request with the right token; returns status and JSON body (Null if empty).
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, Some(ADMIN_TOKEN), body).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, body)
    }

    async fn create_tenant(&self, name: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/admin/v1/tenants",
                Some(json!({"name": name, "rate_limit_per_second": 100000, "burst": 100000})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// Issues a key; returns (key_id, api_key).
    async fn issue_key(&self, tenant_id: &str) -> (String, String) {
        let (status, body) = self
            .call("POST", &format!("/admin/v1/tenants/{tenant_id}/keys"), None)
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["key_id"].as_str().unwrap().to_owned(),
            body["api_key"].as_str().unwrap().to_owned(),
        )
    }

    /// Issues a signing key; returns (key_id, the key and salt the URL builders are given).
    async fn issue_signing_key(&self, tenant_id: &str) -> (String, SigningKey) {
        let (status, body) = self
            .call(
                "POST",
                &format!("/admin/v1/tenants/{tenant_id}/signing-keys"),
                None,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let bytes = |field: &str| -> [u8; 32] {
            hex::decode(body[field].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        };
        (
            body["key_id"].as_str().unwrap().to_owned(),
            SigningKey {
                key: bytes("key"),
                salt: bytes("salt"),
            },
        )
    }

    fn stop(&self) {
        self.ctx.shutdown.trigger();
    }
}

/// An api-side view with its own consumer and context, caught up.
struct View {
    view: Arc<IdentityView>,
    ctx: ServiceContext,
}

impl View {
    async fn start(config: &Config) -> Self {
        let ctx = ServiceContext::new(Shutdown::new());
        let view = IdentityView::start(
            &config.kafka,
            &config.registry,
            &AuthConfig::default(),
            &signing(),
            &ctx,
        )
        .await
        .expect("view starts");
        tokio::time::timeout(Duration::from_secs(30), view.wait_caught_up())
            .await
            .expect("view catches up");
        Self { view, ctx }
    }

    fn stop(&self) {
        self.ctx.shutdown.trigger();
    }
}

/// Waits until every view gives `expected` for `api_key`.
async fn until_all(
    views: &[&View],
    api_key: &str,
    what: &str,
    expected: fn(&Result<ingest::auth::Principal, AuthError>) -> bool,
) {
    for (i, view) in views.iter().enumerate() {
        eventually(PROPAGATION, &format!("{what} on instance {i}"), || {
            let result = view.view.authenticate(api_key);
            std::future::ready(expected(&result).then_some(()))
        })
        .await;
    }
}

fn is_ok(r: &Result<ingest::auth::Principal, AuthError>) -> bool {
    r.is_ok()
}
fn is_invalid(r: &Result<ingest::auth::Principal, AuthError>) -> bool {
    *r == Err(AuthError::InvalidKey)
}
fn is_forbidden(r: &Result<ingest::auth::Principal, AuthError>) -> bool {
    *r == Err(AuthError::Forbidden)
}

#[tokio::test]
async fn a_new_key_works_on_every_instance_and_its_revocation_reaches_all() {
    let config = provisioned("identity_new_key").await;
    let identity = Identity::start(&config).await;
    let (a, b) = (View::start(&config).await, View::start(&config).await);
    assert!(a.ctx.readiness.is_ready() && b.ctx.readiness.is_ready());

    let tenant = identity.create_tenant("acme").await;
    let (key_id, api_key) = identity.issue_key(&tenant).await;
    until_all(&[&a, &b], &api_key, "new key accepted", is_ok).await;
    for view in [&a, &b] {
        let principal = view.view.authenticate(&api_key).unwrap();
        assert_eq!(
            (&*principal.tenant_id, &*principal.key_id),
            (tenant.as_str(), key_id.as_str())
        );
    }

    // Rotation: a new key, then the old one revoked.
    let (_, rotated) = identity.issue_key(&tenant).await;
    let (status, _) = identity
        .call("DELETE", &format!("/admin/v1/keys/{key_id}"), None)
        .await;
    assert_eq!(status, 204);
    until_all(&[&a, &b], &api_key, "revoked key refused", is_invalid).await;
    until_all(&[&a, &b], &rotated, "rotated key accepted", is_ok).await;
    for v in [&a, &b] {
        v.stop();
    }
    identity.stop();
}

#[tokio::test]
async fn suspension_and_deletion_take_effect_on_every_instance() {
    let config = provisioned("identity_suspend_delete").await;
    let identity = Identity::start(&config).await;
    let (a, b) = (View::start(&config).await, View::start(&config).await);
    let tenant = identity.create_tenant("acme").await;
    let (_, k1) = identity.issue_key(&tenant).await;
    let (_, k2) = identity.issue_key(&tenant).await;
    until_all(&[&a, &b], &k1, "key 1 accepted", is_ok).await;
    until_all(&[&a, &b], &k2, "key 2 accepted", is_ok).await;

    let path = format!("/admin/v1/tenants/{tenant}");
    let (status, body) = identity
        .call("PATCH", &path, Some(json!({"status": "suspended"})))
        .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("suspended")));
    until_all(&[&a, &b], &k1, "suspended tenant forbidden", is_forbidden).await;
    until_all(&[&a, &b], &k2, "suspended tenant forbidden", is_forbidden).await;

    let (status, _) = identity
        .call("PATCH", &path, Some(json!({"status": "active"})))
        .await;
    assert_eq!(status, 200);
    until_all(&[&a, &b], &k1, "reactivated tenant accepted", is_ok).await;

    let (status, _) = identity.call("DELETE", &path, None).await;
    assert_eq!(status, 204);
    until_all(&[&a, &b], &k1, "deleted tenant's key refused", is_invalid).await;
    until_all(&[&a, &b], &k2, "deleted tenant's key refused", is_invalid).await;
    let (status, body) = identity.call("GET", &path, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("tenant_not_found"))
    );
    // Tombstones leave nothing of the tenant in the views.
    eventually(PROPAGATION, "tombstones applied", || {
        std::future::ready(a.view.snapshot().is_empty().then_some(()))
    })
    .await;
    for v in [&a, &b] {
        v.stop();
    }
    identity.stop();
}

#[tokio::test]
async fn a_view_restarted_from_scratch_rebuilds_the_same_state() {
    let config = provisioned("identity_view_rebuild").await;
    let identity = Identity::start(&config).await;
    let first = View::start(&config).await;
    let kept = identity.create_tenant("kept").await;
    let gone = identity.create_tenant("gone").await;
    let suspended = identity.create_tenant("suspended").await;
    let (_, live_key) = identity.issue_key(&kept).await;
    let (revoked_id, revoked_key) = identity.issue_key(&kept).await;
    identity.issue_key(&gone).await;
    let (_, suspended_key) = identity.issue_key(&suspended).await;
    assert_eq!(
        identity
            .call("DELETE", &format!("/admin/v1/keys/{revoked_id}"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        identity
            .call("DELETE", &format!("/admin/v1/tenants/{gone}"), None)
            .await
            .0,
        204
    );
    let patch = json!({"status": "suspended"});
    assert_eq!(
        identity
            .call(
                "PATCH",
                &format!("/admin/v1/tenants/{suspended}"),
                Some(patch)
            )
            .await
            .0,
        200
    );
    until_all(&[&first], &suspended_key, "suspension seen", is_forbidden).await;
    let expected = first.view.snapshot();
    assert_eq!(expected.len(), 5, "{expected:?}"); // 2 tenants, 3 keys

    first.stop();
    let restarted = View::start(&config).await;
    assert_eq!(restarted.view.snapshot(), expected);
    assert!(restarted.ctx.readiness.is_ready());
    assert!(restarted.view.authenticate(&live_key).is_ok());
    assert_eq!(
        restarted.view.authenticate(&revoked_key),
        Err(AuthError::InvalidKey)
    );
    assert_eq!(
        restarted.view.authenticate(&suspended_key),
        Err(AuthError::Forbidden)
    );
    restarted.stop();
    identity.stop();
}

#[tokio::test]
async fn a_second_identity_instance_fences_the_first() {
    let config = provisioned("identity_fencing").await;
    let old = Identity::start(&config).await;
    let tenant = old.create_tenant("acme").await;
    let (_, old_key) = old.issue_key(&tenant).await;
    assert!(old.ctx.readiness.is_ready());

    let new = Identity::start(&config).await;
    // The new instance sees the old one's committed writes.
    let (status, body) = new
        .call("GET", &format!("/admin/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!((status, body["name"].as_str()), (200, Some("acme")));
    // A lost id is found again: the listing, rebuilt from the topic, names it.
    let (status, list) = new.call("GET", "/admin/v1/tenants", None).await;
    assert_eq!(
        (status, list["tenants"][0]["id"].as_str()),
        (200, Some(tenant.as_str())),
        "{list}"
    );
    let (status, keys) = new
        .call("GET", &format!("/admin/v1/tenants/{tenant}/keys"), None)
        .await;
    assert_eq!(
        (status, keys["keys"].as_array().map(Vec::len)),
        (200, Some(1))
    );

    // The old one's next write fails clearly, and it says it is not ready.
    let (status, problem) = old
        .call("POST", "/admin/v1/tenants", Some(json!({"name": "zombie"})))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("fenced")),
        "{problem}"
    );
    assert!(problem["request_id"].is_string());
    let (ready, checks) = old.ctx.readiness.snapshot();
    assert!(!ready);
    assert!(checks["identity"].reason.contains("fenced"), "{checks:?}");

    // The new one writes, and the api side sees its writes and the old ones, not the zombie's.
    let (_, new_key) = new.issue_key(&tenant).await;
    let view = View::start(&config).await;
    until_all(&[&view], &new_key, "new instance's key accepted", is_ok).await;
    assert!(view.view.authenticate(&old_key).is_ok());
    assert_eq!(
        view.view
            .snapshot()
            .keys()
            .filter(|e| e.starts_with("tenant:"))
            .count(),
        1
    );
    view.stop();
    old.stop();
    new.stop();
}

#[tokio::test]
async fn tenants_cannot_see_each_others_keys() {
    let config = provisioned("identity_isolation").await;
    let identity = Identity::start(&config).await;
    let view = View::start(&config).await;
    let a = identity.create_tenant("a").await;
    let b = identity.create_tenant("b").await;
    let (a_key_id, a_key) = identity.issue_key(&a).await;
    let (b_key_id, b_key) = identity.issue_key(&b).await;

    let (status, list) = identity
        .call("GET", &format!("/admin/v1/tenants/{a}/keys"), None)
        .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a_key_id.as_str()]);
    let text = list.to_string();
    assert!(!text.contains(&b_key_id) && !text.contains(&a_key[a_key.len() - 64..]));
    assert!(!text.contains("hash") && !text.contains("salt") && !text.contains("api_key"));

    until_all(&[&view], &a_key, "a's key accepted", is_ok).await;
    until_all(&[&view], &b_key, "b's key accepted", is_ok).await;
    assert_eq!(
        &*view.view.authenticate(&a_key).unwrap().tenant_id,
        a.as_str()
    );
    assert_eq!(
        &*view.view.authenticate(&b_key).unwrap().tenant_id,
        b.as_str()
    );
    // A's key id with B's secret is not a key at all.
    let forged = format!("imgp_{a_key_id}_{}", &b_key[b_key.len() - 64..]);
    assert_eq!(view.view.authenticate(&forged), Err(AuthError::InvalidKey));
    view.stop();
    identity.stop();
}

#[tokio::test]
async fn bad_admin_tokens_and_malformed_bodies_get_clear_problems() {
    let config = provisioned("identity_admin_errors").await;
    let identity = Identity::start(&config).await;
    let body = Some(json!({"name": "x"}));
    for token in [None, Some("wrong-token-wrong-token")] {
        let (status, problem) = identity
            .call_with("POST", "/admin/v1/tenants", token, body.clone())
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (401, Some("unauthenticated")),
            "{problem}"
        );
        assert!(problem["request_id"].is_string());
    }
    let cases = [
        (json!({"name": "x", "plan": "gold"}), 400, "invalid_body"),
        (json!({"nom": "x"}), 400, "invalid_body"),
        (json!({"name": ""}), 422, "invalid_field"),
        (
            json!({"name": "x", "rate_limit_per_second": -1}),
            422,
            "invalid_field",
        ),
    ];
    for (body, expected, code) in cases {
        let (status, problem) = identity
            .call("POST", "/admin/v1/tenants", Some(body.clone()))
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (expected, Some(code)),
            "{body}: {problem}"
        );
        assert!(problem["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let tenant = identity.create_tenant("acme").await;
    let (status, problem) = identity
        .call(
            "PATCH",
            &format!("/admin/v1/tenants/{tenant}"),
            Some(json!({"status": "paused"})),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid_body")),
        "{problem}"
    );
    let response = identity
        .http
        .post(format!("{}/admin/v1/tenants", identity.url))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "malformed_body");
    identity.stop();
}

#[tokio::test]
async fn poison_records_are_counted_and_skipped() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let config = provisioned("identity_poison").await;
    let identity = Identity::start(&config).await;
    let tenant = identity.create_tenant("acme").await;
    let producer: FutureProducer = config.kafka.producer().unwrap();
    let topic = config.kafka.name(schemas::topics::IDENTITY_CHANGES);
    for (key, value) in [
        ("key:0123456789abcdef", &b"not avro"[..]),
        ("junk", b"\x00\x00\x00\x00\x01zz"),
    ] {
        producer
            .send(
                FutureRecord::to(&topic).key(key).payload(value),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let (_, api_key) = identity.issue_key(&tenant).await;
    let view = View::start(&config).await;
    until_all(&[&view], &api_key, "key after poison accepted", is_ok).await;
    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&view.ctx.metrics.gather())
        .unwrap();
    assert!(
        metrics.contains("imgpipe_identity_view_poison_records_total 2"),
        "{metrics}"
    );
    view.stop();
    identity.stop();
}

/// A signed request's check on `view`, as the api makes it: the signature matches only if it was
/// made with the key and salt identity handed out for `key_id`.
fn check_signed(
    view: &IdentityView,
    key_id: &str,
    issued: &SigningKey,
) -> Result<SigningPrincipal, AuthError> {
    view.authenticate_signed(key_id, &|derived: &SigningKey| derived == issued)
}

/// Waits until every view gives `expected` for signing key `key_id`.
async fn until_all_signed(
    views: &[&View],
    key_id: &str,
    issued: &SigningKey,
    what: &str,
    expected: fn(&Result<SigningPrincipal, AuthError>) -> bool,
) {
    for (i, view) in views.iter().enumerate() {
        eventually(PROPAGATION, &format!("{what} on instance {i}"), || {
            let result = check_signed(&view.view, key_id, issued);
            std::future::ready(expected(&result).then_some(()))
        })
        .await;
    }
}

/// Polls every view on its own thread until it refuses signing key `key_id`; returns each
/// view's time from `since` (as `benches/revocation.rs` measures API keys).
async fn until_refused(
    views: &[&View],
    key_id: &str,
    issued: &SigningKey,
    since: std::time::Instant,
) -> Vec<Duration> {
    let pollers: Vec<_> = views
        .iter()
        .map(|view| {
            let (view, key_id, issued) = (view.view.clone(), key_id.to_owned(), issued.clone());
            tokio::task::spawn_blocking(move || {
                loop {
                    let result = check_signed(&view, &key_id, &issued);
                    let now = std::time::Instant::now();
                    if result == Err(AuthError::InvalidKey) {
                        return now - since;
                    }
                    assert!(
                        now - since < PROPAGATION,
                        "revocation not seen within {PROPAGATION:?}: {result:?}"
                    );
                    std::thread::sleep(Duration::from_micros(50));
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

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 * q).ceil() as usize).saturating_sub(1);
    samples[index.min(samples.len() - 1)]
}

#[tokio::test]
async fn a_signing_key_resolves_on_every_instance_and_its_revocation_reaches_all_within_the_bound()
{
    const KEYS: usize = 100;
    let config = provisioned("identity_signing_keys").await;
    let identity = Identity::start(&config).await;
    let (a, b) = (View::start(&config).await, View::start(&config).await);
    let (status, tenant) = identity
        .call(
            "POST",
            "/admin/v1/tenants",
            Some(json!({
                "name": "web",
                "rate_limit_per_second": 1_000_000,
                "burst": 1_000_000,
                "allowed_sources": ["http://127.0.0.1:8081/img/"]
            })),
        )
        .await;
    assert_eq!(status, 201, "{tenant}");
    let tenant = tenant["id"].as_str().unwrap().to_owned();
    let mut issued = Vec::new();
    for _ in 0..KEYS {
        issued.push(identity.issue_signing_key(&tenant).await);
    }

    // The listing names every key, active, and never a key or salt.
    let (status, list) = identity
        .call(
            "GET",
            &format!("/admin/v1/tenants/{tenant}/signing-keys"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let listed = list["signing_keys"].as_array().unwrap();
    assert_eq!(listed.len(), KEYS, "{list}");
    assert!(listed.iter().all(|k| k["status"] == "active"));
    let text = list.to_string();
    assert!(!text.contains(&hex::encode(issued[0].1.key)) && !text.contains("salt"));

    // Every instance resolves every key to the tenant, with its allowed sources.
    for (key_id, key) in &issued {
        until_all_signed(
            &[&a, &b],
            key_id,
            key,
            "new signing key accepted",
            Result::is_ok,
        )
        .await;
    }
    for view in [&a, &b] {
        let (key_id, key) = &issued[0];
        let principal = check_signed(&view.view, key_id, key).unwrap();
        assert_eq!(
            (&*principal.tenant_id, &*principal.key_id),
            (tenant.as_str(), key_id.as_str())
        );
        assert_eq!(&*principal.allowed_sources, ["http://127.0.0.1:8081/img/"]);
        // A URL signed with another key's values is refused.
        assert_eq!(
            check_signed(&view.view, key_id, &issued[1].1),
            Err(AuthError::InvalidKey)
        );
    }

    // Revocation, one key at a time: from the admin call's answer until both instances refuse.
    let mut every = Vec::new();
    for (key_id, key) in &issued {
        let (status, _) = identity
            .call("DELETE", &format!("/admin/v1/signing-keys/{key_id}"), None)
            .await;
        let returned = std::time::Instant::now();
        assert_eq!(status, 204);
        let times = until_refused(&[&a, &b], key_id, key, returned).await;
        every.push(times.into_iter().max().unwrap());
    }
    let p50 = percentile(&mut every, 0.50);
    let p99 = percentile(&mut every, 0.99);
    println!(
        "signing key revocation, {KEYS} keys, 2 api-side views: every view refuses after p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        every[every.len() - 1].as_secs_f64() * 1e3
    );
    assert!(
        p99 < REVOCATION_P99_BOUND,
        "revocation p99 {p99:?} is over the bound {REVOCATION_P99_BOUND:?}"
    );
    let (_, list) = identity
        .call(
            "GET",
            &format!("/admin/v1/tenants/{tenant}/signing-keys"),
            None,
        )
        .await;
    assert!(
        list["signing_keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["status"] == "revoked")
    );
    for v in [&a, &b] {
        v.stop();
    }
    identity.stop();
}

#[tokio::test]
async fn allowed_sources_round_trip_and_signing_keys_survive_rebuilds() {
    let config = provisioned("identity_allowed_sources").await;
    let identity = Identity::start(&config).await;
    let view = View::start(&config).await;
    let (status, created) = identity
        .call(
            "POST",
            "/admin/v1/tenants",
            Some(json!({
                "name": "web",
                "allowed_sources": ["HTTP://127.0.0.1:8081/img/", "https://images.example.com"]
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let tenant = created["id"].as_str().unwrap().to_owned();
    let normalised = json!(["http://127.0.0.1:8081/img/", "https://images.example.com/"]);
    assert_eq!(created["allowed_sources"], normalised);
    let path = format!("/admin/v1/tenants/{tenant}");
    let (_, got) = identity.call("GET", &path, None).await;
    assert_eq!(got["allowed_sources"], normalised);

    let (key_id, key) = identity.issue_signing_key(&tenant).await;
    until_all_signed(
        &[&view],
        &key_id,
        &key,
        "signing key accepted",
        Result::is_ok,
    )
    .await;
    let principal = check_signed(&view.view, &key_id, &key).unwrap();
    assert_eq!(
        &*principal.allowed_sources,
        ["http://127.0.0.1:8081/img/", "https://images.example.com/"]
    );
    let source = |s: &str| url::Url::parse(s).unwrap();
    assert!(principal.allows(&source("http://127.0.0.1:8081/img/a.jpg")));
    assert!(!principal.allows(&source("http://127.0.0.1:8081/private/a.jpg")));

    // A PATCH replaces the list on every instance.
    let (status, patched) = identity
        .call(
            "PATCH",
            &path,
            Some(json!({"allowed_sources": ["http://127.0.0.1:9/other/"]})),
        )
        .await;
    assert_eq!(
        (status, &patched["allowed_sources"]),
        (200, &json!(["http://127.0.0.1:9/other/"]))
    );
    eventually(PROPAGATION, "new allowed sources seen", || {
        let sources = check_signed(&view.view, &key_id, &key)
            .map(|p| p.allowed_sources.to_vec())
            .unwrap_or_default();
        std::future::ready((sources == ["http://127.0.0.1:9/other/"]).then_some(()))
    })
    .await;

    // Suspension forbids the tenant's signed URLs; reactivation restores them.
    identity
        .call("PATCH", &path, Some(json!({"status": "suspended"})))
        .await;
    until_all_signed(&[&view], &key_id, &key, "suspended tenant forbidden", |r| {
        *r == Err(AuthError::Forbidden)
    })
    .await;
    identity
        .call("PATCH", &path, Some(json!({"status": "active"})))
        .await;
    until_all_signed(
        &[&view],
        &key_id,
        &key,
        "reactivated tenant accepted",
        Result::is_ok,
    )
    .await;
    let (revoked_id, revoked_key) = identity.issue_signing_key(&tenant).await;
    assert_eq!(
        identity
            .call(
                "DELETE",
                &format!("/admin/v1/signing-keys/{revoked_id}"),
                None
            )
            .await
            .0,
        204
    );
    until_all_signed(
        &[&view],
        &revoked_id,
        &revoked_key,
        "revoked key refused",
        |r| *r == Err(AuthError::InvalidKey),
    )
    .await;

    // A new identity instance rebuilds the same tenant and signing keys from the topic, and a
    // new view derives the same values for them.
    let successor = Identity::start(&config).await;
    let (_, got) = successor.call("GET", &path, None).await;
    assert_eq!(got["allowed_sources"], json!(["http://127.0.0.1:9/other/"]));
    let (_, list) = successor
        .call("GET", &format!("{path}/signing-keys"), None)
        .await;
    let states: Vec<(&str, &str)> = list["signing_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["key_id"].as_str().unwrap(), k["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            (key_id.as_str(), "active"),
            (revoked_id.as_str(), "revoked")
        ]
    );
    let fresh = View::start(&config).await;
    assert_eq!(fresh.view.snapshot(), view.view.snapshot());
    assert!(check_signed(&fresh.view, &key_id, &key).is_ok());
    assert_eq!(
        check_signed(&fresh.view, &revoked_id, &revoked_key),
        Err(AuthError::InvalidKey)
    );

    // Deleting the tenant refuses its signing keys and tombstones them.
    assert_eq!(successor.call("DELETE", &path, None).await.0, 204);
    until_all_signed(
        &[&view, &fresh],
        &key_id,
        &key,
        "deleted tenant's key refused",
        |r| *r == Err(AuthError::InvalidKey),
    )
    .await;
    eventually(PROPAGATION, "tombstones applied", || {
        std::future::ready(fresh.view.snapshot().is_empty().then_some(()))
    })
    .await;
    for v in [&view, &fresh] {
        v.stop();
    }
    identity.stop();
    successor.stop();
}

/// Today's `IdentityChange` without what signed URLs added (`Tenant.allowed_sources`, the
/// `signing_key` record): the schema the registry held before.
fn identity_change_before_signing_keys() -> Value {
    let mut schema: Value =
        serde_json::from_str(<schemas::events::IdentityChange as schemas::Event>::SCHEMA).unwrap();
    let fields = schema["fields"].as_array_mut().unwrap();
    fields.retain(|f| f["name"] != "signing_key");
    let tenant = fields.iter_mut().find(|f| f["name"] == "tenant").unwrap();
    tenant["type"][1]["fields"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["name"] != "allowed_sources");
    schema
}

#[tokio::test]
async fn signing_keys_and_allowed_sources_are_a_backward_compatible_evolution() {
    use schemas::events::{IdentityChange, Tenant, TenantStatus};
    let config = provisioned("identity_schema_evolution").await;
    let registry = &config.registry;
    let subject = schemas::registry::value_subject(&format!(
        "{}.signing-keys",
        config.kafka.name(schemas::topics::IDENTITY_CHANGES)
    ));
    registry
        .set_compatibility(&subject, "BACKWARD")
        .await
        .unwrap();
    let previous = identity_change_before_signing_keys();
    let previous_id = registry
        .register(&subject, &previous.to_string())
        .await
        .expect("the previous schema registers");
    // Without its default, the new tenant field could not read older records: refused.
    let mut no_default: Value =
        serde_json::from_str(<IdentityChange as schemas::Event>::SCHEMA).unwrap();
    let tenant_fields = no_default["fields"][2]["type"][1]["fields"]
        .as_array_mut()
        .unwrap();
    for field in tenant_fields.iter_mut() {
        field.as_object_mut().unwrap().remove("default");
    }
    let refused = registry.register(&subject, &no_default.to_string()).await;
    assert!(!refused.expect_err("refused").is_retryable());
    let current_id = registry
        .register(&subject, <IdentityChange as schemas::Event>::SCHEMA)
        .await
        .expect("today's schema is a BACKWARD-compatible evolution");
    assert_ne!(previous_id, current_id);

    // A tenant record an identity service of the previous version wrote reads with no sources.
    let previous_schema = apache_avro::Schema::parse_str(&previous.to_string()).unwrap();
    let tenant = Tenant {
        id: "t-old".into(),
        name: "old".into(),
        status: TenantStatus::Active,
        rate_limit_per_second: 5,
        burst: 10,
        created_at_ms: 1,
        allowed_sources: Vec::new(),
    };
    let old = IdentityChange {
        entity_id: "tenant:t-old".into(),
        changed_at_ms: 1,
        tenant: Some(tenant),
        api_key: None,
        signing_key: None,
    };
    let apache_avro::types::Value::Record(mut fields) = apache_avro::to_value(&old).unwrap() else {
        panic!("a record");
    };
    fields.retain(|(name, _)| name != "signing_key");
    let mut stripped = false;
    for (name, value) in &mut fields {
        if name == "tenant"
            && let apache_avro::types::Value::Union(_, inner) = value
            && let apache_avro::types::Value::Record(tenant) = inner.as_mut()
        {
            tenant.retain(|(n, _)| n != "allowed_sources");
            stripped = true;
        }
    }
    assert!(
        stripped,
        "the tenant written as the previous version writes it"
    );
    let value = apache_avro::types::Value::Record(fields)
        .resolve(&previous_schema)
        .expect("fits the previous schema");
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(&previous_schema)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap();
    let mut payload = vec![0];
    payload.extend_from_slice(&previous_id.to_be_bytes());
    payload.extend_from_slice(&body);
    let codec = schemas::Codec::new(registry, &config.kafka.namespace);
    let decoded: IdentityChange = codec.decode(&payload).await.expect("decodes");
    assert_eq!(decoded, old);
}
