//! The identity service's state and its only write path.
//!
//! `identity.changes` is the system of record. On start the state is rebuilt by reading the topic
//! from the beginning to the end offsets; afterwards every change goes through one Kafka
//! transaction (a tenant deletion tombstones the tenant and all its API and signing keys
//! atomically) and reaches
//! memory only once committed, so memory never holds what the topic does not. Writes are
//! serialised: one transactional producer runs one transaction at a time, and the order of
//! commits is the order of the log.
//!
//! The producer's transactional id is fixed (`identity`, namespaced), so starting a second
//! instance fences this one: its next write fails, it answers 409 `fenced`, logs an ERROR and
//! turns not ready, and it never writes again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chassis::{Readiness, Shutdown};
use futures::future::BoxFuture;
use rdkafka::Message;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use schemas::Codec;
use schemas::events::{ApiKey, IdentityChange, KeyStatus, SigningKey, Tenant, TenantStatus};

use super::metrics::IdentityMetrics;
use crate::identity_log::changes::{
    ChangeRecord, ChangesError, ChangesReader, EntityId, key_entity, signing_key_entity,
    tenant_entity,
};
use crate::identity_log::keys;

/// Name of the identity service's readiness check.
pub const READINESS_CHECK: &str = "identity";

/// One record to write: an entity's full new state, or `None` to delete it (tombstone).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `tenant:<id>`, `key:<id>` or `signing-key:<id>`.
    pub entity_id: String,
    /// The new state; `None` writes a tombstone.
    pub value: Option<IdentityChange>,
}

/// Where committed changes go. Kafka in production ([`KafkaSink`]); tests swap in fakes.
pub trait ChangeSink: Send + Sync + 'static {
    /// Writes `changes` atomically: all become visible, or none.
    fn commit<'a>(&'a self, changes: &'a [Change]) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Why an identity operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    // Retryable.
    /// Kafka or the schema registry did not accept the write; nothing was committed (or, after a
    /// commit timeout, the outcome is unknown). Safe to retry.
    #[error("identity.changes is unavailable: {0}")]
    Unavailable(String),
    // Permanent.
    /// A newer identity instance took over the transactional id; this one can never write again.
    #[error("this identity instance was fenced by a newer one")]
    Fenced,
    /// The transactional producer failed fatally for another reason.
    #[error("the identity.changes producer failed fatally: {0}")]
    Broken(String),
    /// No such tenant.
    #[error("tenant not found")]
    TenantNotFound,
    /// No such key.
    #[error("API key not found")]
    KeyNotFound,
    /// No such signing key.
    #[error("signing key not found")]
    SigningKeyNotFound,
}

impl StoreError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Tenants, API keys and signing keys by id, as committed to `identity.changes`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreState {
    tenants: BTreeMap<String, Tenant>,
    keys: BTreeMap<String, ApiKey>,
    signing_keys: BTreeMap<String, SigningKey>,
}

impl StoreState {
    /// Applies one committed record.
    pub fn apply(&mut self, entity_id: &str, value: Option<&IdentityChange>) {
        match (EntityId::parse(entity_id), value) {
            (
                Some(EntityId::Tenant(id)),
                Some(IdentityChange {
                    tenant: Some(t), ..
                }),
            ) => {
                self.tenants.insert(id.to_owned(), t.clone());
            }
            (Some(EntityId::Tenant(id)), None) => {
                self.tenants.remove(id);
            }
            (
                Some(EntityId::Key(id)),
                Some(IdentityChange {
                    api_key: Some(k), ..
                }),
            ) => {
                self.keys.insert(id.to_owned(), k.clone());
            }
            (Some(EntityId::Key(id)), None) => {
                self.keys.remove(id);
            }
            (
                Some(EntityId::SigningKey(id)),
                Some(IdentityChange {
                    signing_key: Some(k),
                    ..
                }),
            ) => {
                self.signing_keys.insert(id.to_owned(), k.clone());
            }
            (Some(EntityId::SigningKey(id)), None) => {
                self.signing_keys.remove(id);
            }
            // `changes::decode` and this module only produce consistent records.
            _ => tracing::warn!(
                entity_id,
                "Identity change does not fit its entity; skipped"
            ),
        }
    }
}

/// What an admin may change on a tenant; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantUpdate {
    /// New display name.
    pub name: Option<String>,
    /// New status.
    pub status: Option<TenantStatus>,
    /// New sustained rate.
    pub rate_limit_per_second: Option<i32>,
    /// New burst.
    pub burst: Option<i32>,
    /// New allowed source prefixes (already validated and normalised), replacing the old list.
    pub allowed_sources: Option<Vec<String>>,
}

