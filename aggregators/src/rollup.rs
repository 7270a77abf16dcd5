//! The rollup job: settles usage into `usage_rollup` one time window at a time, so analysts and
//! the tenant api read small pre-aggregated rows instead of deduplicating every raw row.
//!
//! Why settled windows and not materialized views summing each INSERT: a request can have two
//! records (the resizer's and the api's), often in different batches and minutes, and the
//! api's decides the outcome and the bucket (see `usage_by_request`). A per-block sum cannot
//! merge them, nor drop a duplicate delivery. So a window `[lo, hi)` is rolled up only once
//! every record of its requests is stored, with the same per-request rules, by one
//! `INSERT … SELECT` that also writes the window's settle mark (`granularity = 0`,
//! `bucket = hi - 1`):
//! - **complete**: every partition of `usage.events` has made progress to at least
//!   `hi + LOOKAROUND + lateness` (records of one request lie within [`LOOKAROUND_SECONDS`] of
//!   each other; a record is stored at most `lateness` behind newer ones of its partition). A
//!   partition's progress is its newest stored event time, or, once the aggregator found it
//!   idle (everything Kafka had for it at an instant `T` stored), `T` itself: records produced
//!   after `T` carry event times from `T - lateness` on. So an idle partition, or one that never
//!   had traffic, no longer holds settling back (the aggregator reports it every
//!   `rollup_interval`); until it is reported, it does, and the views stay exact through their
//!   live tail, only slower;
//! - **atomic**: windows are whole minutes within one UTC day, so the rows of every granularity
//!   and the mark fall in one monthly partition and one block: one part, committed at once;
//! - **once**: the statement only writes if the newest mark is before `lo` (checked when it
//!   starts), and it runs under a `query_id` derived from `lo`, which ClickHouse refuses to run
//!   twice at the same time: two settlers (two aggregators, a restart racing a slow INSERT)
//!   cannot both write a window.
//!
//! Until a window is settled, the views and the tenant api read it from `usage_recent`
//! (deduplicated at query time, a few minutes of rows), so answers are exact at every moment.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chassis::Shutdown;
use chassis::clickhouse::DatabaseName;
use clickhouse::Client;
use serde::Deserialize;

/// Records of one request (the resizer's, the api's) are at most this far apart in event time.
/// Both are stamped between the request's arrival and its deadline: the api answers by then
/// (504 at the latest) and the resizer stamps its record no later than the deadline, however
/// late it takes the request up (`api.request_timeout` is at most 50 s). The views' live tail
/// uses the same margin (as a literal).
pub const LOOKAROUND_SECONDS: u32 = 60;

/// The `SELECT` of one row per request from `{db}.usage_recent`, filtered by `$where` before
/// grouping and `$having` after, with the rules of `usage_by_request`: the api's record decides
/// time, outcome and latency; the work dimensions, format and source host are the largest of the
/// records (a host is `''` only where no record names one: an inline image).
macro_rules! per_request {
    ($where:literal, $having:literal) => {
        concat!(
            "
    SELECT
        tenant_id,
        request_id,
        argMax(event_time, from_api) AS request_time,
        argMax(outcome, from_api) AS request_outcome,
        max(output_format) AS request_format,
        max(bytes_in) AS request_bytes_in,
        max(bytes_out) AS request_bytes_out,
        max(pixels_in) AS request_pixels_in,
        max(pixels_out) AS request_pixels_out,
        max(cpu_time_us) AS request_cpu_time_us,
        argMax(latency_us, from_api) AS request_latency_us,
        max(source_host) AS request_source_host
    FROM {db}.usage_recent
    WHERE ",
            $where,
            "
    GROUP BY tenant_id, request_id
    HAVING ",
            $having,
            "
"
        )
    };
}
pub(crate) use per_request;

