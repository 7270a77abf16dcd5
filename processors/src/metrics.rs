//! The resizer's metric handles; names, help and buckets are in `chassis::metrics::resizer`.

use chassis::metrics::{self, BATCH_RECORDS, LATENCY_SECONDS, resizer};
use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

/// The resizer's metrics.
#[derive(Debug, Clone)]
pub struct ResizerMetrics {
    /// [`resizer::JOBS_TOTAL`] `{outcome}`.
    pub jobs: IntCounterVec,
    /// [`resizer::STAGE_SECONDS`] `{stage}`.
    pub stage_seconds: HistogramVec,
    /// [`resizer::IN_FLIGHT`].
    pub in_flight: IntGauge,
    /// [`resizer::POOL_SATURATED`].
    pub pool_saturated: IntGauge,
    /// [`resizer::DLQ_RECORDS_TOTAL`].
    pub dlq_records: IntCounter,
    /// [`resizer::TRANSACTIONS_TOTAL`] `{outcome}`.
    pub transactions: IntCounterVec,
    /// [`resizer::TRANSACTION_SECONDS`].
    pub transaction_seconds: Histogram,
    /// [`resizer::TRANSACTION_RECORDS`].
    pub transaction_records: Histogram,
    /// [`resizer::SOURCE_FETCH_SECONDS`] `{outcome}`.
    pub source_fetch_seconds: HistogramVec,
    /// [`resizer::SOURCE_BYTES_TOTAL`].
    pub source_bytes: IntCounter,
    /// [`metrics::consumer::LAG_RECORDS`] `{consumer="resizer", partition}`.
    pub consumer_lag: IntGaugeVec,
}

impl ResizerMetrics {
    /// Creates and registers every metric.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            jobs: metrics::counter_vec(registry, resizer::JOBS_TOTAL, &["outcome"])?,
            stage_seconds: metrics::histogram_vec(
                registry,
                resizer::STAGE_SECONDS,
                &["stage"],
                LATENCY_SECONDS,
            )?,
            in_flight: metrics::gauge(registry, resizer::IN_FLIGHT)?,
            pool_saturated: metrics::gauge(registry, resizer::POOL_SATURATED)?,
            dlq_records: metrics::counter(registry, resizer::DLQ_RECORDS_TOTAL)?,
            transactions: metrics::counter_vec(
                registry,
                resizer::TRANSACTIONS_TOTAL,
                &["outcome"],
            )?,
            transaction_seconds: metrics::histogram(
                registry,
                resizer::TRANSACTION_SECONDS,
                LATENCY_SECONDS,
            )?,
            transaction_records: metrics::histogram(
                registry,
                resizer::TRANSACTION_RECORDS,
                BATCH_RECORDS,
            )?,
            source_fetch_seconds: metrics::histogram_vec(
                registry,
                resizer::SOURCE_FETCH_SECONDS,
                &["outcome"],
                LATENCY_SECONDS,
            )?,
            source_bytes: metrics::counter(registry, resizer::SOURCE_BYTES_TOTAL)?,
            consumer_lag: metrics::consumer_lag(registry, "resizer")?,
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
        let m = ResizerMetrics::register(&registry).unwrap();
        // A vector is exported once it has a series.
        m.jobs.with_label_values(&["ok"]).inc();
        m.stage_seconds.with_label_values(&["decode"]).observe(0.01);
        m.transactions.with_label_values(&["committed"]).inc();
        m.source_fetch_seconds
            .with_label_values(&["source_not_found"])
            .observe(0.02);
        m.consumer_lag.with_label_values(&["0"]).set(2);
        let expected: Vec<_> = resizer::ALL
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
