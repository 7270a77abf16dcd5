//! The aggregator's metric handles; names, help and buckets are in `chassis::metrics::aggregator`
//! (and its lag in `chassis::metrics::consumer`). The only label set here is the Kafka partition
//! number of the lag, bounded by the topic's partition count.

use chassis::metrics::{self, BATCH_RECORDS, LATENCY_SECONDS, aggregator as m};
use prometheus::{Histogram, IntCounter, IntGauge, IntGaugeVec, Registry};

/// Handles to the registered metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// [`m::RECORDS_CONSUMED_TOTAL`].
    pub consumed: IntCounter,
    /// [`m::RECORDS_INSERTED_TOTAL`].
    pub inserted: IntCounter,
    /// [`m::RECORDS_REJECTED_TOTAL`].
    pub rejected: IntCounter,
    /// [`m::RECORDS_SKIPPED_TOTAL`].
    pub skipped: IntCounter,
    /// [`m::RECORDS_LATE_TOTAL`].
    pub late: IntCounter,
    /// [`m::BATCH_SIZE_RECORDS`].
    pub batch_size: Histogram,
    /// [`m::INSERT_DURATION_SECONDS`].
    pub insert_duration: Histogram,
    /// [`m::INSERT_FAILURES_TOTAL`].
    pub insert_failures: IntCounter,
    /// [`metrics::consumer::LAG_RECORDS`] `{consumer="aggregator", partition}`: set it with
    /// `with_label_values(&[partition])`.
    pub lag: IntGaugeVec,
    /// [`m::CLICKHOUSE_UP`].
    pub clickhouse_up: IntGauge,
    /// [`m::PENDING_RECORDS`].
    pub pending: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(Self {
            consumed: metrics::counter(registry, m::RECORDS_CONSUMED_TOTAL)?,
            inserted: metrics::counter(registry, m::RECORDS_INSERTED_TOTAL)?,
            rejected: metrics::counter(registry, m::RECORDS_REJECTED_TOTAL)?,
            skipped: metrics::counter(registry, m::RECORDS_SKIPPED_TOTAL)?,
            late: metrics::counter(registry, m::RECORDS_LATE_TOTAL)?,
            batch_size: metrics::histogram(registry, m::BATCH_SIZE_RECORDS, BATCH_RECORDS)?,
            insert_duration: metrics::histogram(
                registry,
                m::INSERT_DURATION_SECONDS,
                LATENCY_SECONDS,
            )?,
            insert_failures: metrics::counter(registry, m::INSERT_FAILURES_TOTAL)?,
            lag: metrics::consumer_lag(registry, "aggregator")?,
            clickhouse_up: metrics::gauge(registry, m::CLICKHOUSE_UP)?,
            pending: metrics::gauge(registry, m::PENDING_RECORDS)?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_once_and_follows_the_naming_rule() {
        let registry = Registry::new();
        let handles = Metrics::register(&registry).expect("registers");
        // A vector is exported once it has a series.
        handles.lag.with_label_values(&["0"]).set(1);
        let expected: Vec<_> = m::ALL
            .iter()
            .chain([&metrics::consumer::LAG_RECORDS])
            .copied()
            .collect();
        assert_eq!(
            metrics::registry_violations(&registry.gather(), &expected),
            Vec::<String>::new()
        );
        assert!(
            Metrics::register(&registry).is_err(),
            "second registration must fail"
        );
    }
}
