"""Runs the usage schema on a current ClickHouse engine (chdb, `pip install chdb`) and checks
that the rollups equal a deduplicated recount there too.

    imgpipe migrate --print > /tmp/m.sql            # with IMGPIPE_CLICKHOUSE__DATABASE=usage_chdb
    imgpipe rollup --print 1764547200 1764550800 > /tmp/s.sql
    python3 benches/usage_chdb.py /tmp/m.sql /tmp/s.sql

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


def main():
    migrations, settle = sys.argv[1], sys.argv[2]
    s = session.Session()
    print("engine:", s.query("SELECT version()", "TSV").bytes().decode().strip())
    s.query(f"CREATE DATABASE IF NOT EXISTS {DB}")
    for sql in statements(migrations):
        s.query(sql)
    # Two records for most requests (resizer, then api up to 8 s later), api-only refusals,
    # and every request of the first 500 delivered twice (a replayed batch).
    insert = f"""INSERT INTO {DB}.usage_raw (kafka_partition, kafka_offset, request_id, tenant_id,
        key_id, event_time, event_time_ms, outcome, status, bytes_in, bytes_out, pixels_in,
        pixels_out, cpu_time_us, input_format, output_format, latency_us, source)
    SELECT toInt32(k % 3), toInt64(n), concat('r', toString(k)), concat('t', toString(k % 7)), 'k',
        toDateTime(1764547200 + intDiv(k, 2) + api * (k % 9), 'UTC'), 0,
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
    mark = q(f"SELECT toUInt32(max(bucket)) FROM {DB}.usage_rollup WHERE granularity = 0")
    rollup = q(f"""SELECT sumMerge(requests), sumMerge(bytes_in), sumMerge(pixels_in)
        FROM {DB}.usage_rollup WHERE granularity = 1""")
    recount = q(f"""SELECT count(), sum(b), sum(p) FROM (
        SELECT tenant_id, request_id, argMax(event_time, from_api) AS t, max(bytes_in) AS b,
               max(pixels_in) AS p
        FROM {DB}.usage_recent
        GROUP BY tenant_id, request_id HAVING t <= toDateTime({mark}, 'UTC'))""")
    views = [q(f"SELECT sum(requests), sum(bytes_in), sum(pixels_in) FROM {DB}.usage_{v}")
             for v in ("minute", "hour", "day")]
    everything = q(f"""SELECT count(), sum(b), sum(p) FROM (
        SELECT tenant_id, request_id, max(bytes_in) AS b, max(pixels_in) AS p
        FROM {DB}.usage_recent GROUP BY tenant_id, request_id)""")
    offsets = q(f"SELECT kafka_partition, maxMerge(max_offset) FROM {DB}.usage_offsets GROUP BY 1 ORDER BY 1")
    raw = q(f"SELECT kafka_partition, max(kafka_offset) FROM {DB}.usage_recent GROUP BY 1 ORDER BY 1")
    # usage_raw's ReplacingMergeTree key has no `source`: a request's two records in the same
    # second collapse into one (at insert on current servers, in merges on 18.16), which is why
    # the reference here and the rollups' source is usage_recent.
    collapsed = q(f"SELECT (SELECT count() FROM {DB}.usage_recent) - (SELECT count() FROM {DB}.usage_raw)")
    print("records collapsed by usage_raw's key:", collapsed)
    print("settled until", mark, "| rollup", rollup, "| recount", recount, "| views", views,
          "| all", everything)
    ok = rollup == recount and all(v == everything for v in views) and offsets == raw
    print("OK: rollups = recount, views = recount, offsets = raw" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
