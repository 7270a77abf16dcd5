//! Every metric imgpipe exports, in one catalogue: name (one prefix, `imgpipe_`, and the unit in
//! the name as Prometheus asks: `_seconds`, `_records`, `_total` for counters), help text, and the
//! histogram buckets; plus the registration helpers every service uses. Labels are always
//! bounded (outcome codes, stages, routes, partitions), never tenants, keys or request ids.
//! Runbooks and alerts name metrics as they are written here.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// The prefix of every metric name.
pub const PREFIX: &str = "imgpipe_";

/// Seconds, 0.5 ms to 30 s: requests and stages take milliseconds; deadlines and outages take
/// seconds.
pub const LATENCY_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Records per batch or transaction, 1 to 262,144 in powers of four.
pub const BATCH_RECORDS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262_144.0,
];

/// A metric's name and help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// Full name, prefix and unit included.
    pub name: &'static str,
    /// One line for `# HELP`.
    pub help: &'static str,
}

const fn metric(name: &'static str, help: &'static str) -> Metric {
    Metric { name, help }
}

/// The api (data plane).
pub mod api {
    use super::{Metric, metric};
    /// `{route, outcome}`: end-to-end latency as the client sees it; `outcome="ok"` only for 200s.
    pub const REQUEST_SECONDS: Metric = metric("imgpipe_api_request_seconds", "Request latency.");
    /// `{stage}`: resizer-reported stages (queue, decode, resize, encode) plus `produce`.
    pub const STAGE_SECONDS: Metric =
        metric("imgpipe_api_stage_seconds", "Duration of each stage.");
    /// Requests waiting for a reply.
    pub const IN_FLIGHT_REQUESTS: Metric = metric(
        "imgpipe_api_in_flight_requests",
        "Requests waiting for a reply.",
    );
    /// `{outcome}`: replies read: delivered, unclaimed (late or unknown), undecodable.
    pub const REPLIES_TOTAL: Metric = metric(
        "imgpipe_api_replies_total",
        "Replies read, by what became of them.",
    );
    /// `{result}`: api-side usage records `queued`, then `delivered` or `failed` (not taken by
    /// librdkafka, or not acknowledged within the usage delivery timeout).
    pub const USAGE_RECORDS_TOTAL: Metric = metric(
        "imgpipe_api_usage_records_total",
        "Usage records the api produced.",
    );
}

/// The api's identity view and authentication step.
pub mod auth {
    use super::{Metric, metric};
    /// Seconds since the view last confirmed it was caught up (-1 until it first is).
    pub const VIEW_STALENESS_SECONDS: Metric = metric(
        "imgpipe_identity_view_staleness_seconds",
        "Seconds since the identity view last confirmed it was caught up (-1: never).",
    );
    /// 1 while the view is older than `auth.max_staleness` (unknown keys then fail closed).
    pub const VIEW_STALE: Metric = metric(
        "imgpipe_identity_view_stale",
        "1 while the identity view is older than its bound and unknown keys fail closed.",
    );
    /// Records between the view's position and the high watermarks at the last check.
    pub const VIEW_LAG_RECORDS: Metric = metric(
        "imgpipe_identity_view_lag_records",
        "Records between the identity view and the high watermarks at the last check.",
    );
    /// `{kind}`: records applied (`tenant`, `key`, `tombstone`).
    pub const VIEW_RECORDS_TOTAL: Metric = metric(
        "imgpipe_identity_view_records_total",
        "Records applied to the identity view.",
    );
    /// Undecodable `identity.changes` records skipped by the view.
    pub const VIEW_POISON_RECORDS_TOTAL: Metric = metric(
        "imgpipe_identity_view_poison_records_total",
        "Undecodable identity.changes records skipped by the view.",
    );
    /// Consumer errors and failed watermark checks.
    pub const VIEW_ERRORS_TOTAL: Metric = metric(
        "imgpipe_identity_view_errors_total",
        "Consumer errors and failed watermark checks of the identity view.",
    );
    /// `{kind}`: tenants and keys in the view.
    pub const VIEW_ENTITIES: Metric = metric(
        "imgpipe_identity_view_entities",
        "Tenants and keys in the identity view.",
    );
    /// `{outcome}`: authentication decisions.
    pub const DECISIONS_TOTAL: Metric = metric(
        "imgpipe_auth_decisions_total",
        "Authentication decisions by outcome.",
    );
    /// Authentications answered from the verified-key cache.
    pub const CACHE_HITS_TOTAL: Metric = metric(
        "imgpipe_auth_cache_hits_total",
        "Authentications answered from the verified-key cache.",
    );
    /// Authentications that verified the salted hash.
    pub const CACHE_MISSES_TOTAL: Metric = metric(
        "imgpipe_auth_cache_misses_total",
        "Authentications that verified the salted hash.",
    );
}

