//! Identity end to end, against the real Kafka and schema registry: the identity service writes
//! `identity.changes` through its fenced transactional producer, and independent api-side
//! `IdentityView`s (one per simulated api instance, each with its own consumer) replicate it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use chassis::{ServiceContext, Shutdown};
use imgpipe::Config;
use ingest::auth::{AuthConfig, AuthError, Authenticator, IdentityView};
use ingest::identity::{self, IdentityConfig};
use serde_json::{Value, json};

use crate::support::{eventually, provisioned};

const ADMIN_TOKEN: &str = "integration-admin-token-0123456789";
const PROPAGATION: Duration = Duration::from_secs(10);

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
        .expect("identity starts");
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
