"""Prints the SQL of the tenant usage query (`GET /v1/usage`) for benches/usage_scale.sh.

It mirrors `UsageQuery::buckets` in ingest/src/api/usage/query.rs (the same pieces, the same
statement) with the tenant written in instead of bound, so the shell bench can time it; the
integration test tests/stack/usage_rollups.rs checks the Rust side's answers.
Arguments: database tenant granularity(minute|hour|day) from to rollup_key request_key.
"""
import sys

db, tenant, gran, frm, to, rollup_key, request_key = sys.argv[1:8]
frm, to = int(frm), int(to)
ceil = lambda t, s: -(-t // s) * s
floor = lambda t, s: t // s * s
m1, m2 = ceil(frm, 60), floor(to, 60)
if m1 >= m2:
    m1, m2 = to, to


def coarser(a, b, step, allowed):
    if not allowed:
        return b, b
    c = min(ceil(a, step), b)
    return c, max(floor(b, step), c)


h1, h2 = coarser(m1, m2, 3600, gran != "minute")
d1, d2 = coarser(h1, h2, 86400, gran == "day")
at = lambda t: f"toDateTime({t}, 'UTC')"
mark = f"(SELECT max(bucket) FROM {db}.usage_rollup WHERE granularity = 0)"
live = f"greatest({at(m1)}, {mark} + 1)"
print(f"""SELECT kind, toUInt32(t) AS start, group_key, toUInt64(sum(n)) AS requests,
    sum(b_in) AS bytes_in, sum(b_out) AS bytes_out, sum(p_in) AS pixels_in,
    sum(p_out) AS pixels_out, sum(cpu) AS cpu_time_us
FROM (
    SELECT toUInt8(if(granularity = 0, 0, 1)) AS kind, bucket AS t, {rollup_key} AS group_key,
        finalizeAggregation(requests) AS n, finalizeAggregation(bytes_in) AS b_in,
        finalizeAggregation(bytes_out) AS b_out, finalizeAggregation(pixels_in) AS p_in,
        finalizeAggregation(pixels_out) AS p_out, finalizeAggregation(cpu_time_us) AS cpu
    FROM {db}.usage_rollup
    WHERE (granularity = 0 AND bucket >= {mark})
       OR (tenant_id = '{tenant}' AND (
              (granularity = 1 AND ((bucket >= {at(m1)} AND bucket < {at(h1)}) OR (bucket >= {at(h2)} AND bucket < {at(m2)})))
           OR (granularity = 2 AND ((bucket >= {at(h1)} AND bucket < {at(d1)}) OR (bucket >= {at(d2)} AND bucket < {at(h2)})))
           OR (granularity = 3 AND bucket >= {at(d1)} AND bucket < {at(d2)})))
    UNION ALL
    SELECT toUInt8(if(request_time >= {at(m1)} AND request_time < {at(m2)}, 2, 3)) AS kind,
        toStartOfMinute(request_time) AS t, {request_key} AS group_key, toUInt64(1) AS n,
        request_bytes_in AS b_in, request_bytes_out AS b_out, request_pixels_in AS p_in,
        request_pixels_out AS p_out, request_cpu_time_us AS cpu
    FROM (
        SELECT request_id, argMax(event_time, from_api) AS request_time,
            argMax(outcome, from_api) AS request_outcome, max(output_format) AS request_format,
            max(bytes_in) AS request_bytes_in, max(bytes_out) AS request_bytes_out,
            max(pixels_in) AS request_pixels_in, max(pixels_out) AS request_pixels_out,
            max(cpu_time_us) AS request_cpu_time_us
        FROM (
            SELECT request_id, event_time, outcome, output_format, bytes_in, bytes_out,
                   pixels_in, pixels_out, cpu_time_us, source = 'API' AS from_api
            FROM {db}.usage_raw
            WHERE tenant_id = '{tenant}' AND (
                   (event_time >= {at(frm)} - 60 AND event_time < {at(m1)} + 60)
                OR (event_time >= {at(m2)} - 60 AND event_time < {at(to)} + 60))
            UNION ALL
            SELECT request_id, event_time, outcome, output_format, bytes_in, bytes_out,
                   pixels_in, pixels_out, cpu_time_us, from_api
            FROM {db}.usage_recent
            WHERE tenant_id = '{tenant}' AND event_time >= {live} - 60 AND event_time < {at(m2)} + 60
        )
        GROUP BY request_id
        HAVING (request_time >= {at(frm)} AND request_time < {at(m1)})
            OR (request_time >= {at(m2)} AND request_time < {at(to)})
            OR (request_time >= {live} AND request_time < {at(m2)})
    )
)
GROUP BY kind, start, group_key""")