/// Settles `[{lo}, {hi})` (epoch seconds) into every granularity, with its mark, if not yet
/// settled. Granularity 1 = minute, 2 = hour, 3 = day; 0 = the settle mark. Latency digests
/// go into hour and day rows only: a digest costs ~150 bytes, and minute rows are most rows
/// (at 10,000 requests/s they made the rollup ~3 bytes per usage record and a p99 over an hour
/// of minute digests took seconds to merge); minute rows carry an empty one.
const SETTLE_SQL: &str = concat!(
    "INSERT INTO {db}.usage_rollup (granularity, tenant_id, bucket, outcome, format, source_host,
    requests, bytes_in, bytes_out, pixels_in, pixels_out, cpu_time_us, latency_us_sum,
    latency_us_max, latency_us_digest)
SELECT
    granularity,
    tenant_id,
    multiIf(granularity = 1, toStartOfMinute(request_time),
            granularity = 2, toStartOfHour(request_time),
            toStartOfDay(request_time)) AS bucket,
    request_outcome AS outcome,
    request_format AS format,
    request_source_host AS source_host,
    sumState(toUInt64(1)) AS requests,
    sumState(request_bytes_in) AS bytes_in,
    sumState(request_bytes_out) AS bytes_out,
    sumState(request_pixels_in) AS pixels_in,
    sumState(request_pixels_out) AS pixels_out,
    sumState(request_cpu_time_us) AS cpu_time_us,
    sumState(request_latency_us) AS latency_us_sum,
    maxState(request_latency_us) AS latency_us_max,
    quantilesTDigestStateIf(0.5, 0.9, 0.99)(request_latency_us, granularity != 1)
        AS latency_us_digest
FROM (",
    per_request!(
        "event_time >= toDateTime({lo} - 60, 'UTC') AND event_time < toDateTime({hi} + 60, 'UTC')",
        "request_time >= toDateTime({lo}, 'UTC') AND request_time < toDateTime({hi}, 'UTC')"
    ),
    ")
ARRAY JOIN [1, 2, 3] AS granularity
WHERE (SELECT max(bucket) FROM {db}.usage_rollup WHERE granularity = 0) < toDateTime({lo}, 'UTC')
GROUP BY granularity, tenant_id, bucket, outcome, format, source_host
UNION ALL
SELECT 0, '', toDateTime({hi} - 1, 'UTC'), '', '', '', sumState(toUInt64(0)), sumState(toInt64(0)),
       sumState(toInt64(0)), sumState(toInt64(0)), sumState(toInt64(0)), sumState(toInt64(0)),
       sumState(toInt64(0)), maxState(toInt64(0)),
       quantilesTDigestState(0.5, 0.9, 0.99)(toInt64(0))
FROM system.one
HAVING (SELECT max(bucket) FROM {db}.usage_rollup WHERE granularity = 0) < toDateTime({lo}, 'UTC')"
);

