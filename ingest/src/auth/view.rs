//! [`IdentityView`]: the api's local replica of `identity.changes`, and the production
//! [`Authenticator`].
//!
//! Guarantees, and where they are kept:
//! - **No network call per request.** Every answer comes from memory: the view (tenants, salted
//!   key hashes, signing keys with their values derived once from `signing.secret` when their
//!   record is applied) and a cache of API keys already verified.
//! - **Revocation is immediate once seen.** Applying a change invalidates the cache entries it
//!   affects while the view's write lock is held, and the slow path inserts into the cache only
//!   under the read lock, so a stale entry can never be inserted after its invalidation. Signing
//!   keys are not cached apart from the view: every signed request reads the key's and its
//!   tenant's current state under the read lock.
//! - **Bounded staleness, fail closed.** A watcher confirms progress against the brokers'
//!   watermarks; when the last confirmation is older than `auth.max_staleness`, a key the view has
//!   not seen is refused with [`AuthError::Unavailable`] (it may have been created moments ago
//!   elsewhere), `/readyz` says why, and `imgpipe_identity_view_stale` is 1.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use chassis::kafka::KafkaConfig;
use chassis::{Readiness, ServiceContext, Shutdown};
use moka::sync::Cache;
use rdkafka::Message;
use schemas::RegistryConfig;
use schemas::events::{IdentityChange, KeyStatus, TenantStatus};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use super::metrics::AuthMetrics;
use super::rate_limit::TokenBucket;
use super::{AuthConfig, AuthError, AuthSetupError, Authenticator, Principal, SigningPrincipal};
use crate::identity_log::changes::{
    ChangeRecord, ChangesError, ChangesReader, EntityId, Watermark,
};
use crate::identity_log::keys::{self, Secret};
use crate::signing::{SigningConfig, SigningKey, SigningSecret};

/// Name of the view's readiness check on `/readyz`: the consumer name of its metrics.
pub const READINESS_CHECK: &str = super::metrics::LAG_CONSUMER;

/// A key that verified once. Holding the verified secret (rather than its salted hash) makes a
/// hit one 32-byte constant-time comparison; the secret is the one every request of this key
/// carries anyway, kept only in this process's memory and dropped after `cache_time_to_idle`.
#[derive(Debug)]
struct VerifiedKey {
    principal: Principal,
    secret: Secret,
    suspended: bool,
    bucket: Arc<TokenBucket>,
}

#[derive(Debug)]
struct TenantEntry {
    status: TenantStatus,
    bucket: Arc<TokenBucket>,
    allowed_sources: Arc<[String]>,
}

#[derive(Debug)]
struct SigningKeyEntry {
    key_id: Arc<str>,
    tenant_id: Arc<str>,
    active: bool,
    /// Derived from `signing.secret` when the record is applied; `None` without a secret.
    derived: Option<SigningKey>,
}

#[derive(Debug)]
struct KeyEntry {
    key_id: Arc<str>,
    tenant_id: Arc<str>,
    salt: Vec<u8>,
    secret_hash: Vec<u8>,
    active: bool,
}

#[derive(Debug, Default)]
struct ViewState {
    tenants: HashMap<Arc<str>, TenantEntry>,
    keys: HashMap<Arc<str>, KeyEntry>,
    signing_keys: HashMap<Arc<str>, SigningKeyEntry>,
    /// Which keys each tenant owns, so a tenant change invalidates exactly its keys.
    keys_by_tenant: HashMap<Arc<str>, HashSet<Arc<str>>>,
}

/// When the view last proved it held everything committed.
#[derive(Debug)]
struct Freshness {
    confirmed_at: Mutex<Option<Instant>>,
    max_staleness: Duration,
}

impl Freshness {
    fn confirm(&self, at: Instant) {
        let mut confirmed = self
            .confirmed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if confirmed.is_none_or(|c| c < at) {
            *confirmed = Some(at);
        }
    }

    /// Time since the last confirmation; `None` before the first.
    fn staleness(&self, now: Instant) -> Option<Duration> {
        let confirmed = *self
            .confirmed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        confirmed.map(|c| now.saturating_duration_since(c))
    }

    fn is_stale(&self, now: Instant) -> bool {
        self.staleness(now).is_none_or(|s| s > self.max_staleness)
    }
}

/// The api's replica of `identity.changes` and its auth cache.
#[derive(Debug)]
pub struct IdentityView {
    state: RwLock<ViewState>,
    cache: Cache<Arc<str>, Arc<VerifiedKey>>,
    freshness: Freshness,
    caught_up: watch::Sender<bool>,
    metrics: AuthMetrics,
    /// What signing keys' values are derived from; `None`: signed requests are refused (403).
    signing: Option<SigningSecret>,
}

