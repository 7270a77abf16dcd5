"""Runs the usage schema on a current ClickHouse engine (chdb, `pip install chdb`) and checks
that the rollups equal a deduplicated recount there too.

    imgpipe migrate --print > /tmp/m.sql            # with IMGPIPE_CLICKHOUSE__DATABASE=usage_chdb
    imgpipe rollup --print 1764547200 1764550800 > /tmp/s.sql
    python3 benches/usage_chdb.py /tmp/m.sql /tmp/s.sql
    python3 benches/usage_chdb.py --storage /tmp/m.sql [ROWS]   # bytes per record, current engine
    imgpipe rollup --print 1000000000 1000000120 > /tmp/w.sql
    python3 benches/usage_chdb.py --timing /tmp/m.sql /tmp/w.sql [ROWS]   # query latency

The project's servers are ClickHouse 18.16 (Debian); this is how the same statements are checked
against a current release without installing one. Exits non-zero on any failure.
"""
import sys

import chdb
from chdb import session

DB = "usage_chdb"


def statements(path, text=None):
    text = open(path).read() if text is None else text
    for chunk in text.split(";\n"):
        sql = "\n".join(l for l in chunk.splitlines() if not l.startswith("-- ")).strip()
        if sql:
            yield sql


def generate(s, rows):
    """Inserts the rows benches/usage_scale.sh generates (UUIDv7 request ids, 1,000 skewed
    tenants, two records for most requests, 10,000 rows per second of event time from
    2025-12-01) into usage_raw, so every materialized view fires."""
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


def session_with_schema(migrations):
    s = session.Session()
    print("engine:", s.query("SELECT version()", "TSV").bytes().decode().strip())
    s.query(f"CREATE DATABASE IF NOT EXISTS {DB}")
    for sql in statements(migrations):
        s.query(sql)
    return s


def storage(migrations, rows):
    """Bytes per usage record of the schema on a current engine, for usage_scale's rows, after
    the parts are merged."""
    s = session_with_schema(migrations)
    generate(s, rows)
    s.query(f"OPTIMIZE TABLE {DB}.usage_raw FINAL")
    print(s.query(f"""SELECT table, sum(rows), round(sum(bytes_on_disk) / sum(rows), 1)
        FROM system.parts WHERE database = '{DB}' AND table = 'usage_raw' AND active
        GROUP BY table""", "TSV").bytes().decode().strip(), "(table, rows, bytes per record)")


START = 1764547200  # 2025-12-01T00:00:00Z, as in usage_scale.sh and generate()
RATE = 10000


def timing(migrations, settle_template, rows, runs=3):
    """Query latency of the analysts' shapes and of `GET /v1/usage` on a current engine, for
    `rows` of usage_scale's rows: settled in 2-minute windows (the aggregator's default) up to 3
    minutes before the data's end, the rest left as the live tail, as usage_scale.sh does on
    18.16. `settle_template` is `imgpipe rollup --print 1000000000 1000000120`; its two
    numbers are replaced by each window's bounds. Prints the median of `runs` per shape."""
    import subprocess
    import time
    s = session_with_schema(migrations)
    t0 = time.time()
    generate(s, rows)
    print(f"generated {rows} numbers in {time.time() - t0:.0f} s")
    q = lambda sql: s.query(sql, "TSV").bytes().decode().strip()
    template = open(settle_template).read()
    end = int(q(f"SELECT toUInt32(max(event_time)) FROM {DB}.usage_raw"))
    t0 = time.time()
    lo, limit = START, (end - 180) // 60 * 60
    while lo < limit:
        hi = min(lo + 120, limit)
        for sql in statements(None, template.replace("1000000000", str(lo)).replace("1000000120", str(hi))):
            s.query(sql)
        lo = hi
    print(f"settled until {q(f'SELECT max(bucket) FROM {DB}.usage_rollup WHERE granularity = 0')}"
          f" in {time.time() - t0:.0f} s")
    last_hour = end // 3600 * 3600
    day = end // 86400 * 86400
    shapes = [
        ("day totals per tenant", f"SELECT tenant_id, sum(requests) AS r, sum(bytes_in), sum(bytes_out), sum(pixels_out), sum(cpu_time_us) / 1e6 FROM {DB}.usage_day WHERE day = toDateTime({day}, 'UTC') GROUP BY tenant_id ORDER BY r DESC"),
        ("top tenants this hour", f"SELECT tenant_id, sum(requests) AS r, sum(cpu_time_us) / 1e6 FROM {DB}.usage_minute WHERE minute >= toDateTime({last_hour}, 'UTC') GROUP BY tenant_id ORDER BY r DESC LIMIT 10"),
        ("one tenant's month (tenant-1)", f"SELECT tenant_id, sum(requests), sum(bytes_in), sum(bytes_out) FROM {DB}.usage_day WHERE tenant_id = 'tenant-1' AND day >= toDateTime({START}, 'UTC') AND day < toDateTime({START + 31 * 86400}, 'UTC') GROUP BY tenant_id"),
        ("p99 per tenant this hour and the last", f"SELECT tenant_id, quantilesTDigestMerge(0.5, 0.9, 0.99)(latency_us_digest)[3] / 1000 AS p99_ms, sum(requests) AS requests FROM {DB}.usage_hour WHERE hour >= toDateTime({last_hour - 3600}, 'UTC') AND outcome = 'ok' GROUP BY tenant_id ORDER BY p99_ms DESC"),
        ("duplicate deliveries last 5 minutes", f"SELECT count() - uniqExact(kafka_partition, kafka_offset) FROM {DB}.usage_raw WHERE event_time >= toDateTime({end - 300}, 'UTC')"),
    ]
    here = __file__.rsplit("/", 1)[0]
    for tenant in ("tenant-1", "tenant-900"):
        for g, frm, to in (("minute", last_hour, last_hour + 3600),
                           ("hour", START, START + 31 * 86400),
                           ("day", START, START + 365 * 86400)):
            sql = subprocess.run(["python3", f"{here}/usage_scale_query.py", DB, tenant, g,
                                  str(frm), str(to), "''", "''"],
                                 check=True, capture_output=True, text=True).stdout
            shapes.append((f"/v1/usage {tenant} {g}", sql))
    print(f"| query shape ({rows} numbers, {int(q(f'SELECT count() FROM {DB}.usage_raw'))} rows) | median of {runs} |")
    print("|---|---|")
    for label, sql in shapes:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            s.query(sql, "Null")
            times.append((time.perf_counter() - t) * 1000)
        print(f"| {label} | {sorted(times)[len(times) // 2]:.0f} ms |")


def main():
    if sys.argv[1] == "--storage":
        storage(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 4000000)
        return
    if sys.argv[1] == "--timing":
        timing(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 20000000)
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
