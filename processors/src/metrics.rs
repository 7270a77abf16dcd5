//! The resizer's metric handles; names, help and buckets are in `chassis::metrics::resizer`.

use chassis::metrics::{self, BATCH_RECORDS, LATENCY_SECONDS, resizer};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};

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
    /// [`resizer::TRANSACTIONS_TOTAL`] `{result}`.
    pub transactions: IntCounterVec,
    /// [`resizer::TRANSACTION_SECONDS`].
    pub transaction_seconds: Histogram,
    /// [`resizer::TRANSACTION_RECORDS`].
    pub transaction_records: Histogram,
    /// [`resizer::CONSUMER_LAG_RECORDS`].
    pub consumer_lag: IntGauge,
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
            transactions: metrics::counter_vec(registry, resizer::TRANSACTIONS_TOTAL, &["result"])?,
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
            consumer_lag: metrics::gauge(registry, resizer::CONSUMER_LAG_RECORDS)?,
        })
    }
}
