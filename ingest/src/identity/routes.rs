//! The admin HTTP API. Every route needs `Authorization: Bearer <identity.admin_token>`; every
//! error is `application/problem+json` `{code, message, request_id}` with a stable `code`.
//!
//! | route | |
//! |---|---|
//! | `POST /admin/v1/tenants` | create `{name, rate_limit_per_second?, burst?, allowed_sources?}` → 201 |
//! | `GET /admin/v1/tenants?after=&limit=` | list in id order, a page at a time → `{tenants, next_after}` |
//! | `GET /admin/v1/tenants/{id}` | read |
//! | `PATCH /admin/v1/tenants/{id}` | `{name?, status? (active/suspended), rate_limit_per_second?, burst?, allowed_sources?}` |
//! | `DELETE /admin/v1/tenants/{id}` | delete the tenant and all its API and signing keys → 204 |
//! | `POST /admin/v1/tenants/{id}/keys` | issue a key → 201 `{key_id, api_key, …}` (shown once) |
//! | `GET /admin/v1/tenants/{id}/keys` | list (no secrets, no hashes) |
//! | `DELETE /admin/v1/keys/{key_id}` | revoke → 204 |
//! | `POST /admin/v1/tenants/{id}/signing-keys` | issue a signing key → 201 `{key_id, key, salt, …}` (shown once) |
//! | `GET /admin/v1/tenants/{id}/signing-keys` | list (never a key or salt) |
//! | `DELETE /admin/v1/signing-keys/{key_id}` | revoke → 204 |

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, MatchedPath, Path, Query, Request, State,
};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use schemas::events::{AdminAudited, ApiKey, KeyStatus, SigningKey, Tenant, TenantStatus};
use serde::{Deserialize, Serialize};
use tower::ServiceBuilder;

use chassis::http::Problem;

use super::audit;
use super::config::MAX_RATE_LIMIT;
use super::state::AppState;
use super::store::{StoreError, TenantUpdate};
use crate::identity_log::sources;

/// Longest tenant name.
const MAX_NAME_CHARS: usize = 200;

/// The admin router, with the common HTTP face (problem+json, the caller's request ids).
pub fn app(state: AppState, http: &chassis::http::HttpConfig) -> Router {
    let limits = ServiceBuilder::new()
        .layer(axum::error_handling::HandleErrorLayer::new(
            |_: tower::BoxError| async {
                Problem::unavailable(
                    "overloaded",
                    "too many admin requests in flight; retry shortly",
                )
            },
        ))
        .load_shed()
        .concurrency_limit(state.concurrency_limit);
    let router = Router::new()
        .route("/admin/v1/tenants", post(create_tenant).get(list_tenants))
        .route(
            "/admin/v1/tenants/{tenant_id}",
            get(get_tenant).patch(update_tenant).delete(delete_tenant),
        )
        .route(
            "/admin/v1/tenants/{tenant_id}/keys",
            post(issue_key).get(list_keys),
        )
        .route("/admin/v1/keys/{key_id}", delete(revoke_key))
        .route(
            "/admin/v1/tenants/{tenant_id}/signing-keys",
            post(issue_signing_key).get(list_signing_keys),
        )
        .route(
            "/admin/v1/signing-keys/{key_id}",
            delete(revoke_signing_key),
        )
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), require_admin))
        // Outside the admin check, so refused calls are recorded too.
        .layer(middleware::from_fn_with_state(state.clone(), audit_call))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            state.request_timeout,
        ))
        .layer(limits)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state);
    chassis::http::face(router, http, chassis::http::RequestIds::AcceptFromCaller)
}

/// 422 for a field the admin sent that breaks a rule.
fn invalid(message: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::TenantNotFound => {
                Problem::new(StatusCode::NOT_FOUND, "tenant_not_found", "no such tenant")
            }
            StoreError::KeyNotFound => {
                Problem::new(StatusCode::NOT_FOUND, "key_not_found", "no such API key")
            }
            StoreError::SigningKeyNotFound => Problem::new(
                StatusCode::NOT_FOUND,
                "signing_key_not_found",
                "no such signing key",
            ),
            StoreError::Fenced => Self::new(
                StatusCode::CONFLICT,
                "fenced",
                "this identity instance was replaced by a newer one and can no longer write; \
                 send admin requests to the current instance",
            ),
            // The detail is in the log; the body says only what the caller can act on.
            StoreError::Unavailable(_) | StoreError::Broken(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "identity_unavailable",
                "identity changes cannot be written right now; retry shortly",
            ),
        }
    }
}