/// A newly issued key: its stored state and the full key string, shown once.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    /// The state written to `identity.changes` (salted hash only).
    pub key: ApiKey,
    /// `imgp_<key_id>_<secret>`; never stored.
    pub api_key: String,
}

/// The identity service's state and write path.
pub struct IdentityStore {
    state: RwLock<StoreState>,
    sink: Arc<dyn ChangeSink>,
    /// Serialises transactions; held across the commit, which a std lock must never be.
    writes: tokio::sync::Mutex<()>,
    /// Set once fenced or fatally failed: later writes fail fast.
    dead: AtomicBool,
    readiness: Readiness,
    metrics: IdentityMetrics,
}

impl std::fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityStore")
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl IdentityStore {
    /// A store over `state` (rebuilt from the topic) writing through `sink`.
    pub fn new(
        state: StoreState,
        sink: Arc<dyn ChangeSink>,
        readiness: Readiness,
        metrics: IdentityMetrics,
    ) -> Self {
        metrics.tenants.set(state.tenants.len() as i64);
        metrics.keys.set(state.keys.len() as i64);
        metrics.signing_keys.set(state.signing_keys.len() as i64);
        Self {
            state: RwLock::new(state),
            sink,
            writes: tokio::sync::Mutex::new(()),
            dead: AtomicBool::new(false),
            readiness,
            metrics,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, StoreState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// One tenant.
    pub fn tenant(&self, tenant_id: &str) -> Result<Tenant, StoreError> {
        self.read()
            .tenants
            .get(tenant_id)
            .cloned()
            .ok_or(StoreError::TenantNotFound)
    }

    /// Up to `limit` tenants in id order, starting after `after` (exclusive): one page of the
    /// listing, and whether more follow.
    pub fn tenants(&self, after: Option<&str>, limit: usize) -> (Vec<Tenant>, bool) {
        use std::ops::Bound;
        let state = self.read();
        let start = after.map_or(Bound::Unbounded, |id| Bound::Excluded(id.to_owned()));
        let mut page = state
            .tenants
            .range((start, Bound::Unbounded))
            .map(|(_, tenant)| tenant.clone());
        let tenants: Vec<Tenant> = page.by_ref().take(limit).collect();
        let more = page.next().is_some();
        (tenants, more)
    }

    /// The tenant that owns key `key_id` (revoked keys included).
    pub fn key_owner(&self, key_id: &str) -> Option<String> {
        self.read().keys.get(key_id).map(|k| k.tenant_id.clone())
    }

    /// The tenant that owns signing key `key_id` (revoked keys included).
    pub fn signing_key_owner(&self, key_id: &str) -> Option<String> {
        self.read()
            .signing_keys
            .get(key_id)
            .map(|k| k.tenant_id.clone())
    }

    /// A tenant's signing keys (revoked ones too), oldest first.
    pub fn signing_keys(&self, tenant_id: &str) -> Result<Vec<SigningKey>, StoreError> {
        let state = self.read();
        if !state.tenants.contains_key(tenant_id) {
            return Err(StoreError::TenantNotFound);
        }
        let mut keys: Vec<SigningKey> = state
            .signing_keys
            .values()
            .filter(|k| k.tenant_id == tenant_id)
            .cloned()
            .collect();
        keys.sort_by(|a, b| (a.created_at_ms, &a.key_id).cmp(&(b.created_at_ms, &b.key_id)));
        Ok(keys)
    }

    /// A tenant's keys (revoked ones too), oldest first.
    pub fn keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let state = self.read();
        if !state.tenants.contains_key(tenant_id) {
            return Err(StoreError::TenantNotFound);
        }
        let mut keys: Vec<ApiKey> = state
            .keys
            .values()
            .filter(|k| k.tenant_id == tenant_id)
            .cloned()
            .collect();
        keys.sort_by(|a, b| (a.created_at_ms, &a.key_id).cmp(&(b.created_at_ms, &b.key_id)));
        Ok(keys)
    }

    /// Creates a tenant.
    pub async fn create_tenant(
        &self,
        name: String,
        rate_limit_per_second: i32,
        burst: i32,
        allowed_sources: Vec<String>,
    ) -> Result<Tenant, StoreError> {
        let _write = self.writes.lock().await;
        let tenant = Tenant {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name,
            status: TenantStatus::Active,
            rate_limit_per_second,
            burst,
            created_at_ms: now_ms(),
            allowed_sources,
        };
        self.write(vec![tenant_change(&tenant)]).await?;
        Ok(tenant)
    }

    /// Changes a tenant's name, status, quota or allowed sources.
    pub async fn update_tenant(
        &self,
        tenant_id: &str,
        update: TenantUpdate,
    ) -> Result<Tenant, StoreError> {
        let _write = self.writes.lock().await;
        let current = self.tenant(tenant_id)?;
        let updated = Tenant {
            name: update.name.unwrap_or_else(|| current.name.clone()),
            status: update.status.unwrap_or(current.status),
            rate_limit_per_second: update
                .rate_limit_per_second
                .unwrap_or(current.rate_limit_per_second),
            burst: update.burst.unwrap_or(current.burst),
            allowed_sources: update
                .allowed_sources
                .unwrap_or_else(|| current.allowed_sources.clone()),
            ..current.clone()
        };
        if updated != current {
            self.write(vec![tenant_change(&updated)]).await?;
        }
        Ok(updated)
    }

    /// Deletes a tenant and every API and signing key it owns in one transaction: its keys stop
    /// working at once.
    pub async fn delete_tenant(&self, tenant_id: &str) -> Result<(), StoreError> {
        let _write = self.writes.lock().await;
        let owned: Vec<String> = {
            let state = self.read();
            if !state.tenants.contains_key(tenant_id) {
                return Err(StoreError::TenantNotFound);
            }
            let api_keys = state
                .keys
                .values()
                .filter(|k| k.tenant_id == tenant_id)
                .map(|k| key_entity(&k.key_id));
            let signing_keys = state
                .signing_keys
                .values()
                .filter(|k| k.tenant_id == tenant_id)
                .map(|k| signing_key_entity(&k.key_id));
            api_keys.chain(signing_keys).collect()
        };
        let mut changes: Vec<Change> = owned
            .into_iter()
            .map(|entity_id| Change {
                entity_id,
                value: None,
            })
            .collect();
        changes.push(Change {
            entity_id: tenant_entity(tenant_id),
            value: None,
        });
        self.write(changes).await
    }

    /// Issues a new key for a tenant. Rotation is issuing a new key, then revoking the old one.
    pub async fn issue_key(&self, tenant_id: &str) -> Result<IssuedKey, StoreError> {
        let _write = self.writes.lock().await;
        self.tenant(tenant_id)?;
        let issued = keys::issue();
        let key = ApiKey {
            key_id: issued.key_id,
            tenant_id: tenant_id.to_owned(),
            salt: issued.salt,
            secret_hash: issued.secret_hash.to_vec(),
            status: KeyStatus::Active,
            created_at_ms: now_ms(),
        };
        self.write(vec![key_change(&key)]).await?;
        Ok(IssuedKey {
            key,
            api_key: issued.api_key,
        })
    }

    /// Revokes a key; revoking a revoked key changes nothing.
    pub async fn revoke_key(&self, key_id: &str) -> Result<(), StoreError> {
        let _write = self.writes.lock().await;
        let current = self
            .read()
            .keys
            .get(key_id)
            .cloned()
            .ok_or(StoreError::KeyNotFound)?;
        if current.status == KeyStatus::Revoked {
            return Ok(());
        }
        let revoked = ApiKey {
            status: KeyStatus::Revoked,
            ..current
        };
        self.write(vec![key_change(&revoked)]).await
    }

    /// Records a new signing key for a tenant. Only its id, owner and status are written: its key
    /// and salt are derived from the id by whoever holds the signing secret. Rotation is issuing
    /// a new key, then revoking the old one.
    pub async fn issue_signing_key(&self, tenant_id: &str) -> Result<SigningKey, StoreError> {
        let _write = self.writes.lock().await;
        self.tenant(tenant_id)?;
        let key = SigningKey {
            key_id: crate::signing::new_key_id(),
            tenant_id: tenant_id.to_owned(),
            status: KeyStatus::Active,
            created_at_ms: now_ms(),
        };
        self.write(vec![signing_key_change(&key)]).await?;
        Ok(key)
    }

    /// Revokes a signing key; revoking a revoked key changes nothing.
    pub async fn revoke_signing_key(&self, key_id: &str) -> Result<(), StoreError> {
        let _write = self.writes.lock().await;
        let current = self
            .read()
            .signing_keys
            .get(key_id)
            .cloned()
            .ok_or(StoreError::SigningKeyNotFound)?;
        if current.status == KeyStatus::Revoked {
            return Ok(());
        }
        let revoked = SigningKey {
            status: KeyStatus::Revoked,
            ..current
        };
        self.write(vec![signing_key_change(&revoked)]).await
    }

    /// Commits `changes`, then applies them to memory. Callers hold `self.writes`.
    async fn write(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        if self.dead.load(Ordering::Acquire) {
            return Err(StoreError::Fenced);
        }
        let started = Instant::now();
        let result = self.sink.commit(&changes).await;
        self.metrics
            .write_duration
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => {
                self.metrics.writes.with_label_values(&["ok"]).inc();
                let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
                for change in &changes {
                    state.apply(&change.entity_id, change.value.as_ref());
                }
                self.metrics.tenants.set(state.tenants.len() as i64);
                self.metrics.keys.set(state.keys.len() as i64);
                self.metrics
                    .signing_keys
                    .set(state.signing_keys.len() as i64);
            }
            Err(StoreError::Fenced) => {
                self.metrics.writes.with_label_values(&["fenced"]).inc();
                self.metrics.fenced.set(1);
                self.dead.store(true, Ordering::Release);
                self.readiness.not_ready(
                    READINESS_CHECK,
                    "fenced by a newer identity instance; this one can no longer write",
                );
                tracing::error!(
                    "Identity instance fenced by a newer one; writes refused. Stop this instance"
                );
            }
            Err(StoreError::Broken(reason)) => {
                self.metrics.writes.with_label_values(&["failed"]).inc();
                self.dead.store(true, Ordering::Release);
                self.readiness.not_ready(
                    READINESS_CHECK,
                    "identity.changes producer failed fatally; restart this instance",
                );
                tracing::error!(%reason, "Identity producer failed fatally; writes refused. Restart this instance");
            }
            Err(error) => {
                self.metrics
                    .writes
                    .with_label_values(&["unavailable"])
                    .inc();
                tracing::warn!(%error, "Identity change not written");
            }
        }
        result.map_err(|e| match e {
            // A fatal producer state other than fencing is reported as fenced to nobody: callers
            // see 503, operators see the ERROR above.
            StoreError::Broken(reason) => StoreError::Unavailable(reason),
            other => other,
        })
    }
}

