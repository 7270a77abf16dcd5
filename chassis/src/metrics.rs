//! Every metric imgpipe exports, in one catalogue: name, help text and histogram buckets; the
//! registration helpers every service uses; and the naming rule below, which
//! [`naming_violations`] checks on every registered family (each crate's metrics test registers
//! its metrics, gathers them and runs it). Runbooks, alerts and the dashboard name metrics as
//! they are written here.
//!
//! # Naming rule
//!
//! MUST and MUST NOT are meant as in RFC 2119. A change that breaks a rule fails the tests; a
//! change to a rule is made here first, then in the code.
//!
//! ## Names
//!
//! - A name MUST follow `imgpipe_<name>_<unit>[_total]`, in lowercase ASCII letters, digits and
//!   single underscores:
//!   - `<name>` starts with the component (`api`, `auth`, `identity`, `identity_view`,
//!     `resizer`, `aggregator`, `consumer`, `readiness`), then says what is measured;
//!   - `<unit>` is one base unit, plural, from [`UNITS`]: `seconds` (never milliseconds),
//!     `bytes`, `records`, `requests`, `entities`. The quantity it measures MUST NOT be named
//!     before it: `_seconds`, never `_duration_seconds`, `_latency_seconds` or `_time_seconds`;
//!     `_records`, never `_size_records`.
//! - A counter MUST end in `_total`, right after the plural of what it counts
//!   (`_records_total`, `_decisions_total`, `_rebalances_total`; `_seconds_total` for time).
//!   Nothing else ends in `_total`.
//! - A histogram MUST end in its unit.
//! - A gauge MUST end in its unit, or, if it is 0 or 1, in the state that 1 means, from
//!   [`STATES`] (`_up`, `_stale`, `_stalled`, `_fenced`, `_saturated`).
//! - A name MUST NOT end in `_bucket`, `_sum` or `_count`: the text format adds those to
//!   histograms.
//! - One quantity measured in several places MUST be one name with a label, not a name per
//!   service: every consumer's lag is [`consumer::LAG_RECORDS`],
//!   `imgpipe_consumer_lag_records{consumer, partition}`, registered with [`consumer_lag`].
//!
//! ## Labels
//!
//! - Label values MUST be bounded: codes, stages, routes, partitions; never tenants, keys,
//!   request ids or raw paths.
//! - A label name MUST be one of [`LABELS`], with the meaning this table gives it; the same idea
//!   MUST carry the same name in every family (what became of the work is `outcome`, never
//!   `result`):
//!
//! | label | means | values |
//! |---|---|---|
//! | `outcome` | what became of one unit of work | a code: `ok` or the error code the client sees; `committed`, `aborted`, `fatal`; `queued`, `delivered`, `failed`; `fenced`, `unavailable` |
//! | `route` | an HTTP route template | `/v1/resize`, `/admin/v1/tenants/{tenant_id}`, … |
//! | `method` | an HTTP method | `GET`, `POST`, … |
//! | `status` | an HTTP status code, where the code rather than an outcome is reported | `200`, `404`, … |
//! | `stage` | a step of one request | `queue`, `decode`, `resize`, `encode`, `produce` |
//! | `kind` | the kind of an entity or record | `tenant`, `key`, `tombstone` |
//! | `consumer` | a Kafka consumer, named as its stall detector and `/readyz` checks name it | `resizer`, `aggregator`, `identity_view`, `api-replies` |
//! | `partition` | a partition number of the consumer's topic | `0`, `1`, … |
//! | `check` | a `/readyz` check | `aggregator.clickhouse`, `kafka-producer`, `resizer`, … |
//!
//! ## Help
//!
//! - Every metric MUST have a one-line help text; its doc comment here names its labels
//!   (`{route, outcome}`).

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
    /// `{outcome}`: api-side usage records `queued`, then `delivered` or `failed` (not taken by
    /// librdkafka, or not acknowledged within the usage delivery timeout).
    pub const USAGE_RECORDS_TOTAL: Metric = metric(
        "imgpipe_api_usage_records_total",
        "Usage records the api produced.",
    );
    /// `{outcome}`: signed GETs revalidated with their origin for a client's `If-None-Match`:
    /// `not_modified` (answered 304 with no resize), `modified` (a newer source: resized again),
    /// `other_status` (the origin answered neither; resized again, which reports it), or the
    /// fetch error's code (the origin could not be asked; resized again).
    pub const REVALIDATIONS_TOTAL: Metric = metric(
        "imgpipe_api_revalidations_total",
        "Conditional requests to origins for clients' If-None-Match, by what the origin said.",
    );
    /// Every metric of this module.
    pub const ALL: &[Metric] = &[
        REQUEST_SECONDS,
        STAGE_SECONDS,
        IN_FLIGHT_REQUESTS,
        REPLIES_TOTAL,
        USAGE_RECORDS_TOTAL,
        REVALIDATIONS_TOTAL,
    ];
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
    /// Every metric of this module.
    pub const ALL: &[Metric] = &[
        VIEW_STALENESS_SECONDS,
        VIEW_STALE,
        VIEW_RECORDS_TOTAL,
        VIEW_POISON_RECORDS_TOTAL,
        VIEW_ERRORS_TOTAL,
        VIEW_ENTITIES,
        DECISIONS_TOTAL,
        CACHE_HITS_TOTAL,
        CACHE_MISSES_TOTAL,
    ];
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
        "imgpipe_identity_admin_request_seconds",
        "Admin request latency.",
    );
    /// `{outcome}`: transactions written to `identity.changes` (ok, fenced, unavailable, failed).
    pub const WRITES_TOTAL: Metric = metric(
        "imgpipe_identity_writes_total",
        "Transactions written to identity.changes by outcome.",
    );
    /// From the start of a transaction to its commit.
    pub const WRITE_DURATION_SECONDS: Metric = metric(
        "imgpipe_identity_write_seconds",
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
    /// Every metric of this module.
    pub const ALL: &[Metric] = &[
        ADMIN_REQUESTS_TOTAL,
        ADMIN_REQUEST_DURATION_SECONDS,
        WRITES_TOTAL,
        WRITE_DURATION_SECONDS,
        FENCED,
        ENTITIES,
        REBUILD_RECORDS_TOTAL,
        REBUILD_POISON_RECORDS_TOTAL,
        AUDIT_FAILURES_TOTAL,
    ];
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
    pub const IN_FLIGHT: Metric = metric(
        "imgpipe_resizer_in_flight_requests",
        "Requests on the CPU pool.",
    );
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
    /// `{outcome}`: `committed`, `aborted`, `fatal` (the producer cannot go on).
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
    /// `{outcome}`: fetching a source given by reference (a signed GET's URL), redirects and
    /// body included; `ok` or the fetch's error code (`source_not_found`, `source_timeout`,
    /// `source_address_refused`, …).
    pub const SOURCE_FETCH_SECONDS: Metric = metric(
        "imgpipe_resizer_source_fetch_seconds",
        "Time to fetch a source image by URL, by outcome.",
    );
    /// Bytes of source images fetched by URL (bodies handed to the kernel).
    pub const SOURCE_BYTES_TOTAL: Metric = metric(
        "imgpipe_resizer_source_bytes_total",
        "Bytes of source images fetched by URL.",
    );
    /// Every metric of this module.
    pub const ALL: &[Metric] = &[
        JOBS_TOTAL,
        STAGE_SECONDS,
        IN_FLIGHT,
        POOL_SATURATED,
        DLQ_RECORDS_TOTAL,
        TRANSACTIONS_TOTAL,
        TRANSACTION_SECONDS,
        TRANSACTION_RECORDS,
        SOURCE_FETCH_SECONDS,
        SOURCE_BYTES_TOTAL,
    ];
}

