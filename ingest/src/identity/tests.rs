//! Admin API tests through `tower::ServiceExt::oneshot`, over a fake change sink: the exact
//! status, code and body every kind of request gets, and what is written for each change.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chassis::Readiness;
use futures::future::BoxFuture;
use schemas::events::KeyStatus;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::config::IdentityConfig;
use super::metrics::IdentityMetrics;
use super::routes::app;
use super::state::AppState;
use super::store::{Change, ChangeSink, IdentityStore, StoreError, StoreState};
use crate::signing::SigningSecret;

const TOKEN: &str = "test-admin-token-0123456789";
const SIGNING_SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// Records committed changes; fails with a chosen error when told to.
#[derive(Default)]
struct FakeSink {
    committed: Mutex<Vec<Change>>,
    fail_with: Mutex<Option<StoreError>>,
}

impl ChangeSink for FakeSink {
    fn commit<'a>(&'a self, changes: &'a [Change]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if let Some(error) = self.fail_with.lock().unwrap().clone() {
                return Err(error);
            }
            self.committed.lock().unwrap().extend_from_slice(changes);
            Ok(())
        })
    }
}

struct Fixture {
    app: axum::Router,
    sink: Arc<FakeSink>,
    readiness: Readiness,
}

fn fixture() -> Fixture {
    fixture_signing(Some(SIGNING_SECRET))
}

/// A fixture whose identity service derives signing keys from `secret` (`None`: not configured).
fn fixture_signing(secret: Option<&str>) -> Fixture {
    let sink = Arc::new(FakeSink::default());
    let readiness = Readiness::default();
    readiness.ready(super::store::READINESS_CHECK);
    let metrics = IdentityMetrics::new(&prometheus::Registry::new()).unwrap();
    let store = IdentityStore::new(
        StoreState::default(),
        sink.clone(),
        readiness.clone(),
        metrics.clone(),
    );
    let config = IdentityConfig {
        admin_token: TOKEN.into(),
        ..Default::default()
    };
    Fixture {
        app: app(
            AppState::new(Arc::new(store), &config, metrics)
                .with_signing(secret.map(|s| SigningSecret::parse(s).unwrap())),
            &chassis::http::HttpConfig::default(),
        ),
        sink,
        readiness,
    }
}

async fn call(app: &axum::Router, request: Request<Body>) -> (StatusCode, Value, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, body, content_type)
}

