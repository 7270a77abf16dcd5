"""Runs the usage schema on a current ClickHouse engine (chdb, `pip install chdb`) and checks
that the rollups equal a deduplicated recount there too.

    imgpipe migrate --print > /tmp/m.sql            # with IMGPIPE_CLICKHOUSE__DATABASE=usage_chdb
    imgpipe rollup --print 1764547200 1764550800 > /tmp/s.sql
    python3 benches/usage_chdb.py /tmp/m.sql /tmp/s.sql
    python3 benches/usage_chdb.py --storage /tmp/m.sql [ROWS]   # bytes per record, current engine

The project's servers are ClickHouse 18.16 (Debian); this is how the same statements are checked
against a current release without installing one. Exits non-zero on any failure.
"""
import sys

import chdb
from chdb import session

DB = "usage_chdb"


def statements(path):
    text = open(path).read()
    for chunk in text.split(";\n"):
        sql = "\n".join(l for l in chunk.splitlines() if not l.startswith("-- ")).strip()
        if sql:
            yield sql


def storage(migrations, rows):
    """Bytes per usage record of the schema on a current engine, for the rows
    benches/usage_scale.sh generates (UUIDv7 request ids, 1,000 skewed tenants, two records
    for most requests), after the parts are merged."""
    s = session.Session()
    print("engine:", s.query("SELECT version()", "TSV").bytes().decode().strip())
    s.query(f"CREATE DATABASE IF NOT EXISTS {DB}")
    for sql in statements(migrations):
        s.query(sql)
    s.query(f"""INSERT INTO {DB}.usage_raw (kafka_partition, kafka_offset, request_id,
        request_id_text, tenant_id, key_id, event_time, event_ms, outcome, status, bytes_in,
        bytes_out, pixels_in, pixels_out, cpu_time_us, input_format, output_format, latency_us,
        source)
    SELECT toInt32(tenant % 6), toInt64(n),
        toUUID(concat(substring(idh, 1, 8), '-', substring(idh, 9, 4), '-7', substring(r, 1, 3), '-',
                      substring('89ab', toUInt32(intDiv(h, 13) % 4) + 1, 1), substring(r, 4, 3), '-',
                      substring(r, 7, 12))), '',
        concat('tenant-', toString(tenant)), concat('key-', toString(tenant), '-', toString(h % 3)),
        toDateTime(1764547200 + intDiv(n, 10000), 'UTC') + api, toUInt16(h % 1000),
        if(api, multiIf(refused, ['bad_parameters', 'rate_limited', 'unauthenticated',
                                  'payload_too_large'][intDiv(h, 10) % 4 + 1],
                        h % 50 = 1, 'client_closed_request', 'ok'), 'resized'),
        toInt32(if(api, multiIf(refused, [400, 429, 401, 413][intDiv(h, 10) % 4 + 1],
                                h % 50 = 1, 499, 200), 200)),
        toInt64(20000 + h % 400000), toInt64(if(refused OR (api AND h % 50 = 1), 0, 3000 + h % 60000)),
        toInt64(if(refused OR api, 0, 1000000 + h % 3000000)), toInt64(if(refused OR api, 0, 262144)),
        toInt64(if(refused OR api, 0, 5000 + h % 20000)),
        ['jpeg', 'png', 'webp', 'gif', 'avif'][intDiv(h, 7) % 5 + 1],
        if(refused OR (api AND h % 50 = 1), '', ['jpeg', 'webp', 'png', 'avif', 'gif'][intDiv(h, 11) % 5 + 1]),
        toInt64(2000 + h % 300000), if(api, 'API', 'RESIZER')
    FROM (SELECT number AS n, intDiv(n, 2) AS k, n % 2 AS api, intHash64(k) AS h,
                 h % 10 = 0 AS refused,
                 hex(toUInt64((1764547200 + intDiv(k * 2, 10000)) * 1000 + h % 1000)) AS idh,
                 hex(MD5(toString(k))) AS r,
                 toUInt32(pow(1000, (intHash64(k + 7) % 1000000) / 1000000.0)) AS tenant
          FROM numbers({rows}))
    WHERE api OR NOT refused""")
    s.query(f"OPTIMIZE TABLE {DB}.usage_raw FINAL")
    print(s.query(f"""SELECT table, sum(rows), round(sum(bytes_on_disk) / sum(rows), 1)
        FROM system.parts WHERE database = '{DB}' AND table = 'usage_raw' AND active
        GROUP BY table""", "TSV").bytes().decode().strip(), "(table, rows, bytes per record)")


