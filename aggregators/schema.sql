-- The ClickHouse schema in one place: every table, view and materialized view that the
-- migrations (aggregators/src/migrations.rs) leave in a fresh database, as SHOW CREATE prints
-- them, the database named imgpipe, tables then views then materialized views, each by name,
-- one clause a line. Generated: do not edit. After changing a migration, regenerate it against
-- the local stack (compose/local/stack up) with
--   UPDATE_SCHEMA_SNAPSHOT=1 cargo test --features stack-tests --test stack schema_sql
-- and commit the diff; the same test, without the variable, fails while the two differ.
-- Server: ClickHouse 18.16. Migrations for current servers only, not applied here:
--   5: expire usage_rejects after 90 days
--   9: usage_offsets_from_recent reads usage_recent (current servers cascade that way)
--   11: usage_recent_from_raw re-created on the re-keyed usage_raw (current servers)
--   13: usage_offsets_from_recent reads usage_recent again (current servers, after 12)
--   14: usage_raw compressed with ZSTD (current servers)
--   17: usage_raw.source_host compressed with ZSTD; materialized views in current servers' form (after 16)

CREATE TABLE imgpipe.admin_audit (
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
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(at)
ORDER BY (tenant_id, at, audit_id)
SETTINGS index_granularity = 8192;

CREATE TABLE imgpipe.schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree()
ORDER BY version
SETTINGS index_granularity = 8192;

CREATE TABLE imgpipe.usage_offsets (
    kafka_partition Int32,
    max_offset AggregateFunction(max, Int64),
    max_event_time AggregateFunction(max, DateTime('UTC'))
)
ENGINE = AggregatingMergeTree()
ORDER BY kafka_partition
SETTINGS index_granularity = 8192;

CREATE TABLE imgpipe.usage_raw (
    kafka_partition Int32,
    kafka_offset Int64,
    request_id UUID,
    request_id_text String,
    tenant_id String,
    key_id String,
    event_time DateTime('UTC'),
    event_ms UInt16,
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
    source_host String DEFAULT '',
    inserted_at DateTime('UTC') DEFAULT now(),
    event_time_ms Int64 ALIAS (toInt64(toUInt32(event_time)) * 1000) + event_ms
)
ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(event_time)
ORDER BY (tenant_id, toStartOfFifteenMinutes(event_time), request_id, source)
SETTINGS index_granularity = 8192;

CREATE TABLE imgpipe.usage_recent (
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
    kafka_offset Int64,
    source_host String DEFAULT ''
)
ENGINE = MergeTree()
PARTITION BY intDiv(toUInt32(event_time), 300)
ORDER BY (tenant_id, event_time, request_id)
SETTINGS index_granularity = 8192;

CREATE TABLE imgpipe.usage_rejects (
    kafka_partition Int32,
    kafka_offset Int64,
    error String,
    payload_size Int64,
    rejected_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree()
ORDER BY (kafka_partition, kafka_offset)
SETTINGS index_granularity = 8192;

CREATE TABLE imgpipe.usage_rollup (
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
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(bucket)
ORDER BY (granularity, tenant_id, bucket, outcome, format, source_host)
SETTINGS index_granularity = 8192;

CREATE VIEW imgpipe.usage_by_request (
    tenant_id String,
    request_id UUID,
    request_id_text String,
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
    source_host String,
    deliveries Int64
) AS
SELECT tenant_id, request_id, any(request_id_text) AS request_id_text, any(key_id) AS key_id, argMax(event_time, from_api) AS event_time, argMax(event_time_ms, from_api) AS event_time_ms, argMax(outcome, from_api) AS outcome, argMax(status, from_api) AS status, max(bytes_in) AS bytes_in, max(bytes_out) AS bytes_out, max(pixels_in) AS pixels_in, max(pixels_out) AS pixels_out, max(cpu_time_us) AS cpu_time_us, max(input_format) AS input_format, max(output_format) AS output_format, argMax(latency_us, from_api) AS latency_us, argMax(source, from_api) AS source, max(source_host) AS source_host, (count() - uniqExact(from_api)) + 1 AS deliveries
FROM (
    SELECT tenant_id, request_id, request_id_text, key_id, event_time, event_time_ms, outcome, status, bytes_in, bytes_out, pixels_in, pixels_out, cpu_time_us, input_format, output_format, latency_us, source, source_host, source = 'API' AS from_api
    FROM imgpipe.usage_raw)
GROUP BY tenant_id, request_id;

CREATE VIEW imgpipe.usage_day (
    tenant_id String,
    day DateTime('UTC'),
    outcome String,
    format String,
    source_host String,
    requests UInt64,
    refused UInt64,
    bytes_in Int64,
    bytes_out Int64,
    pixels_in Int64,
    pixels_out Int64,
    cpu_time_us Int64,
    latency_us_sum Int64,
    latency_us_max Int64,
    latency_us_digest AggregateFunction(quantilesTDigest(0.5, 0.9, 0.99), Int64)
) AS
SELECT tenant_id, bucket AS day, outcome, format, source_host, if(has(['ok', 'resized', 'not_modified'], outcome), finalizeAggregation(requests_state), toUInt64(0)) AS requests, if(has(['ok', 'resized', 'not_modified'], outcome), toUInt64(0), finalizeAggregation(requests_state)) AS refused, finalizeAggregation(bytes_in) AS bytes_in, finalizeAggregation(bytes_out) AS bytes_out, finalizeAggregation(pixels_in) AS pixels_in, finalizeAggregation(pixels_out) AS pixels_out, finalizeAggregation(cpu_time_us) AS cpu_time_us, finalizeAggregation(latency_us_sum) AS latency_us_sum, finalizeAggregation(latency_us_max) AS latency_us_max, latency_us_digest
FROM (
    SELECT tenant_id, bucket, outcome, format, source_host, requests AS requests_state, bytes_in, bytes_out, pixels_in, pixels_out, cpu_time_us, latency_us_sum, latency_us_max, latency_us_digest
    FROM imgpipe.usage_rollup
    WHERE granularity = 3)
UNION ALL
SELECT tenant_id, toStartOfDay(request_time) AS day, request_outcome AS outcome, request_format AS format, request_source_host AS source_host, countIf(has(['ok', 'resized', 'not_modified'], request_outcome)) AS requests, countIf(NOT has(['ok', 'resized', 'not_modified'], request_outcome)) AS refused, sum(request_bytes_in) AS bytes_in, sum(request_bytes_out) AS bytes_out, sum(request_pixels_in) AS pixels_in, sum(request_pixels_out) AS pixels_out, sum(request_cpu_time_us) AS cpu_time_us, sum(request_latency_us) AS latency_us_sum, max(request_latency_us) AS latency_us_max, quantilesTDigestStateIf(0.5, 0.9, 0.99)(request_latency_us, 1) AS latency_us_digest
FROM (
    SELECT tenant_id, request_id, argMax(event_time, from_api) AS request_time, argMax(outcome, from_api) AS request_outcome, max(output_format) AS request_format, max(bytes_in) AS request_bytes_in, max(bytes_out) AS request_bytes_out, max(pixels_in) AS request_pixels_in, max(pixels_out) AS request_pixels_out, max(cpu_time_us) AS request_cpu_time_us, argMax(latency_us, from_api) AS request_latency_us, max(source_host) AS request_source_host
    FROM imgpipe.usage_recent
    WHERE event_time >= toDateTime(greatest(toUInt32((
                    SELECT max(bucket)
                    FROM imgpipe.usage_rollup
                    WHERE granularity = 0)), 59) - 59, 'UTC')
    GROUP BY tenant_id, request_id
    HAVING request_time >= (
        SELECT max(bucket) + 1
        FROM imgpipe.usage_rollup
        WHERE granularity = 0))
GROUP BY tenant_id, day, outcome, format, source_host;

CREATE VIEW imgpipe.usage_hour (
    tenant_id String,
    hour DateTime('UTC'),
    outcome String,
    format String,
    source_host String,
    requests UInt64,
    refused UInt64,
    bytes_in Int64,
    bytes_out Int64,
    pixels_in Int64,
    pixels_out Int64,
    cpu_time_us Int64,
    latency_us_sum Int64,
    latency_us_max Int64,
    latency_us_digest AggregateFunction(quantilesTDigest(0.5, 0.9, 0.99), Int64)
) AS
SELECT tenant_id, bucket AS hour, outcome, format, source_host, if(has(['ok', 'resized', 'not_modified'], outcome), finalizeAggregation(requests_state), toUInt64(0)) AS requests, if(has(['ok', 'resized', 'not_modified'], outcome), toUInt64(0), finalizeAggregation(requests_state)) AS refused, finalizeAggregation(bytes_in) AS bytes_in, finalizeAggregation(bytes_out) AS bytes_out, finalizeAggregation(pixels_in) AS pixels_in, finalizeAggregation(pixels_out) AS pixels_out, finalizeAggregation(cpu_time_us) AS cpu_time_us, finalizeAggregation(latency_us_sum) AS latency_us_sum, finalizeAggregation(latency_us_max) AS latency_us_max, latency_us_digest
FROM (
    SELECT tenant_id, bucket, outcome, format, source_host, requests AS requests_state, bytes_in, bytes_out, pixels_in, pixels_out, cpu_time_us, latency_us_sum, latency_us_max, latency_us_digest
    FROM imgpipe.usage_rollup
    WHERE granularity = 2)
UNION ALL
SELECT tenant_id, toStartOfHour(request_time) AS hour, request_outcome AS outcome, request_format AS format, request_source_host AS source_host, countIf(has(['ok', 'resized', 'not_modified'], request_outcome)) AS requests, countIf(NOT has(['ok', 'resized', 'not_modified'], request_outcome)) AS refused, sum(request_bytes_in) AS bytes_in, sum(request_bytes_out) AS bytes_out, sum(request_pixels_in) AS pixels_in, sum(request_pixels_out) AS pixels_out, sum(request_cpu_time_us) AS cpu_time_us, sum(request_latency_us) AS latency_us_sum, max(request_latency_us) AS latency_us_max, quantilesTDigestStateIf(0.5, 0.9, 0.99)(request_latency_us, 1) AS latency_us_digest
FROM (
    SELECT tenant_id, request_id, argMax(event_time, from_api) AS request_time, argMax(outcome, from_api) AS request_outcome, max(output_format) AS request_format, max(bytes_in) AS request_bytes_in, max(bytes_out) AS request_bytes_out, max(pixels_in) AS request_pixels_in, max(pixels_out) AS request_pixels_out, max(cpu_time_us) AS request_cpu_time_us, argMax(latency_us, from_api) AS request_latency_us, max(source_host) AS request_source_host
    FROM imgpipe.usage_recent
    WHERE event_time >= toDateTime(greatest(toUInt32((
                    SELECT max(bucket)
                    FROM imgpipe.usage_rollup
                    WHERE granularity = 0)), 59) - 59, 'UTC')
    GROUP BY tenant_id, request_id
    HAVING request_time >= (
        SELECT max(bucket) + 1
        FROM imgpipe.usage_rollup
        WHERE granularity = 0))
GROUP BY tenant_id, hour, outcome, format, source_host;

CREATE VIEW imgpipe.usage_minute (
    tenant_id String,
    minute DateTime('UTC'),
    outcome String,
    format String,
    source_host String,
    requests UInt64,
    refused UInt64,
    bytes_in Int64,
    bytes_out Int64,
    pixels_in Int64,
    pixels_out Int64,
    cpu_time_us Int64,
    latency_us_sum Int64,
    latency_us_max Int64,
    latency_us_digest AggregateFunction(quantilesTDigest(0.5, 0.9, 0.99), Int64)
) AS
SELECT tenant_id, bucket AS minute, outcome, format, source_host, if(has(['ok', 'resized', 'not_modified'], outcome), finalizeAggregation(requests_state), toUInt64(0)) AS requests, if(has(['ok', 'resized', 'not_modified'], outcome), toUInt64(0), finalizeAggregation(requests_state)) AS refused, finalizeAggregation(bytes_in) AS bytes_in, finalizeAggregation(bytes_out) AS bytes_out, finalizeAggregation(pixels_in) AS pixels_in, finalizeAggregation(pixels_out) AS pixels_out, finalizeAggregation(cpu_time_us) AS cpu_time_us, finalizeAggregation(latency_us_sum) AS latency_us_sum, finalizeAggregation(latency_us_max) AS latency_us_max, latency_us_digest
FROM (
    SELECT tenant_id, bucket, outcome, format, source_host, requests AS requests_state, bytes_in, bytes_out, pixels_in, pixels_out, cpu_time_us, latency_us_sum, latency_us_max, latency_us_digest
    FROM imgpipe.usage_rollup
    WHERE granularity = 1)
UNION ALL
SELECT tenant_id, toStartOfMinute(request_time) AS minute, request_outcome AS outcome, request_format AS format, request_source_host AS source_host, countIf(has(['ok', 'resized', 'not_modified'], request_outcome)) AS requests, countIf(NOT has(['ok', 'resized', 'not_modified'], request_outcome)) AS refused, sum(request_bytes_in) AS bytes_in, sum(request_bytes_out) AS bytes_out, sum(request_pixels_in) AS pixels_in, sum(request_pixels_out) AS pixels_out, sum(request_cpu_time_us) AS cpu_time_us, sum(request_latency_us) AS latency_us_sum, max(request_latency_us) AS latency_us_max, quantilesTDigestStateIf(0.5, 0.9, 0.99)(request_latency_us, 0) AS latency_us_digest
FROM (
    SELECT tenant_id, request_id, argMax(event_time, from_api) AS request_time, argMax(outcome, from_api) AS request_outcome, max(output_format) AS request_format, max(bytes_in) AS request_bytes_in, max(bytes_out) AS request_bytes_out, max(pixels_in) AS request_pixels_in, max(pixels_out) AS request_pixels_out, max(cpu_time_us) AS request_cpu_time_us, argMax(latency_us, from_api) AS request_latency_us, max(source_host) AS request_source_host
    FROM imgpipe.usage_recent
    WHERE event_time >= toDateTime(greatest(toUInt32((
                    SELECT max(bucket)
                    FROM imgpipe.usage_rollup
                    WHERE granularity = 0)), 59) - 59, 'UTC')
    GROUP BY tenant_id, request_id
    HAVING request_time >= (
        SELECT max(bucket) + 1
        FROM imgpipe.usage_rollup
        WHERE granularity = 0))
GROUP BY tenant_id, minute, outcome, format, source_host;

CREATE MATERIALIZED VIEW imgpipe.usage_offsets_from_recent TO imgpipe.usage_offsets (
    kafka_partition Int32,
    max_offset AggregateFunction(max, Int64),
    max_event_time AggregateFunction(max, DateTime('UTC'))
) AS
SELECT kafka_partition, maxState(kafka_offset) AS max_offset, maxState(event_time) AS max_event_time
FROM imgpipe.usage_recent_from_raw
GROUP BY kafka_partition;

CREATE MATERIALIZED VIEW imgpipe.usage_offsets_from_rejects TO imgpipe.usage_offsets (
    kafka_partition Int32,
    max_offset AggregateFunction(max, Int64),
    max_event_time AggregateFunction(max, DateTime('UTC'))
) AS
SELECT kafka_partition, maxState(kafka_offset) AS max_offset, maxState(toDateTime(0, 'UTC')) AS max_event_time
FROM imgpipe.usage_rejects
GROUP BY kafka_partition;

CREATE MATERIALIZED VIEW imgpipe.usage_recent_from_raw TO imgpipe.usage_recent (
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
    kafka_offset Int64,
    source_host String
) AS
SELECT tenant_id, request_id, event_time, outcome, output_format, bytes_in, bytes_out, pixels_in, pixels_out, cpu_time_us, latency_us, source = 'API' AS from_api, kafka_partition, kafka_offset, source_host
FROM imgpipe.usage_raw;