impl IdentityView {
    /// Starts a view: assigns every partition of `identity.changes` from the beginning, registers
    /// the `identity_view` readiness check (not ready until caught up), and spawns the tailing and
    /// watermark tasks, which stop on `ctx.shutdown`. Returns before the view has caught up; see
    /// [`IdentityView::wait_caught_up`]. Signed requests are checked with keys derived from
    /// `signing.secret`, and refused while it is unset.
    pub async fn start(
        kafka: &KafkaConfig,
        registry: &RegistryConfig,
        config: &AuthConfig,
        signing: &SigningConfig,
        ctx: &ServiceContext,
    ) -> Result<Arc<Self>, AuthSetupError> {
        let mut errors = Vec::new();
        config.check(&mut errors);
        let secret = signing.secret().unwrap_or_else(|error| {
            errors.push(error);
            None
        });
        if !errors.is_empty() {
            return Err(AuthSetupError::InvalidConfig(errors));
        }
        if secret.is_none() {
            tracing::warn!("signing.secret is not set; signed GET URLs are refused with 403");
        }
        ctx.readiness
            .register(READINESS_CHECK, "catching up on identity.changes");
        let metrics = AuthMetrics::new(&ctx.metrics).map_err(AuthSetupError::Metrics)?;
        let view = Arc::new(Self::with_metrics(config, metrics).with_signing(secret));
        let reader = ChangesReader::open(kafka, config.fetch_wait_max, &ctx.shutdown)
            .await
            .map_err(AuthSetupError::Consumer)?;
        let codec = schemas::Codec::new(registry, &kafka.namespace);
        ctx.tasks.spawn_until_shutdown(
            "identity-tail",
            tail(view.clone(), reader.clone(), codec, ctx.shutdown.clone()),
        );
        ctx.tasks.spawn_until_shutdown(
            "identity-freshness",
            watch_freshness(
                view.clone(),
                reader,
                config.clone(),
                ctx.readiness.clone(),
                ctx.shutdown.clone(),
            ),
        );
        Ok(view)
    }

    /// A view fed by hand through [`IdentityView::apply`], without Kafka: for the api's unit
    /// tests and benchmarks. It counts as fresh once [`IdentityView::confirm_fresh`] is called.
    pub fn in_memory(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        let metrics =
            AuthMetrics::new(&prometheus::Registry::new()).map_err(AuthSetupError::Metrics)?;
        Ok(Self::with_metrics(config, metrics))
    }

    fn with_metrics(config: &AuthConfig, metrics: AuthMetrics) -> Self {
        Self {
            state: RwLock::default(),
            cache: Cache::builder()
                .max_capacity(config.cache_capacity)
                .time_to_idle(config.cache_time_to_idle)
                .build(),
            freshness: Freshness {
                confirmed_at: Mutex::new(None),
                max_staleness: config.max_staleness,
            },
            caught_up: watch::Sender::new(false),
            metrics,
            signing: None,
        }
    }

    /// The same view, checking signed requests with keys derived from `secret` (`None`: refused).
    /// Set before any record is applied: values are derived when a signing key's record is.
    #[must_use]
    pub fn with_signing(mut self, secret: Option<SigningSecret>) -> Self {
        self.signing = secret;
        self
    }

    /// Resolves once the view has first caught up with `identity.changes`.
    pub async fn wait_caught_up(&self) {
        let mut caught_up = self.caught_up.subscribe();
        // The sender lives in `self`, so it cannot be dropped while we wait.
        let _ = caught_up.wait_for(|c| *c).await;
    }

    /// Whether the view has caught up at least once.
    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// Time since the view last confirmed it held everything committed; `None` before the first.
    pub fn staleness(&self) -> Option<Duration> {
        self.freshness.staleness(Instant::now())
    }

    /// Records that the view holds everything committed as of now (the watermark task does this
    /// for a Kafka-fed view; tests and benchmarks of an in-memory view call it themselves).
    pub fn confirm_fresh(&self) {
        self.confirm_progress(Instant::now());
    }

    fn confirm_progress(&self, at: Instant) {
        self.freshness.confirm(at);
        self.caught_up
            .send_if_modified(|c| !std::mem::replace(c, true));
    }