/// A JSON body the admin API could not take, as a problem.
#[derive(Debug)]
struct BodyRejection(Problem);

impl IntoResponse for BodyRejection {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl From<JsonRejection> for BodyRejection {
    fn from(rejection: JsonRejection) -> Self {
        Self(match rejection {
            // Serde's message names the field or value; it describes the caller's own input.
            JsonRejection::JsonDataError(e) => {
                Problem::new(StatusCode::BAD_REQUEST, "invalid_body", e.body_text())
            }
            JsonRejection::JsonSyntaxError(e) => {
                Problem::new(StatusCode::BAD_REQUEST, "malformed_body", e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "request body too large",
                )
            }
            other => Problem::new(StatusCode::BAD_REQUEST, "malformed_body", other.body_text()),
        })
    }
}

/// `Json` whose rejections are problems.
#[derive(Debug, FromRequest)]
#[from_request(via(Json), rejection(BodyRejection))]
struct AdminJson<T>(T);

/// Request metrics by route, method and status.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    state
        .metrics
        .requests
        .with_label_values(&[route.as_str(), method.as_str(), status.as_str()])
        .inc();
    state
        .metrics
        .request_duration
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Refuses requests without the admin token, with the `unauthenticated` code every server uses
/// for a missing or wrong credential. The token is compared as a SHA-256 digest in
/// constant time and never logged.
async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match chassis::http::bearer_token(request.headers()) {
        None => Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "missing admin bearer token",
        )
        .into_response(),
        Some(token) => {
            if state.is_admin_token(token) {
                next.run(request).await
            } else {
                Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "invalid admin token",
                )
                .into_response()
            }
        }
    }
}

/// Records every admin call on the audit trail once its answer is known (outside the admin
/// check, so refused calls are recorded too).
async fn audit_call(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(writer) = state.audit().cloned() else {
        return next.run(request).await;
    };
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let action = format!("{} {route}", request.method());
    let path = request.uri().path().to_owned();
    let token = chassis::http::bearer_token(request.headers());
    let authenticated = token.is_some_and(|t| state.is_admin_token(t));
    let actor = audit::actor(token);
    let remote_addr = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string());
    // The id the HTTP face gave this call (the caller's X-Request-Id, or a new one).
    let request_id = request
        .extensions()
        .get::<chassis::http::RequestId>()
        .map(|id| id.0.to_string())
        .or_else(|| {
            request
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let mut key_id = audit::path_param(&route, &path, "key_id");
    // A key's routes name only the key: its owner is looked up, so the trail of a tenant shows
    // its keys' revocations too.
    let signing = route.starts_with("/admin/v1/signing-keys/");
    let mut tenant_id = audit::path_param(&route, &path, "tenant_id").or_else(|| {
        key_id.as_deref().and_then(|k| {
            if signing {
                state.store().signing_key_owner(k)
            } else {
                state.store().key_owner(k)
            }
        })
    });

    let response = next.run(request).await;
    let status = response.status();
    // What a call created is named only in its answer (a new tenant's or key's id): read the
    // small JSON body back for those two ids, and nothing else of it (a new key's body also
    // holds the key itself, or a signing key's key and salt, which must never reach the trail).
    let response = if status.is_success() && (tenant_id.is_none() || key_id.is_none()) {
        let (parts, body) = response.into_parts();
        match axum::body::to_bytes(body, audit::MAX_BODY_INSPECTED).await {
            Ok(bytes) => {
                if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    let field =
                        |name: &str| json.get(name).and_then(|v| v.as_str()).map(str::to_owned);
                    tenant_id = tenant_id
                        .or_else(|| field("tenant_id"))
                        .or_else(|| field("id"));
                    key_id = key_id.or_else(|| field("key_id"));
                }
                Response::from_parts(parts, Body::from(bytes))
            }
            Err(_) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the answer could not be sent",
            )
            .into_response(),
        }
    } else {
        response
    };
    let record = AdminAudited {
        audit_id: uuid::Uuid::now_v7().to_string(),
        at_ms,
        actor,
        authenticated,
        action,
        tenant_id,
        key_id,
        status: i32::from(status.as_u16()),
        remote_addr,
        request_id,
    };
    if let Err(error) = writer.write(&record).await {
        state.metrics().audit_failures.inc();
        tracing::warn!(%error, action = %record.action, request_id = %record.request_id, "Audit record not written");
    }
    response
}

