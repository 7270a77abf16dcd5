//! Every metric of the identity service. Labels are bounded: route templates, status codes,
//! outcomes; never tenant or key ids.

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Admin requests, by route template, method and status.
pub const ADMIN_REQUESTS_TOTAL: &str = "imgpipe_identity_admin_requests_total";
/// Admin request latency, by route template.
pub const ADMIN_REQUEST_DURATION_SECONDS: &str = "imgpipe_identity_admin_request_duration_seconds";
/// Transactions written to identity.changes, by outcome (`ok`, `fenced`, `unavailable`, `failed`).
pub const WRITES_TOTAL: &str = "imgpipe_identity_writes_total";
/// Time from the start of a transaction to its commit.
pub const WRITE_DURATION_SECONDS: &str = "imgpipe_identity_write_duration_seconds";
/// 1 once another instance has fenced this one (it can no longer write).
pub const FENCED: &str = "imgpipe_identity_fenced";
/// Tenants and keys held, by kind.
pub const ENTITIES: &str = "imgpipe_identity_entities";
/// Records read while rebuilding state on start.
pub const REBUILD_RECORDS_TOTAL: &str = "imgpipe_identity_rebuild_records_total";
/// Undecodable records skipped while rebuilding.
pub const REBUILD_POISON_RECORDS_TOTAL: &str = "imgpipe_identity_rebuild_poison_records_total";

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
    pub(crate) rebuild_records: IntCounter,
    pub(crate) rebuild_poison: IntCounter,
}

impl IdentityMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        fn reg<C: Collector + Clone + 'static>(
            registry: &Registry,
            collector: C,
        ) -> Result<C, prometheus::Error> {
            registry.register(Box::new(collector.clone()))?;
            Ok(collector)
        }
        let r = registry;
        let latency_buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let entities = reg(
            r,
            IntGaugeVec::new(
                Opts::new(ENTITIES, "Tenants and keys held by the identity service."),
                &["kind"],
            )?,
        )?;
        Ok(Self {
            requests: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        ADMIN_REQUESTS_TOTAL,
                        "Admin requests by route, method and status.",
                    ),
                    &["route", "method", "status"],
                )?,
            )?,
            request_duration: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(ADMIN_REQUEST_DURATION_SECONDS, "Admin request latency.")
                        .buckets(latency_buckets.clone()),
                    &["route"],
                )?,
            )?,
            writes: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        WRITES_TOTAL,
                        "Transactions written to identity.changes by outcome.",
                    ),
                    &["outcome"],
                )?,
            )?,
            write_duration: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        WRITE_DURATION_SECONDS,
                        "Time to write and commit one identity.changes transaction.",
                    )
                    .buckets(latency_buckets),
                )?,
            )?,
            fenced: reg(
                r,
                IntGauge::new(
                    FENCED,
                    "1 once another identity instance has fenced this one.",
                )?,
            )?,
            tenants: entities.with_label_values(&["tenant"]),
            keys: entities.with_label_values(&["key"]),
            rebuild_records: reg(
                r,
                IntCounter::new(
                    REBUILD_RECORDS_TOTAL,
                    "identity.changes records read while rebuilding state.",
                )?,
            )?,
            rebuild_poison: reg(
                r,
                IntCounter::new(
                    REBUILD_POISON_RECORDS_TOTAL,
                    "Undecodable identity.changes records skipped while rebuilding.",
                )?,
            )?,
        })
    }
}
