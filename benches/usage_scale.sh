#!/usr/bin/env bash
# Usage at scale: generates realistic usage rows (10,000 rows/s of event time, 1,000 tenants
# with a skewed mix, UUIDv7 request ids as the api makes them, two records for most requests: the resizer's
# and the api's) into a bench database with ClickHouse's own generators, inserted into
# `usage_raw` as the aggregator inserts (so every materialized view fires), then settles the
# rollups with `imgpipe rollup`, and measures at each size: every analyst query of
# docs/analysts.md and every `GET /v1/usage` shape, before (the views and tenant query of
# schema version 6, which deduplicate raw rows at query time) and after (rollups + live tail);
# latency and memory from `system.query_log`; bytes per row from `system.parts`; the resume
# point lookup.
#
#   benches/usage_scale.sh                      # sizes 9M 18M 36M rows
#   SIZES="36000000 108000000" benches/usage_scale.sh
#   BEFORE=1 benches/usage_scale.sh             # also the query-time-dedup "before" shapes
#
# Environment: SIZES (cumulative row counts), IMGPIPE (the binary; default target/debug/imgpipe
# under CARGO_TARGET_DIR or ./target), BENCH_DB (default imgpipe_bench_usage, dropped at the
# end unless KEEP=1), CH (clickhouse-client command), RUNS (timed runs per query, default 3),
# BEFORE (1: also time schema version 6's shapes; slow, and they fail at the memory cap from
# about 10 M rows on), MERGE_WAIT (seconds to wait for the bulk load's merges before timing,
# default 600).
set -euo pipefail

SIZES=${SIZES:-"9000000 18000000 36000000"}
BENCH_DB=${BENCH_DB:-imgpipe_bench_usage}
RUNS=${RUNS:-3}
BEFORE=${BEFORE:-0}
CH=${CH:-clickhouse-client}
IMGPIPE=${IMGPIPE:-${CARGO_TARGET_DIR:-target}/debug/imgpipe}
RATE=10000          # rows per second of event time (the article's 10,000 req/s)
START=1764547200    # 2025-12-01T00:00:00Z
CHUNK=4000000       # rows per generating INSERT (progress is printed per chunk)

ch() { $CH --database "$BENCH_DB" "$@"; }
export IMGPIPE_CLICKHOUSE__DATABASE=$BENCH_DB

echo "== usage_scale: ClickHouse $($CH -q 'SELECT version()'), $(nproc) cores, sizes: $SIZES"
$CH -q "DROP DATABASE IF EXISTS $BENCH_DB"
"$IMGPIPE" migrate >/dev/null
# Schema version 6's views (query-time dedup of every raw row), kept here to measure "before".
ch --multiquery <<'SQL'
CREATE VIEW before_by_request AS
SELECT tenant_id, request_id, any(key_id) AS key_id, argMax(event_time, from_api) AS event_time,
       argMax(outcome, from_api) AS outcome, argMax(status, from_api) AS status,
       max(bytes_in) AS bytes_in, max(bytes_out) AS bytes_out, max(pixels_in) AS pixels_in,
       max(pixels_out) AS pixels_out, max(cpu_time_us) AS cpu_time_us,
       max(output_format) AS output_format, argMax(latency_us, from_api) AS latency_us,
       count() - uniqExact(from_api) + 1 AS deliveries
FROM (SELECT tenant_id, request_id, key_id, event_time, outcome, status, bytes_in, bytes_out,
             pixels_in, pixels_out, cpu_time_us, output_format, latency_us,
             source = 'API' AS from_api FROM usage_raw)
GROUP BY tenant_id, request_id;
CREATE VIEW before_minute AS
SELECT tenant_id, toStartOfMinute(event_time) AS minute, outcome, output_format AS format,
       count() AS requests, sum(bytes_in) AS bytes_in, sum(bytes_out) AS bytes_out,
       sum(pixels_out) AS pixels_out, sum(cpu_time_us) AS cpu_time_us
FROM before_by_request GROUP BY tenant_id, minute, outcome, format;
CREATE VIEW before_day AS
SELECT tenant_id, toStartOfDay(event_time) AS day, outcome, output_format AS format,
       count() AS requests, sum(bytes_in) AS bytes_in, sum(bytes_out) AS bytes_out,
       sum(pixels_out) AS pixels_out, sum(cpu_time_us) AS cpu_time_us
FROM before_by_request GROUP BY tenant_id, day, outcome, format;
SQL