fn tenant_change(tenant: &Tenant) -> Change {
    let entity_id = tenant_entity(&tenant.id);
    Change {
        value: Some(IdentityChange {
            entity_id: entity_id.clone(),
            changed_at_ms: now_ms(),
            tenant: Some(tenant.clone()),
            api_key: None,
            signing_key: None,
        }),
        entity_id,
    }
}

fn key_change(key: &ApiKey) -> Change {
    let entity_id = key_entity(&key.key_id);
    Change {
        value: Some(IdentityChange {
            entity_id: entity_id.clone(),
            changed_at_ms: now_ms(),
            tenant: None,
            api_key: Some(key.clone()),
            signing_key: None,
        }),
        entity_id,
    }
}

fn signing_key_change(key: &SigningKey) -> Change {
    let entity_id = signing_key_entity(&key.key_id);
    Change {
        value: Some(IdentityChange {
            entity_id: entity_id.clone(),
            changed_at_ms: now_ms(),
            tenant: None,
            api_key: None,
            signing_key: Some(key.clone()),
        }),
        entity_id,
    }
}

/// Reads `identity.changes` from the beginning up to the end offsets as of now. Poison records
/// are counted, logged and skipped; a registry outage is retried on the same record.
pub async fn rebuild(
    reader: &ChangesReader,
    codec: &Codec,
    metrics: &IdentityMetrics,
    shutdown: &Shutdown,
) -> Result<StoreState, ChangesError> {
    let mut state = StoreState::default();
    // Watermarks of a just-created topic can fail until its leaders settle: retry briefly.
    let mut backoff = chassis::RetryPolicy::SETTLING.backoff();
    let end = loop {
        match reader.watermarks(Duration::from_secs(5)).await {
            Ok(end) => break end,
            Err(error) if error.is_retryable() => {
                tracing::warn!(%error, attempt = backoff.attempts() + 1, "Reading identity.changes end offsets failed; retrying");
                match backoff.wait(shutdown).await {
                    Ok(_) => {}
                    Err(chassis::RetryStop::Cancelled) => return Err(ChangesError::Cancelled),
                    Err(chassis::RetryStop::Exhausted(_)) => return Err(error),
                }
            }
            Err(error) => return Err(error),
        }
    };
    // The position moves past transaction markers without a record, so re-check on a short timer.
    while reader.lag(&end)? > 0 {
        let message = tokio::select! {
            () = shutdown.wait() => return Err(ChangesError::Cancelled),
            () = tokio::time::sleep(Duration::from_millis(50)) => continue,
            message = reader.consumer().recv() => message.map_err(ChangesError::Consumer)?,
        };
        metrics.rebuild_records.inc();
        let record = chassis::outage::retry_while_down(
            chassis::RetryPolicy::DEPENDENCY,
            shutdown,
            ChangesError::is_registry_outage,
            |outage, _| {
                if let ChangesError::Registry(error) = outage {
                    tracing::warn!(%error, "Schema registry unavailable while rebuilding; retrying");
                }
            },
            || crate::identity_log::changes::decode(codec, message.key(), message.payload()),
        )
        .await
        .map_err(|_| ChangesError::Cancelled)?;
        match record {
            Ok(ChangeRecord { entity_id, change }) => state.apply(&entity_id, change.as_ref()),
            Err(error) => {
                metrics.rebuild_poison.inc();
                tracing::warn!(
                    %error,
                    partition = message.partition(),
                    offset = message.offset(),
                    "Poison record on identity.changes; skipped"
                );
            }
        }
    }
    Ok(state)
}

