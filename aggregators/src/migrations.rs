//! Versioned, idempotent ClickHouse migrations, applied by `imgpipe migrate` and at aggregator
//! start. Every statement is `IF NOT EXISTS` (or otherwise safe to repeat), so two processes
//! migrating at once, or a crash between a statement and its `schema_migrations` row, only repeat
//! harmless work. A migration that needs a newer server (TTL, say) is skipped on an old one and
//! not recorded, so it is applied once the server is upgraded.
//!
//! Every statement here has been run against ClickHouse 18.16 (Debian): no `DateTime64`, no
//! `LowCardinality` (experimental there, behind a setting), no TTL there.
//!
//! Exact usage at scale (versions 7 and 8): `usage_raw` keeps every delivery for audits; a
//! materialized view copies each inserted block into `usage_recent` (time-ordered, the columns
//! rollups need), which in turn feeds `usage_offsets` (per-partition high-water marks, read in
//! O(partitions) when a partition is assigned). Because `usage_offsets` is fed last, a failure
//! part-way through an INSERT leaves the high-water mark behind the rows, never ahead: the batch
//! is sent again and the only effect is a duplicate delivery, which every exact reader removes
//! by request id. `usage_rollup` is written by [`crate::rollup`] only, one settled time window at
//! a time, deduplicated by request id, together with the window's settle mark in the same part.
//!
//! Version 12 reshapes the three for size and speed at the article's rate: UUID request ids,
//! `usage_raw` a plain MergeTree (every delivery kept, days dropped after a retention),
//! `usage_recent` tenant-first and only the unsettled tail (5-minute partitions the rollup job
//! drops), latency digests in the rollup; 14 adds ZSTD where the server has codecs.
//! Version 15 splits the views' `requests` into billed work (`requests`) and `refused`.
//! Version 16 adds `source_host` (a signed GET's source host; `''` for an inline image) to the
//! records, the rollup's key and the views; 17 gives current servers their forms of it.

use chassis::clickhouse::{ClickHouseConfig, ClickHouseError, DatabaseName, ServerVersion};
use clickhouse::Client;
use serde::Deserialize;

/// One schema change.
#[derive(Debug, Clone, Copy)]
struct Migration {
    /// Strictly increasing; recorded in `schema_migrations` once applied.
    version: u32,
    /// What it does, for the report and the table.
    name: &'static str,
    /// Statements with `{db}` standing for the database.
    statements: &'static [&'static str],
    /// Only for servers where [`ServerVersion::is_modern`] holds.
    modern_only: bool,
}

