//! Settings of `imgpipe aggregator` (the `[aggregator]` section). Batches are bounded by size
//! and age; the bounds are what keep memory flat and usage fresh, so they are validated here,
//! before anything connects.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The consumer group every aggregator instance joins (namespaced by `kafka.namespace`).
pub const GROUP_ID: &str = "usage-aggregator";

/// ClickHouse splits an HTTP INSERT into blocks of `max_insert_block_size` (1,048,576 rows by
/// default) and applies each block atomically. A batch must fit in one block so that one batch is
/// either wholly stored or not at all; the cap leaves a wide margin.
pub const MAX_BATCH_RECORDS: usize = 500_000;

/// Settings of the usage aggregator.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// A partition's batch is written once it holds this many records.
    pub batch_max_records: usize,
    /// A partition's batch is written once its oldest record waited this long (freshness bound).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub batch_max_age: Duration,
    /// Records held in memory across all partitions before every batch is written regardless of
    /// age (bounds memory when many partitions are assigned).
    pub max_pending_records: usize,
    /// Deadline of one INSERT (sending and waiting for ClickHouse's answer).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub insert_timeout: Duration,
    /// First wait after a failed INSERT, offset lookup or registry call; doubles up to the max.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub retry_backoff_min: Duration,
    /// Longest wait between retries.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub retry_backoff_max: Duration,
    /// Apply ClickHouse migrations at start (as `imgpipe migrate` does).
    pub migrate_on_start: bool,
    /// How long the aggregator may hold usage records without writing any before it reports
    /// itself stalled (`/readyz` check `aggregator_progress`,
    /// `imgpipe_consumer_stalled{consumer="aggregator"}`).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub stall_after: Duration,
    /// How often the rollup job looks for usage windows to settle into `usage_rollup` (it
    /// settles back to back while behind).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub rollup_interval: Duration,
    /// How far behind newer records of its Kafka partition a usage record may be stored (its
    /// producer's delivery and transaction timeouts, plus clock skew between producers). A
    /// window is settled only when every partition is this far past it.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub rollup_lateness: Duration,
    /// Longest window one settle statement covers; bounds its memory (it groups that many
    /// minutes of requests by request id).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub rollup_max_window: Duration,
    /// How long `usage_raw` keeps per-record rows (audits, per-request questions, the tenant
    /// api's sub-minute range ends), counted back from the settle mark. The rollup job drops
    /// whole days past it; `usage_rollup` is kept for billing. At least a day.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub usage_raw_retention: Duration,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            batch_max_records: default_batch_max_records(),
            batch_max_age: default_batch_max_age(),
            max_pending_records: default_max_pending_records(),
            insert_timeout: default_insert_timeout(),
            retry_backoff_min: default_retry_backoff_min(),
            retry_backoff_max: default_retry_backoff_max(),
            migrate_on_start: true,
            stall_after: Duration::from_secs(30),
            rollup_interval: Duration::from_secs(10),
            rollup_lateness: Duration::from_secs(60),
            // Grouping by request id costs ~300 B per record on 18.16 (measured): at 10,000
            // records/s, 2 minutes plus the two lookaround minutes is ~2.4 M records, ~700 MiB,
            // well under ClickHouse's per-query cap (10 minutes exceeded 2 GiB).
            rollup_max_window: Duration::from_secs(120),
            usage_raw_retention: default_usage_raw_retention(),
        }
    }
}

/// Five weeks: a month of audits plus the days an incident takes to notice.
fn default_usage_raw_retention() -> Duration {
    Duration::from_secs(35 * 86_400)
}

fn default_batch_max_records() -> usize {
    50_000
}

/// Half a second keeps `usage_minute` well under two seconds behind at p99.
fn default_batch_max_age() -> Duration {
    Duration::from_millis(500)
}

fn default_max_pending_records() -> usize {
    200_000
}

fn default_insert_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_retry_backoff_min() -> Duration {
    Duration::from_millis(200)
}

fn default_retry_backoff_max() -> Duration {
    Duration::from_secs(10)
}

impl chassis::Validate for AggregatorConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        if self.batch_max_records == 0 || self.batch_max_records > MAX_BATCH_RECORDS {
            errors.push(format!(
                "aggregator.batch_max_records must be between 1 and {MAX_BATCH_RECORDS}, got {}",
                self.batch_max_records
            ));
        }
        if self.batch_max_age.is_zero() {
            errors.push("aggregator.batch_max_age must be positive".into());
        }
        if self.max_pending_records < self.batch_max_records {
            errors.push(format!(
                "aggregator.max_pending_records ({}) must be at least batch_max_records ({})",
                self.max_pending_records, self.batch_max_records
            ));
        }
        if self.rollup_interval.is_zero() {
            errors.push("aggregator.rollup_interval must be positive".into());
        }
        if self.rollup_max_window < Duration::from_secs(60) {
            errors.push("aggregator.rollup_max_window must be at least 1m".into());
        }
        if self.usage_raw_retention < Duration::from_secs(86_400) {
            errors.push("aggregator.usage_raw_retention must be at least 1d".into());
        }
        if self.insert_timeout.is_zero() {
            errors.push("aggregator.insert_timeout must be positive".into());
        }
        if self.retry_backoff_min.is_zero() || self.retry_backoff_min > self.retry_backoff_max {
            errors.push(
                "aggregator.retry_backoff_min must be positive and at most retry_backoff_max"
                    .into(),
            );
        }
    }
}

impl AggregatorConfig {
    /// The retry policy of every ClickHouse and registry wait (jittered, capped, unbounded).
    pub(crate) fn retry_policy(&self) -> chassis::RetryPolicy {
        chassis::RetryPolicy {
            min_delay: self.retry_backoff_min,
            max_delay: self.retry_backoff_max,
            max_attempts: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;
    use chassis::Validate;

    #[test]
    fn defaults_are_valid() {
        let mut errors = Vec::new();
        AggregatorConfig::default().validate(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let config = AggregatorConfig {
            batch_max_records: 0,
            batch_max_age: Duration::ZERO,
            insert_timeout: Duration::ZERO,
            retry_backoff_min: Duration::from_secs(20),
            usage_raw_retention: Duration::from_secs(3600),
            ..AggregatorConfig::default()
        };
        let mut errors = Vec::new();
        config.validate(&mut errors);
        assert_eq!(errors.len(), 5, "{errors:?}");
    }
}
