//! Every metric of the api's identity view and auth step. Names carry their unit; labels are
//! bounded (outcome, record kind), never tenant or key ids.

use prometheus::core::Collector;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Seconds since the view last confirmed it had everything committed to `identity.changes`
/// (-1 until it first catches up).
pub const VIEW_STALENESS_SECONDS: &str = "imgpipe_identity_view_staleness_seconds";
/// 1 while the view is older than `auth.max_staleness` (unknown keys then fail closed), else 0.
pub const VIEW_STALE: &str = "imgpipe_identity_view_stale";
/// Records between the view's position and the high watermarks at the last check.
pub const VIEW_LAG_RECORDS: &str = "imgpipe_identity_view_lag_records";
/// Records applied to the view, by kind (`tenant`, `key`, `tombstone`).
pub const VIEW_RECORDS_TOTAL: &str = "imgpipe_identity_view_records_total";
/// Undecodable records on `identity.changes`, skipped.
pub const VIEW_POISON_RECORDS_TOTAL: &str = "imgpipe_identity_view_poison_records_total";
/// Failed watermark checks or consumer errors: the view could not confirm progress.
pub const VIEW_ERRORS_TOTAL: &str = "imgpipe_identity_view_errors_total";
/// Tenants and keys in the view.
pub const VIEW_ENTITIES: &str = "imgpipe_identity_view_entities";
/// Authentication decisions, by outcome.
pub const AUTH_DECISIONS_TOTAL: &str = "imgpipe_auth_decisions_total";
/// Authentications answered from the verified-key cache.
pub const AUTH_CACHE_HITS_TOTAL: &str = "imgpipe_auth_cache_hits_total";
/// Authentications that had to verify the salted hash.
pub const AUTH_CACHE_MISSES_TOTAL: &str = "imgpipe_auth_cache_misses_total";

/// The view's metric handles; label values are resolved once so the hot path only adds.
#[derive(Debug, Clone)]
pub struct AuthMetrics {
    pub(crate) staleness_seconds: Gauge,
    pub(crate) stale: IntGauge,
    pub(crate) lag_records: IntGauge,
    pub(crate) records_tenant: IntCounter,
    pub(crate) records_key: IntCounter,
    pub(crate) records_tombstone: IntCounter,
    pub(crate) poison_records: IntCounter,
    pub(crate) errors: IntCounter,
    pub(crate) tenants: IntGauge,
    pub(crate) keys: IntGauge,
    pub(crate) ok: IntCounter,
    pub(crate) invalid_key: IntCounter,
    pub(crate) forbidden: IntCounter,
    pub(crate) rate_limited: IntCounter,
    pub(crate) unavailable: IntCounter,
    pub(crate) cache_hits: IntCounter,
    pub(crate) cache_misses: IntCounter,
}

impl AuthMetrics {
    /// Creates the metrics and registers them in `registry` (the service's `/metrics`; a
    /// throwaway registry for in-memory views).
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        fn reg<C: Collector + Clone + 'static>(
            registry: &Registry,
            collector: C,
        ) -> Result<C, prometheus::Error> {
            registry.register(Box::new(collector.clone()))?;
            Ok(collector)
        }
        let r = registry;
        let staleness_seconds = reg(
            r,
            Gauge::new(
                VIEW_STALENESS_SECONDS,
                "Seconds since the identity view last confirmed it was caught up (-1: never).",
            )?,
        )?;
        let stale = reg(
            r,
            IntGauge::new(
                VIEW_STALE,
                "1 while the identity view is older than its bound and unknown keys fail closed.",
            )?,
        )?;
        let lag_records = reg(
            r,
            IntGauge::new(
                VIEW_LAG_RECORDS,
                "Records between the identity view and the high watermarks at the last check.",
            )?,
        )?;
        let records = reg(
            r,
            IntCounterVec::new(
                Opts::new(VIEW_RECORDS_TOTAL, "Records applied to the identity view."),
                &["kind"],
            )?,
        )?;
        let poison_records = reg(
            r,
            IntCounter::new(
                VIEW_POISON_RECORDS_TOTAL,
                "Undecodable identity.changes records skipped by the view.",
            )?,
        )?;
        let errors = reg(
            r,
            IntCounter::new(
                VIEW_ERRORS_TOTAL,
                "Consumer errors and failed watermark checks of the identity view.",
            )?,
        )?;
        let entities = reg(
            r,
            IntGaugeVec::new(
                Opts::new(VIEW_ENTITIES, "Tenants and keys in the identity view."),
                &["kind"],
            )?,
        )?;
        let decisions = reg(
            r,
            IntCounterVec::new(
                Opts::new(AUTH_DECISIONS_TOTAL, "Authentication decisions by outcome."),
                &["outcome"],
            )?,
        )?;
        let cache_hits = reg(
            r,
            IntCounter::new(
                AUTH_CACHE_HITS_TOTAL,
                "Authentications answered from the verified-key cache.",
            )?,
        )?;
        let cache_misses = reg(
            r,
            IntCounter::new(
                AUTH_CACHE_MISSES_TOTAL,
                "Authentications that verified the salted hash.",
            )?,
        )?;
        staleness_seconds.set(-1.0);
        Ok(Self {
            staleness_seconds,
            stale,
            lag_records,
            records_tenant: records.with_label_values(&["tenant"]),
            records_key: records.with_label_values(&["key"]),
            records_tombstone: records.with_label_values(&["tombstone"]),
            poison_records,
            errors,
            tenants: entities.with_label_values(&["tenant"]),
            keys: entities.with_label_values(&["key"]),
            ok: decisions.with_label_values(&["ok"]),
            invalid_key: decisions.with_label_values(&["invalid_key"]),
            forbidden: decisions.with_label_values(&["forbidden"]),
            rate_limited: decisions.with_label_values(&["rate_limited"]),
            unavailable: decisions.with_label_values(&["unavailable"]),
            cache_hits,
            cache_misses,
        })
    }
}