fn admin(method: &str, uri: &str, body: Option<Value>) -> Request<Body> {
    let builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

fn assert_problem(body: &Value, content_type: &str, code: &str) {
    assert_eq!(content_type, "application/problem+json", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["request_id"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn create_tenant(app: &axum::Router, name: &str) -> Value {
    let (status, body, _) = call(
        app,
        admin("POST", "/admin/v1/tenants", Some(json!({"name": name}))),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

#[tokio::test]
async fn missing_or_wrong_admin_tokens_get_401_problems() {
    let f = fixture();
    let request = Request::builder()
        .method("POST")
        .uri("/admin/v1/tenants")
        .body(Body::from("{\"name\":\"x\"}"))
        .unwrap();
    let (status, body, ct) = call(&f.app, request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_problem(&body, &ct, "unauthenticated");
    for auth in [
        "Bearer wrong-token-wrong-token",
        "Basic abc",
        TOKEN,
        &format!("Bearer {TOKEN}x"),
    ] {
        let request = Request::builder()
            .uri("/admin/v1/tenants/x")
            .header(header::AUTHORIZATION, auth)
            .body(Body::empty())
            .unwrap();
        let (status, body, ct) = call(&f.app, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth}");
        assert_problem(&body, &ct, "unauthenticated");
        assert!(!body.to_string().contains(TOKEN));
    }
    // Unknown routes are not revealed to callers without the token.
    let request = Request::builder().uri("/nope").body(Body::empty()).unwrap();
    assert_eq!(call(&f.app, request).await.0, StatusCode::UNAUTHORIZED);
    assert!(f.sink.committed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn tenants_are_listed_in_id_order_a_page_at_a_time() {
    let f = fixture();
    let (status, empty, _) = call(&f.app, admin("GET", "/admin/v1/tenants", None)).await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(empty, json!({"tenants": [], "next_after": null}));

    let mut created: Vec<Value> = Vec::new();
    for name in ["acme", "globex", "initech"] {
        created.push(create_tenant(&f.app, name).await);
    }
    created.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let suspended = created[1]["id"].as_str().unwrap().to_owned();
    let (status, _, _) = call(
        &f.app,
        admin(
            "PATCH",
            &format!("/admin/v1/tenants/{suspended}"),
            Some(json!({"status": "suspended"})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Every tenant as its own GET shows it: id, name, status, quotas, created.
    let (_, all, _) = call(&f.app, admin("GET", "/admin/v1/tenants", None)).await;
    let mut expected = Vec::new();
    for tenant in &created {
        let uri = format!("/admin/v1/tenants/{}", tenant["id"].as_str().unwrap());
        expected.push(call(&f.app, admin("GET", &uri, None)).await.1);
    }
    assert_eq!(all, json!({"tenants": expected, "next_after": null}));
    assert_eq!(all["tenants"][1]["status"], "suspended");

    // Pages of two: the first names where the next starts; the last names nothing.
    let (_, first, _) = call(&f.app, admin("GET", "/admin/v1/tenants?limit=2", None)).await;
    assert_eq!(first["tenants"], json!(expected[..2]));
    assert_eq!(first["next_after"], created[1]["id"]);
    let next = format!(
        "/admin/v1/tenants?limit=2&after={}",
        first["next_after"].as_str().unwrap()
    );
    let (_, second, _) = call(&f.app, admin("GET", &next, None)).await;
    assert_eq!(
        second,
        json!({"tenants": [expected[2]], "next_after": null})
    );

    for bad in ["limit=0", "limit=1001", "limit=many", "page=2"] {
        let uri = format!("/admin/v1/tenants?{bad}");
        let (status, body, ct) = call(&f.app, admin("GET", &uri, None)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_problem(&body, &ct, "invalid_field");
    }
    // The listing needs the admin token like every route.
    let request = Request::builder()
        .uri("/admin/v1/tenants")
        .body(Body::empty())
        .unwrap();
    let (status, body, ct) = call(&f.app, request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_problem(&body, &ct, "unauthenticated");
}

#[tokio::test]
async fn malformed_bodies_get_clear_4xx_problems() {
    let f = fixture();
    let cases: [(&str, Option<&str>, StatusCode, &str); 7] = [
        (
            "{\"name\":",
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "{\"name\":\"a\",\"colour\":1}",
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "{\"name\":5}",
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "{}",
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "{\"name\":\"a\"}",
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "{\"name\":\"  \"}",
            Some("application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "{\"name\":\"a\",\"burst\":0}",
            Some("application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
    ];
    for (body, content_type, expected, code) in cases {
        let mut builder = Request::builder()
            .method("POST")
            .uri("/admin/v1/tenants")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        let (status, problem, ct) = call(&f.app, builder.body(Body::from(body)).unwrap()).await;
        assert_eq!(status, expected, "{body}: {problem}");
        assert_problem(&problem, &ct, code);
    }
    let tenant = create_tenant(&f.app, "acme").await;
    let uri = format!("/admin/v1/tenants/{}", tenant["id"].as_str().unwrap());
    let (status, problem, ct) = call(
        &f.app,
        admin("PATCH", &uri, Some(json!({"status": "paused"}))),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_problem(&problem, &ct, "invalid_body");
    assert!(
        problem["message"].as_str().unwrap().contains("paused"),
        "{problem}"
    );
    let big = json!({"name": "x".repeat(20_000)});
    let (status, problem, ct) = call(&f.app, admin("POST", "/admin/v1/tenants", Some(big))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_problem(&problem, &ct, "body_too_large");
    let (status, problem, ct) = call(&f.app, admin("PUT", &uri, None)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_problem(&problem, &ct, "method_not_allowed");
}

#[tokio::test]
async fn tenant_lifecycle_writes_full_state_and_tombstones() {
    let f = fixture();
    let tenant = create_tenant(&f.app, "acme").await;
    assert_eq!(tenant["status"], "active");
    assert_eq!(tenant["rate_limit_per_second"], 50);
    assert_eq!(tenant["burst"], 100);
    assert!(tenant["created_at"].as_str().unwrap().ends_with('Z'));
    let id = tenant["id"].as_str().unwrap().to_owned();
    let uri = format!("/admin/v1/tenants/{id}");

    let (status, got, _) = call(&f.app, admin("GET", &uri, None)).await;
    assert_eq!((status, &got), (StatusCode::OK, &tenant));

    let patch = json!({"status": "suspended", "rate_limit_per_second": 7, "burst": 9});
    let (status, patched, _) = call(&f.app, admin("PATCH", &uri, Some(patch))).await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["status"], "suspended");
    assert_eq!(patched["rate_limit_per_second"], 7);

    let keys_uri = format!("{uri}/keys");
    let (status, k1, _) = call(&f.app, admin("POST", &keys_uri, None)).await;
    assert_eq!(status, StatusCode::CREATED, "{k1}");
    let (_, k2, _) = call(&f.app, admin("POST", &keys_uri, None)).await;
    assert!(k1["api_key"].as_str().unwrap().starts_with("imgp_"));

    let (status, none, _) = call(&f.app, admin("DELETE", &uri, None)).await;
    assert_eq!((status, none), (StatusCode::NO_CONTENT, Value::Null));
    let (status, problem, ct) = call(&f.app, admin("GET", &uri, None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_problem(&problem, &ct, "tenant_not_found");

    let committed = f.sink.committed.lock().unwrap();
    let entities: Vec<(&str, bool)> = committed
        .iter()
        .map(|c| (c.entity_id.as_str(), c.value.is_some()))
        .collect();
    let tenant_entity = format!("tenant:{id}");
    let k1_entity = format!("key:{}", k1["key_id"].as_str().unwrap());
    let k2_entity = format!("key:{}", k2["key_id"].as_str().unwrap());
    assert_eq!(entities[0], (tenant_entity.as_str(), true));
    assert_eq!(entities[1], (tenant_entity.as_str(), true));
    // The deletion tombstones both keys and the tenant, in one commit.
    let tail: std::collections::BTreeSet<_> = entities[4..].iter().copied().collect();
    assert_eq!(
        tail,
        [
            (tenant_entity.as_str(), false),
            (k1_entity.as_str(), false),
            (k2_entity.as_str(), false)
        ]
        .into_iter()
        .collect()
    );
    // Only salted hashes are written, never the key.
    let secret = k1["api_key"].as_str().unwrap();
    let key = committed[2]
        .value
        .as_ref()
        .unwrap()
        .api_key
        .as_ref()
        .unwrap();
    assert_eq!(key.secret_hash.len(), 32);
    assert!(!format!("{key:?}").contains(&secret[secret.len() - 64..]));
}

#[tokio::test]
async fn listings_show_only_the_tenants_own_keys_without_secrets() {
    let f = fixture();
    let a = create_tenant(&f.app, "a").await;
    let b = create_tenant(&f.app, "b").await;
    let a_keys = format!("/admin/v1/tenants/{}/keys", a["id"].as_str().unwrap());
    let b_keys = format!("/admin/v1/tenants/{}/keys", b["id"].as_str().unwrap());
    let (_, ka, _) = call(&f.app, admin("POST", &a_keys, None)).await;
    let (_, kb, _) = call(&f.app, admin("POST", &b_keys, None)).await;
    let (status, list, _) = call(&f.app, admin("GET", &a_keys, None)).await;
    assert_eq!(status, StatusCode::OK);
    let listed = list["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0]["key_id"], ka["key_id"]);
    assert_eq!(listed[0]["status"], "active");
    let text = list.to_string();
    assert!(!text.contains(kb["key_id"].as_str().unwrap()));
    assert!(!text.contains("api_key") && !text.contains("hash") && !text.contains("salt"));

    // Revocation is idempotent and shows in the listing.
    let revoke = format!("/admin/v1/keys/{}", ka["key_id"].as_str().unwrap());
    assert_eq!(
        call(&f.app, admin("DELETE", &revoke, None)).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&f.app, admin("DELETE", &revoke, None)).await.0,
        StatusCode::NO_CONTENT
    );
    let (_, list, _) = call(&f.app, admin("GET", &a_keys, None)).await;
    assert_eq!(list["keys"][0]["status"], "revoked");
    let revocations = f
        .sink
        .committed
        .lock()
        .unwrap()
        .iter()
        .filter(|c| {
            c.value
                .as_ref()
                .and_then(|v| v.api_key.as_ref())
                .is_some_and(|k| k.status == KeyStatus::Revoked)
        })
        .count();
    assert_eq!(revocations, 1);

    let (status, problem, ct) = call(&f.app, admin("DELETE", "/admin/v1/keys/0000", None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_problem(&problem, &ct, "key_not_found");
    let (status, problem, ct) =
        call(&f.app, admin("POST", "/admin/v1/tenants/nope/keys", None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_problem(&problem, &ct, "tenant_not_found");
}

#[tokio::test]
async fn a_fenced_instance_answers_409_turns_not_ready_and_stops_writing() {
    let f = fixture();
    let tenant = create_tenant(&f.app, "acme").await;
    *f.sink.fail_with.lock().unwrap() = Some(StoreError::Fenced);
    let (status, problem, ct) = call(
        &f.app,
        admin("POST", "/admin/v1/tenants", Some(json!({"name": "b"}))),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_problem(&problem, &ct, "fenced");
    assert!(!f.readiness.is_ready());
    // Later writes fail fast without reaching the sink, even if it would now accept them.
    *f.sink.fail_with.lock().unwrap() = None;
    let uri = format!("/admin/v1/tenants/{}/keys", tenant["id"].as_str().unwrap());
    let (status, problem, _) = call(&f.app, admin("POST", &uri, None)).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("fenced"))
    );
    assert_eq!(f.sink.committed.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_unavailable_log_is_a_503_without_internals() {
    let f = fixture();
    *f.sink.fail_with.lock().unwrap() = Some(StoreError::Unavailable(
        "broker 127.0.0.1:9092 timed out".into(),
    ));
    let (status, problem, ct) = call(
        &f.app,
        admin("POST", "/admin/v1/tenants", Some(json!({"name": "a"}))),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_problem(&problem, &ct, "identity_unavailable");
    assert!(!problem.to_string().contains("9092"));
    assert!(
        f.readiness.is_ready(),
        "a retryable failure does not fail readiness"
    );
    *f.sink.fail_with.lock().unwrap() = None;
    create_tenant(&f.app, "a").await;
}

#[tokio::test]
async fn the_request_id_is_echoed() {
    let f = fixture();
    let mut request = admin("GET", "/admin/v1/tenants/none", None);
    request
        .headers_mut()
        .insert("x-request-id", "req-123".parse().unwrap());
    let response = f.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-123");
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["request_id"], "req-123");
}

#[tokio::test]
async fn signing_keys_are_issued_once_listed_without_values_and_revoked() {
    let f = fixture();
    let tenant = create_tenant(&f.app, "acme").await;
    let id = tenant["id"].as_str().unwrap();
    let uri = format!("/admin/v1/tenants/{id}/signing-keys");
    let (status, issued, _) = call(&f.app, admin("POST", &uri, None)).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let key_id = issued["key_id"].as_str().unwrap();
    assert_eq!(issued["tenant_id"], id);
    assert!(issued["created_at"].as_str().unwrap().ends_with('Z'));
    // Hex, 32 bytes each, and exactly what every holder of the secret derives.
    let derived = SigningSecret::parse(SIGNING_SECRET).unwrap().derive(key_id);
    assert_eq!(issued["key"], hex::encode(derived.key));
    assert_eq!(issued["salt"], hex::encode(derived.salt));
    let (key_hex, salt_hex) = (hex::encode(derived.key), hex::encode(derived.salt));

    // identity.changes gets the id, owner and status, never the values.
    {
        let committed = f.sink.committed.lock().unwrap();
        let change = committed.last().unwrap();
        assert_eq!(change.entity_id, format!("signing-key:{key_id}"));
        let written = change.value.as_ref().unwrap().signing_key.as_ref().unwrap();
        assert_eq!(
            (
                written.key_id.as_str(),
                written.tenant_id.as_str(),
                written.status
            ),
            (key_id, id, KeyStatus::Active)
        );
        let text = format!("{committed:?}");
        assert!(!text.contains(&key_hex[..16]) && !text.contains(&salt_hex[..16]));
    }

    let (_, second, _) = call(&f.app, admin("POST", &uri, None)).await;
    assert_ne!(second["key_id"], issued["key_id"]);
    assert_ne!(second["key"], issued["key"]);
    let (status, list, _) = call(&f.app, admin("GET", &uri, None)).await;
    assert_eq!(status, StatusCode::OK);
    let listed = list["signing_keys"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{list}");
    // Oldest first; two keys issued within one millisecond are ordered by their (random) ids,
    // so each is looked up by id rather than by position.
    let listed_key = |list: &Value, key_id: &Value| {
        list["signing_keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_id"] == *key_id)
            .cloned()
            .unwrap_or_else(|| panic!("{key_id} is not in {list}"))
    };
    let first = listed_key(&list, &issued["key_id"]);
    assert_eq!(first["status"], "active");
    assert_eq!(first["tenant_id"], id);
    assert_eq!(first["created_at"], issued["created_at"]);
    assert!(listed[0]["created_at"].as_str() <= listed[1]["created_at"].as_str());
    let text = list.to_string();
    assert!(!text.contains("\"key\"") && !text.contains("salt") && !text.contains(&key_hex));
    // API keys and signing keys are listed apart.
    let (_, api_keys, _) = call(
        &f.app,
        admin("GET", &format!("/admin/v1/tenants/{id}/keys"), None),
    )
    .await;
    assert_eq!(api_keys["keys"].as_array().unwrap().len(), 0);

    // Revocation is idempotent (one write) and shows in the listing.
    let revoke = format!("/admin/v1/signing-keys/{key_id}");
    for _ in 0..2 {
        let (status, body, _) = call(&f.app, admin("DELETE", &revoke, None)).await;
        assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    }
    let (_, list, _) = call(&f.app, admin("GET", &uri, None)).await;
    assert_eq!(listed_key(&list, &issued["key_id"])["status"], "revoked");
    assert_eq!(listed_key(&list, &second["key_id"])["status"], "active");
    let revocations = f
        .sink
        .committed
        .lock()
        .unwrap()
        .iter()
        .filter(|c| {
            c.value
                .as_ref()
                .and_then(|v| v.signing_key.as_ref())
                .is_some_and(|k| k.status == KeyStatus::Revoked)
        })
        .count();
    assert_eq!(revocations, 1);

    // An API key's revocation route does not reach signing keys, nor the other way round.
    let (status, problem, ct) = call(
        &f.app,
        admin("DELETE", &format!("/admin/v1/keys/{key_id}"), None),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_problem(&problem, &ct, "key_not_found");
    let (status, problem, ct) =
        call(&f.app, admin("DELETE", "/admin/v1/signing-keys/0000", None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_problem(&problem, &ct, "signing_key_not_found");
    for method in ["POST", "GET"] {
        let (status, problem, ct) = call(
            &f.app,
            admin(method, "/admin/v1/tenants/nope/signing-keys", None),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method}");
        assert_problem(&problem, &ct, "tenant_not_found");
    }
}

#[tokio::test]
async fn without_a_signing_secret_creation_is_a_503_and_nothing_is_written() {
    let f = fixture_signing(None);
    let tenant = create_tenant(&f.app, "acme").await;
    let uri = format!(
        "/admin/v1/tenants/{}/signing-keys",
        tenant["id"].as_str().unwrap()
    );
    let writes = f.sink.committed.lock().unwrap().len();
    let (status, problem, ct) = call(&f.app, admin("POST", &uri, None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_problem(&problem, &ct, "signing_disabled");
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("signing.secret")
    );
    assert_eq!(f.sink.committed.lock().unwrap().len(), writes);
    // Listing needs no secret.
    let (status, list, _) = call(&f.app, admin("GET", &uri, None)).await;
    assert_eq!(
        (status, list),
        (StatusCode::OK, json!({"signing_keys": []}))
    );
}

#[tokio::test]
async fn deleting_a_tenant_tombstones_its_signing_keys_in_the_same_commit() {
    let f = fixture();
    let tenant = create_tenant(&f.app, "acme").await;
    let id = tenant["id"].as_str().unwrap();
    let (_, issued, _) = call(
        &f.app,
        admin(
            "POST",
            &format!("/admin/v1/tenants/{id}/signing-keys"),
            None,
        ),
    )
    .await;
    let (_, api_key, _) = call(
        &f.app,
        admin("POST", &format!("/admin/v1/tenants/{id}/keys"), None),
    )
    .await;
    let (status, _, _) = call(
        &f.app,
        admin("DELETE", &format!("/admin/v1/tenants/{id}"), None),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let committed = f.sink.committed.lock().unwrap();
    let tail: std::collections::BTreeSet<(String, bool)> = committed[3..]
        .iter()
        .map(|c| (c.entity_id.clone(), c.value.is_some()))
        .collect();
    let expected: std::collections::BTreeSet<(String, bool)> = [
        format!("tenant:{id}"),
        format!("key:{}", api_key["key_id"].as_str().unwrap()),
        format!("signing-key:{}", issued["key_id"].as_str().unwrap()),
    ]
    .into_iter()
    .map(|e| (e, false))
    .collect();
    assert_eq!(tail, expected);
}

#[tokio::test]
async fn allowed_sources_are_validated_normalised_and_replaced_by_patch() {
    let f = fixture();
    let tenant = create_tenant(&f.app, "no-sources").await;
    assert_eq!(tenant["allowed_sources"], json!([]));

    let body = json!({
        "name": "acme",
        "allowed_sources": [
            "https://Images.Example.com",
            "http://127.0.0.1:8081/img/",
            "https://images.example.com/"
        ]
    });
    let (status, created, _) = call(&f.app, admin("POST", "/admin/v1/tenants", Some(body))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["allowed_sources"],
        json!(["https://images.example.com/", "http://127.0.0.1:8081/img/"])
    );
    let uri = format!("/admin/v1/tenants/{}", created["id"].as_str().unwrap());
    let (_, got, _) = call(&f.app, admin("GET", &uri, None)).await;
    assert_eq!(got["allowed_sources"], created["allowed_sources"]);
    let written = f.sink.committed.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        written.value.unwrap().tenant.unwrap().allowed_sources,
        ["https://images.example.com/", "http://127.0.0.1:8081/img/"]
    );

    // PATCH replaces the list; other fields leave it alone; [] allows nothing.
    let patch = json!({"allowed_sources": ["https://cdn.example/img/"]});
    let (status, patched, _) = call(&f.app, admin("PATCH", &uri, Some(patch))).await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(
        patched["allowed_sources"],
        json!(["https://cdn.example/img/"])
    );
    let (_, renamed, _) = call(
        &f.app,
        admin("PATCH", &uri, Some(json!({"name": "acme 2"}))),
    )
    .await;
    assert_eq!(
        renamed["allowed_sources"],
        json!(["https://cdn.example/img/"])
    );
    let (_, emptied, _) = call(
        &f.app,
        admin("PATCH", &uri, Some(json!({"allowed_sources": []}))),
    )
    .await;
    assert_eq!(emptied["allowed_sources"], json!([]));

    let too_many: Vec<String> = (0..=crate::identity_log::sources::MAX_PREFIXES)
        .map(|i| format!("https://s{i}.example/"))
        .collect();
    for sources in [
        json!(["ftp://images.example.com/"]),
        json!(["/relative/"]),
        json!(["https://user:pw@images.example.com/"]),
        json!(["https://images.example.com/?q=1"]),
        json!(too_many),
    ] {
        for (method, uri, body) in [
            (
                "POST",
                "/admin/v1/tenants",
                json!({"name": "x", "allowed_sources": sources}),
            ),
            ("PATCH", uri.as_str(), json!({"allowed_sources": sources})),
        ] {
            let (status, problem, ct) = call(&f.app, admin(method, uri, Some(body))).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{method} {sources}: {problem}"
            );
            assert_problem(&problem, &ct, "invalid_field");
            assert!(
                problem["message"]
                    .as_str()
                    .unwrap()
                    .contains("allowed_sources")
            );
        }
    }
    let (status, problem, ct) = call(
        &f.app,
        admin(
            "PATCH",
            &uri,
            Some(json!({"allowed_sources": "https://x.example/"})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_problem(&problem, &ct, "invalid_body");
}