def main():
    if sys.argv[1] == "--storage":
        storage(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 4000000)
        return
    migrations, settle = sys.argv[1], sys.argv[2]
    s = session.Session()
    print("engine:", s.query("SELECT version()", "TSV").bytes().decode().strip())
    s.query(f"CREATE DATABASE IF NOT EXISTS {DB}")
    for sql in statements(migrations):
        s.query(sql)
    # Two records for most requests (resizer, then api up to 8 s later), api-only refusals,
    # and every request of the first 500 delivered twice (a replayed batch).
    insert = f"""INSERT INTO {DB}.usage_raw (kafka_partition, kafka_offset, request_id,
        request_id_text, tenant_id, key_id, event_time, event_ms, outcome, status, bytes_in,
        bytes_out, pixels_in, pixels_out, cpu_time_us, input_format, output_format, latency_us,
        source)
    SELECT toInt32(k % 3), toInt64(n), toUUID(UUIDNumToString(MD5(concat('r', toString(k))))), '',
        concat('t', toString(k % 7)), 'k',
        toDateTime(1764547200 + intDiv(k, 2) + api * (k % 9), 'UTC'), toUInt16(k % 1000),
        if(api, if(k % 10 = 0, 'bad_parameters', 'ok'), 'resized'), 200, toInt64(k % 1000),
        toInt64(k % 100), toInt64(if(api, 0, k)), 0, toInt64(if(api, 0, 17)), 'jpeg',
        ['webp', 'png'][k % 2 + 1], toInt64(k % 77), if(api, 'API', 'RESIZER')
    FROM (SELECT number AS n, intDiv(number, 2) AS k, number % 2 AS api FROM numbers(COUNT))
    WHERE api OR k % 10 != 0"""
    s.query(insert.replace("COUNT", "14000"))
    s.query(insert.replace("COUNT", "1000"))
    for sql in statements(settle):
        s.query(sql)
    q = lambda sql: s.query(sql, "TSV").bytes().decode().strip()
    # Every delivered record: usage_raw keeps them all (a plain MergeTree since migration 12).
    records = f"""(SELECT tenant_id, request_id, event_time, bytes_in, pixels_in, latency_us,
        outcome, source = 'API' AS from_api FROM {DB}.usage_raw)"""
    mark = q(f"SELECT toUInt32(max(bucket)) FROM {DB}.usage_rollup WHERE granularity = 0")
    rollup = q(f"""SELECT sumMerge(requests), sumMerge(bytes_in), sumMerge(pixels_in)
        FROM {DB}.usage_rollup WHERE granularity = 1""")
    recount = q(f"""SELECT count(), sum(b), sum(p) FROM (
        SELECT tenant_id, request_id, argMax(event_time, from_api) AS t, max(bytes_in) AS b,
               max(pixels_in) AS p
        FROM {records}
        GROUP BY tenant_id, request_id HAVING t <= toDateTime({mark}, 'UTC'))""")
    views = [q(f"SELECT sum(requests), sum(bytes_in), sum(pixels_in) FROM {DB}.usage_{v}")
             for v in ("minute", "hour", "day")]
    everything = q(f"""SELECT count(), sum(b), sum(p) FROM (
        SELECT tenant_id, request_id, max(bytes_in) AS b, max(pixels_in) AS p
        FROM {records} GROUP BY tenant_id, request_id)""")
    offsets = q(f"SELECT kafka_partition, maxMerge(max_offset) FROM {DB}.usage_offsets GROUP BY 1 ORDER BY 1")
    raw = q(f"SELECT kafka_partition, max(kafka_offset) FROM {DB}.usage_raw GROUP BY 1 ORDER BY 1")
    kept = q(f"SELECT count() FROM {DB}.usage_raw")
    # Latency percentiles of the ok requests: digest (hour rows, settled + tail) vs exact.
    digest = q(f"""SELECT arrayMap(x -> round(x), quantilesTDigestMerge(0.5, 0.9, 0.99)(latency_us_digest))
        FROM {DB}.usage_hour WHERE outcome = 'ok'""")
    exact = q(f"""SELECT quantilesExact(0.5, 0.9, 0.99)(l) FROM (
        SELECT tenant_id, request_id, argMax(event_time, from_api) AS t,
               argMax(outcome, from_api) AS o, argMax(latency_us, from_api) AS l
        FROM {records} GROUP BY tenant_id, request_id HAVING o = 'ok')""")
    delivered = sum(1 for count in (14000, 1000) for n in range(count)
                    if n % 2 == 1 or (n // 2) % 10 != 0)
    print("usage_raw rows:", kept, "of", delivered, "delivered")
    print("settled until", mark, "| rollup", rollup, "| recount", recount, "| views", views,
          "| all", everything, "| p50/p90/p99 digest", digest, "exact", exact)
    ok = (rollup == recount and all(v == everything for v in views) and offsets == raw
          and kept == str(delivered))
    print("OK: rollups = recount, views = recount, offsets = raw" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
