//! The api's identity view and auth step metric handles; names and help are in
//! `chassis::metrics::auth` (and the view's lag in `chassis::metrics::consumer`). Label values
//! are resolved once so the hot path only adds.

use chassis::metrics::{self, auth as m};
use prometheus::{Gauge, IntCounter, IntGauge, IntGaugeVec, Registry};

/// The view's name as a consumer: `imgpipe_consumer_lag_records{consumer}` and its readiness
/// check on `/readyz` (`view::READINESS_CHECK`) both use it.
pub(crate) const LAG_CONSUMER: &str = "identity_view";

/// The view's metric handles.
#[derive(Debug, Clone)]
pub struct AuthMetrics {
    pub(crate) staleness_seconds: Gauge,
    pub(crate) stale: IntGauge,
    /// `imgpipe_consumer_lag_records{consumer="identity_view", partition}`.
    pub(crate) lag_records: IntGaugeVec,
    pub(crate) records_tenant: IntCounter,
    pub(crate) records_key: IntCounter,
    pub(crate) records_signing_key: IntCounter,
    pub(crate) records_tombstone: IntCounter,
    pub(crate) poison_records: IntCounter,
    pub(crate) errors: IntCounter,
    pub(crate) tenants: IntGauge,
    pub(crate) keys: IntGauge,
    pub(crate) signing_keys: IntGauge,
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
        let r = registry;
        let staleness_seconds = metrics::float_gauge(r, m::VIEW_STALENESS_SECONDS)?;
        staleness_seconds.set(-1.0);
        let records = metrics::counter_vec(r, m::VIEW_RECORDS_TOTAL, &["kind"])?;
        let entities = metrics::gauge_vec(r, m::VIEW_ENTITIES, &["kind"])?;
        let decisions = metrics::counter_vec(r, m::DECISIONS_TOTAL, &["outcome"])?;
        Ok(Self {
            staleness_seconds,
            stale: metrics::gauge(r, m::VIEW_STALE)?,
            lag_records: metrics::consumer_lag(r, LAG_CONSUMER)?,
            records_tenant: records.with_label_values(&["tenant"]),
            records_key: records.with_label_values(&["key"]),
            records_signing_key: records.with_label_values(&["signing_key"]),
            records_tombstone: records.with_label_values(&["tombstone"]),
            poison_records: metrics::counter(r, m::VIEW_POISON_RECORDS_TOTAL)?,
            errors: metrics::counter(r, m::VIEW_ERRORS_TOTAL)?,
            tenants: entities.with_label_values(&["tenant"]),
            keys: entities.with_label_values(&["key"]),
            signing_keys: entities.with_label_values(&["signing_key"]),
            ok: decisions.with_label_values(&["ok"]),
            invalid_key: decisions.with_label_values(&["invalid_key"]),
            forbidden: decisions.with_label_values(&["forbidden"]),
            rate_limited: decisions.with_label_values(&["rate_limited"]),
            unavailable: decisions.with_label_values(&["unavailable"]),
            cache_hits: metrics::counter(r, m::CACHE_HITS_TOTAL)?,
            cache_misses: metrics::counter(r, m::CACHE_MISSES_TOTAL)?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_follows_the_naming_rule_and_the_catalogue() {
        let registry = Registry::new();
        let m = AuthMetrics::new(&registry).unwrap();
        // A vector is exported once it has a series.
        m.lag_records.with_label_values(&["0"]).set(0);
        let expected: Vec<_> = m::ALL
            .iter()
            .chain([&metrics::consumer::LAG_RECORDS])
            .copied()
            .collect();
        assert_eq!(
            metrics::registry_violations(&registry.gather(), &expected),
            Vec::<String>::new()
        );
    }
}
