//! The api's metric handles; names, help and buckets are in `chassis::metrics::api`.

use chassis::metrics::{self, LATENCY_SECONDS, api};
use prometheus::{HistogramVec, IntCounterVec, IntGauge, Registry};

/// The api's metrics.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    /// [`api::REQUEST_SECONDS`] `{route, outcome}`.
    pub request_seconds: HistogramVec,
    /// [`api::STAGE_SECONDS`] `{stage}`.
    pub stage_seconds: HistogramVec,
    /// [`api::IN_FLIGHT_REQUESTS`].
    pub in_flight: IntGauge,
    /// [`api::REPLIES_TOTAL`] `{outcome}`.
    pub replies: IntCounterVec,
    /// [`api::USAGE_RECORDS_TOTAL`] `{outcome}`.
    pub usage_records: IntCounterVec,
    /// [`api::REVALIDATIONS_TOTAL`] `{outcome}`.
    pub revalidations: IntCounterVec,
}

impl ApiMetrics {
    /// Creates and registers every metric.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            request_seconds: metrics::histogram_vec(
                registry,
                api::REQUEST_SECONDS,
                &["route", "outcome"],
                LATENCY_SECONDS,
            )?,
            stage_seconds: metrics::histogram_vec(
                registry,
                api::STAGE_SECONDS,
                &["stage"],
                LATENCY_SECONDS,
            )?,
            in_flight: metrics::gauge(registry, api::IN_FLIGHT_REQUESTS)?,
            replies: metrics::counter_vec(registry, api::REPLIES_TOTAL, &["outcome"])?,
            usage_records: metrics::counter_vec(registry, api::USAGE_RECORDS_TOTAL, &["outcome"])?,
            revalidations: metrics::counter_vec(registry, api::REVALIDATIONS_TOTAL, &["outcome"])?,
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
        let m = ApiMetrics::register(&registry).unwrap();
        // A vector is exported once it has a series.
        m.request_seconds
            .with_label_values(&["/v1/resize", "ok"])
            .observe(0.01);
        m.stage_seconds
            .with_label_values(&["produce"])
            .observe(0.01);
        m.replies.with_label_values(&["delivered"]).inc();
        m.usage_records.with_label_values(&["queued"]).inc();
        m.revalidations.with_label_values(&["not_modified"]).inc();
        assert_eq!(
            metrics::registry_violations(&registry.gather(), api::ALL),
            Vec::<String>::new()
        );
    }
}