/// Writes changes to `identity.changes` through the fenced transactional producer.
pub struct KafkaSink {
    producer: FutureProducer,
    codec: Codec,
    topic: String,
    commit_timeout: Duration,
}

impl KafkaSink {
    /// A sink over a producer on which `init_transactions` has completed.
    pub fn new(producer: FutureProducer, codec: Codec, commit_timeout: Duration) -> Self {
        Self {
            topic: codec.topic::<IdentityChange>(),
            producer,
            codec,
            commit_timeout,
        }
    }

    async fn commit_all(&self, changes: &[Change]) -> Result<(), StoreError> {
        // Encode first: a registry outage then leaves no transaction open.
        let mut encoded = Vec::with_capacity(changes.len());
        for change in changes {
            let value = match &change.value {
                Some(value) => Some(
                    self.codec
                        .encode(value)
                        .await
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                ),
                None => None,
            };
            encoded.push((change.entity_id.as_str(), value));
        }
        if let Err(error) = self.producer.begin_transaction() {
            return Err(self.failed(error).await);
        }
        let sends = encoded.iter().map(|(key, value)| {
            let mut record = FutureRecord::<str, [u8]>::to(&self.topic).key(*key);
            if let Some(value) = value {
                record = record.payload(value.as_slice());
            }
            self.producer.send(record, self.commit_timeout)
        });
        for delivery in futures::future::join_all(sends).await {
            if let Err((error, _)) = delivery {
                return Err(self.failed(error).await);
            }
        }
        let producer = self.producer.clone();
        let timeout = self.commit_timeout;
        match tokio::task::spawn_blocking(move || producer.commit_transaction(timeout)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(self.failed(error).await),
            Err(_) => Err(StoreError::Unavailable("commit was cancelled".into())),
        }
    }

    /// Sorts a failed transaction into fenced, fatally broken or retryable, aborting it in the
    /// last case so the next write starts clean.
    async fn failed(&self, error: KafkaError) -> StoreError {
        if let Some(fatal) = self.fatal() {
            return fatal;
        }
        if error.rdkafka_error_code().is_some_and(is_fencing) {
            return StoreError::Fenced;
        }
        let producer = self.producer.clone();
        let timeout = self.commit_timeout;
        let aborted =
            tokio::task::spawn_blocking(move || producer.abort_transaction(timeout)).await;
        if let Some(fatal) = self.fatal() {
            return fatal;
        }
        if let Ok(Err(abort_error)) = aborted {
            tracing::warn!(%abort_error, "Aborting the failed identity transaction failed");
        }
        StoreError::Unavailable(error.to_string())
    }

    fn fatal(&self) -> Option<StoreError> {
        self.producer.client().fatal_error().map(|(code, reason)| {
            if is_fencing(code) {
                StoreError::Fenced
            } else {
                StoreError::Broken(reason)
            }
        })
    }
}

fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

impl ChangeSink for KafkaSink {
    fn commit<'a>(&'a self, changes: &'a [Change]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.commit_all(changes))
    }
}