/// A tenant as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TenantBody {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `active` or `suspended`.
    pub status: StatusValue,
    /// Sustained requests per second.
    pub rate_limit_per_second: i32,
    /// Burst size.
    pub burst: i32,
    /// URL prefixes the tenant's signed GET URLs may fetch from, normalised; empty: none.
    pub allowed_sources: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
}

/// One page of the tenant listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TenantList {
    /// In id order.
    pub tenants: Vec<TenantBody>,
    /// The `after` of the next page; absent on the last one.
    pub next_after: Option<String>,
}

/// A key as listings show it: no secret, no hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyBody {
    /// Public id.
    pub key_id: String,
    /// Owner.
    pub tenant_id: String,
    /// `active` or `revoked`.
    pub status: String,
    /// RFC 3339.
    pub created_at: String,
}

/// A newly issued key, with the full key string shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IssuedKeyBody {
    /// Public id.
    pub key_id: String,
    /// Owner.
    pub tenant_id: String,
    /// The key to put in `Authorization: Bearer …`; not retrievable later.
    pub api_key: String,
    /// RFC 3339.
    pub created_at: String,
}

/// A tenant's keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyList {
    /// Oldest first, revoked ones included.
    pub keys: Vec<KeyBody>,
}

/// A signing key as listings show it: never its key or salt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SigningKeyBody {
    /// Public id, the first path segment of every URL signed with it.
    pub key_id: String,
    /// Owner.
    pub tenant_id: String,
    /// `active` or `revoked`.
    pub status: String,
    /// RFC 3339.
    pub created_at: String,
}

/// A newly issued signing key, with its key and salt shown this once: what imgproxy's URL
/// builders take as `IMGPROXY_KEY` and `IMGPROXY_SALT`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IssuedSigningKeyBody {
    /// Public id, the first path segment of every URL signed with it.
    pub key_id: String,
    /// Owner.
    pub tenant_id: String,
    /// HMAC key of the URL signature, 32 bytes as hex.
    pub key: String,
    /// Salt of the URL signature, 32 bytes as hex.
    pub salt: String,
    /// RFC 3339.
    pub created_at: String,
}

/// A tenant's signing keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SigningKeyList {
    /// Oldest first, revoked ones included.
    pub signing_keys: Vec<SigningKeyBody>,
}

/// Tenant status on the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StatusValue {
    /// May call the api.
    Active,
    /// Refused with 403.
    Suspended,
}

impl From<TenantStatus> for StatusValue {
    fn from(status: TenantStatus) -> Self {
        match status {
            TenantStatus::Active => Self::Active,
            TenantStatus::Suspended => Self::Suspended,
        }
    }
}

impl From<StatusValue> for TenantStatus {
    fn from(status: StatusValue) -> Self {
        match status {
            StatusValue::Active => Self::Active,
            StatusValue::Suspended => Self::Suspended,
        }
    }
}