    /// Applies one record of `identity.changes` (`None`: tombstone) and invalidates the cache
    /// entries it affects before any later request can read them.
    pub fn apply(&self, entity_id: &str, change: Option<&IdentityChange>) {
        let now = Instant::now();
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        match (EntityId::parse(entity_id), change) {
            (
                Some(EntityId::Tenant(id)),
                Some(IdentityChange {
                    tenant: Some(t), ..
                }),
            ) => {
                self.metrics.records_tenant.inc();
                let allowed_sources: Arc<[String]> = Arc::from(t.allowed_sources.as_slice());
                match state.tenants.get_mut(id) {
                    Some(entry) => {
                        entry.status = t.status;
                        entry
                            .bucket
                            .reconfigure(t.rate_limit_per_second, t.burst, now);
                        entry.allowed_sources = allowed_sources;
                    }
                    None => {
                        let bucket = TokenBucket::new(t.rate_limit_per_second, t.burst, now);
                        state.tenants.insert(
                            Arc::from(id),
                            TenantEntry {
                                status: t.status,
                                bucket: Arc::new(bucket),
                                allowed_sources,
                            },
                        );
                    }
                }
                self.invalidate_tenant(&state, id);
            }
            (Some(EntityId::Tenant(id)), None) => {
                self.metrics.records_tombstone.inc();
                state.tenants.remove(id);
                self.invalidate_tenant(&state, id);
            }
            (
                Some(EntityId::Key(id)),
                Some(IdentityChange {
                    api_key: Some(k), ..
                }),
            ) => {
                self.metrics.records_key.inc();
                let key_id: Arc<str> = Arc::from(id);
                let tenant_id: Arc<str> = state
                    .tenants
                    .get_key_value(k.tenant_id.as_str())
                    .map_or_else(|| Arc::from(k.tenant_id.as_str()), |(t, _)| t.clone());
                let previous = state.keys.insert(
                    key_id.clone(),
                    KeyEntry {
                        key_id: key_id.clone(),
                        tenant_id: tenant_id.clone(),
                        salt: k.salt.clone(),
                        secret_hash: k.secret_hash.clone(),
                        active: k.status == KeyStatus::Active,
                    },
                );
                if let Some(previous) = previous.filter(|p| p.tenant_id != tenant_id) {
                    unindex(&mut state, &previous.tenant_id, id);
                }
                state
                    .keys_by_tenant
                    .entry(tenant_id)
                    .or_default()
                    .insert(key_id);
                self.cache.invalidate(id);
            }
            (Some(EntityId::Key(id)), None) => {
                self.metrics.records_tombstone.inc();
                if let Some(previous) = state.keys.remove(id) {
                    unindex(&mut state, &previous.tenant_id, id);
                }
                self.cache.invalidate(id);
            }
            (
                Some(EntityId::SigningKey(id)),
                Some(IdentityChange {
                    signing_key: Some(k),
                    ..
                }),
            ) => {
                self.metrics.records_signing_key.inc();
                let key_id: Arc<str> = Arc::from(id);
                let tenant_id: Arc<str> = state
                    .tenants
                    .get_key_value(k.tenant_id.as_str())
                    .map_or_else(|| Arc::from(k.tenant_id.as_str()), |(t, _)| t.clone());
                let active = k.status == KeyStatus::Active;
                // A revoked key's values are not kept: nothing may ever verify with them again.
                let derived = self
                    .signing
                    .as_ref()
                    .filter(|_| active)
                    .map(|secret| secret.derive(id));
                state.signing_keys.insert(
                    key_id.clone(),
                    SigningKeyEntry {
                        key_id,
                        tenant_id,
                        active,
                        derived,
                    },
                );
            }
            (Some(EntityId::SigningKey(id)), None) => {
                self.metrics.records_tombstone.inc();
                state.signing_keys.remove(id);
            }
            (entity, Some(_)) => {
                // `changes::decode` only yields consistent records; this guards hand-fed input.
                self.metrics.poison_records.inc();
                tracing::warn!(
                    entity_id,
                    ?entity,
                    "Identity change does not fit its entity; skipped"
                );
            }
            (None, None) => {
                self.metrics.poison_records.inc();
                tracing::warn!(entity_id, "Tombstone for an unknown entity kind; skipped");
            }
        }
        self.metrics.tenants.set(state.tenants.len() as i64);
        self.metrics.keys.set(state.keys.len() as i64);
        self.metrics
            .signing_keys
            .set(state.signing_keys.len() as i64);
    }

    /// Drops every cached key of `tenant_id`. Called with the write lock held.
    fn invalidate_tenant(&self, state: &ViewState, tenant_id: &str) {
        if let Some(keys) = state.keys_by_tenant.get(tenant_id) {
            for key_id in keys {
                self.cache.invalidate(key_id);
            }
        }
    }

    /// Everything the view holds, in a comparable form (no salts or hashes): for tests and
    /// operators' debugging. `tenant:<id>` → `status`, `key:<id>` and `signing-key:<id>` →
    /// `tenant_id status`.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let tenants = state.tenants.iter().map(|(id, t)| {
            (
                crate::identity_log::changes::tenant_entity(id),
                format!("{:?}", t.status),
            )
        });
        let keys = state.keys.values().map(|k| {
            (
                crate::identity_log::changes::key_entity(&k.key_id),
                format!(
                    "{} {}",
                    k.tenant_id,
                    if k.active { "Active" } else { "Revoked" }
                ),
            )
        });
        let signing_keys = state.signing_keys.values().map(|k| {
            (
                crate::identity_log::changes::signing_key_entity(&k.key_id),
                format!(
                    "{} {}",
                    k.tenant_id,
                    if k.active { "Active" } else { "Revoked" }
                ),
            )
        });
        tenants.chain(keys).chain(signing_keys).collect()
    }

    /// Verifies a key the cache does not hold, and caches it if it is usable.
    fn authenticate_uncached(
        &self,
        key_id: &str,
        secret: &Secret,
    ) -> Result<Arc<VerifiedKey>, AuthError> {
        self.metrics.cache_misses.inc();
        // The read lock is held until the insert: `apply` cannot invalidate in between.
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let Some(key) = state.keys.get(key_id) else {
            return Err(self.unknown());
        };
        if !keys::verify(&key.salt, &key.secret_hash, secret) || !key.active {
            return Err(AuthError::InvalidKey);
        }
        let Some(tenant) = state.tenants.get(&key.tenant_id) else {
            return Err(self.unknown());
        };
        let verified = Arc::new(VerifiedKey {
            principal: Principal {
                tenant_id: key.tenant_id.clone(),
                key_id: key.key_id.clone(),
            },
            secret: *secret,
            suspended: tenant.status == TenantStatus::Suspended,
            bucket: tenant.bucket.clone(),
        });
        self.cache.insert(key.key_id.clone(), verified.clone());
        Ok(verified)
    }

    /// The answer for something the view does not hold: invalid while the view is fresh, but
    /// unavailable (fail closed) while it may be missing a recent creation.
    fn unknown(&self) -> AuthError {
        if self.freshness.is_stale(Instant::now()) {
            AuthError::Unavailable
        } else {
            AuthError::InvalidKey
        }
    }

    fn decide(&self, api_key: &str) -> Result<Principal, AuthError> {
        let parsed = keys::parse(api_key).ok_or(AuthError::InvalidKey)?;
        let verified = match self.cache.get(parsed.key_id) {
            Some(hit) => {
                self.metrics.cache_hits.inc();
                if !bool::from(hit.secret.ct_eq(&parsed.secret)) {
                    return Err(AuthError::InvalidKey);
                }
                hit
            }
            None => self.authenticate_uncached(parsed.key_id, &parsed.secret)?,
        };
        if verified.suspended {
            return Err(AuthError::Forbidden);
        }
        verified
            .bucket
            .try_acquire(Instant::now())
            .map_err(|retry_after| AuthError::RateLimited { retry_after })?;
        Ok(verified.principal.clone())
    }
}