generate() { # first count
    ch --query "
INSERT INTO usage_raw (kafka_partition, kafka_offset, request_id, request_id_text, tenant_id,
    key_id, event_time, event_ms, outcome, status, bytes_in, bytes_out, pixels_in, pixels_out,
    cpu_time_us, input_format, output_format, latency_us, source)
SELECT
    toInt32(tenant % 6), toInt64(n),
    -- UUIDv7, as the api makes them: 48 bits of the request's milliseconds, then random bits.
    toUUID(concat(substring(idh, 1, 8), '-', substring(idh, 9, 4), '-7', substring(r, 1, 3), '-',
                  substring('89ab', toUInt32(intDiv(h, 13) % 4) + 1, 1), substring(r, 4, 3), '-',
                  substring(r, 7, 12))), '',
    concat('tenant-', toString(tenant)), concat('key-', toString(tenant), '-', toString(h % 3)),
    toDateTime($START + intDiv(n, $RATE), 'UTC') + api,
    toUInt16(h % 1000),
    if(api, multiIf(refused, ['bad_parameters', 'rate_limited', 'unauthenticated', 'payload_too_large'][intDiv(h, 10) % 4 + 1],
                    h % 50 = 1, 'client_closed_request', 'ok'), 'resized'),
    toInt32(if(api, multiIf(refused, [400, 429, 401, 413][intDiv(h, 10) % 4 + 1], h % 50 = 1, 499, 200), 200)),
    toInt64(20000 + h % 400000),
    toInt64(if(refused OR (api AND h % 50 = 1), 0, 3000 + h % 60000)),
    toInt64(if(refused OR api, 0, 1000000 + h % 3000000)),
    toInt64(if(refused OR api, 0, 262144)),
    toInt64(if(refused OR api, 0, 5000 + h % 20000)),
    ['jpeg', 'png', 'webp', 'gif', 'avif'][intDiv(h, 7) % 5 + 1],
    if(refused OR (api AND h % 50 = 1), '', ['jpeg', 'webp', 'png', 'avif', 'gif'][intDiv(h, 11) % 5 + 1]),
    toInt64(2000 + h % 300000),
    if(api, 'API', 'RESIZER')
FROM (
    SELECT number + $1 AS n, intDiv(n, 2) AS k, n % 2 AS api, intHash64(k) AS h,
           h % 10 = 0 AS refused,
           hex(toUInt64(($START + intDiv(k * 2, $RATE)) * 1000 + h % 1000)) AS idh,
           hex(MD5(toString(k))) AS r,
           -- log-uniform over 1..1000: tenant 1 sends ~10% of requests, tenant 999 ~0.01%
           toUInt32(pow(1000, (intHash64(k + 7) % 1000000) / 1000000.0)) AS tenant
    FROM system.numbers LIMIT $2
)
WHERE api OR NOT refused"
}

# Runs one query shape RUNS times under a query_id per run; prints the median duration and the
# largest memory of the runs, or the error.
measure() { # label sql
    local label=$1 sql=$2 tag durations=() out
    if [ "$BEFORE" != 1 ] && [[ $label == *", before" ]]; then return; fi
    tag=$(printf '%s' "$label" | tr -c 'a-zA-Z0-9' '_')
    for run in $(seq 1 "$RUNS"); do
        if ! out=$(ch --log_queries=1 --query_id="bench-$tag-$size-$run" --query "$sql" --format Null 2>&1); then
            printf '| %-44s | %10s | %10s | %s |\n' "$label" "failed" "" "$(echo "$out" | grep -o 'Memory limit[^.]*' | head -1)"
            return
        fi
    done
    $CH -q "SYSTEM FLUSH LOGS"
    $CH -q "SELECT quantileExact(0.5)(query_duration_ms), formatReadableSize(max(memory_usage)), max(read_rows)
            FROM system.query_log WHERE type = 2 AND query_id LIKE 'bench-$tag-$size-%' FORMAT TSV" |
        while IFS=$'\t' read -r ms mem rows; do
            printf '| %-44s | %7s ms | %10s | %s rows read |\n' "$label" "$ms" "$mem" "$rows"
        done
}