/// Why a settle step failed (always retried at the next interval: nothing is half-written).
#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    /// Reading the settle mark or the partitions' progress failed.
    #[error("reading the rollup horizon: {0}")]
    Horizon(#[source] clickhouse::error::Error),
    /// Dropping a settled partition failed (retried at the next interval).
    #[error("dropping settled partitions: {0}")]
    Prune(#[source] clickhouse::error::Error),
    /// The settle INSERT failed (or another settler runs the same window).
    #[error("settling [{lo}, {hi}): {source}")]
    Settle {
        /// Window start, epoch seconds.
        lo: u32,
        /// Window end, epoch seconds.
        hi: u32,
        /// ClickHouse's answer.
        source: clickhouse::error::Error,
    },
}

/// The newest settle mark this process has seen (epoch seconds, the last settled second; 0
/// before any), shared between the rollup job, which reads and moves it, and the consumer,
/// which counts records stored too late for it (see [`SettleMark::late`]). Another
/// aggregator's settles are seen at the job's next step, so the mark may lag, never lead.
#[derive(Debug, Clone, Default)]
pub struct SettleMark(Arc<AtomicU32>);

impl SettleMark {
    /// The mark, epoch seconds.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Moves the mark forward to `settled` (never back).
    pub fn advance(&self, settled: u32) {
        self.0.fetch_max(settled, Ordering::Relaxed);
    }

    /// Whether a record of event time `event_time` (epoch seconds) stored now is missed by the
    /// rollups: its request was settled without it. A request's records lie within
    /// [`LOOKAROUND_SECONDS`] of each other and settling reads that far around each window, so
    /// only a record at least that far behind the mark is certainly missed; one closer may
    /// still belong to a request decided after the mark. Nothing is late before the first
    /// settle.
    pub fn late(&self, event_time: u32) -> bool {
        let mark = self.get();
        mark > 0 && u64::from(event_time) + u64::from(LOOKAROUND_SECONDS) <= u64::from(mark)
    }
}

/// A settled window, epoch seconds `[lo, hi)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start (inclusive).
    pub lo: u32,
    /// End (exclusive).
    pub hi: u32,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct HorizonRow {
    settled: u32,
    progress: u32,
    partitions: u64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct PartitionRow {
    table: String,
    partition: String,
}

/// `usage_recent` partitions are 5 minutes of event time (migration 12). One more than the
/// lookaround is kept behind the settle mark: settling and the views' live tail read back
/// [`LOOKAROUND_SECONDS`] from it, and a partition still being merged costs nothing to keep.
const RECENT_PARTITION_SECONDS: u32 = 300;

#[derive(Debug, clickhouse::Row, Deserialize)]
struct OldestRow {
    oldest: u32,
}

/// The next window to settle: from the mark (or the oldest stored minute) up to the horizon,
/// at most `max_window`, never across a UTC midnight. `None` when nothing is due.
pub fn next_window(
    settled: u32,
    oldest: u32,
    progress: u32,
    lateness: u32,
    max_window: u32,
) -> Option<Window> {
    const DAY: u32 = 86_400;
    let lo = if settled > 0 {
        settled + 1
    } else {
        oldest - oldest % 60
    };
    let limit = progress.checked_sub(lateness.saturating_add(LOOKAROUND_SECONDS))?;
    let limit = limit - limit % 60;
    let max_window = (max_window - max_window % 60).max(60);
    let hi = (lo + max_window).min(lo - lo % DAY + DAY).min(limit);
    (lo > 0 && hi > lo).then_some(Window { lo, hi })
}

/// Settles usage windows of one database.
#[derive(Clone)]
pub struct Rollup {
    client: Client,
    database: DatabaseName,
    partitions: u32,
    lateness: Duration,
    max_window: Duration,
    raw_retention: Duration,
    mark: SettleMark,
}

impl std::fmt::Debug for Rollup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollup")
            .field("database", &self.database)
            .field("lateness", &self.lateness)
            .finish_non_exhaustive()
    }
}

impl Rollup {
    /// A settler over `client` (from `chassis::clickhouse::connect`). `partitions`: how many
    /// partitions `usage.events` has (nothing settles until each has stored a record: until
    /// then a partition could bring records of any age); `lateness`: how far a record may be
    /// stored behind newer ones of its partition; `max_window`: the longest window one statement
    /// settles (bounds its memory: it groups that many minutes of requests).
    pub fn new(
        client: Client,
        database: &DatabaseName,
        partitions: u32,
        lateness: Duration,
        max_window: Duration,
    ) -> Self {
        Self {
            client,
            database: database.clone(),
            partitions,
            lateness,
            max_window,
            raw_retention: Duration::from_secs(35 * 86_400),
            mark: SettleMark::default(),
        }
    }

    /// Publishes every settle mark this job reads or writes to `mark`.
    #[must_use]
    pub fn with_mark(mut self, mark: SettleMark) -> Self {
        self.mark = mark;
        self
    }

    /// Keeps `usage_raw` days for `retention` behind the settle mark (default 35 days).
    #[must_use]
    pub fn with_raw_retention(mut self, retention: Duration) -> Self {
        self.raw_retention = retention;
        self
    }