impl IdentityView {
    /// [`Authenticator::authenticate_signed`], before it is counted. The same rules, in the same
    /// order, as an API key: unknown (fail closed while stale), then the signature and the key's
    /// status, then the tenant, its status, and last its quota, so a request with a bad signature
    /// never spends the tenant's tokens.
    fn decide_signed(
        &self,
        key_id: &str,
        signature_matches: &dyn Fn(&SigningKey) -> bool,
    ) -> Result<SigningPrincipal, AuthError> {
        if self.signing.is_none() {
            return Err(AuthError::Forbidden);
        }
        let (principal, bucket) = {
            let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
            let Some(key) = state.signing_keys.get(key_id) else {
                return Err(self.unknown());
            };
            let verified = key
                .derived
                .as_ref()
                .is_some_and(|derived| key.active && signature_matches(derived));
            if !verified {
                return Err(AuthError::InvalidKey);
            }
            let Some(tenant) = state.tenants.get(&key.tenant_id) else {
                return Err(self.unknown());
            };
            if tenant.status == TenantStatus::Suspended {
                return Err(AuthError::Forbidden);
            }
            (
                SigningPrincipal {
                    tenant_id: key.tenant_id.clone(),
                    key_id: key.key_id.clone(),
                    allowed_sources: tenant.allowed_sources.clone(),
                },
                tenant.bucket.clone(),
            )
        };
        bucket
            .try_acquire(Instant::now())
            .map_err(|retry_after| AuthError::RateLimited { retry_after })?;
        Ok(principal)
    }

    fn count(&self, decision: Result<(), &AuthError>) {
        let counter = match decision {
            Ok(()) => &self.metrics.ok,
            Err(AuthError::InvalidKey | AuthError::MissingCredentials) => &self.metrics.invalid_key,
            Err(AuthError::Forbidden) => &self.metrics.forbidden,
            Err(AuthError::RateLimited { .. }) => &self.metrics.rate_limited,
            Err(AuthError::Unavailable) => &self.metrics.unavailable,
        };
        counter.inc();
    }
}

impl Authenticator for IdentityView {
    fn claimed(&self, api_key: &str) -> Option<Principal> {
        let parsed = keys::parse(api_key)?;
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let key = state.keys.get(parsed.key_id)?;
        Some(Principal {
            tenant_id: key.tenant_id.clone(),
            key_id: key.key_id.clone(),
        })
    }

    fn authenticate(&self, api_key: &str) -> Result<Principal, AuthError> {
        let decision = self.decide(api_key);
        self.count(decision.as_ref().map(|_| ()));
        decision
    }

    fn authenticate_signed(
        &self,
        key_id: &str,
        signature_matches: &dyn Fn(&SigningKey) -> bool,
    ) -> Result<SigningPrincipal, AuthError> {
        let decision = self.decide_signed(key_id, signature_matches);
        self.count(decision.as_ref().map(|_| ()));
        decision
    }

    fn claimed_signing_key(&self, key_id: &str) -> Option<Principal> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let key = state.signing_keys.get(key_id)?;
        Some(Principal {
            tenant_id: key.tenant_id.clone(),
            key_id: key.key_id.clone(),
        })
    }
}

fn unindex(state: &mut ViewState, tenant_id: &str, key_id: &str) {
    if let Some(keys) = state.keys_by_tenant.get_mut(tenant_id) {
        keys.remove(key_id);
        if keys.is_empty() {
            state.keys_by_tenant.remove(tenant_id);
        }
    }
}

/// Applies every record of `identity.changes` to the view until shutdown.
async fn tail(
    view: Arc<IdentityView>,
    reader: ChangesReader,
    codec: schemas::Codec,
    shutdown: Shutdown,
) {
    loop {
        let message = tokio::select! {
            () = shutdown.wait() => return,
            message = reader.consumer().recv() => message,
        };
        // A fault point for the supervision test: a panic here must stop the whole process.
        fail::fail_point!("identity-tail-record");
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                view.metrics.errors.inc();
                tracing::warn!(%error, "Identity view consumer error; retrying");
                continue;
            }
        };
        // A registry outage is retried on the same record: skipping it could drop a revocation.
        let decoded = chassis::outage::retry_while_down(
            chassis::RetryPolicy::DEPENDENCY,
            &shutdown,
            ChangesError::is_registry_outage,
            |outage, _| {
                view.metrics.errors.inc();
                if let ChangesError::Registry(error) = outage {
                    tracing::warn!(%error, offset = message.offset(), "Schema registry unavailable; retrying the identity change");
                }
            },
            || crate::identity_log::changes::decode(&codec, message.key(), message.payload()),
        )
        .await;
        let Ok(record) = decoded else { return };
        match record {
            Ok(ChangeRecord { entity_id, change }) => view.apply(&entity_id, change.as_ref()),
            Err(error) => {
                view.metrics.poison_records.inc();
                tracing::warn!(
                    %error,
                    partition = message.partition(),
                    offset = message.offset(),
                    "Poison record on identity.changes; skipped"
                );
            }
        }
    }
}