/// The identity service (management plane).
pub mod identity {
    use super::{Metric, metric};
    /// `{route, method, status}`: admin requests.
    pub const ADMIN_REQUESTS_TOTAL: Metric = metric(
        "imgpipe_identity_admin_requests_total",
        "Admin requests by route, method and status.",
    );
    /// `{route}`: admin request latency.
    pub const ADMIN_REQUEST_DURATION_SECONDS: Metric = metric(
        "imgpipe_identity_admin_request_duration_seconds",
        "Admin request latency.",
    );
    /// `{outcome}`: transactions written to `identity.changes` (ok, fenced, unavailable, failed).
    pub const WRITES_TOTAL: Metric = metric(
        "imgpipe_identity_writes_total",
        "Transactions written to identity.changes by outcome.",
    );
    /// From the start of a transaction to its commit.
    pub const WRITE_DURATION_SECONDS: Metric = metric(
        "imgpipe_identity_write_duration_seconds",
        "Time to write and commit one identity.changes transaction.",
    );
    /// 1 once another instance has fenced this one (it can no longer write).
    pub const FENCED: Metric = metric(
        "imgpipe_identity_fenced",
        "1 once another identity instance has fenced this one.",
    );
    /// `{kind}`: tenants and keys held.
    pub const ENTITIES: Metric = metric(
        "imgpipe_identity_entities",
        "Tenants and keys held by the identity service.",
    );
    /// Records read while rebuilding state on start.
    pub const REBUILD_RECORDS_TOTAL: Metric = metric(
        "imgpipe_identity_rebuild_records_total",
        "identity.changes records read while rebuilding state.",
    );
    /// Admin calls whose audit record Kafka did not take (the call was answered anyway).
    pub const AUDIT_FAILURES_TOTAL: Metric = metric(
        "imgpipe_identity_audit_failures_total",
        "Admin calls whose identity.audit record could not be written.",
    );
    /// Undecodable records skipped while rebuilding.
    pub const REBUILD_POISON_RECORDS_TOTAL: Metric = metric(
        "imgpipe_identity_rebuild_poison_records_total",
        "Undecodable identity.changes records skipped while rebuilding.",
    );
}

/// Resizers.
pub mod resizer {
    use super::{Metric, metric};
    /// `{outcome}`: finished requests by outcome code.
    pub const JOBS_TOTAL: Metric = metric(
        "imgpipe_resizer_jobs_total",
        "Finished resize requests by outcome.",
    );
    /// `{stage}`: queue, decode, resize, encode.
    pub const STAGE_SECONDS: Metric =
        metric("imgpipe_resizer_stage_seconds", "Duration of each stage.");
    /// Requests on or queued for the CPU pool.
    pub const IN_FLIGHT: Metric = metric("imgpipe_resizer_in_flight", "Requests on the CPU pool.");
    /// 1 while no record is taken because the pool is full.
    pub const POOL_SATURATED: Metric = metric(
        "imgpipe_resizer_pool_saturated",
        "1 while no record is taken because the pool is full.",
    );
    /// Poison records and unwritable outputs sent to the DLQ.
    pub const DLQ_RECORDS_TOTAL: Metric = metric(
        "imgpipe_resizer_dlq_records_total",
        "Records sent to the dead-letter topic.",
    );
    /// `{result}`: committed, aborted.
    pub const TRANSACTIONS_TOTAL: Metric = metric(
        "imgpipe_resizer_transactions_total",
        "Kafka transactions by result.",
    );
    /// Begin to commit of one transaction.
    pub const TRANSACTION_SECONDS: Metric =
        metric("imgpipe_resizer_transaction_seconds", "Begin to commit.");
    /// Results per committed transaction.
    pub const TRANSACTION_RECORDS: Metric = metric(
        "imgpipe_resizer_transaction_records",
        "Results committed per transaction.",
    );
    /// Records behind the end of the assigned `image.requests` partitions.
    pub const CONSUMER_LAG_RECORDS: Metric = metric(
        "imgpipe_resizer_consumer_lag_records",
        "Records behind the end of the assigned image.requests partitions.",
    );
}

