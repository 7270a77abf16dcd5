//! Every metric the api exports, named in one place. Labels: route templates, outcome codes,
//! stage names; never tenants, keys or raw paths.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// The api's metrics.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    /// `imgpipe_api_request_seconds{route,outcome}`: end-to-end latency as the client sees it.
    pub request_seconds: HistogramVec,
    /// `imgpipe_api_stage_seconds{stage}`: resizer-reported stages plus the api's own.
    pub stage_seconds: HistogramVec,
    /// `imgpipe_api_in_flight_requests`: requests waiting for a reply.
    pub in_flight: IntGauge,
    /// `imgpipe_api_replies_total{outcome}`: delivered / unclaimed (late or unknown) / undecodable.
    pub replies: IntCounterVec,
    /// `imgpipe_api_usage_records_total{result}`: api-side usage records produced / failed.
    pub usage_records: IntCounterVec,
}

impl ApiMetrics {
    /// Creates and registers every metric.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            request_seconds: HistogramVec::new(
                HistogramOpts::new("imgpipe_api_request_seconds", "Request latency.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["route", "outcome"],
            )?,
            stage_seconds: HistogramVec::new(
                HistogramOpts::new("imgpipe_api_stage_seconds", "Duration of each stage.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["stage"],
            )?,
            in_flight: IntGauge::new(
                "imgpipe_api_in_flight_requests",
                "Requests waiting for a reply.",
            )?,
            replies: IntCounterVec::new(
                Opts::new(
                    "imgpipe_api_replies_total",
                    "Replies read, by what became of them.",
                ),
                &["outcome"],
            )?,
            usage_records: IntCounterVec::new(
                Opts::new(
                    "imgpipe_api_usage_records_total",
                    "Usage records the api produced.",
                ),
                &["result"],
            )?,
        };
        registry.register(Box::new(metrics.request_seconds.clone()))?;
        registry.register(Box::new(metrics.stage_seconds.clone()))?;
        registry.register(Box::new(metrics.in_flight.clone()))?;
        registry.register(Box::new(metrics.replies.clone()))?;
        registry.register(Box::new(metrics.usage_records.clone()))?;
        Ok(metrics)
    }
}