/// Confirms the view's progress against the brokers' watermarks, and publishes staleness to
/// readiness and metrics. Freshness is confirmed as of the moment the watermarks were asked for,
/// once the view's position has reached them.
async fn watch_freshness(
    view: Arc<IdentityView>,
    reader: ChangesReader,
    config: AuthConfig,
    readiness: Readiness,
    shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(config.watermark_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut target: Option<(Instant, Vec<Watermark>)> = None;
    let mut was_stale: Option<bool> = None;
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            _ = ticker.tick() => {}
        }
        if target.is_none() {
            let asked_at = Instant::now();
            match reader.watermarks(config.watermark_timeout).await {
                Ok(watermarks) => target = Some((asked_at, watermarks)),
                Err(error) => {
                    view.metrics.errors.inc();
                    tracing::warn!(%error, "Identity view cannot confirm progress");
                }
            }
        }
        if let Some((asked_at, watermarks)) = &target {
            match reader.partition_lags(watermarks) {
                Ok(lags) => {
                    for (partition, lag) in &lags {
                        view.metrics
                            .lag_records
                            .with_label_values(&[&partition.to_string()])
                            .set(*lag);
                    }
                    if lags.iter().all(|(_, lag)| *lag == 0) {
                        view.confirm_progress(*asked_at);
                        target = None;
                    }
                }
                Err(error) => {
                    view.metrics.errors.inc();
                    tracing::warn!(%error, "Identity view cannot read its position");
                }
            }
        }
        let now = Instant::now();
        let staleness = view.freshness.staleness(now);
        let stale = view.freshness.is_stale(now);
        view.metrics
            .staleness_seconds
            .set(staleness.map_or(-1.0, |s| s.as_secs_f64()));
        view.metrics.stale.set(i64::from(stale));
        match (stale, staleness) {
            (false, _) => readiness.ready(READINESS_CHECK),
            (true, None) => readiness.not_ready(READINESS_CHECK, "catching up on identity.changes"),
            (true, Some(s)) => readiness.not_ready(
                READINESS_CHECK,
                &format!(
                    "identity view last confirmed {:.1}s ago (bound {:?}); unknown keys fail closed",
                    s.as_secs_f64(),
                    config.max_staleness
                ),
            ),
        }
        if was_stale != Some(stale) {
            if stale && was_stale.is_some() {
                tracing::error!(staleness = ?staleness, bound = ?config.max_staleness, "Identity view is stale; unknown keys fail closed");
            } else if !stale {
                tracing::info!("Identity view is caught up");
            }
            was_stale = Some(stale);
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;
    use schemas::events::{ApiKey, Tenant};

    fn tenant(id: &str, status: TenantStatus, rate: i32, burst: i32) -> IdentityChange {
        IdentityChange {
            entity_id: format!("tenant:{id}"),
            changed_at_ms: 0,
            tenant: Some(Tenant {
                id: id.into(),
                name: id.into(),
                status,
                rate_limit_per_second: rate,
                burst,
                created_at_ms: 0,
                allowed_sources: vec!["https://images.example.com/".into()],
            }),
            api_key: None,
            signing_key: None,
        }
    }

    /// Issues a key for `tenant_id`: its change record and the full key string.
    fn key(tenant_id: &str, status: KeyStatus) -> (IdentityChange, String) {
        let issued = keys::issue();
        let change = IdentityChange {
            entity_id: format!("key:{}", issued.key_id),
            changed_at_ms: 0,
            tenant: None,
            api_key: Some(ApiKey {
                key_id: issued.key_id.clone(),
                tenant_id: tenant_id.into(),
                salt: issued.salt,
                secret_hash: issued.secret_hash.to_vec(),
                status,
                created_at_ms: 0,
            }),
            signing_key: None,
        };
        (change, issued.api_key)
    }

    fn revoked(change: &IdentityChange) -> IdentityChange {
        let mut change = change.clone();
        if let Some(k) = change.api_key.as_mut() {
            k.status = KeyStatus::Revoked;
        }
        change
    }

    fn fresh_view() -> IdentityView {
        let view = IdentityView::in_memory(&AuthConfig::default()).unwrap();
        view.confirm_fresh();
        view
    }

    #[test]
    fn a_key_authenticates_as_its_tenant_from_the_cache_after_the_first_call() {
        let view = fresh_view();
        view.apply(
            "tenant:a",
            Some(&tenant("a", TenantStatus::Active, 1000, 1000)),
        );
        let (change, api_key) = key("a", KeyStatus::Active);
        view.apply(&change.entity_id, Some(&change));
        let key_id = change.api_key.as_ref().unwrap().key_id.as_str();
        for _ in 0..3 {
            let principal = view.authenticate(&api_key).unwrap();
            assert_eq!((&*principal.tenant_id, &*principal.key_id), ("a", key_id));
        }
        assert_eq!(view.metrics.cache_misses.get(), 1);
        assert_eq!(view.metrics.cache_hits.get(), 2);
    }

    #[test]
    fn a_wrong_secret_is_refused_on_a_hit_and_on_a_miss() {
        let view = fresh_view();
        view.apply(
            "tenant:a",
            Some(&tenant("a", TenantStatus::Active, 1000, 1000)),
        );
        let (change, api_key) = key("a", KeyStatus::Active);
        view.apply(&change.entity_id, Some(&change));
        let last = api_key.chars().last().unwrap();
        let wrong = format!(
            "{}{}",
            &api_key[..api_key.len() - 1],
            if last == '0' { '1' } else { '0' }
        );
        assert_eq!(view.authenticate(&wrong), Err(AuthError::InvalidKey));
        view.authenticate(&api_key).unwrap();
        assert_eq!(view.authenticate(&wrong), Err(AuthError::InvalidKey));
        assert_eq!(
            view.authenticate("imgp_garbage"),
            Err(AuthError::InvalidKey)
        );
    }

    #[test]
    fn revocation_and_deletion_invalidate_the_cached_key_at_once() {
        let view = fresh_view();
        view.apply(
            "tenant:a",
            Some(&tenant("a", TenantStatus::Active, 1000, 1000)),
        );
        let (k1, key1) = key("a", KeyStatus::Active);
        let (k2, key2) = key("a", KeyStatus::Active);
        view.apply(&k1.entity_id, Some(&k1));
        view.apply(&k2.entity_id, Some(&k2));
        view.authenticate(&key1).unwrap();
        view.authenticate(&key2).unwrap();
        view.apply(&k1.entity_id, Some(&revoked(&k1)));
        assert_eq!(view.authenticate(&key1), Err(AuthError::InvalidKey));
        view.authenticate(&key2).unwrap();
        view.apply(&k2.entity_id, None);
        assert_eq!(view.authenticate(&key2), Err(AuthError::InvalidKey));
    }

    #[test]
    fn tenant_changes_invalidate_all_its_keys_and_only_its_keys() {
        let view = fresh_view();
        view.apply(
            "tenant:a",
            Some(&tenant("a", TenantStatus::Active, 1000, 1000)),
        );
        view.apply(
            "tenant:b",
            Some(&tenant("b", TenantStatus::Active, 1000, 1000)),
        );
        let (ka, key_a) = key("a", KeyStatus::Active);
        let (kb, key_b) = key("b", KeyStatus::Active);
        view.apply(&ka.entity_id, Some(&ka));
        view.apply(&kb.entity_id, Some(&kb));
        view.authenticate(&key_a).unwrap();
        view.authenticate(&key_b).unwrap();

        view.apply(
            "tenant:a",
            Some(&tenant("a", TenantStatus::Suspended, 1000, 1000)),
        );
        assert_eq!(view.authenticate(&key_a), Err(AuthError::Forbidden));
        assert_eq!(&*view.authenticate(&key_b).unwrap().tenant_id, "b");

        view.apply(
            "tenant:a",
            Some(&tenant("a", TenantStatus::Active, 1000, 1000)),
        );
        view.authenticate(&key_a).unwrap();

        // Deleting the tenant stops its keys even before their own tombstones arrive.
        view.apply("tenant:a", None);
        assert_eq!(view.authenticate(&key_a), Err(AuthError::InvalidKey));
        view.authenticate(&key_b).unwrap();
    }

    #[test]
    fn the_tenant_quota_applies_across_its_keys() {
        let view = fresh_view();
        view.apply("tenant:a", Some(&tenant("a", TenantStatus::Active, 1, 2)));
        let (k1, key1) = key("a", KeyStatus::Active);
        let (k2, key2) = key("a", KeyStatus::Active);
        view.apply(&k1.entity_id, Some(&k1));
        view.apply(&k2.entity_id, Some(&k2));
        view.authenticate(&key1).unwrap();
        view.authenticate(&key2).unwrap();
        match view.authenticate(&key1) {
            Err(AuthError::RateLimited { retry_after }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        // Raising the quota takes effect at once.
        view.apply(
            "tenant:a",
            Some(&tenant("a", TenantStatus::Active, 1_000_000, 10)),
        );
        std::thread::sleep(Duration::from_millis(2));
        view.authenticate(&key1).unwrap();
    }

    #[test]
    fn unknown_keys_fail_closed_only_while_the_view_is_stale() {
        let config = AuthConfig {
            max_staleness: Duration::from_millis(50),
            watermark_interval: Duration::from_millis(10),
            ..AuthConfig::default()
        };
        let view = IdentityView::in_memory(&config).unwrap();
        view.apply(
            "tenant:a",
            Some(&tenant("a", TenantStatus::Active, 1000, 1000)),
        );
        let (known, known_key) = key("a", KeyStatus::Active);
        view.apply(&known.entity_id, Some(&known));
        let (_, unknown_key) = key("a", KeyStatus::Active);
        // Never caught up: unknown keys are unavailable, known ones still work.
        assert!(!view.is_caught_up());
        assert_eq!(view.authenticate(&unknown_key), Err(AuthError::Unavailable));
        view.authenticate(&known_key).unwrap();
        view.confirm_fresh();
        assert!(view.is_caught_up());
        assert_eq!(view.authenticate(&unknown_key), Err(AuthError::InvalidKey));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(view.authenticate(&unknown_key), Err(AuthError::Unavailable));
        view.authenticate(&known_key).unwrap();
        // Malformed keys need no view to be refused.
        assert_eq!(view.authenticate("nope"), Err(AuthError::InvalidKey));
    }

    #[test]
    fn the_snapshot_reflects_applied_changes() {
        let view = fresh_view();
        view.apply("tenant:a", Some(&tenant("a", TenantStatus::Active, 1, 1)));
        let (k, _) = key("a", KeyStatus::Active);
        view.apply(&k.entity_id, Some(&revoked(&k)));
        let snapshot = view.snapshot();
        assert_eq!(snapshot["tenant:a"], "Active");
        assert_eq!(snapshot[&k.entity_id], "a Revoked");
        view.apply(&k.entity_id, None);
        view.apply("tenant:a", None);
        assert!(view.snapshot().is_empty());
    }

    const SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn secret() -> SigningSecret {
        SigningSecret::parse(SECRET).unwrap()
    }

    fn signing_key(tenant_id: &str, status: KeyStatus) -> IdentityChange {
        let key_id = crate::signing::new_key_id();
        IdentityChange {
            entity_id: format!("signing-key:{key_id}"),
            changed_at_ms: 0,
            tenant: None,
            api_key: None,
            signing_key: Some(schemas::events::SigningKey {
                key_id,
                tenant_id: tenant_id.into(),
                status,
                created_at_ms: 0,
            }),
        }
    }

    fn key_id_of(change: &IdentityChange) -> &str {
        &change.signing_key.as_ref().unwrap().key_id
    }

    /// A request signed with the key and salt identity handed out for `key_id`.
    fn signed_by(key_id: &str) -> impl Fn(&SigningKey) -> bool + use<> {
        let issued = secret().derive(key_id);
        move |key: &SigningKey| *key == issued
    }

    fn signing_view(config: &AuthConfig) -> IdentityView {
        let view = IdentityView::in_memory(config)
            .unwrap()
            .with_signing(Some(secret()));
        view.apply(
            "tenant:a",
            Some(&tenant("a", TenantStatus::Active, 1000, 1000)),
        );
        view
    }

    #[test]
    fn a_signing_key_resolves_to_its_tenant_and_sources_only_with_its_own_signature() {
        let view = signing_view(&AuthConfig::default());
        view.confirm_fresh();
        let change = signing_key("a", KeyStatus::Active);
        view.apply(&change.entity_id, Some(&change));
        let key_id = key_id_of(&change);
        let principal = view
            .authenticate_signed(key_id, &signed_by(key_id))
            .unwrap();
        assert_eq!((&*principal.tenant_id, &*principal.key_id), ("a", key_id));
        assert_eq!(&*principal.allowed_sources, ["https://images.example.com/"]);
        assert_eq!(principal.principal().key_id, principal.key_id);
        assert!(principal.allows(&url::Url::parse("https://images.example.com/x.jpg").unwrap()));
        assert!(!principal.allows(&url::Url::parse("https://other.example/x.jpg").unwrap()));
        // Another key's values (a tampered URL, or one signed for another key id) do not match.
        let other = crate::signing::new_key_id();
        assert_eq!(
            view.authenticate_signed(key_id, &signed_by(&other)),
            Err(AuthError::InvalidKey)
        );
        assert_eq!(
            view.claimed_signing_key(key_id).unwrap().tenant_id,
            principal.tenant_id
        );
        assert_eq!(view.claimed_signing_key(&other), None);
        assert_eq!(view.metrics.ok.get(), 1);
        assert_eq!(view.metrics.invalid_key.get(), 1);
        assert_eq!(view.snapshot()[&change.entity_id], "a Active");
    }

    #[test]
    fn revoked_deleted_and_unknown_signing_keys_are_refused_at_once() {
        let view = signing_view(&AuthConfig::default());
        view.confirm_fresh();
        let (k1, k2) = (
            signing_key("a", KeyStatus::Active),
            signing_key("a", KeyStatus::Active),
        );
        view.apply(&k1.entity_id, Some(&k1));
        view.apply(&k2.entity_id, Some(&k2));
        let (id1, id2) = (key_id_of(&k1), key_id_of(&k2));
        view.authenticate_signed(id1, &signed_by(id1)).unwrap();
        view.authenticate_signed(id2, &signed_by(id2)).unwrap();

        let mut revoked = k1.clone();
        revoked.signing_key.as_mut().unwrap().status = KeyStatus::Revoked;
        view.apply(&k1.entity_id, Some(&revoked));
        assert_eq!(
            view.authenticate_signed(id1, &signed_by(id1)),
            Err(AuthError::InvalidKey)
        );
        assert_eq!(view.snapshot()[&k1.entity_id], "a Revoked");
        view.authenticate_signed(id2, &signed_by(id2)).unwrap();
        view.apply(&k2.entity_id, None);
        assert_eq!(
            view.authenticate_signed(id2, &signed_by(id2)),
            Err(AuthError::InvalidKey)
        );
        let unknown = crate::signing::new_key_id();
        assert_eq!(
            view.authenticate_signed(&unknown, &signed_by(&unknown)),
            Err(AuthError::InvalidKey)
        );
    }

    #[test]
    fn a_suspended_or_deleted_tenant_s_signing_keys_are_refused() {
        let view = signing_view(&AuthConfig::default());
        view.confirm_fresh();
        let change = signing_key("a", KeyStatus::Active);
        view.apply(&change.entity_id, Some(&change));
        let id = key_id_of(&change);
        view.apply(
            "tenant:a",
            Some(&tenant("a", TenantStatus::Suspended, 1000, 1000)),
        );
        assert_eq!(
            view.authenticate_signed(id, &signed_by(id)),
            Err(AuthError::Forbidden)
        );
        view.apply(
            "tenant:a",
            Some(&tenant("a", TenantStatus::Active, 1000, 1000)),
        );
        view.authenticate_signed(id, &signed_by(id)).unwrap();
        // Deleting the tenant stops its signing keys before their own tombstones arrive.
        view.apply("tenant:a", None);
        assert_eq!(
            view.authenticate_signed(id, &signed_by(id)),
            Err(AuthError::InvalidKey)
        );
    }

    #[test]
    fn unknown_signing_keys_fail_closed_only_while_the_view_is_stale() {
        let config = AuthConfig {
            max_staleness: Duration::from_millis(50),
            watermark_interval: Duration::from_millis(10),
            ..AuthConfig::default()
        };
        let view = signing_view(&config);
        let known = signing_key("a", KeyStatus::Active);
        view.apply(&known.entity_id, Some(&known));
        let known = key_id_of(&known);
        let unknown = crate::signing::new_key_id();
        assert_eq!(
            view.authenticate_signed(&unknown, &signed_by(&unknown)),
            Err(AuthError::Unavailable)
        );
        view.authenticate_signed(known, &signed_by(known)).unwrap();
        view.confirm_fresh();
        assert_eq!(
            view.authenticate_signed(&unknown, &signed_by(&unknown)),
            Err(AuthError::InvalidKey)
        );
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(
            view.authenticate_signed(&unknown, &signed_by(&unknown)),
            Err(AuthError::Unavailable)
        );
        view.authenticate_signed(known, &signed_by(known)).unwrap();
        assert_eq!(view.metrics.unavailable.get(), 2);
    }

    #[test]
    fn signed_requests_spend_the_tenant_s_quota_but_bad_signatures_do_not() {
        let view = IdentityView::in_memory(&AuthConfig::default())
            .unwrap()
            .with_signing(Some(secret()));
        view.confirm_fresh();
        view.apply("tenant:a", Some(&tenant("a", TenantStatus::Active, 1, 2)));
        let change = signing_key("a", KeyStatus::Active);
        view.apply(&change.entity_id, Some(&change));
        let (api, api_key) = key("a", KeyStatus::Active);
        view.apply(&api.entity_id, Some(&api));
        let id = key_id_of(&change);
        let forged = signed_by(&crate::signing::new_key_id());
        for _ in 0..10 {
            assert_eq!(
                view.authenticate_signed(id, &forged),
                Err(AuthError::InvalidKey)
            );
        }
        // The bucket (burst 2) is whole: one signed GET and one API-key call take it.
        view.authenticate_signed(id, &signed_by(id)).unwrap();
        view.authenticate(&api_key).unwrap();
        match view.authenticate_signed(id, &signed_by(id)) {
            Err(AuthError::RateLimited { retry_after }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert_eq!(view.metrics.rate_limited.get(), 1);
    }

    #[test]
    fn allowed_sources_follow_the_tenant_s_changes() {
        let view = signing_view(&AuthConfig::default());
        view.confirm_fresh();
        let change = signing_key("a", KeyStatus::Active);
        view.apply(&change.entity_id, Some(&change));
        let id = key_id_of(&change);
        let mut updated = tenant("a", TenantStatus::Active, 1000, 1000);
        updated.tenant.as_mut().unwrap().allowed_sources = Vec::new();
        view.apply("tenant:a", Some(&updated));
        let principal = view.authenticate_signed(id, &signed_by(id)).unwrap();
        assert!(principal.allowed_sources.is_empty());
        assert!(!principal.allows(&url::Url::parse("https://images.example.com/x.jpg").unwrap()));
    }

    #[test]
    fn without_a_signing_secret_every_signed_request_is_forbidden() {
        let view = fresh_view();
        view.apply(
            "tenant:a",
            Some(&tenant("a", TenantStatus::Active, 1000, 1000)),
        );
        let change = signing_key("a", KeyStatus::Active);
        view.apply(&change.entity_id, Some(&change));
        let id = key_id_of(&change);
        assert_eq!(
            view.authenticate_signed(id, &signed_by(id)),
            Err(AuthError::Forbidden)
        );
        // API keys are unaffected.
        let (api, api_key) = key("a", KeyStatus::Active);
        view.apply(&api.entity_id, Some(&api));
        view.authenticate(&api_key).unwrap();
    }

    #[tokio::test]
    async fn wait_caught_up_resolves_on_the_first_confirmation() {
        let view = Arc::new(IdentityView::in_memory(&AuthConfig::default()).unwrap());
        let waiter = tokio::spawn({
            let view = view.clone();
            async move { view.wait_caught_up().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        view.confirm_fresh();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