generated=0
for size in $SIZES; do
    echo
    echo "== size $size rows ($(awk "BEGIN{printf \"%.1f\", $size/$RATE/3600}") h at $RATE rows/s)"
    t0=$(date +%s)
    while [ "$generated" -lt "$size" ]; do
        count=$((size - generated < CHUNK ? size - generated : CHUNK))
        generate "$generated" "$count"
        generated=$((generated + count))
        el=$(($(date +%s) - t0))
        echo "   generated $generated numbers ($((generated / (el > 0 ? el : 1))) /s overall this size)"
    done
    rows=$(ch -q "SELECT count() FROM usage_raw")
    echo "   usage_raw rows: $rows; settling rollups…"
    t1=$(date +%s)
    IMGPIPE_AGGREGATOR__ROLLUP_LATENESS=0s "$IMGPIPE" rollup | tail -1
    echo "   settle took $(($(date +%s) - t1)) s"
    ch -q "OPTIMIZE TABLE usage_offsets FINAL"

    latest=$(ch -q "SELECT toUInt32(max(event_time)) FROM usage_raw")
    last_hour=$(ch -q "SELECT toUInt32(toStartOfHour(max(event_time))) FROM usage_raw")
    day=$(ch -q "SELECT toUInt32(toStartOfDay(max(event_time))) FROM usage_raw")
    big=tenant-1; small=tenant-900
    echo
    # The bulk load above leaves ClickHouse merging millions of fresh rows for minutes, which
    # live ingest at 10,000 rows/s never does at once: time the queries once those merges are
    # done (at most MERGE_WAIT seconds), as a steady state would.
    waited=0
    while [ "$waited" -lt "${MERGE_WAIT:-600}" ] &&
          [ "$($CH -q "SELECT count() FROM system.merges WHERE database = '$BENCH_DB'")" != 0 ]; do
        sleep 5; waited=$((waited + 5))
    done
    echo "   waited $waited s for the load's merges ($($CH -q "SELECT count() FROM system.merges WHERE database = '$BENCH_DB'") still running)"
    # Others share this machine: the load says how quiet it was while timing.
    echo "   load average before timing: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "| query shape (size $size) | median | memory | |"
    echo "|---|---|---|---|"
    # README: per-tenant totals for one day
    measure "day totals per tenant, before" "SELECT tenant_id, sum(requests) AS r, sum(bytes_in), sum(bytes_out), sum(pixels_out), sum(cpu_time_us) / 1e6 FROM before_day WHERE day = toDateTime($day, 'UTC') GROUP BY tenant_id ORDER BY r DESC SETTINGS enable_optimize_predicate_expression = 1"
    measure "day totals per tenant, after" "SELECT tenant_id, sum(requests) AS r, sum(bytes_in), sum(bytes_out), sum(pixels_out), sum(cpu_time_us) / 1e6 FROM usage_day WHERE day = toDateTime($day, 'UTC') GROUP BY tenant_id ORDER BY r DESC SETTINGS enable_optimize_predicate_expression = 1"
    # README: top tenants this hour
    measure "top tenants this hour, before" "SELECT tenant_id, sum(requests) AS r, sum(cpu_time_us) / 1e6 FROM before_minute WHERE minute >= toDateTime($last_hour, 'UTC') GROUP BY tenant_id ORDER BY r DESC LIMIT 10 SETTINGS enable_optimize_predicate_expression = 1"
    measure "top tenants this hour, after" "SELECT tenant_id, sum(requests) AS r, sum(cpu_time_us) / 1e6 FROM usage_minute WHERE minute >= toDateTime($last_hour, 'UTC') GROUP BY tenant_id ORDER BY r DESC LIMIT 10 SETTINGS enable_optimize_predicate_expression = 1"
    # README: one tenant's month (before: dedup of raw rows, filter inside; after: usage_day)
    measure "one tenant's month ($big), before" "SELECT tenant_id, count(), sum(b_in), sum(b_out) FROM (SELECT tenant_id, request_id, any(bytes_in) AS b_in, any(bytes_out) AS b_out FROM usage_raw WHERE tenant_id = '$big' AND event_time >= toDateTime($START, 'UTC') AND event_time < toDateTime($START + 31 * 86400, 'UTC') GROUP BY tenant_id, request_id) GROUP BY tenant_id"
    measure "one tenant's month ($big), after" "SELECT tenant_id, sum(requests), sum(bytes_in), sum(bytes_out) FROM usage_day WHERE tenant_id = '$big' AND day >= toDateTime($START, 'UTC') AND day < toDateTime($START + 31 * 86400, 'UTC') GROUP BY tenant_id SETTINGS enable_optimize_predicate_expression = 1"
    # README: p99 latency per tenant over the last hour (per request: no rollup can hold it)
    measure "p99 per tenant last hour, before" "SELECT tenant_id, quantile(0.99)(latency_us) / 1000 AS p99, count() FROM before_by_request WHERE event_time >= toDateTime($last_hour, 'UTC') AND outcome = 'ok' GROUP BY tenant_id ORDER BY p99 DESC SETTINGS enable_optimize_predicate_expression = 1"
    measure "p99 per tenant this hour and the last, after" "SELECT tenant_id, quantilesTDigestMerge(0.5, 0.9, 0.99)(latency_us_digest)[3] / 1000 AS p99_ms, sum(requests) AS requests FROM usage_hour WHERE hour >= toDateTime($last_hour - 3600, 'UTC') AND outcome = 'ok' GROUP BY tenant_id ORDER BY p99_ms DESC SETTINGS enable_optimize_predicate_expression = 1"
    # README: duplicate check
    measure "duplicates (whole table), before" "SELECT count() - uniqExact(tenant_id, request_id) FROM usage_raw"
    measure "duplicate deliveries last hour, after" "SELECT count() - uniqExact(kafka_partition, kafka_offset) FROM usage_raw WHERE event_time >= toDateTime($last_hour, 'UTC')"
    measure "duplicate deliveries last 5 minutes, after" "SELECT count() - uniqExact(kafka_partition, kafka_offset) FROM usage_raw WHERE event_time >= toDateTime($latest - 300, 'UTC')"
    # GET /v1/usage: before = schema 6's tenant query; after = the rollup + live tail query
    for tenant in $big $small; do
        for gran in minute:toStartOfMinute:$((last_hour - 0)):$((last_hour + 3600)) hour:toStartOfHour:$START:$((START + 31 * 86400)) day:toStartOfDay:$START:$((START + 366 * 86400 - 86400)); do
            IFS=: read -r g start_of from to <<<"$gran"
            for group in none format outcome; do
                case $group in
                    none) key_before="''"; key_rollup="''"; key_request="''" ;;
                    format) key_before="max(output_format)"; key_rollup=format; key_request=request_format ;;
                    outcome) key_before="argMax(outcome, source = 'API')"; key_rollup=outcome; key_request=request_outcome ;;
                esac
                measure "/v1/usage $tenant $g by $group, before" "SELECT toUInt32(bucket) AS start, group_key, count(), sum(b_in), sum(b_out), sum(p_in), sum(p_out), sum(c) FROM (SELECT request_id, $start_of(argMax(event_time, source = 'API')) AS bucket, $key_before AS group_key, max(bytes_in) AS b_in, max(bytes_out) AS b_out, max(pixels_in) AS p_in, max(pixels_out) AS p_out, max(cpu_time_us) AS c FROM usage_raw WHERE tenant_id = '$tenant' AND event_time >= toDateTime($from) AND event_time < toDateTime($to) GROUP BY request_id) GROUP BY start, group_key ORDER BY start, group_key"
                measure "/v1/usage $tenant $g by $group, after" "$(python3 "$(dirname "$0")/usage_scale_query.py" "$BENCH_DB" "$tenant" "$g" "$from" "$to" "$key_rollup" "$key_request")"
            done
        done
    done
    measure "resume point, before" "SELECT kafka_partition, max(kafka_offset) FROM (SELECT kafka_partition, kafka_offset FROM usage_raw WHERE kafka_partition IN (0,1,2,3,4,5) UNION ALL SELECT kafka_partition, kafka_offset FROM usage_rejects WHERE kafka_partition IN (0,1,2,3,4,5)) GROUP BY kafka_partition"
    measure "resume point, after" "SELECT kafka_partition, maxMerge(max_offset) FROM usage_offsets WHERE kafka_partition IN (0,1,2,3,4,5) GROUP BY kafka_partition"
    echo "   load average after timing: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| table | rows | bytes on disk | bytes per usage row | bytes per own row |"
    echo "|---|---|---|---|---|"
    ch -q "SELECT table, sum(rows), formatReadableSize(sum(bytes_on_disk)), round(sum(bytes_on_disk) / $rows, 1),
                  round(sum(bytes_on_disk) / sum(rows), 1)
           FROM system.parts WHERE database = '$BENCH_DB' AND active GROUP BY table ORDER BY table FORMAT TSV" |
        while IFS=$'\t' read -r table r bytes per own; do echo "| $table | $r | $bytes | $per | $own |"; done
    ch -q "SELECT formatReadableSize(sum(bytes_on_disk)), round(sum(bytes_on_disk) / $rows, 1)
           FROM system.parts WHERE database = '$BENCH_DB' AND active FORMAT TSV" |
        while IFS=$'\t' read -r bytes per; do echo "| all tables | | $bytes | **$per** | |"; done
    echo "   usage_recent holds $(ch -q "SELECT toUInt32(max(event_time)) - toUInt32(min(event_time)) FROM usage_recent") s of event time (the unsettled tail + up to two 5-minute partitions)"
done

if [ "${KEEP:-0}" != 1 ]; then
    $CH -q "DROP DATABASE IF EXISTS $BENCH_DB"
fi
