//! Every metric the aggregator exports, by name, in one place. Units are in the names; the only
//! label is the Kafka partition number, bounded by the topic's partition count (never a tenant).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
    exponential_buckets,
};

/// Records received from `usage.events` (before decoding).
pub const RECORDS_CONSUMED_TOTAL: &str = "imgpipe_aggregator_records_consumed_total";
/// Records whose INSERT ClickHouse acknowledged.
pub const RECORDS_INSERTED_TOTAL: &str = "imgpipe_aggregator_records_inserted_total";
/// Undecodable records written to `usage_rejects` and skipped.
pub const RECORDS_REJECTED_TOTAL: &str = "imgpipe_aggregator_records_rejected_total";
/// Records dropped because ClickHouse already holds their offset (a replay that was not sought
/// past, or a retry after a lost acknowledgement).
pub const RECORDS_SKIPPED_TOTAL: &str = "imgpipe_aggregator_records_skipped_total";
/// Records per INSERT.
pub const BATCH_SIZE_RECORDS: &str = "imgpipe_aggregator_batch_size_records";
/// Wall time of one successful INSERT.
pub const INSERT_DURATION_SECONDS: &str = "imgpipe_aggregator_insert_duration_seconds";
/// INSERTs or offset look-ups that failed and were retried.
pub const INSERT_FAILURES_TOTAL: &str = "imgpipe_aggregator_insert_failures_total";
/// High watermark minus the next offset to store, per partition.
pub const LAG_RECORDS: &str = "imgpipe_aggregator_lag_records";
/// 1 while ClickHouse answers, 0 while the aggregator is retrying against it.
pub const CLICKHOUSE_UP: &str = "imgpipe_aggregator_clickhouse_up";
/// Records held in memory, waiting for their batch to be written.
pub const PENDING_RECORDS: &str = "imgpipe_aggregator_pending_records";

/// Handles to the registered metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// See [`RECORDS_CONSUMED_TOTAL`].
    pub consumed: IntCounter,
    /// See [`RECORDS_INSERTED_TOTAL`].
    pub inserted: IntCounter,
    /// See [`RECORDS_REJECTED_TOTAL`].
    pub rejected: IntCounter,
    /// See [`RECORDS_SKIPPED_TOTAL`].
    pub skipped: IntCounter,
    /// See [`BATCH_SIZE_RECORDS`].
    pub batch_size: Histogram,
    /// See [`INSERT_DURATION_SECONDS`].
    pub insert_duration: Histogram,
    /// See [`INSERT_FAILURES_TOTAL`].
    pub insert_failures: IntCounter,
    /// See [`LAG_RECORDS`].
    pub lag: IntGaugeVec,
    /// See [`CLICKHOUSE_UP`].
    pub clickhouse_up: IntGauge,
    /// See [`PENDING_RECORDS`].
    pub pending: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            consumed: IntCounter::new(RECORDS_CONSUMED_TOTAL, "Records read from usage.events")?,
            inserted: IntCounter::new(RECORDS_INSERTED_TOTAL, "Records stored in ClickHouse")?,
            rejected: IntCounter::new(
                RECORDS_REJECTED_TOTAL,
                "Undecodable records written to usage_rejects",
            )?,
            skipped: IntCounter::new(
                RECORDS_SKIPPED_TOTAL,
                "Records dropped because ClickHouse already holds their offset",
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new(BATCH_SIZE_RECORDS, "Records per INSERT")
                    .buckets(exponential_buckets(1.0, 4.0, 10)?),
            )?,
            insert_duration: Histogram::with_opts(
                HistogramOpts::new(INSERT_DURATION_SECONDS, "Duration of one INSERT")
                    .buckets(exponential_buckets(0.001, 2.0, 15)?),
            )?,
            insert_failures: IntCounter::new(
                INSERT_FAILURES_TOTAL,
                "Failed INSERTs or offset look-ups (retried)",
            )?,
            lag: IntGaugeVec::new(
                Opts::new(
                    LAG_RECORDS,
                    "Records in Kafka not yet stored, per partition",
                ),
                &["partition"],
            )?,
            clickhouse_up: IntGauge::new(CLICKHOUSE_UP, "Whether ClickHouse answers")?,
            pending: IntGauge::new(PENDING_RECORDS, "Records waiting in batches")?,
        };
        registry.register(Box::new(metrics.consumed.clone()))?;
        registry.register(Box::new(metrics.inserted.clone()))?;
        registry.register(Box::new(metrics.rejected.clone()))?;
        registry.register(Box::new(metrics.skipped.clone()))?;
        registry.register(Box::new(metrics.batch_size.clone()))?;
        registry.register(Box::new(metrics.insert_duration.clone()))?;
        registry.register(Box::new(metrics.insert_failures.clone()))?;
        registry.register(Box::new(metrics.lag.clone()))?;
        registry.register(Box::new(metrics.clickhouse_up.clone()))?;
        registry.register(Box::new(metrics.pending.clone()))?;
        Ok(metrics)
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_once_with_its_unit_in_the_name() {
        let registry = Registry::new();
        let metrics = Metrics::register(&registry).expect("registers");
        metrics.lag.with_label_values(&["0"]).set(1);
        metrics.batch_size.observe(1.0);
        metrics.insert_duration.observe(0.01);
        for family in registry.gather() {
            let name = family.name();
            assert!(
                ["_total", "_records", "_seconds", "_up"]
                    .iter()
                    .any(|unit| name.ends_with(unit)),
                "{name}"
            );
        }
        assert!(
            Metrics::register(&registry).is_err(),
            "second registration must fail"
        );
    }
}