    /// Drops what nothing reads any more, whole partitions at a time (cheap: files unlinked,
    /// no rewrite): `usage_recent` partitions that end more than [`LOOKAROUND_SECONDS`] plus one
    /// partition before the settle mark (settled, and behind every live-tail read), and
    /// `usage_raw` days that end more than the raw retention before the mark. So `usage_recent`
    /// holds the unsettled tail plus at most ~10 minutes, whatever the history; `usage_rollup`
    /// is never pruned. Returns the partitions dropped as `table/partition`; nothing before the
    /// first settle.
    pub async fn prune(&self) -> Result<Vec<String>, RollupError> {
        let db = self.database.as_str();
        let settled = self
            .client
            .query(&format!(
                "SELECT toUInt32(max(bucket)) FROM {db}.usage_rollup WHERE granularity = 0"
            ))
            .fetch_one::<u32>()
            .await
            .map_err(RollupError::Horizon)?;
        if settled == 0 {
            return Ok(Vec::new());
        }
        let seconds = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let recent_before =
            (settled + 1).saturating_sub(LOOKAROUND_SECONDS + RECENT_PARTITION_SECONDS);
        let raw_before = (settled + 1).saturating_sub(seconds(self.raw_retention));
        // `max_time` is the part's newest `event_time` (the partition key's column).
        let due = self
            .client
            .query(&format!(
                "SELECT table, partition FROM system.parts
WHERE database = '{db}' AND active AND table IN ('usage_recent', 'usage_raw')
GROUP BY table, partition
HAVING toUInt32(max(max_time)) < if(table = 'usage_recent', {recent_before}, {raw_before})
ORDER BY table, partition"
            ))
            .fetch_all::<PartitionRow>()
            .await
            .map_err(RollupError::Horizon)?;
        let mut dropped = Vec::new();
        for row in due {
            // Partition values of both tables are integers (5-minute slots, YYYYMMDD days).
            if row.partition.is_empty() || !row.partition.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            self.client
                .query(&format!(
                    "ALTER TABLE {db}.{} DROP PARTITION {}",
                    row.table, row.partition
                ))
                .execute()
                .await
                .map_err(RollupError::Prune)?;
            dropped.push(format!("{}/{}", row.table, row.partition));
        }
        Ok(dropped)
    }

    /// The statement settling `window` (for tests and benchmarks that show it).
    pub fn settle_sql(&self, window: Window) -> String {
        SETTLE_SQL
            .replace("{db}", self.database.as_str())
            .replace("{lo}", &window.lo.to_string())
            .replace("{hi}", &window.hi.to_string())
    }

    /// Settles the next due window, if any, and returns it.
    pub async fn step(&self) -> Result<Option<Window>, RollupError> {
        let db = self.database.as_str();
        // Partitions whose only rows are rejects carry time 0 and hold nothing back. Progress
        // is never ahead of the server's clock: one record stamped in the future (a producer
        // clock running ahead) on every partition would otherwise settle minutes that real,
        // on-time records have not reached yet, and make them all late.
        let horizon = self
            .client
            .query(&format!(
                "SELECT
    (SELECT toUInt32(max(bucket)) FROM {db}.usage_rollup WHERE granularity = 0) AS settled,
    (SELECT toUInt32(min(least(max_time, now()))) FROM (
        SELECT maxMerge(max_event_time) AS max_time FROM {db}.usage_offsets
        GROUP BY kafka_partition HAVING max_time > toDateTime(0, 'UTC')
    )) AS progress,
    (SELECT count() FROM (
        SELECT maxMerge(max_event_time) AS max_time FROM {db}.usage_offsets
        GROUP BY kafka_partition HAVING max_time > toDateTime(0, 'UTC')
    )) AS partitions"
            ))
            .fetch_one::<HorizonRow>()
            .await
            .map_err(RollupError::Horizon)?;
        self.mark.advance(horizon.settled);
        // A partition that has stored nothing yet could still bring records of any age.
        if horizon.progress == 0 || horizon.partitions < u64::from(self.partitions) {
            return Ok(None);
        }
        let oldest = if horizon.settled == 0 {
            self.client
                .query(&format!(
                    "SELECT toUInt32(min(event_time)) AS oldest FROM {db}.usage_recent"
                ))
                .fetch_one::<OldestRow>()
                .await
                .map_err(RollupError::Horizon)?
                .oldest
        } else {
            0
        };
        let seconds = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let Some(window) = next_window(
            horizon.settled,
            oldest,
            horizon.progress,
            seconds(self.lateness),
            seconds(self.max_window),
        ) else {
            return Ok(None);
        };
        self.client
            .query(&self.settle_sql(window))
            .with_setting("query_id", format!("usage-rollup-{db}-{}", window.lo))
            .execute()
            .await
            .map_err(|source| RollupError::Settle {
                lo: window.lo,
                hi: window.hi,
                source,
            })?;
        self.mark.advance(window.hi - 1);
        Ok(Some(window))
    }