/// The usage aggregator.
pub mod aggregator {
    use super::{Metric, metric};
    /// Records received from `usage.events` (before decoding).
    pub const RECORDS_CONSUMED_TOTAL: Metric = metric(
        "imgpipe_aggregator_consumed_records_total",
        "Records read from usage.events.",
    );
    /// Records whose INSERT ClickHouse acknowledged.
    pub const RECORDS_INSERTED_TOTAL: Metric = metric(
        "imgpipe_aggregator_inserted_records_total",
        "Records stored in ClickHouse.",
    );
    /// Undecodable records written to `usage_rejects` and skipped.
    pub const RECORDS_REJECTED_TOTAL: Metric = metric(
        "imgpipe_aggregator_rejected_records_total",
        "Undecodable records written to usage_rejects.",
    );
    /// Records dropped because ClickHouse already holds their offset (a replay not sought past,
    /// or a retry after a lost acknowledgement).
    pub const RECORDS_SKIPPED_TOTAL: Metric = metric(
        "imgpipe_aggregator_skipped_records_total",
        "Records dropped because ClickHouse already holds their offset.",
    );
    /// Records per INSERT.
    pub const BATCH_SIZE_RECORDS: Metric =
        metric("imgpipe_aggregator_batch_records", "Records per INSERT.");
    /// Wall time of one successful INSERT.
    pub const INSERT_DURATION_SECONDS: Metric = metric(
        "imgpipe_aggregator_insert_seconds",
        "Duration of one INSERT.",
    );
    /// INSERTs or offset look-ups that failed and were retried.
    pub const INSERT_FAILURES_TOTAL: Metric = metric(
        "imgpipe_aggregator_insert_failures_total",
        "Failed INSERTs or offset look-ups (retried).",
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
        "imgpipe_aggregator_late_records_total",
        "Records stored after their minute was settled into the rollups (missed by the views).",
    );
    /// Records held in memory, waiting for their batch to be written.
    pub const PENDING_RECORDS: Metric = metric(
        "imgpipe_aggregator_pending_records",
        "Records waiting in batches.",
    );
    /// Every metric of this module.
    pub const ALL: &[Metric] = &[
        RECORDS_CONSUMED_TOTAL,
        RECORDS_INSERTED_TOTAL,
        RECORDS_REJECTED_TOTAL,
        RECORDS_SKIPPED_TOTAL,
        BATCH_SIZE_RECORDS,
        INSERT_DURATION_SECONDS,
        INSERT_FAILURES_TOTAL,
        CLICKHOUSE_UP,
        RECORDS_LATE_TOTAL,
        PENDING_RECORDS,
    ];
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
    /// `{consumer, partition}`: records between the consumer's position and the end of the
    /// partition. Each consumer measures it its own way: the resizer from its position and the
    /// high watermark; the aggregator from librdkafka's statistics (high watermark minus the next
    /// offset to store, i.e. what ClickHouse does not hold yet); the api's identity view from its
    /// position and the watermarks of its last freshness check.
    pub const LAG_RECORDS: Metric = metric(
        "imgpipe_consumer_lag_records",
        "Records between the consumer's position and the end of the partition.",
    );
    /// Every metric of this module.
    pub const ALL: &[Metric] = &[STALLED, REBALANCES_TOTAL, LAG_RECORDS];
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
    /// Every metric of this module.
    pub const ALL: &[Metric] = &[READINESS_CHECK_UP];
}