/// The usage aggregator.
pub mod aggregator {
    use super::{Metric, metric};
    /// Records received from `usage.events` (before decoding).
    pub const RECORDS_CONSUMED_TOTAL: Metric = metric(
        "imgpipe_aggregator_records_consumed_total",
        "Records read from usage.events.",
    );
    /// Records whose INSERT ClickHouse acknowledged.
    pub const RECORDS_INSERTED_TOTAL: Metric = metric(
        "imgpipe_aggregator_records_inserted_total",
        "Records stored in ClickHouse.",
    );
    /// Undecodable records written to `usage_rejects` and skipped.
    pub const RECORDS_REJECTED_TOTAL: Metric = metric(
        "imgpipe_aggregator_records_rejected_total",
        "Undecodable records written to usage_rejects.",
    );
    /// Records dropped because ClickHouse already holds their offset (a replay not sought past,
    /// or a retry after a lost acknowledgement).
    pub const RECORDS_SKIPPED_TOTAL: Metric = metric(
        "imgpipe_aggregator_records_skipped_total",
        "Records dropped because ClickHouse already holds their offset.",
    );
    /// Records per INSERT.
    pub const BATCH_SIZE_RECORDS: Metric = metric(
        "imgpipe_aggregator_batch_size_records",
        "Records per INSERT.",
    );
    /// Wall time of one successful INSERT.
    pub const INSERT_DURATION_SECONDS: Metric = metric(
        "imgpipe_aggregator_insert_duration_seconds",
        "Duration of one INSERT.",
    );
    /// INSERTs or offset look-ups that failed and were retried.
    pub const INSERT_FAILURES_TOTAL: Metric = metric(
        "imgpipe_aggregator_insert_failures_total",
        "Failed INSERTs or offset look-ups (retried).",
    );
    /// `{partition}`: high watermark minus the next offset to store.
    pub const LAG_RECORDS: Metric = metric(
        "imgpipe_aggregator_lag_records",
        "Records in Kafka not yet stored, per partition.",
    );
    /// 1 while ClickHouse answers, 0 while the aggregator retries against it.
    pub const CLICKHOUSE_UP: Metric = metric(
        "imgpipe_aggregator_clickhouse_up",
        "Whether ClickHouse answers.",
    );
    /// Records stored after the minute of their event time had been settled into the rollups
    /// (at least the lookaround minute before the settle mark): the usage views miss them. See
    /// `rollup_lateness` and runbooks/usage-freshness.md.
    pub const RECORDS_LATE_TOTAL: Metric = metric(
        "imgpipe_aggregator_records_late_total",
        "Records stored after their minute was settled into the rollups (missed by the views).",
    );
    /// Records held in memory, waiting for their batch to be written.
    pub const PENDING_RECORDS: Metric = metric(
        "imgpipe_aggregator_pending_records",
        "Records waiting in batches.",
    );
}

/// Every consumer.
pub mod consumer {
    use super::{Metric, metric};
    /// `{consumer}`: 1 while the consumer holds work and has made no progress for its bound.
    pub const STALLED: Metric = metric(
        "imgpipe_consumer_stalled",
        "1 while the consumer holds work but made no progress for longer than its bound.",
    );
    /// `{consumer}`: rebalances that ended in an assignment (or failed); a storm is many of them.
    pub const REBALANCES_TOTAL: Metric = metric(
        "imgpipe_consumer_rebalances_total",
        "Consumer group rebalances completed (or failed), by consumer.",
    );
}

/// The ops endpoint of every process.
pub mod ops {
    use super::{Metric, metric};
    /// `{check}`: each `/readyz` check as 1 (ready) or 0, so alerts can name the dependency that
    /// is gone (`aggregator.clickhouse`, `aggregator.registry`, `kafka-producer`, …).
    pub const READINESS_CHECK_UP: Metric = metric(
        "imgpipe_readiness_check_up",
        "1 while the named readiness check passes, 0 while it fails.",
    );
}

