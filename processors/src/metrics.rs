//! Every metric the resizer exports, named in one place. Labels are low-cardinality: outcome
//! codes, stage names, never tenants or request ids.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Seconds buckets from 0.5 ms to 10 s: resizes take milliseconds, timeouts take seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The resizer's metrics.
#[derive(Debug, Clone)]
pub struct ResizerMetrics {
    /// `imgpipe_resizer_jobs_total{outcome}`: finished requests by outcome code.
    pub jobs: IntCounterVec,
    /// `imgpipe_resizer_stage_seconds{stage}`: queue, decode, resize, encode durations.
    pub stage_seconds: HistogramVec,
    /// `imgpipe_resizer_in_flight`: requests on or queued for the CPU pool.
    pub in_flight: IntGauge,
    /// `imgpipe_resizer_pool_saturated`: 1 while no record is taken because the pool is full.
    pub pool_saturated: IntGauge,
    /// `imgpipe_resizer_dlq_records_total`: poison records sent to the DLQ.
    pub dlq_records: IntCounter,
    /// `imgpipe_resizer_transactions_total{result}`: committed / aborted.
    pub transactions: IntCounterVec,
    /// `imgpipe_resizer_transaction_seconds`: begin → commit.
    pub transaction_seconds: Histogram,
    /// `imgpipe_resizer_transaction_records`: results per committed transaction.
    pub transaction_records: Histogram,
    /// `imgpipe_resizer_consumer_lag_records`: records behind the end of image.requests, summed
    /// over assigned partitions.
    pub consumer_lag: IntGauge,
}

impl ResizerMetrics {
    /// Creates and registers every metric.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            jobs: IntCounterVec::new(
                Opts::new(
                    "imgpipe_resizer_jobs_total",
                    "Finished resize requests by outcome.",
                ),
                &["outcome"],
            )?,
            stage_seconds: HistogramVec::new(
                HistogramOpts::new("imgpipe_resizer_stage_seconds", "Duration of each stage.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["stage"],
            )?,
            in_flight: IntGauge::new("imgpipe_resizer_in_flight", "Requests on the CPU pool.")?,
            pool_saturated: IntGauge::new(
                "imgpipe_resizer_pool_saturated",
                "1 while no record is taken because the pool is full.",
            )?,
            dlq_records: IntCounter::new(
                "imgpipe_resizer_dlq_records_total",
                "Poison records sent to the dead-letter topic.",
            )?,
            transactions: IntCounterVec::new(
                Opts::new(
                    "imgpipe_resizer_transactions_total",
                    "Kafka transactions by result.",
                ),
                &["result"],
            )?,
            transaction_seconds: Histogram::with_opts(
                HistogramOpts::new("imgpipe_resizer_transaction_seconds", "Begin to commit.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            transaction_records: Histogram::with_opts(
                HistogramOpts::new(
                    "imgpipe_resizer_transaction_records",
                    "Results committed per transaction.",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )?,
            consumer_lag: IntGauge::new(
                "imgpipe_resizer_consumer_lag_records",
                "Records behind the end of the assigned image.requests partitions.",
            )?,
        };
        registry.register(Box::new(metrics.jobs.clone()))?;
        registry.register(Box::new(metrics.stage_seconds.clone()))?;
        registry.register(Box::new(metrics.in_flight.clone()))?;
        registry.register(Box::new(metrics.pool_saturated.clone()))?;
        registry.register(Box::new(metrics.dlq_records.clone()))?;
        registry.register(Box::new(metrics.transactions.clone()))?;
        registry.register(Box::new(metrics.transaction_seconds.clone()))?;
        registry.register(Box::new(metrics.transaction_records.clone()))?;
        registry.register(Box::new(metrics.consumer_lag.clone()))?;
        Ok(metrics)
    }
}
