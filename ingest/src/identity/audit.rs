//! The audit trail: every admin API call — who (a fingerprint of the presented token, never the
//! token), what (method, route, the tenant and key acted on), when, from where, and how it ended
//! — as one `AdminAudited` record on `identity.audit`. Refused calls (401) are recorded too: a
//! stream of them is someone trying tokens.
//!
//! This module is the trail itself: the record's writer, who an actor is, and which tenant or
//! key a route names. The admin router's layer (`routes::audit_call`) writes the record after
//! the answer is known and before it is sent, so a client that got an answer can find its call
//! in the trail; if Kafka does not take the record within [`AUDIT_TIMEOUT`] the answer still goes
//! out, and the loss is counted and logged (without the token or any key).

use std::time::Duration;

use chassis::kafka::{KafkaConfig, KafkaSetupError, ProducerProfile};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::Codec;
use schemas::events::{AdminAudited, Event};
use sha2::{Digest, Sha256};

/// How long an admin call waits for its audit record to be acknowledged.
pub const AUDIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer body read back for the id of what a call created.
pub const MAX_BODY_INSPECTED: usize = 64 * 1024;

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