/// The `SELECT` of one row per request from `{db}.usage_recent` as versions 8 to 15 wrote it
/// (before `source_host`): their views are created from it on a fresh database, where that
/// column does not exist yet. Frozen; `crate::rollup::per_request!` is the current form.
macro_rules! per_request_before_16 {
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
        argMax(latency_us, from_api) AS request_latency_us
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

/// `CREATE VIEW` of one time rollup of `usage_by_request`: per tenant, `$bucket` (named by the
/// ClickHouse function `$start_of`), outcome and output format, every billing dimension summed.
macro_rules! rollup_view {
    ($view:literal, $bucket:literal, $start_of:literal) => {
        concat!(
            "CREATE VIEW IF NOT EXISTS {db}.",
            $view,
            " AS
SELECT
    tenant_id,
    ",
            $start_of,
            "(event_time) AS ",
            $bucket,
            ",
    outcome,
    output_format AS format,
    count() AS requests,
    sum(bytes_in) AS bytes_in,
    sum(bytes_out) AS bytes_out,
    sum(pixels_in) AS pixels_in,
    sum(pixels_out) AS pixels_out,
    sum(cpu_time_us) AS cpu_time_us,
    sum(latency_us) AS latency_us_sum,
    max(latency_us) AS latency_us_max
FROM {db}.usage_by_request
GROUP BY tenant_id, ",
            $bucket,
            ", outcome, format"
        )
    };
}

/// `CREATE VIEW` of one time rollup as analysts see it: the settled rows of `usage_rollup` at
/// granularity `$g`, plus the live tail (requests after the settle mark, deduplicated by request
/// id from `usage_recent` exactly as the rollup job does). Rows are partial: one bucket may have
/// several (settled part, live tail, not yet merged parts), so readers aggregate (`sum`, `max`).
/// No outer `GROUP BY`, so that with `enable_optimize_predicate_expression = 1` a filter on the
/// bucket or tenant reaches the rollup's primary key on 18.16.
macro_rules! live_rollup_view {
    ($view:literal, $bucket:literal, $start_of:literal, $g:literal) => {
        concat!(
            "CREATE VIEW IF NOT EXISTS {db}.",
            $view,
            " AS
SELECT
    tenant_id,
    bucket AS ",
            $bucket,
            ",
    outcome,
    format,
    finalizeAggregation(requests) AS requests,
    finalizeAggregation(bytes_in) AS bytes_in,
    finalizeAggregation(bytes_out) AS bytes_out,
    finalizeAggregation(pixels_in) AS pixels_in,
    finalizeAggregation(pixels_out) AS pixels_out,
    finalizeAggregation(cpu_time_us) AS cpu_time_us,
    finalizeAggregation(latency_us_sum) AS latency_us_sum,
    finalizeAggregation(latency_us_max) AS latency_us_max
FROM {db}.usage_rollup
WHERE granularity = ",
            $g,
            "
UNION ALL
SELECT
    tenant_id,
    ",
            $start_of,
            "(request_time) AS ",
            $bucket,
            ",
    request_outcome AS outcome,
    request_format AS format,
    count() AS requests,
    sum(request_bytes_in) AS bytes_in,
    sum(request_bytes_out) AS bytes_out,
    sum(request_pixels_in) AS pixels_in,
    sum(request_pixels_out) AS pixels_out,
    sum(request_cpu_time_us) AS cpu_time_us,
    sum(request_latency_us) AS latency_us_sum,
    max(request_latency_us) AS latency_us_max
FROM (",
            per_request_before_16!(
                // The mark less 59 s, computed unsigned-safe: with no mark yet (0) DateTime
                // arithmetic would wrap to 2106 and hide every row.
                "event_time >= toDateTime(greatest(toUInt32((SELECT max(bucket) FROM {db}.usage_rollup WHERE granularity = 0)), 59) - 59, 'UTC')",
                "request_time >= (SELECT max(bucket) + 1 FROM {db}.usage_rollup WHERE granularity = 0)"
            ),
            ")
GROUP BY tenant_id, ",
            $bucket,
            ", outcome, format"
        )
    };
}

/// The canonical text of a UUID (lowercase, hyphenated), as an re2 pattern: request ids the api
/// generates match it and are stored as the UUID alone.
macro_rules! canonical_uuid {
    () => {
        "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
    };
}

/// The `UUID` stored for the request id `$text` (a String expression): the UUID itself when
/// `$text` is canonical, else the first 16 bytes of its SHA-256, as `UsageRow::new` computes.
macro_rules! uuid_of {
    ($text:literal) => {
        concat!(
            "toUUID(if(match(",
            $text,
            ", '",
            canonical_uuid!(),
            "'), ",
            $text,
            ", UUIDNumToString(toFixedString(substring(SHA256(",
            $text,
            "), 1, 16), 16))))"
        )
    };
}

/// `CREATE VIEW` of one time rollup as analysts see it, from version 12 on: like
/// `live_rollup_view` plus `latency_us_digest`, the t-digest state of per-request latency
/// (read it with `quantilesTDigestMerge(0.5, 0.9, 0.99)(latency_us_digest)`), filled where
/// `$digest` (`1`/`0`) says: hour and day views, like the rollup rows they read; minute rows
/// carry an empty digest.
macro_rules! digest_rollup_view {
    ($view:literal, $bucket:literal, $start_of:literal, $g:literal, $digest:literal) => {
        concat!(
            "CREATE VIEW IF NOT EXISTS {db}.",
            $view,
            " AS
SELECT
    tenant_id,
    bucket AS ",
            $bucket,
            ",
    outcome,
    format,
    finalizeAggregation(requests) AS requests,
    finalizeAggregation(bytes_in) AS bytes_in,
    finalizeAggregation(bytes_out) AS bytes_out,
    finalizeAggregation(pixels_in) AS pixels_in,
    finalizeAggregation(pixels_out) AS pixels_out,
    finalizeAggregation(cpu_time_us) AS cpu_time_us,
    finalizeAggregation(latency_us_sum) AS latency_us_sum,
    finalizeAggregation(latency_us_max) AS latency_us_max,
    latency_us_digest
FROM {db}.usage_rollup
WHERE granularity = ",
            $g,
            "
UNION ALL
SELECT
    tenant_id,
    ",
            $start_of,
            "(request_time) AS ",
            $bucket,
            ",
    request_outcome AS outcome,
    request_format AS format,
    count() AS requests,
    sum(request_bytes_in) AS bytes_in,
    sum(request_bytes_out) AS bytes_out,
    sum(request_pixels_in) AS pixels_in,
    sum(request_pixels_out) AS pixels_out,
    sum(request_cpu_time_us) AS cpu_time_us,
    sum(request_latency_us) AS latency_us_sum,
    max(request_latency_us) AS latency_us_max,
    quantilesTDigestStateIf(0.5, 0.9, 0.99)(request_latency_us, ",
            $digest,
            ") AS latency_us_digest
FROM (",
            per_request_before_16!(
                "event_time >= toDateTime(greatest(toUInt32((SELECT max(bucket) FROM {db}.usage_rollup WHERE granularity = 0)), 59) - 59, 'UTC')",
                "request_time >= (SELECT max(bucket) + 1 FROM {db}.usage_rollup WHERE granularity = 0)"
            ),
            ")
GROUP BY tenant_id, ",
            $bucket,
            ", outcome, format"
        )
    };
}

/// The outcomes billed as work, as a ClickHouse array literal (for `has`: on 18.16 an `IN` in
/// both branches of a UNION ALL can fail with "Cannot convert column … non constant"): `ok` (the api handed the image
/// over) and `resized` (a resizer made it and the api's record is missing: the api died after
/// the reply, or before writing its record; it is also what a request shows for the moment
/// between the resizer's record and the api's `ok`). Every other outcome (a refusal such as
/// `unauthenticated`, `forbidden`, `rate_limited`, `bad_parameters`; a failure such as
/// `undecodable_image`, `deadline_exceeded`; `client_closed_request`) got no image and is
/// counted as refused. The tenant api uses the same list (`ingest::api::usage::query`).
///
/// From version 18 on (`billed_outcomes!(not_modified)`), `not_modified` too: a signed GET a
/// client revalidated and the api answered 304 after its origin's 304, with no resize; the
/// client keeps showing its image, so it is a request served, not refused.
macro_rules! billed_outcomes {
    () => {
        "['ok', 'resized']"
    };
    (not_modified) => {
        "['ok', 'resized', 'not_modified']"
    };
}

/// `CREATE VIEW` of one time rollup as analysts see it, from version 15 on: like
/// `digest_rollup_view`, with `requests` counting billed work only ([`billed_outcomes`]) and
/// `refused` every other request; each row is one outcome, so one of the two is zero. The
/// rollup's `requests` state is renamed in a subquery: an alias named like a column is
/// substituted for that name in every other expression of its SELECT, so `refused` could not
/// read the column `requests` beside an alias `requests`. The granularity filter sits inside the
/// subquery so it reaches the rollup's primary key without predicate push-down, as before.
macro_rules! billed_rollup_view {
    ($view:literal, $bucket:literal, $start_of:literal, $g:literal, $digest:literal) => {
        concat!(
            "CREATE VIEW IF NOT EXISTS {db}.",
            $view,
            " AS
SELECT
    tenant_id,
    bucket AS ",
            $bucket,
            ",
    outcome,
    format,
    if(has(",
            billed_outcomes!(),
            ", outcome), finalizeAggregation(requests_state), toUInt64(0)) AS requests,
    if(has(",
            billed_outcomes!(),
            ", outcome), toUInt64(0), finalizeAggregation(requests_state)) AS refused,
    finalizeAggregation(bytes_in) AS bytes_in,
    finalizeAggregation(bytes_out) AS bytes_out,
    finalizeAggregation(pixels_in) AS pixels_in,
    finalizeAggregation(pixels_out) AS pixels_out,
    finalizeAggregation(cpu_time_us) AS cpu_time_us,
    finalizeAggregation(latency_us_sum) AS latency_us_sum,
    finalizeAggregation(latency_us_max) AS latency_us_max,
    latency_us_digest
FROM (
    SELECT tenant_id, bucket, outcome, format, requests AS requests_state, bytes_in, bytes_out,
           pixels_in, pixels_out, cpu_time_us, latency_us_sum, latency_us_max, latency_us_digest
    FROM {db}.usage_rollup
    WHERE granularity = ",
            $g,
            "
)
UNION ALL
SELECT
    tenant_id,
    ",
            $start_of,
            "(request_time) AS ",
            $bucket,
            ",
    request_outcome AS outcome,
    request_format AS format,
    countIf(has(",
            billed_outcomes!(),
            ", request_outcome)) AS requests,
    countIf(NOT has(",
            billed_outcomes!(),
            ", request_outcome)) AS refused,
    sum(request_bytes_in) AS bytes_in,
    sum(request_bytes_out) AS bytes_out,
    sum(request_pixels_in) AS pixels_in,
    sum(request_pixels_out) AS pixels_out,
    sum(request_cpu_time_us) AS cpu_time_us,
    sum(request_latency_us) AS latency_us_sum,
    max(request_latency_us) AS latency_us_max,
    quantilesTDigestStateIf(0.5, 0.9, 0.99)(request_latency_us, ",
            $digest,
            ") AS latency_us_digest
FROM (",
            per_request_before_16!(
                "event_time >= toDateTime(greatest(toUInt32((SELECT max(bucket) FROM {db}.usage_rollup WHERE granularity = 0)), 59) - 59, 'UTC')",
                "request_time >= (SELECT max(bucket) + 1 FROM {db}.usage_rollup WHERE granularity = 0)"
            ),
            ")
GROUP BY tenant_id, ",
            $bucket,
            ", outcome, format"
        )
    };
}

/// `CREATE VIEW` of one time rollup as analysts see it, from version 16 on: like
/// `billed_rollup_view`, with `source_host` (the host of a signed GET's source URL, `''` for an
/// image sent in the request body) a key beside outcome and format, in the settled rows (a key
/// column of `usage_rollup`) and in the live tail (the request's host, as the rollup job takes
/// it: `crate::rollup::per_request!`). A trailing `not_modified` selects the billed outcomes
/// of version 18 on ([`billed_outcomes`]).
macro_rules! host_rollup_view {
    ($view:literal, $bucket:literal, $start_of:literal, $g:literal, $digest:literal $(, $billed:ident)?) => {
        concat!(
            "CREATE VIEW IF NOT EXISTS {db}.",
            $view,
            " AS
SELECT
    tenant_id,
    bucket AS ",
            $bucket,
            ",
    outcome,
    format,
    source_host,
    if(has(",
            billed_outcomes!($($billed)?),
            ", outcome), finalizeAggregation(requests_state), toUInt64(0)) AS requests,
    if(has(",
            billed_outcomes!($($billed)?),
            ", outcome), toUInt64(0), finalizeAggregation(requests_state)) AS refused,
    finalizeAggregation(bytes_in) AS bytes_in,
    finalizeAggregation(bytes_out) AS bytes_out,
    finalizeAggregation(pixels_in) AS pixels_in,
    finalizeAggregation(pixels_out) AS pixels_out,
    finalizeAggregation(cpu_time_us) AS cpu_time_us,
    finalizeAggregation(latency_us_sum) AS latency_us_sum,
    finalizeAggregation(latency_us_max) AS latency_us_max,
    latency_us_digest
FROM (
    SELECT tenant_id, bucket, outcome, format, source_host, requests AS requests_state, bytes_in,
           bytes_out, pixels_in, pixels_out, cpu_time_us, latency_us_sum, latency_us_max,
           latency_us_digest
    FROM {db}.usage_rollup
    WHERE granularity = ",
            $g,
            "
)
UNION ALL
SELECT
    tenant_id,
    ",
            $start_of,
            "(request_time) AS ",
            $bucket,
            ",
    request_outcome AS outcome,
    request_format AS format,
    request_source_host AS source_host,
    countIf(has(",
            billed_outcomes!($($billed)?),
            ", request_outcome)) AS requests,
    countIf(NOT has(",
            billed_outcomes!($($billed)?),
            ", request_outcome)) AS refused,
    sum(request_bytes_in) AS bytes_in,
    sum(request_bytes_out) AS bytes_out,
    sum(request_pixels_in) AS pixels_in,
    sum(request_pixels_out) AS pixels_out,
    sum(request_cpu_time_us) AS cpu_time_us,
    sum(request_latency_us) AS latency_us_sum,
    max(request_latency_us) AS latency_us_max,
    quantilesTDigestStateIf(0.5, 0.9, 0.99)(request_latency_us, ",
            $digest,
            ") AS latency_us_digest
FROM (",
            crate::rollup::per_request!(
                "event_time >= toDateTime(greatest(toUInt32((SELECT max(bucket) FROM {db}.usage_rollup WHERE granularity = 0)), 59) - 59, 'UTC')",
                "request_time >= (SELECT max(bucket) + 1 FROM {db}.usage_rollup WHERE granularity = 0)"
            ),
            ")
GROUP BY tenant_id, ",
            $bucket,
            ", outcome, format, source_host"
        )
    };
}

/// The materialized view copying each block inserted into `usage_raw` into `usage_recent`, from
/// version 16 on (with `source_host`, last in both, as `ALTER … ADD COLUMN` put it there).
macro_rules! recent_from_raw_with_host {
    () => {
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_recent_from_raw
TO {db}.usage_recent AS
SELECT tenant_id, request_id, event_time, outcome, output_format, bytes_in, bytes_out, pixels_in,
       pixels_out, cpu_time_us, latency_us, source = 'API' AS from_api, kafka_partition,
       kafka_offset, source_host
FROM {db}.usage_raw"
    };
}

/// The raw table's sort key is the tenant first, so tenant-scoped and time-ranged reads use the
/// primary index; duplicates of one delivery collapse in background merges (ReplacingMergeTree),
/// while exact queries never rely on merges and group by request id.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "create usage_raw",
        statements: &["CREATE TABLE IF NOT EXISTS {db}.usage_raw (
    kafka_partition Int32,
    kafka_offset Int64,
    request_id String,
    tenant_id String,
    key_id String,
    event_time DateTime('UTC'),
    event_time_ms Int64,
    outcome String,
    status Int32,
    bytes_in Int64,
    bytes_out Int64,
    pixels_in Int64,
    pixels_out Int64,
    cpu_time_us Int64,
    input_format String,
    output_format String,
    latency_us Int64,
    source String,
    inserted_at DateTime('UTC') DEFAULT now()
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, event_time, request_id)"],
        modern_only: false,
    },
    Migration {
        version: 2,
        name: "create usage_rejects",
        statements: &["CREATE TABLE IF NOT EXISTS {db}.usage_rejects (
    kafka_partition Int32,
    kafka_offset Int64,
    error String,
    payload_size Int64,
    rejected_at DateTime('UTC') DEFAULT now()
) ENGINE = ReplacingMergeTree()
ORDER BY (kafka_partition, kafka_offset)"],
        modern_only: false,
    },
    Migration {
        version: 3,
        name: "create usage_by_request",
        statements: &["CREATE VIEW IF NOT EXISTS {db}.usage_by_request AS
SELECT
    tenant_id,
    request_id,
    any(key_id) AS key_id,
    any(event_time) AS event_time,
    any(event_time_ms) AS event_time_ms,
    any(outcome) AS outcome,
    any(status) AS status,
    any(bytes_in) AS bytes_in,
    any(bytes_out) AS bytes_out,
    any(pixels_in) AS pixels_in,
    any(pixels_out) AS pixels_out,
    any(cpu_time_us) AS cpu_time_us,
    any(input_format) AS input_format,
    any(output_format) AS output_format,
    any(latency_us) AS latency_us,
    any(source) AS source,
    count() AS deliveries
FROM {db}.usage_raw
GROUP BY tenant_id, request_id"],
        modern_only: false,
    },
    Migration {
        version: 4,
        name: "create usage_minute, usage_hour, usage_day",
        statements: &[
            rollup_view!("usage_minute", "minute", "toStartOfMinute"),
            rollup_view!("usage_hour", "hour", "toStartOfHour"),
            rollup_view!("usage_day", "day", "toStartOfDay"),
        ],
        modern_only: false,
    },
    Migration {
        version: 5,
        name: "expire usage_rejects after 90 days",
        statements: &["ALTER TABLE {db}.usage_rejects MODIFY TTL rejected_at + INTERVAL 90 DAY"],
        modern_only: true,
    },
    Migration {
        version: 6,
        name: "usage_by_request: the api's record decides the outcome",
        // A request can have two records: the resizer's (`resized`, with pixels and CPU time)
        // and the api's (what the client got: `ok`, `client_closed_request`, an error code).
        // The api's decides outcome, status, time and latency; the work dimensions are the
        // largest seen (the api's record carries none). `deliveries` counts records beyond one
        // per writer, so `deliveries > 1` still means a duplicate delivery was collapsed.
        statements: &[
            "DROP TABLE IF EXISTS {db}.usage_by_request",
            "CREATE VIEW IF NOT EXISTS {db}.usage_by_request AS
SELECT
    tenant_id,
    request_id,
    any(key_id) AS key_id,
    argMax(event_time, from_api) AS event_time,
    argMax(event_time_ms, from_api) AS event_time_ms,
    argMax(outcome, from_api) AS outcome,
    argMax(status, from_api) AS status,
    max(bytes_in) AS bytes_in,
    max(bytes_out) AS bytes_out,
    max(pixels_in) AS pixels_in,
    max(pixels_out) AS pixels_out,
    max(cpu_time_us) AS cpu_time_us,
    max(input_format) AS input_format,
    max(output_format) AS output_format,
    argMax(latency_us, from_api) AS latency_us,
    argMax(source, from_api) AS source,
    count() - uniqExact(from_api) + 1 AS deliveries
FROM (
    SELECT
        tenant_id, request_id, key_id, event_time, event_time_ms, outcome, status, bytes_in,
        bytes_out, pixels_in, pixels_out, cpu_time_us, input_format, output_format, latency_us,
        source, source = 'API' AS from_api
    FROM {db}.usage_raw
)
GROUP BY tenant_id, request_id",
        ],
        modern_only: false,
    },
    Migration {
        version: 7,
        name: "usage_recent and usage_offsets (O(partitions) resume point)",
        // The views are created before the backfills, so a row inserted meanwhile may be copied
        // twice: harmless, `usage_recent` is read deduplicated by request id, and a high-water
        // mark is a max.
        statements: &[
            "CREATE TABLE IF NOT EXISTS {db}.usage_recent (
    tenant_id String,
    request_id String,
    event_time DateTime('UTC'),
    outcome String,
    output_format String,
    bytes_in Int64,
    bytes_out Int64,
    pixels_in Int64,
    pixels_out Int64,
    cpu_time_us Int64,
    latency_us Int64,
    from_api UInt8,
    kafka_partition Int32,
    kafka_offset Int64
) ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(event_time)
ORDER BY (event_time, tenant_id, request_id)",
            "CREATE TABLE IF NOT EXISTS {db}.usage_offsets (
    kafka_partition Int32,
    max_offset AggregateFunction(max, Int64),
    max_event_time AggregateFunction(max, DateTime('UTC'))
) ENGINE = AggregatingMergeTree()
ORDER BY kafka_partition",
            // A reject moves the partition's offset but not its time (it has no event time).
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_offsets_from_rejects
TO {db}.usage_offsets AS
SELECT kafka_partition, maxState(kafka_offset) AS max_offset,
       maxState(toDateTime(0, 'UTC')) AS max_event_time
FROM {db}.usage_rejects
GROUP BY kafka_partition",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_recent_from_raw
TO {db}.usage_recent AS
SELECT tenant_id, request_id, event_time, outcome, output_format, bytes_in, bytes_out, pixels_in,
       pixels_out, cpu_time_us, latency_us, source = 'API' AS from_api, kafka_partition,
       kafka_offset
FROM {db}.usage_raw",
            // 18.16 cascades materialized views only through the view's own name (a view on
            // the target table does not fire); current servers only through the target table,
            // which migration 9 switches to once the server is one.
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_offsets_from_recent
TO {db}.usage_offsets AS
SELECT kafka_partition, maxState(kafka_offset) AS max_offset, maxState(event_time) AS max_event_time
FROM {db}.usage_recent_from_raw
GROUP BY kafka_partition",
            "INSERT INTO {db}.usage_recent
SELECT tenant_id, request_id, event_time, outcome, output_format, bytes_in, bytes_out, pixels_in,
       pixels_out, cpu_time_us, latency_us, source = 'API' AS from_api, kafka_partition,
       kafka_offset
FROM {db}.usage_raw",
            "INSERT INTO {db}.usage_offsets
SELECT kafka_partition, maxState(kafka_offset) AS max_offset,
       maxState(toDateTime(0, 'UTC')) AS max_event_time
FROM {db}.usage_rejects
GROUP BY kafka_partition",
            "INSERT INTO {db}.usage_offsets
SELECT kafka_partition, maxState(kafka_offset) AS max_offset, maxState(event_time) AS max_event_time
FROM {db}.usage_raw
GROUP BY kafka_partition",
        ],
        modern_only: false,
    },
    Migration {
        version: 8,
        name: "usage_rollup; usage_minute, usage_hour, usage_day read it",
        // The rollup starts empty: the rollup job settles existing data window by window from
        // the oldest row of `usage_recent`, and until then the views' live tail covers it.
        statements: &[
            "CREATE TABLE IF NOT EXISTS {db}.usage_rollup (
    granularity UInt8,
    tenant_id String,
    bucket DateTime('UTC'),
    outcome String,
    format String,
    requests AggregateFunction(sum, UInt64),
    bytes_in AggregateFunction(sum, Int64),
    bytes_out AggregateFunction(sum, Int64),
    pixels_in AggregateFunction(sum, Int64),
    pixels_out AggregateFunction(sum, Int64),
    cpu_time_us AggregateFunction(sum, Int64),
    latency_us_sum AggregateFunction(sum, Int64),
    latency_us_max AggregateFunction(max, Int64)
) ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(bucket)
ORDER BY (granularity, tenant_id, bucket, outcome, format)",
            "DROP TABLE IF EXISTS {db}.usage_minute",
            "DROP TABLE IF EXISTS {db}.usage_hour",
            "DROP TABLE IF EXISTS {db}.usage_day",
            live_rollup_view!("usage_minute", "minute", "toStartOfMinute", "1"),
            live_rollup_view!("usage_hour", "hour", "toStartOfHour", "2"),
            live_rollup_view!("usage_day", "day", "toStartOfDay", "3"),
        ],
        modern_only: false,
    },
    Migration {
        version: 9,
        name: "usage_offsets_from_recent reads usage_recent (current servers cascade that way)",
        // Applied once the server is current (before it, on 18.16, version 7's form is the one
        // that fires). The backfill covers INSERTs between the upgrade and this migration.
        statements: &[
            "DROP TABLE IF EXISTS {db}.usage_offsets_from_recent",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_offsets_from_recent
TO {db}.usage_offsets AS
SELECT kafka_partition, maxState(kafka_offset) AS max_offset, maxState(event_time) AS max_event_time
FROM {db}.usage_recent
GROUP BY kafka_partition",
            "INSERT INTO {db}.usage_offsets
SELECT kafka_partition, maxState(kafka_offset) AS max_offset, maxState(event_time) AS max_event_time
FROM {db}.usage_recent
GROUP BY kafka_partition",
        ],
        modern_only: true,
    },
    Migration {
        version: 10,
        name: "usage_raw keyed by source too: a request's api and resizer records never collapse",
        // Version 1's key (tenant, second, request) let a merge keep one of a request's two
        // records (the api's `ok` or the resizer's `resized`), so exact views lost outcomes or
        // work dimensions. The source joins the key; a duplicate delivery of one writer's record
        // still collapses. The table is copied and swapped by name; on 18.16 materialized views
        // follow the name (`usage_recent_from_raw` keeps firing), current servers re-create it in
        // version 11. Rows a merge already collapsed come back only from Kafka
        // (`imgpipe ops usage rebuild`).
        statements: &[
            "DROP TABLE IF EXISTS {db}.usage_raw_by_source",
            "CREATE TABLE {db}.usage_raw_by_source (
    kafka_partition Int32,
    kafka_offset Int64,
    request_id String,
    tenant_id String,
    key_id String,
    event_time DateTime('UTC'),
    event_time_ms Int64,
    outcome String,
    status Int32,
    bytes_in Int64,
    bytes_out Int64,
    pixels_in Int64,
    pixels_out Int64,
    cpu_time_us Int64,
    input_format String,
    output_format String,
    latency_us Int64,
    source String,
    inserted_at DateTime('UTC') DEFAULT now()
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, event_time, request_id, source)",
            "INSERT INTO {db}.usage_raw_by_source SELECT * FROM {db}.usage_raw",
            "RENAME TABLE {db}.usage_raw TO {db}.usage_raw_collapsing, {db}.usage_raw_by_source TO {db}.usage_raw",
            "DROP TABLE {db}.usage_raw_collapsing",
        ],
        modern_only: false,
    },
    Migration {
        version: 11,
        name: "usage_recent_from_raw re-created on the re-keyed usage_raw (current servers)",
        // Current servers bind a materialized view to its source table itself, not its name:
        // after version 10's swap it must be created again to read the new table.
        statements: &[
            "DROP TABLE IF EXISTS {db}.usage_recent_from_raw",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_recent_from_raw
TO {db}.usage_recent AS
SELECT tenant_id, request_id, event_time, outcome, output_format, bytes_in, bytes_out, pixels_in,
       pixels_out, cpu_time_us, latency_us, source = 'API' AS from_api, kafka_partition,
       kafka_offset
FROM {db}.usage_raw",
        ],
        modern_only: true,
    },
    Migration {
        version: 12,
        name: "usage at scale: UUID request ids, short-lived tenant-first usage_recent, latency digests",
        // Storage and speed at the article's rate (issue 13). All three usage tables are copied
        // into new shapes and swapped in by name, the materialized views dropped before and
        // created after (on current servers a view is bound to the table it was created on).
        // Run it with the aggregators stopped, like version 10: rows another aggregator
        // inserts between a copy and the swap stay in the dropped table.
        // - `usage_raw`: `request_id` as a UUID (16 bytes, was a 36-character string); an id
        //   that is not a canonical UUID keeps its text in `request_id_text` and gets the UUID
        //   made of the first 16 bytes of its SHA-256 (`UsageRow::new` does the same), so it
        //   still deduplicates. Milliseconds as `event_ms` (`event_time_ms` is an ALIAS). A plain
        //   MergeTree: it keeps every delivery (audits, the rebuild's record-by-record check);
        //   exact readers group by request id anyway. Sorted by tenant, quarter hour, request,
        //   source: a request's two records sit side by side and compress together, and a
        //   tenant's time range still reads by the primary key. Daily partitions, which the
        //   rollup job drops after `usage_raw_retention`.
        // - `usage_recent`: tenant first (the tenant api reads its tenant's tail by key), UUID
        //   ids, 5-minute partitions that the rollup job drops once settled: it holds the
        //   unsettled tail plus a few minutes, not history.
        // - `usage_rollup`: a `latency_us_digest` (t-digest of per-request latency, p50/p90/p99)
        //   for percentiles per tenant, in hour and day rows; rows settled before this, and
        //   minute rows, have an empty digest.
        statements: &[
            "DROP TABLE IF EXISTS {db}.usage_offsets_from_recent",
            "DROP TABLE IF EXISTS {db}.usage_recent_from_raw",
            "DROP TABLE IF EXISTS {db}.usage_raw_next",
            "DROP TABLE IF EXISTS {db}.usage_recent_next",
            "DROP TABLE IF EXISTS {db}.usage_rollup_next",
            "CREATE TABLE {db}.usage_raw_next (
    kafka_partition Int32,
    kafka_offset Int64,
    request_id UUID,
    request_id_text String,
    tenant_id String,
    key_id String,
    event_time DateTime('UTC'),
    event_ms UInt16,
    event_time_ms Int64 ALIAS toInt64(toUInt32(event_time)) * 1000 + event_ms,
    outcome String,
    status Int32,
    bytes_in Int64,
    bytes_out Int64,
    pixels_in Int64,
    pixels_out Int64,
    cpu_time_us Int64,
    input_format String,
    output_format String,
    latency_us Int64,
    source String,
    inserted_at DateTime('UTC') DEFAULT now()
) ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(event_time)
ORDER BY (tenant_id, toStartOfFifteenMinutes(event_time), request_id, source)",
            concat!(
                "INSERT INTO {db}.usage_raw_next (kafka_partition, kafka_offset, request_id,
    request_id_text, tenant_id, key_id, event_time, event_ms, outcome, status, bytes_in, bytes_out,
    pixels_in, pixels_out, cpu_time_us, input_format, output_format, latency_us, source,
    inserted_at)
SELECT kafka_partition, kafka_offset, ",
                uuid_of!("toString(request_id)"),
                ",
    if(match(toString(request_id), '",
                canonical_uuid!(),
                "'), '', toString(request_id)), tenant_id, key_id, event_time,
    toUInt16(((event_time_ms % 1000) + 1000) % 1000), outcome, status, bytes_in, bytes_out,
    pixels_in, pixels_out, cpu_time_us, input_format, output_format, latency_us, source,
    inserted_at
FROM {db}.usage_raw"
            ),
            "CREATE TABLE {db}.usage_recent_next (
    tenant_id String,
    request_id UUID,
    event_time DateTime('UTC'),
    outcome String,
    output_format String,
    bytes_in Int64,
    bytes_out Int64,
    pixels_in Int64,
    pixels_out Int64,
    cpu_time_us Int64,
    latency_us Int64,
    from_api UInt8,
    kafka_partition Int32,
    kafka_offset Int64
) ENGINE = MergeTree()
PARTITION BY intDiv(toUInt32(event_time), 300)
ORDER BY (tenant_id, event_time, request_id)",
            // Only what is not settled yet (and a margin): the rest is in the rollup. Never
            // settled (mark 0): everything.
            concat!(
                "INSERT INTO {db}.usage_recent_next
SELECT tenant_id, ",
                uuid_of!("toString(request_id)"),
                ", event_time, outcome, output_format, bytes_in, bytes_out, pixels_in,
       pixels_out, cpu_time_us, latency_us, from_api, kafka_partition, kafka_offset
FROM {db}.usage_recent
WHERE event_time >= toDateTime(greatest(toUInt32((SELECT max(bucket) FROM {db}.usage_rollup WHERE granularity = 0)), 3600) - 3600, 'UTC')"
            ),
            "CREATE TABLE {db}.usage_rollup_next (
    granularity UInt8,
    tenant_id String,
    bucket DateTime('UTC'),
    outcome String,
    format String,
    requests AggregateFunction(sum, UInt64),
    bytes_in AggregateFunction(sum, Int64),
    bytes_out AggregateFunction(sum, Int64),
    pixels_in AggregateFunction(sum, Int64),
    pixels_out AggregateFunction(sum, Int64),
    cpu_time_us AggregateFunction(sum, Int64),
    latency_us_sum AggregateFunction(sum, Int64),
    latency_us_max AggregateFunction(max, Int64),
    latency_us_digest AggregateFunction(quantilesTDigest(0.5, 0.9, 0.99), Int64)
) ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(bucket)
ORDER BY (granularity, tenant_id, bucket, outcome, format)",
            // Rows settled before have no digest: the column's default, the empty state.
            "INSERT INTO {db}.usage_rollup_next (granularity, tenant_id, bucket, outcome, format,
    requests, bytes_in, bytes_out, pixels_in, pixels_out, cpu_time_us, latency_us_sum,
    latency_us_max)
SELECT * FROM {db}.usage_rollup",
            "RENAME TABLE {db}.usage_raw TO {db}.usage_raw_previous, {db}.usage_raw_next TO {db}.usage_raw,
    {db}.usage_recent TO {db}.usage_recent_previous, {db}.usage_recent_next TO {db}.usage_recent,
    {db}.usage_rollup TO {db}.usage_rollup_previous, {db}.usage_rollup_next TO {db}.usage_rollup",
            "DROP TABLE {db}.usage_raw_previous",
            "DROP TABLE {db}.usage_recent_previous",
            "DROP TABLE {db}.usage_rollup_previous",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_recent_from_raw
TO {db}.usage_recent AS
SELECT tenant_id, request_id, event_time, outcome, output_format, bytes_in, bytes_out, pixels_in,
       pixels_out, cpu_time_us, latency_us, source = 'API' AS from_api, kafka_partition,
       kafka_offset
FROM {db}.usage_raw",
            // 18.16's form (through the view's name); version 13 switches current servers.
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_offsets_from_recent
TO {db}.usage_offsets AS
SELECT kafka_partition, maxState(kafka_offset) AS max_offset, maxState(event_time) AS max_event_time
FROM {db}.usage_recent_from_raw
GROUP BY kafka_partition",
            "DROP TABLE IF EXISTS {db}.usage_by_request",
            "CREATE VIEW IF NOT EXISTS {db}.usage_by_request AS
SELECT
    tenant_id,
    request_id,
    any(request_id_text) AS request_id_text,
    any(key_id) AS key_id,
    argMax(event_time, from_api) AS event_time,
    argMax(event_time_ms, from_api) AS event_time_ms,
    argMax(outcome, from_api) AS outcome,
    argMax(status, from_api) AS status,
    max(bytes_in) AS bytes_in,
    max(bytes_out) AS bytes_out,
    max(pixels_in) AS pixels_in,
    max(pixels_out) AS pixels_out,
    max(cpu_time_us) AS cpu_time_us,
    max(input_format) AS input_format,
    max(output_format) AS output_format,
    argMax(latency_us, from_api) AS latency_us,
    argMax(source, from_api) AS source,
    count() - uniqExact(from_api) + 1 AS deliveries
FROM (
    SELECT
        tenant_id, request_id, request_id_text, key_id, event_time,
        event_time_ms, outcome, status, bytes_in, bytes_out, pixels_in, pixels_out, cpu_time_us,
        input_format, output_format, latency_us, source, source = 'API' AS from_api
    FROM {db}.usage_raw
)
GROUP BY tenant_id, request_id",
            "DROP TABLE IF EXISTS {db}.usage_minute",
            "DROP TABLE IF EXISTS {db}.usage_hour",
            "DROP TABLE IF EXISTS {db}.usage_day",
            digest_rollup_view!("usage_minute", "minute", "toStartOfMinute", "1", "0"),
            digest_rollup_view!("usage_hour", "hour", "toStartOfHour", "2", "1"),
            digest_rollup_view!("usage_day", "day", "toStartOfDay", "3", "1"),
        ],
        modern_only: false,
    },
    Migration {
        version: 13,
        name: "usage_offsets_from_recent reads usage_recent again (current servers, after 12)",
        // Version 12 re-created it in 18.16's form; nothing was inserted in between (migrations
        // run before the aggregator consumes).
        statements: &[
            "DROP TABLE IF EXISTS {db}.usage_offsets_from_recent",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_offsets_from_recent
TO {db}.usage_offsets AS
SELECT kafka_partition, maxState(kafka_offset) AS max_offset, maxState(event_time) AS max_event_time
FROM {db}.usage_recent
GROUP BY kafka_partition",
        ],
        modern_only: true,
    },
    Migration {
        version: 14,
        name: "usage_raw compressed with ZSTD (current servers)",
        // 18.16 compresses every column with LZ4 (no per-column codecs): 41 bytes per record on
        // realistic rows, most of it random request ids and sizes that LZ4 cannot shrink.
        // ZSTD takes the same rows to ~24 bytes on a current server (Delta/T64 in front did
        // not help: ~25). New parts are written so; old ones as merges rewrite them.
        statements: &["ALTER TABLE {db}.usage_raw
    MODIFY COLUMN kafka_partition Int32 CODEC(ZSTD(3)),
    MODIFY COLUMN kafka_offset Int64 CODEC(ZSTD(3)),
    MODIFY COLUMN request_id UUID CODEC(ZSTD(3)),
    MODIFY COLUMN request_id_text String CODEC(ZSTD(3)),
    MODIFY COLUMN tenant_id String CODEC(ZSTD(3)),
    MODIFY COLUMN key_id String CODEC(ZSTD(3)),
    MODIFY COLUMN event_time DateTime('UTC') CODEC(ZSTD(3)),
    MODIFY COLUMN event_ms UInt16 CODEC(ZSTD(3)),
    MODIFY COLUMN outcome String CODEC(ZSTD(3)),
    MODIFY COLUMN status Int32 CODEC(ZSTD(3)),
    MODIFY COLUMN bytes_in Int64 CODEC(ZSTD(3)),
    MODIFY COLUMN bytes_out Int64 CODEC(ZSTD(3)),
    MODIFY COLUMN pixels_in Int64 CODEC(ZSTD(3)),
    MODIFY COLUMN pixels_out Int64 CODEC(ZSTD(3)),
    MODIFY COLUMN cpu_time_us Int64 CODEC(ZSTD(3)),
    MODIFY COLUMN input_format String CODEC(ZSTD(3)),
    MODIFY COLUMN output_format String CODEC(ZSTD(3)),
    MODIFY COLUMN latency_us Int64 CODEC(ZSTD(3)),
    MODIFY COLUMN source String CODEC(ZSTD(3)),
    MODIFY COLUMN inserted_at DateTime('UTC') DEFAULT now() CODEC(ZSTD(3))"],
        modern_only: true,
    },
    Migration {
        version: 15,
        name: "usage_minute, usage_hour, usage_day: requests counts billed work, refused the rest",
        // Until now `requests` counted every request, refusals included: summed over outcomes
        // (an invoice, a tenant's total) it billed a tenant that got 6 images and 5 refusals
        // for 11. Plain views: dropped and created again at once, nothing stored changes
        // (`usage_rollup` keeps one `requests` count per outcome).
        statements: &[
            "DROP TABLE IF EXISTS {db}.usage_minute",
            "DROP TABLE IF EXISTS {db}.usage_hour",
            "DROP TABLE IF EXISTS {db}.usage_day",
            billed_rollup_view!("usage_minute", "minute", "toStartOfMinute", "1", "0"),
            billed_rollup_view!("usage_hour", "hour", "toStartOfHour", "2", "1"),
            billed_rollup_view!("usage_day", "day", "toStartOfDay", "3", "1"),
        ],
        modern_only: false,
    },
    Migration {
        version: 16,
        name: "source_host: the host of a signed GET's source, a usage dimension",
        // Issue 23: a GET names its source image by URL, and its host is billed as a
        // dimension (`''` for an image sent in the body, and for every record stored before
        // this). Run it with the aggregators stopped, like versions 10 and 12: a settle that
        // lands in `usage_rollup` between its copy and the swap stays in the dropped table.
        // - `usage_raw` and `usage_recent` gain the column (`ALTER … ADD COLUMN`: metadata
        //   only, whatever the history; 18.16 has no `IF NOT EXISTS` there, so [`apply`] skips
        //   the statement when the column exists). Records stored before keep `''`; a rebuild
        //   from Kafka (`imgpipe ops usage rebuild`) restores the hosts of records written by
        //   producers that already sent them.
        // - The materialized views are dropped and created again as version 12 left them, the
        //   first one now copying `source_host` (on 18.16 the second reads the first by name;
        //   version 17 puts current servers' form back).
        // - `usage_rollup` gets `source_host` as a key column, so it is a dimension of settled
        //   buckets: copied into the new sort key and swapped in by name, like version 12 (rows
        //   settled before get `''`). `DROP … IF EXISTS` of both side tables first, so a run that
        //   crashed anywhere before its record can simply run again.
        // - `usage_by_request` shows the request's host (whichever record names one: the api's
        //   and the resizer's agree); the three views carry it as a key.
        statements: &[
            "DROP TABLE IF EXISTS {db}.usage_offsets_from_recent",
            "DROP TABLE IF EXISTS {db}.usage_recent_from_raw",
            "ALTER TABLE {db}.usage_raw ADD COLUMN source_host String DEFAULT '' AFTER source",
            "ALTER TABLE {db}.usage_recent ADD COLUMN source_host String DEFAULT ''",
            recent_from_raw_with_host!(),
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_offsets_from_recent
TO {db}.usage_offsets AS
SELECT kafka_partition, maxState(kafka_offset) AS max_offset, maxState(event_time) AS max_event_time
FROM {db}.usage_recent_from_raw
GROUP BY kafka_partition",
            "DROP TABLE IF EXISTS {db}.usage_rollup_next",
            "DROP TABLE IF EXISTS {db}.usage_rollup_previous",
            "CREATE TABLE {db}.usage_rollup_next (
    granularity UInt8,
    tenant_id String,
    bucket DateTime('UTC'),
    outcome String,
    format String,
    source_host String DEFAULT '',
    requests AggregateFunction(sum, UInt64),
    bytes_in AggregateFunction(sum, Int64),
    bytes_out AggregateFunction(sum, Int64),
    pixels_in AggregateFunction(sum, Int64),
    pixels_out AggregateFunction(sum, Int64),
    cpu_time_us AggregateFunction(sum, Int64),
    latency_us_sum AggregateFunction(sum, Int64),
    latency_us_max AggregateFunction(max, Int64),
    latency_us_digest AggregateFunction(quantilesTDigest(0.5, 0.9, 0.99), Int64)
) ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(bucket)
ORDER BY (granularity, tenant_id, bucket, outcome, format, source_host)",
            // Columns named, not `*`: a run repeated after the swap reads the new table.
            "INSERT INTO {db}.usage_rollup_next (granularity, tenant_id, bucket, outcome, format,
    requests, bytes_in, bytes_out, pixels_in, pixels_out, cpu_time_us, latency_us_sum,
    latency_us_max, latency_us_digest)
SELECT granularity, tenant_id, bucket, outcome, format, requests, bytes_in, bytes_out, pixels_in,
       pixels_out, cpu_time_us, latency_us_sum, latency_us_max, latency_us_digest
FROM {db}.usage_rollup",
            "RENAME TABLE {db}.usage_rollup TO {db}.usage_rollup_previous,
    {db}.usage_rollup_next TO {db}.usage_rollup",
            "DROP TABLE IF EXISTS {db}.usage_rollup_previous",
            "DROP TABLE IF EXISTS {db}.usage_by_request",
            "CREATE VIEW IF NOT EXISTS {db}.usage_by_request AS
SELECT
    tenant_id,
    request_id,
    any(request_id_text) AS request_id_text,
    any(key_id) AS key_id,
    argMax(event_time, from_api) AS event_time,
    argMax(event_time_ms, from_api) AS event_time_ms,
    argMax(outcome, from_api) AS outcome,
    argMax(status, from_api) AS status,
    max(bytes_in) AS bytes_in,
    max(bytes_out) AS bytes_out,
    max(pixels_in) AS pixels_in,
    max(pixels_out) AS pixels_out,
    max(cpu_time_us) AS cpu_time_us,
    max(input_format) AS input_format,
    max(output_format) AS output_format,
    argMax(latency_us, from_api) AS latency_us,
    argMax(source, from_api) AS source,
    max(source_host) AS source_host,
    count() - uniqExact(from_api) + 1 AS deliveries
FROM (
    SELECT
        tenant_id, request_id, request_id_text, key_id, event_time,
        event_time_ms, outcome, status, bytes_in, bytes_out, pixels_in, pixels_out, cpu_time_us,
        input_format, output_format, latency_us, source, source_host, source = 'API' AS from_api
    FROM {db}.usage_raw
)
GROUP BY tenant_id, request_id",
            "DROP TABLE IF EXISTS {db}.usage_minute",
            "DROP TABLE IF EXISTS {db}.usage_hour",
            "DROP TABLE IF EXISTS {db}.usage_day",
            host_rollup_view!("usage_minute", "minute", "toStartOfMinute", "1", "0"),
            host_rollup_view!("usage_hour", "hour", "toStartOfHour", "2", "1"),
            host_rollup_view!("usage_day", "day", "toStartOfDay", "3", "1"),
        ],
        modern_only: false,
    },
    Migration {
        version: 17,
        name: "usage_raw.source_host compressed with ZSTD; materialized views in current servers' form (after 16)",
        // Version 16 left `usage_offsets_from_recent` in 18.16's form, as version 12 did (13
        // put it back then). A server upgraded from 18.16 after 16 also runs 11 late, which
        // creates `usage_recent_from_raw` without `source_host`: created again here with it.
        statements: &[
            "ALTER TABLE {db}.usage_raw MODIFY COLUMN source_host String DEFAULT '' CODEC(ZSTD(3))",
            "DROP TABLE IF EXISTS {db}.usage_offsets_from_recent",
            "DROP TABLE IF EXISTS {db}.usage_recent_from_raw",
            recent_from_raw_with_host!(),
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_offsets_from_recent
TO {db}.usage_offsets AS
SELECT kafka_partition, maxState(kafka_offset) AS max_offset, maxState(event_time) AS max_event_time
FROM {db}.usage_recent
GROUP BY kafka_partition",
        ],
        modern_only: true,
    },
    Migration {
        version: 18,
        name: "usage_minute, usage_hour, usage_day: not_modified (a 304 without a resize) is billed",
        // Issue 24: a signed GET revalidated by its client is answered 304 when the origin's
        // own conditional request says the source did not change, with no resize; its record
        // says `not_modified`, a request served. Plain views: dropped and created again at once,
        // nothing stored changes.
        statements: &[
            "DROP TABLE IF EXISTS {db}.usage_minute",
            "DROP TABLE IF EXISTS {db}.usage_hour",
            "DROP TABLE IF EXISTS {db}.usage_day",
            host_rollup_view!(
                "usage_minute",
                "minute",
                "toStartOfMinute",
                "1",
                "0",
                not_modified
            ),
            host_rollup_view!(
                "usage_hour",
                "hour",
                "toStartOfHour",
                "2",
                "1",
                not_modified
            ),
            host_rollup_view!(
                "usage_day",
                "day",
                "toStartOfDay",
                "3",
                "1",
                not_modified
            ),
        ],
        modern_only: false,
    },
    Migration {
        // Numbered apart from the usage migrations: the audit trail evolves on its own.
        version: 50,
        name: "create admin_audit",
        // One row per admin call (`identity.audit`); written again after a crash with the same
        // audit_id, which the sort key ends in, so merges keep one.
        statements: &["CREATE TABLE IF NOT EXISTS {db}.admin_audit (
    tenant_id String,
    at DateTime('UTC'),
    at_ms Int64,
    audit_id String,
    actor String,
    authenticated UInt8,
    action String,
    key_id String,
    status Int32,
    remote_addr String,
    request_id String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(at)
ORDER BY (tenant_id, at, audit_id)"],
        modern_only: false,
    },
];

/// Why migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// ClickHouse did not answer the version probe. Retryable when the server is down.
    #[error(transparent)]
    Connect(#[from] ClickHouseError),
    /// Reading the schema back (`SHOW CREATE`) failed. Retryable when ClickHouse was down.
    #[error("reading the schema: {0}")]
    Schema(#[source] clickhouse::error::Error),
    /// A statement failed. Retryable when ClickHouse was unreachable or overloaded.
    #[error("migration {version} ({name}): {source}")]
    Statement {
        /// Migration version (0: the bootstrap of `schema_migrations`).
        version: u32,
        /// Its name.
        name: &'static str,
        /// ClickHouse's answer.
        source: clickhouse::error::Error,
    },
}

impl MigrationError {
    /// Whether running the migrations again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(error) => error.is_retryable(),
            Self::Statement { source, .. } | Self::Schema(source) => {
                chassis::clickhouse::is_retryable(source)
            }
        }
    }
}

/// What a migration run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// The server's version as `major.minor`.
    pub server_version: String,
    /// Migrations applied by this run: `(version, name)`.
    pub applied: Vec<(u32, &'static str)>,
    /// Versions found already applied.
    pub already_applied: Vec<u32>,
    /// Migrations this server is too old for: `(version, name)`; applied after an upgrade.
    pub skipped: Vec<(u32, &'static str)>,
}

/// Connects to ClickHouse and brings `clickhouse.database` to the latest schema.
pub async fn migrate(clickhouse: &ClickHouseConfig) -> Result<MigrationReport, MigrationError> {
    let (client, version) = chassis::clickhouse::connect(clickhouse).await?;
    apply(&client, version, &clickhouse.database).await
}

/// Every migration's statements for `database`, in order: `(version, modern_only, statement)`.
/// For review, rebuild scripts and checks against other servers (`imgpipe migrate --print`).
pub fn statements(database: &DatabaseName) -> Vec<(u32, bool, String)> {
    MIGRATIONS
        .iter()
        .flat_map(|m| {
            m.statements.iter().map(move |s| {
                (
                    m.version,
                    m.modern_only,
                    s.replace("{db}", database.as_str()),
                )
            })
        })
        .collect()
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct AppliedRow {
    version: u32,
}

/// The database name the schema text uses, whatever the database read.
pub const SCHEMA_DATABASE: &str = "imgpipe";

/// The schema of `clickhouse.database` as one text: every table, then every view, then every
/// materialized view, each kind by name, as `SHOW CREATE` prints it with the database named
/// [`SCHEMA_DATABASE`], laid out one clause per line ([`layout`]). `aggregators/schema.sql` is
/// this text for a freshly migrated database on the local stack's server.
pub async fn schema(clickhouse: &ClickHouseConfig) -> Result<String, MigrationError> {
    let (client, _version) = chassis::clickhouse::connect(clickhouse).await?;
    let database = clickhouse.database.as_str();
    let objects = client
        .query(
            "SELECT name FROM system.tables WHERE database = ?
             ORDER BY multiIf(engine = 'View', 1, engine = 'MaterializedView', 2, 0), name",
        )
        .bind(database)
        .fetch_all::<String>()
        .await
        .map_err(MigrationError::Schema)?;
    let mut text = String::new();
    for object in objects {
        let create = client
            .query(&format!("SHOW CREATE TABLE {database}.`{object}`"))
            .fetch_one::<String>()
            .await
            .map_err(MigrationError::Schema)?;
        let create = create
            .replace(&format!("`{database}`."), &format!("{SCHEMA_DATABASE}."))
            .replace(&format!("{database}."), &format!("{SCHEMA_DATABASE}."));
        text.push_str(&layout(&create));
        text.push_str(";\n\n");
    }
    Ok(text)
}

/// Words before which [`layout`] starts a line (each with the word that must follow, if any).
const CLAUSES: &[(&str, Option<&str>)] = &[
    ("SELECT", None),
    ("FROM", None),
    ("WHERE", None),
    ("PREWHERE", None),
    ("GROUP", Some("BY")),
    ("HAVING", None),
    ("ORDER", Some("BY")),
    ("UNION", Some("ALL")),
    ("ARRAY", Some("JOIN")),
    ("LIMIT", None),
    ("ENGINE", None),
    ("PARTITION", Some("BY")),
    ("PRIMARY", Some("KEY")),
    ("SAMPLE", Some("BY")),
    ("TTL", None),
    ("SETTINGS", None),
];

/// `statement` laid out for reading, with only whitespace outside quotes changed (so it means
/// the same): runs of whitespace become one space, each clause ([`CLAUSES`]) starts a line
/// indented by its parenthesis depth, and the column list of a `CREATE` has one column a line.
/// ClickHouse 18.16 prints a whole statement on one line; current servers print their own
/// layout, which this replaces the same way.
pub fn layout(statement: &str) -> String {
    let tokens = tokens(statement);
    let word = |i: usize| {
        tokens[i..]
            .iter()
            .find(|t| !t.trim().is_empty())
            .copied()
            .unwrap_or("")
    };
    let mut out = String::new();
    let newline = |out: &mut String, depth: usize| {
        let kept = out.trim_end_matches(' ').len();
        out.truncate(kept);
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&"    ".repeat(depth));
    };
    let mut depth = 0_usize;
    // The column list: the first parenthesis at depth 0 of a CREATE before its AS or ENGINE.
    let mut columns: Option<bool> = statement.starts_with("CREATE").then_some(false);
    for (i, &token) in tokens.iter().enumerate() {
        if token.trim().is_empty() {
            if !(out.is_empty() || out.ends_with([' ', '\n', '('])) {
                out.push(' ');
            }
            continue;
        }
        if depth == 0 && matches!(token, "AS" | "ENGINE") && columns == Some(false) {
            columns = None;
        }
        match token {
            "(" => {
                out.push('(');
                depth += 1;
                if depth == 1 && columns == Some(false) {
                    columns = Some(true);
                    newline(&mut out, 1);
                }
            }
            ")" => {
                depth = depth.saturating_sub(1);
                if depth == 0 && columns == Some(true) {
                    columns = None;
                    newline(&mut out, 0);
                } else {
                    let kept = out.trim_end_matches(' ').len();
                    out.truncate(kept);
                }
                out.push(')');
            }
            "," if depth == 1 && columns == Some(true) => {
                out.push(',');
                newline(&mut out, 1);
            }
            _ => {
                let clause = CLAUSES.iter().any(|&(first, second)| {
                    token == first && second.is_none_or(|second| word(i + 1) == second)
                });
                if clause {
                    newline(&mut out, depth);
                }
                out.push_str(token);
            }
        }
    }
    out.trim_end().to_owned()
}

/// `text` split into quoted strings and identifiers (kept whole, escapes included), runs of
/// whitespace, words, and single other characters.
fn tokens(text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let c = bytes[i];
        if matches!(c, b'\'' | b'`' | b'"') {
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
        } else if c.is_ascii_whitespace() {
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
        } else {
            // One character (a multi-byte one whole).
            i += text[i..].chars().next().map_or(1, char::len_utf8);
        }
        tokens.push(&text[start..i]);
    }
    tokens
}

/// The `(table, column)` a statement `ALTER TABLE {db}.<table> ADD COLUMN <column> …` adds, for
/// a statement adding exactly one column. 18.16 has no `ADD COLUMN IF NOT EXISTS`, so [`apply`]
/// runs such a statement only while the column is missing, which keeps a migration safe to
/// repeat after a crash between its statements.
fn added_column(statement: &str) -> Option<(&str, &str)> {
    let rest = statement.strip_prefix("ALTER TABLE {db}.")?;
    let (table, rest) = rest.split_once(" ADD COLUMN ")?;
    let column = rest.split_whitespace().next()?;
    let identifier = |name: &str| {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    (identifier(table) && identifier(column) && !rest.contains("ADD COLUMN"))
        .then_some((table, column))
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct ColumnCount {
    columns: u64,
}

/// Whether `database.table` has `column`.
async fn has_column(
    client: &Client,
    database: &DatabaseName,
    table: &str,
    column: &str,
) -> Result<bool, clickhouse::error::Error> {
    let row = client
        .query(
            "SELECT count() AS columns FROM system.columns
             WHERE database = ? AND table = ? AND name = ?",
        )
        .bind(database.as_str())
        .bind(table)
        .bind(column)
        .fetch_one::<ColumnCount>()
        .await?;
    Ok(row.columns > 0)
}

/// Applies every pending migration over an existing client.
pub(crate) async fn apply(
    client: &Client,
    server: ServerVersion,
    database: &DatabaseName,
) -> Result<MigrationReport, MigrationError> {
    let bootstrap = |source| MigrationError::Statement {
        version: 0,
        name: "bootstrap schema_migrations",
        source,
    };
    client
        .query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
        .execute()
        .await
        .map_err(bootstrap)?;
    client
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {database}.schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime('UTC') DEFAULT now()
) ENGINE = ReplacingMergeTree()
ORDER BY version"
        ))
        .execute()
        .await
        .map_err(bootstrap)?;
    let applied: Vec<u32> = client
        .query(&format!(
            "SELECT DISTINCT version FROM {database}.schema_migrations ORDER BY version"
        ))
        .fetch_all::<AppliedRow>()
        .await
        .map_err(bootstrap)?
        .into_iter()
        .map(|row| row.version)
        .collect();

    let mut report = MigrationReport {
        server_version: format!("{}.{}", server.major, server.minor),
        ..MigrationReport::default()
    };
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            report.already_applied.push(migration.version);
            continue;
        }
        if migration.modern_only && !server.is_modern() {
            report.skipped.push((migration.version, migration.name));
            continue;
        }
        let failed = |source| MigrationError::Statement {
            version: migration.version,
            name: migration.name,
            source,
        };
        for statement in migration.statements {
            if let Some((table, column)) = added_column(statement)
                && has_column(client, database, table, column)
                    .await
                    .map_err(failed)?
            {
                continue;
            }
            client
                .query(&statement.replace("{db}", database.as_str()))
                .execute()
                .await
                .map_err(failed)?;
        }
        client
            .query(&format!(
                "INSERT INTO {database}.schema_migrations (version, name) VALUES (?, ?)"
            ))
            .bind(migration.version)
            .bind(migration.name)
            .execute()
            .await
            .map_err(failed)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            database = database.as_str(),
            "Applied ClickHouse migration"
        );
        report.applied.push((migration.version, migration.name));
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versions_strictly_increase() {
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version);
        }
    }

    #[test]
    fn layout_changes_only_whitespace_outside_quotes() {
        let create = "CREATE TABLE db.t ( a String,  b AggregateFunction(sum, UInt64), c String DEFAULT 'x  FROM y') ENGINE = MergeTree() PARTITION BY toYYYYMM(b) ORDER BY (a, b) SETTINGS index_granularity = 8192";
        assert_eq!(
            layout(create),
            "CREATE TABLE db.t (
    a String,
    b AggregateFunction(sum, UInt64),
    c String DEFAULT 'x  FROM y'
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(b)
ORDER BY (a, b)
SETTINGS index_granularity = 8192"
        );
        let view = "CREATE VIEW db.v ( n UInt64) AS SELECT count() AS n FROM (SELECT a FROM db.t  WHERE a IN ('ok', 'resized') ) GROUP BY a UNION ALL SELECT 1";
        assert_eq!(
            layout(view),
            "CREATE VIEW db.v (
    n UInt64
) AS
SELECT count() AS n
FROM (
    SELECT a
    FROM db.t
    WHERE a IN ('ok', 'resized'))
GROUP BY a
UNION ALL
SELECT 1"
        );
        let squeezed = |s: &str| s.split_whitespace().collect::<String>();
        for statement in statements(&"imgpipe".parse().unwrap()) {
            let laid = layout(&statement.2);
            assert_eq!(squeezed(&laid), squeezed(&statement.2));
            assert_eq!(layout(&laid), laid, "layout is stable");
        }
    }

    #[test]
    fn billed_outcomes_are_the_events_outcomes_that_carry_an_image() {
        use schemas::events::outcomes;
        assert_eq!(
            billed_outcomes!(),
            format!("['{}', '{}']", outcomes::OK, outcomes::RESIZED)
        );
        assert_eq!(
            billed_outcomes!(not_modified),
            format!(
                "['{}', '{}', '{}']",
                outcomes::OK,
                outcomes::RESIZED,
                outcomes::NOT_MODIFIED
            )
        );
    }

    #[test]
    fn every_added_column_is_guarded() {
        assert_eq!(
            added_column("ALTER TABLE {db}.usage_raw ADD COLUMN source_host String DEFAULT ''"),
            Some(("usage_raw", "source_host"))
        );
        assert_eq!(
            added_column("ALTER TABLE {db}.t ADD COLUMN a String, ADD COLUMN b String"),
            None,
            "two columns cannot be skipped as one"
        );
        assert_eq!(
            added_column("ALTER TABLE {db}.t MODIFY COLUMN a String"),
            None
        );
        // Every ADD COLUMN of a migration is one the runner can skip when it was applied.
        for migration in MIGRATIONS {
            for statement in migration.statements {
                if statement.contains("ADD COLUMN") {
                    assert!(added_column(statement).is_some(), "{statement}");
                }
            }
        }
    }

    #[test]
    fn statements_name_the_database_and_hold_no_bind_marks() {
        for migration in MIGRATIONS {
            for statement in migration.statements {
                assert!(statement.contains("{db}."), "{}", migration.name);
                // The clickhouse crate treats `?` as a bind placeholder.
                assert!(!statement.contains('?'), "{}", migration.name);
            }
        }
    }
}