/// Every metric of the catalogue.
pub const ALL: &[Metric] = &[
    api::REQUEST_SECONDS,
    api::STAGE_SECONDS,
    api::IN_FLIGHT_REQUESTS,
    api::REPLIES_TOTAL,
    api::USAGE_RECORDS_TOTAL,
    auth::VIEW_STALENESS_SECONDS,
    auth::VIEW_STALE,
    auth::VIEW_LAG_RECORDS,
    auth::VIEW_RECORDS_TOTAL,
    auth::VIEW_POISON_RECORDS_TOTAL,
    auth::VIEW_ERRORS_TOTAL,
    auth::VIEW_ENTITIES,
    auth::DECISIONS_TOTAL,
    auth::CACHE_HITS_TOTAL,
    auth::CACHE_MISSES_TOTAL,
    identity::ADMIN_REQUESTS_TOTAL,
    identity::ADMIN_REQUEST_DURATION_SECONDS,
    identity::WRITES_TOTAL,
    identity::WRITE_DURATION_SECONDS,
    identity::FENCED,
    identity::ENTITIES,
    identity::REBUILD_RECORDS_TOTAL,
    identity::REBUILD_POISON_RECORDS_TOTAL,
    resizer::JOBS_TOTAL,
    resizer::STAGE_SECONDS,
    resizer::IN_FLIGHT,
    resizer::POOL_SATURATED,
    resizer::DLQ_RECORDS_TOTAL,
    resizer::TRANSACTIONS_TOTAL,
    resizer::TRANSACTION_SECONDS,
    resizer::TRANSACTION_RECORDS,
    resizer::CONSUMER_LAG_RECORDS,
    aggregator::RECORDS_CONSUMED_TOTAL,
    aggregator::RECORDS_INSERTED_TOTAL,
    aggregator::RECORDS_REJECTED_TOTAL,
    aggregator::RECORDS_SKIPPED_TOTAL,
    aggregator::BATCH_SIZE_RECORDS,
    aggregator::INSERT_DURATION_SECONDS,
    aggregator::INSERT_FAILURES_TOTAL,
    aggregator::LAG_RECORDS,
    aggregator::CLICKHOUSE_UP,
    aggregator::PENDING_RECORDS,
    consumer::STALLED,
    consumer::REBALANCES_TOTAL,
    ops::READINESS_CHECK_UP,
];

/// Metrics of the whole process rather than of one service: they are counted where no service
/// context reaches (say, inside a Kafka client's rebalance callback), and every ops endpoint of
/// the process exports them.
struct ProcessMetrics {
    registry: Registry,
    rebalances: Option<IntCounterVec>,
}

static PROCESS: std::sync::LazyLock<ProcessMetrics> = std::sync::LazyLock::new(|| {
    let registry = Registry::new();
    let rebalances = counter_vec(&registry, consumer::REBALANCES_TOTAL, &["consumer"])
        .inspect_err(|error| tracing::error!(%error, "Registering the rebalance counter failed"))
        .ok();
    ProcessMetrics {
        registry,
        rebalances,
    }
});

/// The registry of process-wide metrics, gathered by the ops endpoint.
pub fn process_registry() -> &'static Registry {
    &PROCESS.registry
}

/// Counts one finished rebalance of `consumer`.
pub fn count_rebalance(consumer: &str) {
    if let Some(rebalances) = &PROCESS.rebalances {
        rebalances.with_label_values(&[consumer]).inc();
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// Registers a counter.
pub fn counter(registry: &Registry, m: Metric) -> prometheus::Result<IntCounter> {
    register(registry, IntCounter::new(m.name, m.help)?)
}

/// Registers a counter with `labels`.
pub fn counter_vec(
    registry: &Registry,
    m: Metric,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    register(
        registry,
        IntCounterVec::new(Opts::new(m.name, m.help), labels)?,
    )
}

/// Registers an integer gauge.
pub fn gauge(registry: &Registry, m: Metric) -> prometheus::Result<IntGauge> {
    register(registry, IntGauge::new(m.name, m.help)?)
}

/// Registers a float gauge.
pub fn float_gauge(registry: &Registry, m: Metric) -> prometheus::Result<Gauge> {
    register(registry, Gauge::new(m.name, m.help)?)
}

/// Registers an integer gauge with `labels`.
pub fn gauge_vec(
    registry: &Registry,
    m: Metric,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    register(
        registry,
        IntGaugeVec::new(Opts::new(m.name, m.help), labels)?,
    )
}

/// Registers a histogram with `buckets`.
pub fn histogram(registry: &Registry, m: Metric, buckets: &[f64]) -> prometheus::Result<Histogram> {
    let opts = HistogramOpts::new(m.name, m.help).buckets(buckets.to_vec());
    register(registry, Histogram::with_opts(opts)?)
}

/// Registers a histogram with `labels` and `buckets`.
pub fn histogram_vec(
    registry: &Registry,
    m: Metric,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    let opts = HistogramOpts::new(m.name, m.help).buckets(buckets.to_vec());
    register(registry, HistogramVec::new(opts, labels)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_the_prefix_a_unit_and_is_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(m.name.starts_with(PREFIX), "{}", m.name);
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(!m.help.is_empty(), "{}", m.name);
            // The unit, or a 0/1 or count gauge whose name says what it counts.
            let unit = ["_total", "_seconds", "_records", "_requests", "_entities"]
                .iter()
                .any(|u| m.name.ends_with(u));
            let flag = [
                "_stale",
                "_fenced",
                "_up",
                "_saturated",
                "_stalled",
                "_in_flight",
            ]
            .iter()
            .any(|u| m.name.ends_with(u));
            assert!(unit || flag, "{} names no unit", m.name);
        }
        for buckets in [LATENCY_SECONDS, BATCH_RECORDS] {
            assert!(buckets.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