fn rfc3339(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

impl From<Tenant> for TenantBody {
    fn from(t: Tenant) -> Self {
        Self {
            id: t.id,
            name: t.name,
            status: t.status.into(),
            rate_limit_per_second: t.rate_limit_per_second,
            burst: t.burst,
            allowed_sources: t.allowed_sources,
            created_at: rfc3339(t.created_at_ms),
        }
    }
}

fn key_status(status: KeyStatus) -> String {
    match status {
        KeyStatus::Active => "active",
        KeyStatus::Revoked => "revoked",
    }
    .to_owned()
}

impl From<ApiKey> for KeyBody {
    fn from(k: ApiKey) -> Self {
        Self {
            key_id: k.key_id,
            tenant_id: k.tenant_id,
            status: key_status(k.status),
            created_at: rfc3339(k.created_at_ms),
        }
    }
}

impl From<SigningKey> for SigningKeyBody {
    fn from(k: SigningKey) -> Self {
        Self {
            key_id: k.key_id,
            tenant_id: k.tenant_id,
            status: key_status(k.status),
            created_at: rfc3339(k.created_at_ms),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    name: String,
    rate_limit_per_second: Option<i32>,
    burst: Option<i32>,
    allowed_sources: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchTenant {
    name: Option<String>,
    status: Option<StatusValue>,
    rate_limit_per_second: Option<i32>,
    burst: Option<i32>,
    allowed_sources: Option<Vec<String>>,
}

fn check_name(name: &str) -> Result<String, Problem> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(format!(
            "name must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    Ok(name.to_owned())
}

fn check_quota(field: &str, value: i32) -> Result<i32, Problem> {
    if (1..=MAX_RATE_LIMIT).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(format!(
            "{field} must be between 1 and {MAX_RATE_LIMIT}"
        )))
    }
}

/// Validates and normalises a tenant's allowed source prefixes (duplicates dropped, order kept).
fn check_sources(prefixes: &[String]) -> Result<Vec<String>, Problem> {
    if prefixes.len() > sources::MAX_PREFIXES {
        return Err(invalid(format!(
            "allowed_sources may hold at most {} prefixes",
            sources::MAX_PREFIXES
        )));
    }
    let mut normalised: Vec<String> = Vec::with_capacity(prefixes.len());
    for prefix in prefixes {
        let prefix = sources::normalise_prefix(prefix)
            .map_err(|rule| invalid(format!("allowed_sources: {rule}")))?;
        if !normalised.contains(&prefix) {
            normalised.push(prefix);
        }
    }
    Ok(normalised)
}

/// 503 for a signing-key creation while `signing.secret` is not configured.
fn signing_disabled() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "signing_disabled",
        "signing keys cannot be issued: this identity service has no signing.secret configured",
    )
}

/// Runs a write to completion even if the request is dropped (client gone, timeout): an
/// abandoned future would leave the transactional producer mid-transaction.
async fn detached<T: Send + 'static>(
    write: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, Problem> {
    match tokio::spawn(write).await {
        Ok(result) => result.map_err(Problem::from),
        Err(error) => {
            tracing::error!(%error, "Identity write task failed");
            Err(Problem::from(StoreError::Unavailable(error.to_string())))
        }
    }
}

async fn create_tenant(
    State(state): State<AppState>,
    AdminJson(body): AdminJson<CreateTenant>,
) -> Result<(StatusCode, Json<TenantBody>), Problem> {
    let name = check_name(&body.name)?;
    let rate = check_quota(
        "rate_limit_per_second",
        body.rate_limit_per_second
            .unwrap_or(state.default_rate_limit_per_second),
    )?;
    let burst = check_quota("burst", body.burst.unwrap_or(state.default_burst))?;
    let allowed_sources = check_sources(body.allowed_sources.as_deref().unwrap_or_default())?;
    let store = state.store.clone();
    let tenant = detached(async move {
        store
            .create_tenant(name, rate, burst, allowed_sources)
            .await
    })
    .await?;
    tracing::info!(tenant_id = %tenant.id, "Tenant created");
    Ok((StatusCode::CREATED, Json(tenant.into())))
}

async fn get_tenant(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> Result<Json<TenantBody>, Problem> {
    Ok(Json(state.store.tenant(&tenant_id)?.into()))
}

/// Tenants a listing page holds when the caller does not say.
const DEFAULT_PAGE: usize = 100;
/// Tenants a listing page holds at most.
const MAX_PAGE: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListTenants {
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_tenants(
    State(state): State<AppState>,
    query: Result<Query<ListTenants>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TenantList>, Problem> {
    let Query(query) = query.map_err(|rejection| {
        invalid(format!(
            "{}; the listing takes after (a tenant id) and limit (1 to {MAX_PAGE})",
            rejection.body_text()
        ))
    })?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let (tenants, more) = state.store.tenants(query.after.as_deref(), limit);
    let next_after = more.then(|| tenants.last().map(|t| t.id.clone())).flatten();
    Ok(Json(TenantList {
        tenants: tenants.into_iter().map(TenantBody::from).collect(),
        next_after,
    }))
}

async fn update_tenant(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    AdminJson(body): AdminJson<PatchTenant>,
) -> Result<Json<TenantBody>, Problem> {
    let update = TenantUpdate {
        name: body.name.as_deref().map(check_name).transpose()?,
        status: body.status.map(TenantStatus::from),
        rate_limit_per_second: body
            .rate_limit_per_second
            .map(|v| check_quota("rate_limit_per_second", v))
            .transpose()?,
        burst: body.burst.map(|v| check_quota("burst", v)).transpose()?,
        allowed_sources: body
            .allowed_sources
            .as_deref()
            .map(check_sources)
            .transpose()?,
    };
    let store = state.store.clone();
    let id = tenant_id.clone();
    let tenant = detached(async move { store.update_tenant(&id, update).await }).await?;
    tracing::info!(%tenant_id, status = ?tenant.status, "Tenant updated");
    Ok(Json(tenant.into()))
}

async fn delete_tenant(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> Result<StatusCode, Problem> {
    let store = state.store.clone();
    let id = tenant_id.clone();
    detached(async move { store.delete_tenant(&id).await }).await?;
    tracing::info!(%tenant_id, "Tenant deleted with its keys");
    Ok(StatusCode::NO_CONTENT)
}

async fn issue_key(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> Result<(StatusCode, Json<IssuedKeyBody>), Problem> {
    let store = state.store.clone();
    let issued = detached(async move { store.issue_key(&tenant_id).await }).await?;
    tracing::info!(tenant_id = %issued.key.tenant_id, key_id = %issued.key.key_id, "API key issued");
    Ok((
        StatusCode::CREATED,
        Json(IssuedKeyBody {
            created_at: rfc3339(issued.key.created_at_ms),
            key_id: issued.key.key_id,
            tenant_id: issued.key.tenant_id,
            api_key: issued.api_key,
        }),
    ))
}

async fn list_keys(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> Result<Json<KeyList>, Problem> {
    let keys = state.store.keys(&tenant_id)?;
    Ok(Json(KeyList {
        keys: keys.into_iter().map(KeyBody::from).collect(),
    }))
}

async fn revoke_key(
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<StatusCode, Problem> {
    let store = state.store.clone();
    let id = key_id.clone();
    detached(async move { store.revoke_key(&id).await }).await?;
    tracing::info!(%key_id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

async fn issue_signing_key(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> Result<(StatusCode, Json<IssuedSigningKeyBody>), Problem> {
    // Refused before anything is written: a key nobody can be told the values of is useless.
    let Some(secret) = state.signing.clone() else {
        return Err(signing_disabled());
    };
    let store = state.store.clone();
    let key = detached(async move { store.issue_signing_key(&tenant_id).await }).await?;
    let derived = secret.derive(&key.key_id);
    tracing::info!(tenant_id = %key.tenant_id, key_id = %key.key_id, "Signing key issued");
    Ok((
        StatusCode::CREATED,
        Json(IssuedSigningKeyBody {
            created_at: rfc3339(key.created_at_ms),
            key: hex::encode(derived.key),
            salt: hex::encode(derived.salt),
            key_id: key.key_id,
            tenant_id: key.tenant_id,
        }),
    ))
}

async fn list_signing_keys(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> Result<Json<SigningKeyList>, Problem> {
    let keys = state.store.signing_keys(&tenant_id)?;
    Ok(Json(SigningKeyList {
        signing_keys: keys.into_iter().map(SigningKeyBody::from).collect(),
    }))
}

async fn revoke_signing_key(
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<StatusCode, Problem> {
    let store = state.store.clone();
    let id = key_id.clone();
    detached(async move { store.revoke_signing_key(&id).await }).await?;
    tracing::info!(%key_id, "Signing key revoked");
    Ok(StatusCode::NO_CONTENT)
}
