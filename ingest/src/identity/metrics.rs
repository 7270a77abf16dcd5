//! The identity service's metric handles; names, help and buckets are in
//! `chassis::metrics::identity`.

use chassis::metrics::{self, LATENCY_SECONDS, identity as m};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};

/// The identity service's metric handles.
#[derive(Debug, Clone)]
pub struct IdentityMetrics {
    pub(crate) requests: IntCounterVec,
    pub(crate) request_duration: HistogramVec,
    pub(crate) writes: IntCounterVec,
    pub(crate) write_duration: Histogram,
    pub(crate) fenced: IntGauge,
    pub(crate) tenants: IntGauge,
    pub(crate) keys: IntGauge,
    pub(crate) signing_keys: IntGauge,
    pub(crate) rebuild_records: IntCounter,
    pub(crate) rebuild_poison: IntCounter,
    pub(crate) audit_failures: IntCounter,
}

impl IdentityMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let r = registry;
        let entities = metrics::gauge_vec(r, m::ENTITIES, &["kind"])?;
        Ok(Self {
            requests: metrics::counter_vec(
                r,
                m::ADMIN_REQUESTS_TOTAL,
                &["route", "method", "status"],
            )?,
            request_duration: metrics::histogram_vec(
                r,
                m::ADMIN_REQUEST_DURATION_SECONDS,
                &["route"],
                LATENCY_SECONDS,
            )?,
            writes: metrics::counter_vec(r, m::WRITES_TOTAL, &["outcome"])?,
            write_duration: metrics::histogram(r, m::WRITE_DURATION_SECONDS, LATENCY_SECONDS)?,
            fenced: metrics::gauge(r, m::FENCED)?,
            tenants: entities.with_label_values(&["tenant"]),
            keys: entities.with_label_values(&["key"]),
            signing_keys: entities.with_label_values(&["signing_key"]),
            rebuild_records: metrics::counter(r, m::REBUILD_RECORDS_TOTAL)?,
            rebuild_poison: metrics::counter(r, m::REBUILD_POISON_RECORDS_TOTAL)?,
            audit_failures: metrics::counter(r, m::AUDIT_FAILURES_TOTAL)?,
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
        let m = IdentityMetrics::new(&registry).unwrap();
        // A vector is exported once it has a series.
        m.requests
            .with_label_values(&["/admin/v1/tenants", "POST", "201"])
            .inc();
        m.request_duration
            .with_label_values(&["/admin/v1/tenants"])
            .observe(0.01);
        m.writes.with_label_values(&["ok"]).inc();
        assert_eq!(
            metrics::registry_violations(&registry.gather(), m::ALL),
            Vec::<String>::new()
        );
    }
}
