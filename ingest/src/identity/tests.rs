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

const TOKEN: &str = "test-admin-token-0123456789";

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
            AppState::new(Arc::new(store), &config, metrics),
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