/// Every metric of the catalogue, by module.
pub const ALL: &[&[Metric]] = &[
    api::ALL,
    auth::ALL,
    identity::ALL,
    resizer::ALL,
    aggregator::ALL,
    consumer::ALL,
    ops::ALL,
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

/// Registers `consumer`'s series of [`consumer::LAG_RECORDS`]: `{consumer}` is fixed, the
/// vector's one label is `partition` (`with_label_values(&["3"])`). Several consumers may share
/// a registry; each registers its own.
pub fn consumer_lag(registry: &Registry, consumer: &str) -> prometheus::Result<IntGaugeVec> {
    let m = consumer::LAG_RECORDS;
    let opts = Opts::new(m.name, m.help).const_label("consumer", consumer);
    register(registry, IntGaugeVec::new(opts, &["partition"])?)
}

/// Sets a consumer's lag (from [`consumer_lag`]) to `measured` (partition, records behind), and
/// removes the series of every partition not in `assigned`: a revoked partition must not report
/// its last lag forever. An assigned partition not measured this time keeps its last value.
pub fn set_partition_lags(lag: &IntGaugeVec, assigned: &[i32], measured: &[(i32, i64)]) {
    for (partition, records) in measured {
        lag.with_label_values(&[&partition.to_string()])
            .set(*records);
    }
    let shown: Vec<String> = prometheus::core::Collector::collect(lag)
        .iter()
        .flat_map(|family| family.get_metric())
        .flat_map(|metric| metric.get_label())
        .filter(|label| label.name() == "partition")
        .map(|label| label.value().to_owned())
        .collect();
    for partition in shown {
        if !assigned.iter().any(|p| p.to_string() == partition) {
            let _ = lag.remove_label_values(&[&partition]);
        }
    }
}

/// The base units a name may end in (see the module's naming rule).
pub const UNITS: &[&str] = &["seconds", "bytes", "records", "requests", "entities"];

/// The states a 0/1 gauge may be named for (see the module's naming rule).
pub const STATES: &[&str] = &["up", "stale", "stalled", "fenced", "saturated"];

/// Every label name, one per idea (the module's label table says what each means).
pub const LABELS: &[&str] = &[
    "outcome",
    "route",
    "method",
    "status",
    "stage",
    "kind",
    "consumer",
    "partition",
    "check",
];

/// Words for the quantity a unit measures: they MUST NOT stand before the unit.
const QUANTITIES: &[&str] = &["duration", "latency", "time", "size", "length", "count"];

/// Units that are not base units, or not spelled out.
const NOT_BASE: &[&str] = &[
    "ns",
    "us",
    "ms",
    "nanoseconds",
    "microseconds",
    "milliseconds",
    "minutes",
    "hours",
    "days",
    "kb",
    "mb",
    "gb",
    "kib",
    "mib",
    "kilobytes",
    "megabytes",
    "gigabytes",
    "percent",
];

/// Every way `families` (as a registry gathers them) break the module's naming rule, one line
/// each; empty when they follow it. Vector families appear only once they have a series.
pub fn naming_violations(families: &[prometheus::proto::MetricFamily]) -> Vec<String> {
    use prometheus::proto::MetricType;
    let mut violations = Vec::new();
    for family in families {
        let name = family.name();
        let mut broken = |rule: &str| violations.push(format!("{name}: {rule}"));
        let Some(rest) = name.strip_prefix(PREFIX) else {
            broken("does not start with `imgpipe_`");
            continue;
        };
        if rest.is_empty()
            || !rest
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || rest.starts_with('_')
            || rest.ends_with('_')
            || rest.contains("__")
        {
            broken("is not lowercase snake_case");
            continue;
        }
        if family.help().is_empty() {
            broken("has no help text");
        }
        let words: Vec<&str> = rest.split('_').collect();
        let last = words[words.len() - 1];
        if ["bucket", "sum", "count"].contains(&last) {
            broken("ends in a suffix the text format adds to histograms");
        }
        if let Some(unit) = words.iter().find(|w| NOT_BASE.contains(w)) {
            broken(&format!("`{unit}` is not a base unit (seconds, bytes)"));
        }
        let counter = family.get_field_type() == MetricType::COUNTER;
        // Where the unit stands (for a counter, the plural of what it counts).
        let unit_at = match (counter, last) {
            (true, "total") => words.len().checked_sub(2),
            (true, _) => {
                broken("is a counter and does not end in `_total`");
                continue;
            }
            (false, "total") => {
                broken("ends in `_total` but is not a counter");
                continue;
            }
            (false, _) => Some(words.len() - 1),
        };
        let Some(unit_at) = unit_at.filter(|&at| at > 0) else {
            broken("follows no `imgpipe_<name>_<unit>`: the name or the unit is missing");
            continue;
        };
        let unit = words[unit_at];
        let before = words[unit_at - 1];
        if UNITS.contains(&unit) && QUANTITIES.contains(&before) {
            broken(&format!(
                "names the quantity before its unit: `_{unit}`, never `_{before}_{unit}`"
            ));
        }
        match family.get_field_type() {
            MetricType::COUNTER if !unit.ends_with('s') => broken(&format!(
                "`{unit}` before `_total` is not the plural of what the counter counts"
            )),
            MetricType::HISTOGRAM if !UNITS.contains(&unit) => {
                broken(&format!("a histogram ends in its unit, one of {UNITS:?}"));
            }
            MetricType::GAUGE if !UNITS.contains(&unit) && !STATES.contains(&unit) => {
                broken(&format!(
                    "a gauge ends in its unit ({UNITS:?}) or, 0 or 1, in a state ({STATES:?})"
                ));
            }
            MetricType::SUMMARY | MetricType::UNTYPED => {
                broken("is neither a counter, a gauge nor a histogram");
            }
            _ => {}
        }
        if words.contains(&"lag") && name != consumer::LAG_RECORDS.name {
            broken("a consumer's lag is `imgpipe_consumer_lag_records{consumer, partition}`");
        }
        let mut labels: Vec<&str> = family
            .get_metric()
            .iter()
            .flat_map(|m| m.get_label())
            .map(|l| l.name())
            .collect();
        labels.sort_unstable();
        labels.dedup();
        for label in &labels {
            if !LABELS.contains(label) {
                broken(&format!(
                    "label `{label}` is not in the label table (what became of the work is `outcome`)"
                ));
            }
        }
        if name == consumer::LAG_RECORDS.name && labels != ["consumer", "partition"] {
            broken("carries exactly the labels `consumer` and `partition`");
        }
    }
    violations
}

/// What a service's `families` break, for its metrics test (gathered after registering
/// everything and giving each vector one series): the naming rule, and the catalogue (each of
/// `expected` is exported, nothing else is).
pub fn registry_violations(
    families: &[prometheus::proto::MetricFamily],
    expected: &[Metric],
) -> Vec<String> {
    let mut violations = naming_violations(families);
    let exported: std::collections::BTreeSet<&str> = families.iter().map(|f| f.name()).collect();
    for m in expected {
        if !exported.contains(m.name) {
            violations.push(format!(
                "{}: not exported (not registered, or a vector without a series)",
                m.name
            ));
        }
    }
    for name in exported {
        if !expected.iter().any(|m| m.name == name) {
            violations.push(format!("{name}: exported but not expected"));
        }
        if !ALL
            .iter()
            .flat_map(|list| list.iter())
            .any(|m| m.name == name)
        {
            violations.push(format!("{name}: not in the catalogue"));
        }
    }
    violations
}

/// The readiness checks as a gauge family, built at scrape time from the same snapshot `/readyz`
/// serves, so an alert and the endpoint can never disagree about a dependency.
pub(crate) fn readiness_family(
    readiness: &crate::Readiness,
) -> prometheus::Result<prometheus::proto::MetricFamily> {
    let registry = Registry::new();
    let gauge = gauge_vec(&registry, ops::READINESS_CHECK_UP, &["check"])?;
    for (name, check) in readiness.snapshot().1 {
        gauge
            .with_label_values(&[name.as_str()])
            .set(i64::from(check.ready));
    }
    registry
        .gather()
        .pop()
        .ok_or_else(|| prometheus::Error::Msg("no readiness family".into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn catalogue() -> impl Iterator<Item = &'static Metric> {
        ALL.iter().flat_map(|list| list.iter())
    }

    #[test]
    fn every_name_has_the_prefix_help_and_is_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for m in catalogue() {
            assert!(m.name.starts_with(PREFIX), "{}", m.name);
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(!m.help.is_empty(), "{}", m.name);
        }
        for buckets in [LATENCY_SECONDS, BATCH_RECORDS] {
            assert!(buckets.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn the_label_table_of_the_rule_lists_every_label() {
        let source = include_str!("metrics.rs");
        let rows: Vec<&str> = source
            .lines()
            .filter_map(|line| line.strip_prefix("//! | `"))
            .filter_map(|row| row.split('`').next())
            .collect();
        assert_eq!(
            rows, LABELS,
            "the table in the module doc and LABELS differ"
        );
    }

    /// The rule fails each kind of name and label it forbids, and passes their fixed spelling.
    #[test]
    fn the_rule_fails_each_broken_name_and_label() {
        let broken: &[(&str, &str, &[&str])] = &[
            ("counter", "imgpipe_aggregator_inserted_records", &[]),
            ("counter", "imgpipe_aggregator_records_consumed_total", &[]),
            ("counter", "imgpipe_total", &[]),
            ("counter", "imgpipe_resizer_transactions_total", &["result"]),
            ("gauge", "imgpipe_resizer_in_flight", &[]),
            ("gauge", "imgpipe_api_pending_total", &[]),
            ("gauge", "imgpipe_resizer_consumer_lag_records", &[]),
            ("gauge", "imgpipe_consumer_lag_records", &["partition"]),
            ("gauge", "imgpipe_Api_records", &[]),
            ("gauge", "api_pending_records", &[]),
            ("gauge", "imgpipe_records", &[]),
            ("histogram", "imgpipe_identity_write_duration_seconds", &[]),
            ("histogram", "imgpipe_aggregator_batch_size_records", &[]),
            ("histogram", "imgpipe_api_request_ms", &[]),
            ("histogram", "imgpipe_api_request_latency", &[]),
            ("histogram", "imgpipe_api_request_count", &[]),
        ];
        for (kind, name, labels) in broken {
            let families = one_family(kind, name, labels);
            assert!(
                !naming_violations(&families).is_empty(),
                "{kind} {name} {labels:?} passed the rule"
            );
        }
        let fixed: &[(&str, &str, &[&str])] = &[
            ("counter", "imgpipe_aggregator_inserted_records_total", &[]),
            (
                "counter",
                "imgpipe_resizer_transactions_total",
                &["outcome"],
            ),
            ("gauge", "imgpipe_resizer_in_flight_requests", &[]),
            (
                "gauge",
                "imgpipe_consumer_lag_records",
                &["consumer", "partition"],
            ),
            ("gauge", "imgpipe_identity_fenced", &[]),
            ("histogram", "imgpipe_identity_write_seconds", &[]),
            ("histogram", "imgpipe_aggregator_batch_records", &[]),
        ];
        for (kind, name, labels) in fixed {
            let families = one_family(kind, name, labels);
            assert_eq!(naming_violations(&families), Vec::<String>::new());
        }
    }

    /// A registry holding one metric of `kind` with one series.
    fn one_family(kind: &str, name: &str, labels: &[&str]) -> Vec<prometheus::proto::MetricFamily> {
        let registry = Registry::new();
        let m = Metric {
            name: Box::leak(name.to_owned().into_boxed_str()),
            help: "Help.",
        };
        let values = vec!["0"; labels.len()];
        match kind {
            "counter" => counter_vec(&registry, m, labels)
                .unwrap()
                .with_label_values(&values)
                .inc(),
            "gauge" => gauge_vec(&registry, m, labels)
                .unwrap()
                .with_label_values(&values)
                .set(1),
            _ => histogram_vec(&registry, m, labels, LATENCY_SECONDS)
                .unwrap()
                .with_label_values(&values)
                .observe(1.0),
        }
        let families = registry.gather();
        assert_eq!(families.len(), 1, "{name}");
        families
    }

    /// The metrics chassis registers itself (per consumer, per process, per ops endpoint).
    #[tokio::test]
    async fn the_consumer_and_ops_metrics_follow_the_rule() {
        let ctx = crate::ServiceContext::new(crate::Shutdown::new());
        let _stall =
            crate::StallDetector::start("resizer", std::time::Duration::from_secs(30), &ctx)
                .unwrap();
        consumer_lag(&ctx.metrics, "resizer")
            .unwrap()
            .with_label_values(&["0"])
            .set(3);
        count_rebalance("resizer");
        ctx.readiness.ready("resizer");
        let mut families = ctx.metrics.gather();
        families.extend(
            process_registry()
                .gather()
                .into_iter()
                .filter(|f| f.name() == consumer::REBALANCES_TOTAL.name),
        );
        families.push(readiness_family(&ctx.readiness).unwrap());
        let expected: Vec<Metric> = consumer::ALL.iter().chain(ops::ALL).copied().collect();
        assert_eq!(
            registry_violations(&families, &expected),
            Vec::<String>::new()
        );
        ctx.shutdown.trigger();
    }

    #[test]
    fn lags_of_revoked_partitions_are_removed_and_unmeasured_ones_kept() {
        let registry = Registry::new();
        let lag = consumer_lag(&registry, "resizer").unwrap();
        set_partition_lags(&lag, &[0, 1, 2], &[(0, 5), (1, 7), (2, 0)]);
        // Partition 2 revoked, 1 not measured this time.
        set_partition_lags(&lag, &[0, 1], &[(0, 4)]);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains("imgpipe_consumer_lag_records{consumer=\"resizer\",partition=\"0\"} 4"),
            "{text}"
        );
        assert!(text.contains("partition=\"1\"} 7"), "{text}");
        assert!(!text.contains("partition=\"2\""), "{text}");
    }
}
