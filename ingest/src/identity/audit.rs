//! The audit trail: every admin API call — who (a fingerprint of the presented token, never the
//! token), what (method, route, the tenant and key acted on), when, from where, and how it ended
//! — as one `AdminAudited` record on `identity.audit`. Refused calls (401) are recorded too: a
//! stream of them is someone trying tokens.
//!
//! The record is written after the answer is known and before it is sent, so a client that got
//! an answer can find its call in the trail; if Kafka does not take the record within
//! [`AUDIT_TIMEOUT`] the answer still goes out, and the loss is counted and logged (without the
//! token or any key).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chassis::kafka::{KafkaConfig, KafkaSetupError, ProducerProfile};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::Codec;
use schemas::events::{AdminAudited, Event};
use sha2::{Digest, Sha256};

use super::routes::AppState;

/// How long an admin call waits for its audit record to be acknowledged.
pub const AUDIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer body read back for the id of what a call created.
const MAX_BODY_INSPECTED: usize = 64 * 1024;

/// Writes audit records to `identity.audit`.
pub struct AuditWriter {
    producer: FutureProducer,
    codec: Codec,
    topic: String,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl AuditWriter {
    /// A writer for the deployment of `kafka`, encoding through `codec`.
    pub fn new(kafka: &KafkaConfig, codec: Codec) -> Result<Self, KafkaSetupError> {
        Ok(Self {
            producer: kafka.producer_for(ProducerProfile::LowLatency, "audit producer")?,
            topic: codec.topic::<AdminAudited>(),
            codec,
        })
    }

    /// Writes `record`, waiting for the acknowledgement at most [`AUDIT_TIMEOUT`].
    pub async fn write(&self, record: &AdminAudited) -> Result<(), String> {
        let payload = self
            .codec
            .encode(record)
            .await
            .map_err(|e| format!("encoding: {e}"))?;
        let key = record.tenant_id.clone().unwrap_or_default();
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(&key).payload(&payload),
                AUDIT_TIMEOUT,
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| format!("producing to {}: {e}", self.topic))
    }
}

/// Who presented `token`: a fingerprint that tells tokens apart (and the same token apart from
/// a new one after rotation) without revealing anything usable: the first 12 hex digits of
/// SHA-256 of the token's SHA-256 (the digest the service keeps is not derivable from it).
pub fn actor(token: Option<&str>) -> String {
    match token {
        None => "anonymous".to_owned(),
        Some(token) => {
            let digest = Sha256::digest(Sha256::digest(token.as_bytes()));
            format!("admin:{}", &hex::encode(digest)[..12])
        }
    }
}

/// The value of `{name}` in `template` matched against `path`.
pub fn path_param(template: &str, path: &str, name: &str) -> Option<String> {
    let wanted = format!("{{{name}}}");
    template
        .split('/')
        .zip(path.split('/'))
        .find(|(t, _)| *t == wanted)
        .map(|(_, value)| value.to_owned())
}

/// Middleware: records every admin call once its answer is known.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
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
    let actor = actor(token);
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
    let mut key_id = path_param(&route, &path, "key_id");
    // A key's routes name only the key: its owner is looked up, so the trail of a tenant shows
    // its keys' revocations too.
    let mut tenant_id = path_param(&route, &path, "tenant_id")
        .or_else(|| key_id.as_deref().and_then(|k| state.store().key_owner(k)));

    let response = next.run(request).await;
    let status = response.status();
    // What a call created is named only in its answer (a new tenant's or key's id): read the
    // small JSON body back for those two ids, and nothing else of it (a new key's body also
    // holds the key itself, which must never reach the trail).
    let response = if status.is_success() && (tenant_id.is_none() || key_id.is_none()) {
        let (parts, body) = response.into_parts();
        match axum::body::to_bytes(body, MAX_BODY_INSPECTED).await {
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
            Err(_) => chassis::http::Problem::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
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

/// The topic's base name, for readers.
pub const TOPIC: &str = <AdminAudited as Event>::TOPIC;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actor_tells_tokens_apart_without_revealing_them() {
        let a = actor(Some("secret-token-a"));
        assert!(
            a.starts_with("admin:") && a.len() == "admin:".len() + 12,
            "{a}"
        );
        assert_ne!(a, actor(Some("secret-token-b")));
        assert_eq!(a, actor(Some("secret-token-a")));
        assert!(!a.contains("secret"));
        // Not the digest the service compares against either.
        let stored = hex::encode(Sha256::digest(b"secret-token-a"));
        assert!(!stored.starts_with(&a["admin:".len()..]));
        assert_eq!(actor(None), "anonymous");
    }

    #[test]
    fn path_parameters_come_from_the_matched_route() {
        let route = "/admin/v1/tenants/{tenant_id}/keys";
        assert_eq!(
            path_param(route, "/admin/v1/tenants/t-9/keys", "tenant_id").as_deref(),
            Some("t-9")
        );
        assert_eq!(
            path_param(route, "/admin/v1/tenants/t-9/keys", "key_id"),
            None
        );
        assert_eq!(
            path_param("/admin/v1/keys/{key_id}", "/admin/v1/keys/k-1", "key_id").as_deref(),
            Some("k-1")
        );
    }
}