    /// Settles every due window, then again each `interval`, until shutdown. Failures are
    /// logged and retried: a failed step wrote nothing, and the views stay exact meanwhile.
    pub async fn run(self, shutdown: Shutdown, interval: Duration) {
        loop {
            let wait = match self.step().await {
                Ok(Some(window)) => {
                    tracing::debug!(lo = window.lo, hi = window.hi, "Settled a usage window");
                    Duration::ZERO
                }
                Ok(None) => {
                    match self.prune().await {
                        Ok(dropped) if !dropped.is_empty() => {
                            tracing::debug!(?dropped, "Dropped settled usage partitions");
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%error, "Dropping settled usage partitions failed; will retry");
                        }
                    }
                    interval
                }
                Err(RollupError::Settle { lo, hi, source })
                    if chassis::clickhouse::is_query_already_running(&source) =>
                {
                    // Another aggregator's job is settling this window: the normal race of two
                    // or more aggregators, which the window's query_id settles.
                    tracing::debug!(lo, hi, "Another aggregator is settling this usage window");
                    interval
                }
                Err(error) => {
                    tracing::warn!(%error, "Settling usage rollups failed; will retry");
                    interval
                }
            };
            if shutdown.is_triggered() {
                return;
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    const T: u32 = 1_735_689_600; // 2025-01-01T00:00:00Z

    #[test]
    fn windows_start_at_the_mark_or_the_oldest_minute() {
        let w = next_window(0, T + 75, T + 3600, 0, 600).unwrap();
        assert_eq!(
            w,
            Window {
                lo: T + 60,
                hi: T + 660
            }
        );
        let w = next_window(T + 659, 0, T + 3600, 0, 600).unwrap();
        assert_eq!(w.lo, T + 660);
    }

    #[test]
    fn windows_stop_at_the_horizon_and_at_midnight() {
        // Progress 10:00:30, lateness 60 s, lookaround 60 s: complete up to 09:58.
        let w = next_window(0, T, T + 36_030, 60, 86_400).unwrap();
        assert_eq!(w.hi, T + 35_880);
        assert_eq!(next_window(T + 35_879, 0, T + 36_030, 60, 600), None);
        let late = T + 86_400 - 120;
        let w = next_window(late - 1, 0, T + 90_000, 0, 600).unwrap();
        assert_eq!(w.hi, T + 86_400, "never across midnight");
        assert_eq!(next_window(0, 0, 0, 0, 600), None);
    }

    #[test]
    fn records_a_lookaround_behind_the_mark_are_late() {
        let mark = SettleMark::default();
        assert!(!mark.late(0), "nothing is late before the first settle");
        mark.advance(T + 599);
        mark.advance(T + 59);
        assert_eq!(mark.get(), T + 599, "the mark never moves back");
        assert!(mark.late(T + 539));
        assert!(
            !mark.late(T + 540),
            "within the lookaround: may belong to a request decided after the mark"
        );
        assert!(!mark.late(T + 600));
    }

    #[test]
    fn the_statement_writes_only_unsettled_windows() {
        let sql = SETTLE_SQL;
        assert_eq!(sql.matches("< toDateTime({lo}, 'UTC')").count(), 2);
        assert!(!sql.contains('?'), "the client treats ? as a bind mark");
    }
}
