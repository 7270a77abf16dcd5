//! The rollups equal a deduplicated recount of the raw rows. Usage records (requests with a
//! resizer and an api record, often in different minutes; api-only refusals; resizer-only
//! requests whose api died; a record delivered twice) go through Kafka and the real
//! `imgpipe aggregator` process, which settles windows into `usage_rollup` in the background:
//! two of them, so that a member joins (a rebalance), two rollup jobs race for every window,
//! and one is killed with SIGKILL half-way (another rebalance). Then a batch is inserted a second time through the aggregator's own sink, as a retried
//! INSERT that ClickHouse had applied would be: on 18.16 the materialized views fire again for
//! it (no block deduplication on a non-replicated table), which this test shows, and the totals
//! must not move. Compared, key by key and for every dimension: the settled rollup rows of each
//! granularity, the analysts' views (rollup + live tail), and the tenant api's reports, each
//! against the same recount of the delivered records (`usage_raw`, which keeps every delivery)
//! grouped by request id; the latency digests against exact percentiles; that `usage_recent`
//! was pruned down to the unsettled tail; and the resume point read from `usage_offsets`
//! against the highest stored offsets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aggregators::UsageSink;
use aggregators::sink::UsageRow;
use imgpipe::Config;
use ingest::api::usage::query::{Granularity, GroupBy, Timestamp, UsageQuery, UsageRequest};
use schemas::events::{UsageRecorded, UsageSource};

use crate::support;

const TENANTS: usize = 7;

/// A report bucket's sums: requests (billed), refused, bytes in/out, pixels in/out, CPU time.
type Sums = (u64, u64, i64, i64, i64, i64, i64);

/// The outcomes billed as work (`requests`); every other one is `refused`.
const BILLED: &str = "('ok', 'resized')";

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Request `i`'s records, at `t` seconds: most have the resizer's then the api's (up to 8 s
/// later, so some cross a minute or an hour), every 10th only the api's (a refusal), every
/// 37th only the resizer's (its api died). Three in four are signed GETs from one of two
/// source hosts (both records name it), the rest images sent in the body (no host).
fn records(i: usize, t: i64) -> Vec<UsageRecorded> {
    let tenant = format!("tenant-{}", (i * i) % TENANTS);
    let format = ["webp", "png", "jpeg"][i % 3];
    let source_host = match i % 4 {
        0 => None,
        2 => Some("cdn.example.org:8443".to_owned()),
        _ => Some("images.example.com".to_owned()),
    };
    let base = UsageRecorded {
        request_id: format!("req-{i}"),
        tenant_id: tenant,
        key_id: "k".into(),
        event_time_ms: t * 1000,
        outcome: "resized".into(),
        status: 200,
        bytes_in: 1000 + (i % 977) as i64,
        bytes_out: 100 + (i % 89) as i64,
        pixels_in: 10_000 + (i % 1234) as i64,
        pixels_out: 500 + (i % 77) as i64,
        cpu_time_us: 3000 + (i % 501) as i64,
        input_format: Some("jpeg".into()),
        output_format: Some(format.into()),
        latency_us: 5000 + (i % 999) as i64,
        source: UsageSource::Resizer,
        source_host,
    };
    let api = |outcome: &str, status: i32, delay: i64, delivered: bool| UsageRecorded {
        event_time_ms: (t + delay) * 1000 + 7,
        outcome: outcome.into(),
        status,
        bytes_out: if delivered { base.bytes_out } else { 0 },
        pixels_in: 0,
        pixels_out: 0,
        cpu_time_us: 0,
        output_format: delivered.then(|| format.to_owned()),
        latency_us: base.latency_us + 1000,
        source: UsageSource::Api,
        ..base.clone()
    };
    if i.is_multiple_of(10) {
        vec![api("bad_parameters", 400, 0, false)]
    } else if i.is_multiple_of(37) {
        vec![base]
    } else if i.is_multiple_of(13) {
        vec![
            base.clone(),
            api("client_closed_request", 499, (i % 9) as i64, false),
        ]
    } else {
        vec![base.clone(), api("ok", 200, (i % 9) as i64, true)]
    }
}

/// `(granularity, tenant, bucket, outcome, format, source host) → sums` as TSV lines, sorted.
async fn keyed(config: &Config, sql: &str) -> BTreeMap<String, String> {
    support::clickhouse(config, &format!("{sql} FORMAT TSV"))
        .await
        .lines()
        .map(|line| {
            let (key, values) = line.rsplit_once("\t#\t").expect("a key and values");
            (key.to_owned(), values.to_owned())
        })
        .collect()
}

/// Every delivered record as inserted (`usage_raw` is a plain MergeTree: nothing collapses),
/// with the columns the per-request rules read.
fn records_sql(db: &str) -> String {
    format!(
        "(SELECT tenant_id, request_id, event_time, outcome, output_format, bytes_in, bytes_out,
                 pixels_in, pixels_out, cpu_time_us, latency_us, source_host,
                 source = 'API' AS from_api
          FROM {db}.usage_raw)"
    )
}

/// The recount of every request whose time is before `until`, by the rules of
/// `usage_by_request`, at granularity `g` (1 minute, 2 hour, 3 day), from every delivered
/// record ([`records_sql`]).
fn recount_sql(db: &str, g: u8, until: i64) -> String {
    let records = records_sql(db);
    let start_of = ["", "toStartOfMinute", "toStartOfHour", "toStartOfDay"][usize::from(g)];
    format!(
        "SELECT tenant_id, toUInt32({start_of}(t)) AS b, o, f, h, '#', count(), sum(bi), sum(bo),
                sum(pi), sum(po), sum(c), sum(l), max(l)
         FROM (
             SELECT tenant_id, request_id, argMax(event_time, from_api) AS t,
                    argMax(outcome, from_api) AS o, max(output_format) AS f,
                    max(source_host) AS h,
                    max(bytes_in) AS bi, max(bytes_out) AS bo, max(pixels_in) AS pi,
                    max(pixels_out) AS po, max(cpu_time_us) AS c,
                    argMax(latency_us, from_api) AS l
             FROM {records} GROUP BY tenant_id, request_id
             HAVING t < toDateTime({until}, 'UTC')
         )
         GROUP BY tenant_id, b, o, f, h ORDER BY tenant_id, b, o, f, h"
    )
}

/// The highest offset `usage_raw` holds per Kafka partition, counted from the rows themselves
/// (to check the resume point `usage_offsets` gives against).
async fn raw_max_offsets(config: &Config, db: &str) -> BTreeMap<i32, i64> {
    support::clickhouse(
        config,
        &format!(
            "SELECT kafka_partition, max(kafka_offset) FROM {db}.usage_raw
             GROUP BY kafka_partition FORMAT TSV"
        ),
    )
    .await
    .lines()
    .map(|line| {
        let (p, o) = line.split_once('\t').unwrap();
        (p.parse().unwrap(), o.parse().unwrap())
    })
    .collect()
}

/// The keys whose values differ, with both sides (empty when the maps are equal).
fn differences(got: &BTreeMap<String, String>, expected: &BTreeMap<String, String>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = got.keys().chain(expected.keys()).collect();
    keys.into_iter()
        .filter(|k| got.get(*k) != expected.get(*k))
        .map(|k| format!("{k}: got {:?}, expected {:?}", got.get(k), expected.get(k)))
        .collect()
}

struct Aggregator {
    child: Child,
    /// Its ops server, `http://127.0.0.1:port`.
    ops: String,
}

impl Aggregator {
    fn start(config: &Config) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_imgpipe"))
            .arg("aggregator")
            .env("IMGPIPE_KAFKA__NAMESPACE", &config.kafka.namespace)
            .env("IMGPIPE_KAFKA__BROKERS", &config.kafka.brokers)
            .env("IMGPIPE_REGISTRY__URL", &config.registry.url)
            .env("IMGPIPE_CLICKHOUSE__URL", &config.clickhouse.url)
            .env(
                "IMGPIPE_CLICKHOUSE__DATABASE",
                config.clickhouse.database.as_str(),
            )
            .env("IMGPIPE_OPS__LISTEN", format!("127.0.0.1:{port}"))
            .env("IMGPIPE_AGGREGATOR__BATCH_MAX_RECORDS", "500")
            .env("IMGPIPE_AGGREGATOR__BATCH_MAX_AGE", "100ms")
            .env("IMGPIPE_AGGREGATOR__ROLLUP_INTERVAL", "200ms")
            .env("IMGPIPE_AGGREGATOR__ROLLUP_LATENESS", "1s")
            // Small windows: many settle statements, each crossing minutes and hours.
            .env("IMGPIPE_AGGREGATOR__ROLLUP_MAX_WINDOW", "17m")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self {
            child,
            ops: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends current traffic every 300 ms until the settle mark passes `past`; returns the mark + 1.
/// Traffic moves the settle horizon past older data; forty tenants, so that every partition of
/// usage.events gets some (settling waits for all). These records stay in the live tail.
async fn settle_past(
    config: &Config,
    producer: &support::UsageProducer,
    next: &mut usize,
    past: i64,
    what: &str,
) -> i64 {
    let db = config.clickhouse.database.as_str();
    support::eventually(Duration::from_secs(120), what, || {
        let batch: Vec<UsageRecorded> = (*next..*next + 40)
            .flat_map(|i| {
                let mut r = records(i, now_s());
                r.iter_mut()
                    .for_each(|e| e.tenant_id = format!("tenant-{}", i % 40));
                r
            })
            .collect();
        *next += 40;
        async move {
            producer.send(&batch).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mark: i64 = support::clickhouse(
                config,
                &format!(
                    "SELECT toUInt32(max(bucket)) FROM {db}.usage_rollup WHERE granularity = 0"
                ),
            )
            .await
            .trim()
            .parse()
            .unwrap();
            (mark > past).then_some(mark + 1)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_equal_a_deduplicated_recount_of_raw_rows() {
    let config = support::provisioned("usage_rollups").await;
    aggregators::migrate(&config.clickhouse).await.unwrap();
    let db = config.clickhouse.database.as_str().to_owned();
    let producer = support::UsageProducer::new(&config);

    // Three hours of requests ending five minutes ago, one every 3 s.
    let now = now_s();
    let first = now - 3 * 3600 - 300;
    let mut events: Vec<UsageRecorded> = (0..3600)
        .flat_map(|i| records(i, first + i as i64 * 3))
        .collect();
    // One record delivered twice (at two offsets), as a producer retry would.
    events.push(events[5].clone());
    producer.send(&events).await;
    let data_end = first + 3600 * 3 + 9;
    // Two aggregators: the second joining is a rebalance, and both rollup jobs race for every
    // window of the same database (the loser's INSERT is refused: same query_id). The first is
    // killed (SIGKILL) once it owns partitions and a first window is settled; the second settles
    // the rest.
    let aggregator = Aggregator::start(&config);
    let second = Aggregator::start(&config);
    let mut next = 10_000;
    settle_past(
        &config,
        &producer,
        &mut next,
        first,
        "the first window settled by two aggregators",
    )
    .await;
    support::eventually(
        Duration::from_secs(30),
        "the first aggregator to own partitions",
        || async {
            let inserted =
                support::metric(&aggregator.ops, "imgpipe_aggregator_inserted_records_total").await;
            inserted.is_some_and(|n| n > 0.0).then_some(())
        },
    )
    .await;
    drop(aggregator);
    let settled = settle_past(
        &config,
        &producer,
        &mut next,
        data_end + 60,
        "windows settled after a member was killed",
    )
    .await;

    // `usage_recent` keeps only the unsettled tail: the rollup job drops, once nothing is due,
    // what settled more than the lookaround and one 5-minute partition ago (the three hours
    // above, but for their end).
    support::eventually(Duration::from_secs(30), "usage_recent pruned", || {
        let config = &config;
        let db = &db;
        async move {
            let oldest: i64 = support::clickhouse(
                config,
                &format!("SELECT toUInt32(min(event_time)) FROM {db}.usage_recent"),
            )
            .await
            .trim()
            .parse()
            .unwrap();
            (oldest >= settled - 60 - 2 * 300).then_some(())
        }
    })
    .await;
    // Stopped before the replay below, so that no prune races its count.
    drop(second);

    // A retried INSERT that had been applied: the same rows (same offsets, same request ids)
    // written again through the aggregator's sink. The views fire again on 18.16.
    let sink = UsageSink::connect(&config.clickhouse, Duration::from_secs(30))
        .await
        .unwrap();
    let stored: Vec<(i32, i64, String, String)> = support::clickhouse(
        &config,
        &format!(
            "SELECT kafka_partition, kafka_offset, request_id_text, source FROM {db}.usage_raw
             WHERE kafka_partition = (SELECT min(kafka_partition) FROM {db}.usage_raw
                                      WHERE event_time < toDateTime({data_end}, 'UTC'))
               AND event_time < toDateTime({data_end}, 'UTC')
             ORDER BY kafka_offset LIMIT 200 FORMAT TSV"
        ),
    )
    .await
    .lines()
    .map(|line| {
        let f: Vec<&str> = line.split('\t').collect();
        (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].to_owned(),
            f[3].to_owned(),
        )
    })
    .collect();
    assert!(!stored.is_empty());
    let rows: Vec<UsageRow> = stored
        .iter()
        .map(|(partition, offset, request_id, source)| {
            let api = source == "API";
            let event = events
                .iter()
                .find(|e| &e.request_id == request_id && (e.source == UsageSource::Api) == api)
                .unwrap()
                .clone();
            UsageRow::new(*partition, *offset, event)
        })
        .collect();
    let partition = rows[0].kafka_partition;
    sink.insert_rows(partition, &rows, &format!("replay-{db}"))
        .await
        .unwrap();
    let offsets = rows
        .iter()
        .map(|r| r.kafka_offset.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let copies = |table: &'static str| {
        let config = &config;
        let sql = format!(
            "SELECT count() FROM {db}.{table}
             WHERE kafka_partition = {partition} AND kafka_offset IN ({offsets})"
        );
        async move {
            support::clickhouse(config, &sql)
                .await
                .trim()
                .parse::<usize>()
                .unwrap()
        }
    };
    assert_eq!(copies("usage_raw").await, 2 * rows.len(), "raw keeps both");
    // The originals were pruned from usage_recent with their settled partitions.
    assert!(
        copies("usage_recent").await >= rows.len(),
        "the views fire for a duplicate block"
    );

    // Settled rollup rows, granularity by granularity, against the recount before the mark.
    for g in 1..=3_u8 {
        let rollup = keyed(
            &config,
            &format!(
                "SELECT tenant_id, toUInt32(bucket), outcome, format, source_host, '#',
                        sumMerge(requests), sumMerge(bytes_in), sumMerge(bytes_out),
                        sumMerge(pixels_in), sumMerge(pixels_out), sumMerge(cpu_time_us),
                        sumMerge(latency_us_sum), maxMerge(latency_us_max)
                 FROM {db}.usage_rollup WHERE granularity = {g}
                 GROUP BY tenant_id, bucket, outcome, format, source_host
                 ORDER BY tenant_id, bucket, outcome, format, source_host"
            ),
        )
        .await;
        let recount = keyed(&config, &recount_sql(&db, g, settled)).await;
        assert!(
            recount.len() > 10,
            "granularity {g}: {} keys",
            recount.len()
        );
        assert_eq!(
            differences(&rollup, &recount),
            Vec::<String>::new(),
            "granularity {g}: rollup vs recount (settled until {settled})"
        );
    }
    let requests: i64 = support::clickhouse(
        &config,
        &format!("SELECT sum(requests) + sum(refused) FROM {db}.usage_day"),
    )
    .await
    .trim()
    .parse()
    .unwrap();
    let distinct: i64 = support::clickhouse(
        &config,
        &format!("SELECT uniqExact(tenant_id, request_id) FROM {db}.usage_raw"),
    )
    .await
    .trim()
    .parse()
    .unwrap();
    assert_eq!(requests, distinct, "usage_day counts each request once");

    // The invoice: per tenant, billed requests and refused ones from the settled day rows, in
    // the analysts' query shape, against the recount before the mark.
    let invoice = keyed(
        &config,
        &format!(
            "SELECT tenant_id, '#', sumMergeIf(n, billed), sumMergeIf(n, NOT billed)
             FROM (
                 SELECT tenant_id, outcome IN {BILLED} AS billed, requests AS n
                 FROM {db}.usage_rollup WHERE granularity = 3
             )
             GROUP BY tenant_id ORDER BY tenant_id"
        ),
    )
    .await;
    let billed_recount = keyed(
        &config,
        &format!(
            "SELECT tenant_id, '#', countIf(o IN {BILLED}), countIf(o NOT IN {BILLED}) FROM (
                 SELECT tenant_id, request_id, argMax(event_time, from_api) AS t,
                        argMax(outcome, from_api) AS o
                 FROM {records} GROUP BY tenant_id, request_id
                 HAVING t < toDateTime({settled}, 'UTC')
             ) GROUP BY tenant_id ORDER BY tenant_id",
            records = records_sql(&db)
        ),
    )
    .await;
    assert_eq!(invoice, billed_recount, "invoice vs recount");
    assert!(
        billed_recount
            .values()
            .all(|v| v.split('\t').all(|n| n != "0")),
        "every tenant has billed and refused requests: {billed_recount:?}"
    );

    // Latency percentiles from the digests (settled days, ok requests) against exact ones.
    // t-digest is approximate; latencies here span 5000..5998 us, so 1% is ~50 us.
    let percentiles = keyed(
        &config,
        &format!(
            "SELECT tenant_id, '#', p FROM (
                 SELECT tenant_id, quantilesTDigestMerge(0.5, 0.9, 0.99)(latency_us_digest) AS p
                 FROM {db}.usage_rollup WHERE granularity = 3 AND outcome = 'ok'
                 GROUP BY tenant_id
             ) ORDER BY tenant_id"
        ),
    )
    .await;
    let exact = keyed(
        &config,
        &format!(
            "SELECT tenant_id, '#', quantilesExact(0.5, 0.9, 0.99)(l) FROM (
                 SELECT tenant_id, request_id, argMax(event_time, from_api) AS t,
                        argMax(outcome, from_api) AS o, argMax(latency_us, from_api) AS l
                 FROM {records} GROUP BY tenant_id, request_id
                 HAVING t < toDateTime({settled}, 'UTC') AND o = 'ok'
             ) GROUP BY tenant_id ORDER BY tenant_id",
            records = records_sql(&db)
        ),
    )
    .await;
    assert_eq!(
        percentiles.keys().collect::<Vec<_>>(),
        exact.keys().collect::<Vec<_>>()
    );
    for (tenant, got) in &percentiles {
        let parse = |text: &str| -> Vec<f64> {
            text.trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|v| v.parse().unwrap())
                .collect()
        };
        for (g, e) in parse(got).iter().zip(parse(&exact[tenant])) {
            assert!(
                (g - e).abs() <= e * 0.01,
                "{tenant}: digest {got} vs exact {}",
                exact[tenant]
            );
        }
    }

    // The views (settled rollup + live tail) against the recount of everything.
    for (g, view, bucket) in [
        (1, "usage_minute", "minute"),
        (2, "usage_hour", "hour"),
        (3, "usage_day", "day"),
    ] {
        let live = keyed(
            &config,
            &format!(
                "SELECT tenant_id, toUInt32({bucket}), outcome, format, source_host, '#',
                        sum(requests) + sum(refused), sum(bytes_in), sum(bytes_out), sum(pixels_in), sum(pixels_out),
                        sum(cpu_time_us), sum(latency_us_sum), max(latency_us_max)
                 FROM {db}.{view}
                 GROUP BY tenant_id, {bucket}, outcome, format, source_host
                 ORDER BY tenant_id, {bucket}, outcome, format, source_host
                 SETTINGS enable_optimize_predicate_expression = 1"
            ),
        )
        .await;
        let recount = keyed(&config, &recount_sql(&db, g, i64::from(u32::MAX))).await;
        assert_eq!(
            differences(&live, &recount),
            Vec::<String>::new(),
            "{view} vs recount"
        );
        // Each row is one outcome: billed ones count in `requests`, the others in `refused`.
        let split = support::clickhouse(
            &config,
            &format!(
                "SELECT countIf(outcome IN {BILLED} AND refused != 0),
                        countIf(outcome NOT IN {BILLED} AND requests != 0),
                        countIf(outcome IN {BILLED} AND requests != 0),
                        countIf(outcome NOT IN {BILLED} AND refused != 0)
                 FROM {db}.{view} FORMAT TSV"
            ),
        )
        .await;
        let split: Vec<u64> = split
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(
            &split[..2],
            [0, 0],
            "{view}: requests and refused by outcome"
        );
        assert!(split[2] > 0 && split[3] > 0, "{view}: {split:?}");
    }

    // The tenant api, over a range with partial minutes at both ends that spans the mark.
    let query = UsageQuery::connect(&config.clickhouse).await.unwrap();
    let from = Timestamp::from_epoch_seconds(first + 3600 + 17).unwrap();
    let to = Timestamp::from_epoch_seconds(now_s() + 60).unwrap();
    for tenant in ["tenant-1", "tenant-2"] {
        for granularity in [Granularity::Minute, Granularity::Hour, Granularity::Day] {
            for group_by in [
                None,
                Some(GroupBy::Format),
                Some(GroupBy::Outcome),
                Some(GroupBy::SourceHost),
            ] {
                let request = UsageRequest::new(from, to, granularity, group_by).unwrap();
                let report = query.buckets(tenant, &request).await.unwrap();
                let got: BTreeMap<(String, String), Sums> = report
                    .buckets
                    .iter()
                    .map(|b| {
                        let key = b
                            .format
                            .clone()
                            .or(b.outcome.clone())
                            .or(b.source_host.clone())
                            .unwrap_or_default();
                        (
                            (b.start.clone(), key),
                            (
                                b.requests,
                                b.refused,
                                b.bytes_in,
                                b.bytes_out,
                                b.pixels_in,
                                b.pixels_out,
                                b.cpu_time_us,
                            ),
                        )
                    })
                    .collect();
                let start_of = match granularity {
                    Granularity::Minute => "toStartOfMinute",
                    Granularity::Hour => "toStartOfHour",
                    Granularity::Day => "toStartOfDay",
                };
                let key = match group_by {
                    None => "''",
                    Some(GroupBy::Format) => "f",
                    Some(GroupBy::Outcome) => "o",
                    Some(GroupBy::SourceHost) => "h",
                };
                let expected: BTreeMap<(String, String), Sums> = support::clickhouse(
                    &config,
                    &format!(
                        "SELECT toUInt32({start_of}(t)) AS b, {key} AS k,
                                    countIf(o IN {BILLED}), countIf(o NOT IN {BILLED}), sum(bi),
                                    sum(bo), sum(pi), sum(po), sum(c)
                             FROM (
                                 SELECT request_id, argMax(event_time, from_api) AS t,
                                        argMax(outcome, from_api) AS o,
                                        max(output_format) AS f, max(source_host) AS h,
                                        max(bytes_in) AS bi,
                                        max(bytes_out) AS bo, max(pixels_in) AS pi,
                                        max(pixels_out) AS po, max(cpu_time_us) AS c
                                 FROM {records} WHERE tenant_id = '{tenant}'
                                 GROUP BY request_id
                                 HAVING t >= toDateTime({}, 'UTC') AND t < toDateTime({}, 'UTC')
                             )
                             GROUP BY b, k ORDER BY b, k FORMAT TSV",
                        from.epoch_seconds(),
                        to.epoch_seconds(),
                        records = records_sql(&db),
                    ),
                )
                .await
                .lines()
                .map(|line| {
                    let f: Vec<&str> = line.split('\t').collect();
                    let n = |i: usize| f[i].parse::<i64>().unwrap();
                    let start = Timestamp::from_epoch_seconds(n(0)).unwrap().to_rfc3339();
                    (
                        (start, f[1].to_owned()),
                        (n(2) as u64, n(3) as u64, n(4), n(5), n(6), n(7), n(8)),
                    )
                })
                .collect();
                assert!(!expected.is_empty());
                if group_by == Some(GroupBy::SourceHost) {
                    let hosts: std::collections::BTreeSet<&str> =
                        expected.keys().map(|(_, host)| host.as_str()).collect();
                    assert_eq!(
                        hosts.into_iter().collect::<Vec<_>>(),
                        ["", "cdn.example.org:8443", "images.example.com"],
                        "both hosts and inline images in {tenant}'s range"
                    );
                }
                assert_eq!(got, expected, "{tenant} {granularity:?} {group_by:?}");
            }
        }
    }

    // The resume point: usage_offsets agrees with the raw tables.
    let partitions: Vec<i32> = (0..6).collect();
    let offsets = sink.stored_offsets(&partitions).await.unwrap();
    let raw = raw_max_offsets(&config, &db).await;
    assert_eq!(offsets.into_iter().collect::<BTreeMap<_, _>>(), raw);

    // Every SQL statement the analysts' README and the usage runbooks show runs on this server
    // (18.16 here) against these tables, as a read-only analyst account would run it
    // (`readonly = 1`: no SETTINGS clause): the documented queries are the tested ones.
    let mut statements = 0;
    for doc in [
        "docs/analysts.md",
        "runbooks/usage-freshness.md",
        "runbooks/usage-replay.md",
        "runbooks/usage-late-records.md",
    ] {
        for sql in documented_sql(doc) {
            readonly_clickhouse(&config, &sql.replace("imgpipe.", &format!("{db}."))).await;
            statements += 1;
        }
    }
    assert!(statements >= 12, "{statements} documented statements");
    support::clickhouse(&config, &format!("DROP DATABASE {db}")).await;
}

/// Runs `sql` with `readonly = 1`, the setting of a read-only account: reads only, and no
/// setting may be changed (a `SETTINGS` clause is refused).
async fn readonly_clickhouse(config: &Config, sql: &str) -> String {
    let mut url = reqwest::Url::parse(&config.clickhouse.url).unwrap();
    url.query_pairs_mut().append_pair("readonly", "1");
    let response = reqwest::Client::new()
        .post(url)
        .body(sql.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert!(status.is_success(), "{sql}: {body}");
    body
}

/// The statements of every ```sql block in `doc` (a path from the repository root), and the
/// `clickhouse-client --query "…"` commands of its ```sh blocks.
fn documented_sql(doc: &str) -> Vec<String> {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(doc))
        .unwrap_or_else(|e| panic!("{doc}: {e}"));
    let mut statements = Vec::new();
    let mut block: Option<(&str, String)> = None;
    for line in text.lines() {
        match (&mut block, line.trim_start()) {
            (None, fence) if fence.starts_with("```") => {
                block = Some((fence.trim_start_matches('`'), String::new()));
            }
            (Some((kind, body)), "```") => {
                if *kind == "sql" {
                    statements.extend(
                        body.split(";\n")
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(|s| s.trim_end_matches(';').to_owned()),
                    );
                } else if *kind == "sh" {
                    let mut rest = body.as_str();
                    while let Some(start) = rest.find("clickhouse-client --query \"") {
                        rest = &rest[start + "clickhouse-client --query \"".len()..];
                        let end = rest.find('"').expect("closing quote");
                        statements.push(rest[..end].trim().to_owned());
                        rest = &rest[end + 1..];
                    }
                }
                block = None;
            }
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, _) => {}
        }
    }
    statements
}

/// A one-tenant demo: every record on one partition of `usage.events`, the others never see
/// one. The aggregator reports idle partitions (the silent ones at once, the busy one once it
/// is quiet) as settled up to when they were found idle, so the demo's usage settles, exactly,
/// and the resume point does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_partitions_do_not_hold_settling_back() {
    let config = support::provisioned("usage_idle").await;
    aggregators::migrate(&config.clickhouse).await.unwrap();
    let db = config.clickhouse.database.as_str().to_owned();
    let producer = support::UsageProducer::new(&config);
    // 100 requests of one tenant over five minutes, ending five minutes ago.
    let first = now_s() - 600;
    let events: Vec<UsageRecorded> = (0..100)
        .flat_map(|i| {
            let mut r = records(i, first + i as i64 * 3);
            r.iter_mut()
                .for_each(|e| e.tenant_id = "tenant-solo".into());
            r
        })
        .collect();
    producer.send(&events).await;
    let data_end = first + 300 + 9;
    let aggregator = Aggregator::start(&config);
    let settled = support::eventually(Duration::from_secs(90), "the demo settled", || {
        let config = &config;
        let db = &db;
        async move {
            let mark: i64 = support::clickhouse(
                config,
                &format!(
                    "SELECT toUInt32(max(bucket)) FROM {db}.usage_rollup WHERE granularity = 0"
                ),
            )
            .await
            .trim()
            .parse()
            .unwrap();
            (mark > data_end + 60).then_some(mark + 1)
        }
    })
    .await;

    let rollup = keyed(
        &config,
        &format!(
            "SELECT tenant_id, toUInt32(bucket), outcome, format, source_host, '#',
                    sumMerge(requests), sumMerge(bytes_in), sumMerge(bytes_out),
                    sumMerge(pixels_in), sumMerge(pixels_out), sumMerge(cpu_time_us),
                    sumMerge(latency_us_sum), maxMerge(latency_us_max)
             FROM {db}.usage_rollup WHERE granularity = 1
             GROUP BY tenant_id, bucket, outcome, format, source_host
             ORDER BY tenant_id, bucket, outcome, format, source_host"
        ),
    )
    .await;
    let recount = keyed(&config, &recount_sql(&db, 1, settled)).await;
    assert!(recount.len() > 5, "{} keys", recount.len());
    assert_eq!(
        differences(&rollup, &recount),
        Vec::<String>::new(),
        "rollup vs recount (settled until {settled})"
    );
    let requests = support::clickhouse(
        &config,
        &format!("SELECT sumMerge(requests) FROM {db}.usage_rollup WHERE granularity = 3"),
    )
    .await;
    assert_eq!(requests.trim(), "100", "the whole demo settled");

    // Idle reports move event-time progress only: the resume point is still the raw rows'.
    let sink = UsageSink::connect(&config.clickhouse, Duration::from_secs(30))
        .await
        .unwrap();
    let offsets = sink
        .stored_offsets(&(0..6).collect::<Vec<_>>())
        .await
        .unwrap();
    let raw = raw_max_offsets(&config, &db).await;
    assert_eq!(raw.len(), 1, "one partition had traffic");
    assert_eq!(offsets.into_iter().collect::<BTreeMap<_, _>>(), raw);

    // A record far older than its partition's others (a producer clock ten minutes behind)
    // arrives after its minute was settled: stored, but missed by the rollups, and counted.
    let late_total = "imgpipe_aggregator_late_records_total";
    assert_eq!(
        support::metric(&aggregator.ops, late_total).await,
        Some(0.0)
    );
    let mut late = records(100, first + 30);
    late.truncate(1);
    late[0].tenant_id = "tenant-solo".into();
    producer.send(&late).await;
    support::eventually(
        Duration::from_secs(30),
        "the late record counted",
        || async {
            (support::metric(&aggregator.ops, late_total).await == Some(1.0)).then_some(())
        },
    )
    .await;

    // A producer whose clock runs ten minutes ahead writes to every partition (15 tenants
    // reach all 6). Its records are stored at the time Kafka logged them (usage.events is
    // LogAppendTime), not in the future: otherwise its partitions' progress would run ahead of
    // records not stored yet (an aggregator behind, catching up) and settling would make them
    // all late.
    let inserted_total = "imgpipe_aggregator_inserted_records_total";
    let inserted = support::metric(&aggregator.ops, inserted_total)
        .await
        .unwrap();
    let ahead: Vec<UsageRecorded> = (0..15)
        .map(|i| {
            let mut r = records(200 + i * 10, now_s() + 600).remove(0);
            r.tenant_id = format!("tenant-{i}");
            r
        })
        .collect();
    producer.send(&ahead).await;
    support::eventually(
        Duration::from_secs(30),
        "the records from the future stored",
        || async {
            let now = support::metric(&aggregator.ops, inserted_total).await;
            now.is_some_and(|n| n >= inserted + 15.0).then_some(())
        },
    )
    .await;
    let ids = ahead
        .iter()
        .map(|r| format!("'{}'", r.request_id))
        .collect::<Vec<_>>()
        .join(",");
    let stored = support::clickhouse(
        &config,
        &format!(
            "SELECT uniqExact(kafka_partition), countIf(event_time <= now() + 2), count()
             FROM {db}.usage_raw WHERE request_id_text IN ({ids}) FORMAT TSV"
        ),
    )
    .await;
    assert_eq!(
        stored.trim(),
        "6\t15\t15",
        "on every partition, stored at the log time, not ten minutes ahead"
    );
    // Several rollup intervals (200 ms) for the job to act on them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mark: i64 = support::clickhouse(
        &config,
        &format!("SELECT toUInt32(max(bucket)) FROM {db}.usage_rollup WHERE granularity = 0"),
    )
    .await
    .trim()
    .parse()
    .unwrap();
    assert!(
        mark < now_s() - 60,
        "settled until {mark}, {} s ahead of now - lookaround",
        mark - (now_s() - 60)
    );
    drop(aggregator);
    let requests = support::clickhouse(
        &config,
        &format!("SELECT sumMerge(requests) FROM {db}.usage_rollup WHERE granularity = 3"),
    )
    .await;
    assert_eq!(
        requests.trim(),
        "100",
        "the late record is not in the settled rollups"
    );
    let stored = support::clickhouse(
        &config,
        &format!(
            "SELECT count() FROM {db}.usage_raw WHERE event_time = toDateTime({}, 'UTC')",
            first + 30
        ),
    )
    .await;
    assert_eq!(
        stored.trim(),
        "2",
        "stored beside the settled record of that second"
    );

    support::clickhouse(&config, &format!("DROP DATABASE {db}")).await;
}

/// A request's api record and resizer record share tenant, second and request id; they must
/// both survive ClickHouse's merges (usage_raw's key includes the source), so the exact view
/// keeps the api's outcome and the resizer's work.
#[tokio::test]
async fn a_requests_two_records_survive_merges_of_usage_raw() {
    let config = support::test_config("usage_raw_merges");
    aggregators::migrate(&config.clickhouse).await.unwrap();
    let sink = UsageSink::connect(&config.clickhouse, Duration::from_secs(30))
        .await
        .unwrap();
    let t = now_s() * 1000;
    let mut offset = 0;
    for insert in 0..2 {
        // Two INSERTs: two parts, which OPTIMIZE … FINAL merges.
        let mut rows = Vec::new();
        for i in 0..10 {
            let id = format!("merge-{insert}-{i}");
            for (source, outcome, pixels) in [
                (UsageSource::Resizer, "resized", 5000),
                (UsageSource::Api, "ok", 0),
            ] {
                let event = UsageRecorded {
                    request_id: id.clone(),
                    tenant_id: "tenant-merge".into(),
                    key_id: "k".into(),
                    event_time_ms: t,
                    outcome: outcome.into(),
                    status: 200,
                    bytes_in: 100,
                    bytes_out: 10,
                    pixels_in: pixels,
                    pixels_out: pixels / 10,
                    cpu_time_us: 7,
                    input_format: Some("jpeg".into()),
                    output_format: Some("webp".into()),
                    latency_us: 1,
                    source,
                    source_host: None,
                };
                rows.push(UsageRow::new(0, offset, event));
                offset += 1;
            }
        }
        sink.insert_rows(
            0,
            &rows,
            &format!("merge-test-{insert}-{}", config.kafka.namespace),
        )
        .await
        .unwrap();
    }
    let db = &config.clickhouse.database;
    support::clickhouse(&config, &format!("OPTIMIZE TABLE {db}.usage_raw FINAL")).await;
    let raw = support::clickhouse(&config, &format!("SELECT count() FROM {db}.usage_raw")).await;
    assert_eq!(raw.trim(), "40", "every record survives the merge");
    let view = support::clickhouse(
        &config,
        &format!(
            "SELECT countIf(outcome = 'ok'), sum(pixels_in) FROM {db}.usage_by_request \
             WHERE tenant_id = 'tenant-merge' FORMAT TSV"
        ),
    )
    .await;
    assert_eq!(
        view.trim(),
        "20\t100000",
        "the api's outcome and the resizer's work, per request"
    );
    support::clickhouse(&config, &format!("DROP DATABASE {db}")).await;
}

/// How `aggregators/schema.sql` begins; the rest is generated.
const SCHEMA_HEADER: &str = "\
-- The ClickHouse schema in one place: every table, view and materialized view that the
-- migrations (aggregators/src/migrations.rs) leave in a fresh database, as SHOW CREATE prints
-- them, the database named imgpipe, tables then views then materialized views, each by name,
-- one clause a line. Generated: do not edit. After changing a migration, regenerate it against
-- the local stack (compose/local/stack up) with
--   UPDATE_SCHEMA_SNAPSHOT=1 cargo test --features stack-tests --test stack schema_sql
-- and commit the diff; the same test, without the variable, fails while the two differ.
";

/// `aggregators/schema.sql` is exactly what the migrations make of a fresh database on this
/// server: the schema a newcomer reads cannot drift from the one the services use.
#[tokio::test]
async fn schema_sql_is_what_the_migrations_make() {
    let config = support::test_config("schema_sql");
    let report = aggregators::migrate(&config.clickhouse).await.unwrap();
    let schema = aggregators::migrations::schema(&config.clickhouse)
        .await
        .unwrap();
    support::clickhouse(
        &config,
        &format!("DROP DATABASE {}", config.clickhouse.database),
    )
    .await;
    let skipped: String = report
        .skipped
        .iter()
        .map(|(version, name)| format!("--   {version}: {name}\n"))
        .collect();
    let text = format!(
        "{SCHEMA_HEADER}-- Server: ClickHouse {}. Migrations for current servers only, not applied here:\n{skipped}\n{schema}",
        report.server_version
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("aggregators/schema.sql");
    if std::env::var_os("UPDATE_SCHEMA_SNAPSHOT").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    let first_difference = stored
        .lines()
        .zip(text.lines())
        .position(|(a, b)| a != b)
        .unwrap_or(stored.lines().count().min(text.lines().count()));
    assert!(
        stored == text,
        "aggregators/schema.sql is not the migrated schema (from line {}: {:?} here, {:?} in the \
         file). Regenerate it with\n  UPDATE_SCHEMA_SNAPSHOT=1 cargo test --features stack-tests \
         --test stack schema_sql\nand review the diff.",
        first_difference + 1,
        text.lines().nth(first_difference),
        stored.lines().nth(first_difference),
    );
}

/// Migration 16 (`source_host`) on a database that version 15 left with data, settled and
/// unsettled: every row of `usage_raw`, `usage_recent`, `usage_rollup` and `usage_offsets` is
/// kept as it was (the rollup copied into its new sort key), with the empty host; the exact
/// views answer the same; a run repeated as after a crash before its record changes nothing;
/// and then the aggregator's sink and rollup job write hosts through to the views.
#[tokio::test]
async fn migration_16_keeps_every_row_of_version_15() {
    let config = support::test_config("usage_migration_16");
    let db = config.clickhouse.database.as_str().to_owned();
    let version = support::clickhouse(&config, "SELECT version()").await;
    let modern = chassis::clickhouse::ServerVersion::parse(&version)
        .unwrap()
        .is_modern();
    // Version 15's schema, as `imgpipe migrate` of that release left it on this server.
    support::clickhouse(&config, &format!("CREATE DATABASE {db}")).await;
    support::clickhouse(
        &config,
        &format!(
            "CREATE TABLE {db}.schema_migrations (version UInt32, name String,
             applied_at DateTime('UTC') DEFAULT now()) ENGINE = ReplacingMergeTree() ORDER BY version"
        ),
    )
    .await;
    let mut applied = std::collections::BTreeSet::new();
    for (version, modern_only, statement) in
        aggregators::migrations::statements(&config.clickhouse.database)
    {
        if version <= 15 && (modern || !modern_only) {
            support::clickhouse(&config, &statement).await;
            applied.insert(version);
        }
    }
    for version in &applied {
        support::clickhouse(
            &config,
            &format!("INSERT INTO {db}.schema_migrations (version, name) VALUES ({version}, 'v')"),
        )
        .await;
    }
    // 300 requests of three tenants, a resizer and an api record each, 7 s apart, from two
    // hours ago; the first 20 minutes settled as version 15's rollup job wrote them.
    let start = (now_s() - 7200) / 60 * 60;
    support::clickhouse(
        &config,
        &format!(
            "INSERT INTO {db}.usage_raw (kafka_partition, kafka_offset, request_id,
                 request_id_text, tenant_id, key_id, event_time, event_ms, outcome, status,
                 bytes_in, bytes_out, pixels_in, pixels_out, cpu_time_us, input_format,
                 output_format, latency_us, source)
             SELECT 0, toInt64(number),
                    toUUID(UUIDNumToString(MD5(concat('r', toString(intDiv(number, 2)))))), '',
                    concat('tenant-', toString(intDiv(number, 2) % 3)), 'k',
                    toDateTime({start} + intDiv(number, 2) * 7 + number % 2, 'UTC'),
                    toUInt16(number % 1000), if(number % 2 = 1, 'ok', 'resized'), 200,
                    toInt64(100 + number % 7), toInt64(10), toInt64(if(number % 2 = 1, 0, 5000)),
                    toInt64(if(number % 2 = 1, 0, 500)), toInt64(if(number % 2 = 1, 0, 70)),
                    'jpeg', 'webp', toInt64(1000 + number % 50),
                    if(number % 2 = 1, 'API', 'RESIZER')
             FROM system.numbers LIMIT 600"
        ),
    )
    .await;
    let settled_until = start + 1200;
    support::clickhouse(
        &config,
        &format!(
            "INSERT INTO {db}.usage_rollup (granularity, tenant_id, bucket, outcome, format,
                 requests, bytes_in, bytes_out, pixels_in, pixels_out, cpu_time_us,
                 latency_us_sum, latency_us_max, latency_us_digest)
             SELECT g, tenant_id,
                    multiIf(g = 1, toStartOfMinute(t), g = 2, toStartOfHour(t), toStartOfDay(t)) AS b,
                    o, f, sumState(toUInt64(1)), sumState(bi), sumState(bo), sumState(pi),
                    sumState(po), sumState(c), sumState(l), maxState(l),
                    quantilesTDigestStateIf(0.5, 0.9, 0.99)(l, g != 1)
             FROM (
                 SELECT tenant_id, request_id, argMax(event_time, from_api) AS t,
                        argMax(outcome, from_api) AS o, max(output_format) AS f,
                        max(bytes_in) AS bi, max(bytes_out) AS bo, max(pixels_in) AS pi,
                        max(pixels_out) AS po, max(cpu_time_us) AS c,
                        argMax(latency_us, from_api) AS l
                 FROM {db}.usage_recent GROUP BY tenant_id, request_id
                 HAVING t < toDateTime({settled_until}, 'UTC')
             )
             ARRAY JOIN [1, 2, 3] AS g
             GROUP BY g, tenant_id, b, o, f"
        ),
    )
    .await;
    support::clickhouse(
        &config,
        &format!(
            "INSERT INTO {db}.usage_rollup (granularity, tenant_id, bucket, outcome, format, requests)
             SELECT 0, '', toDateTime({}, 'UTC'), '', '', sumState(toUInt64(0))",
            settled_until - 1
        ),
    )
    .await;

    // Everything stored, as text: each table's rows, the merged rollup, the views' sums.
    let snapshot = || {
        let config = &config;
        let db = &db;
        async move {
            let mut tables = Vec::new();
            for sql in [
                format!(
                    "SELECT kafka_partition, kafka_offset, request_id, request_id_text, tenant_id,
                            key_id, event_time, event_ms, outcome, status, bytes_in, bytes_out,
                            pixels_in, pixels_out, cpu_time_us, input_format, output_format,
                            latency_us, source, inserted_at
                     FROM {db}.usage_raw ORDER BY kafka_partition, kafka_offset"
                ),
                format!(
                    "SELECT tenant_id, request_id, event_time, outcome, output_format, bytes_in,
                            bytes_out, pixels_in, pixels_out, cpu_time_us, latency_us, from_api,
                            kafka_partition, kafka_offset
                     FROM {db}.usage_recent ORDER BY kafka_partition, kafka_offset"
                ),
                format!(
                    "SELECT granularity, tenant_id, bucket, outcome, format, sumMerge(requests),
                            sumMerge(bytes_in), sumMerge(bytes_out), sumMerge(pixels_in),
                            sumMerge(pixels_out), sumMerge(cpu_time_us), sumMerge(latency_us_sum),
                            maxMerge(latency_us_max),
                            quantilesTDigestMerge(0.5, 0.9, 0.99)(latency_us_digest)
                     FROM {db}.usage_rollup GROUP BY granularity, tenant_id, bucket, outcome, format
                     ORDER BY granularity, tenant_id, bucket, outcome, format"
                ),
                format!(
                    "SELECT kafka_partition, maxMerge(max_offset), maxMerge(max_event_time)
                     FROM {db}.usage_offsets GROUP BY kafka_partition ORDER BY kafka_partition"
                ),
                format!(
                    "SELECT tenant_id, request_id, event_time_ms, outcome, status, bytes_in,
                            pixels_in, cpu_time_us, latency_us, source, deliveries
                     FROM {db}.usage_by_request ORDER BY tenant_id, request_id"
                ),
            ] {
                tables.push(support::clickhouse(config, &format!("{sql} FORMAT TSV")).await);
            }
            for (view, bucket) in [
                ("usage_minute", "minute"),
                ("usage_hour", "hour"),
                ("usage_day", "day"),
            ] {
                tables.push(
                    support::clickhouse(
                        config,
                        &format!(
                            "SELECT tenant_id, {bucket}, outcome, format, sum(requests),
                                    sum(refused), sum(bytes_in), sum(bytes_out), sum(pixels_in),
                                    sum(pixels_out), sum(cpu_time_us), sum(latency_us_sum),
                                    max(latency_us_max)
                             FROM {db}.{view} GROUP BY tenant_id, {bucket}, outcome, format
                             ORDER BY tenant_id, {bucket}, outcome, format FORMAT TSV"
                        ),
                    )
                    .await,
                );
            }
            tables
        }
    };
    let before = snapshot().await;
    assert_eq!(before[0].lines().count(), 600);
    assert!(
        before[2].lines().count() > 20,
        "settled rows: {}",
        before[2]
    );
    let hosts = |table: &'static str| {
        let config = &config;
        let sql = format!("SELECT count(), countIf(source_host = '') FROM {db}.{table} FORMAT TSV");
        async move { support::clickhouse(config, &sql).await }
    };

    let report = aggregators::migrate(&config.clickhouse).await.unwrap();
    assert!(
        report.applied.iter().any(|(version, _)| *version == 16),
        "{report:?}"
    );
    assert_eq!(snapshot().await, before, "every row kept by migration 16");
    assert_eq!(hosts("usage_raw").await, "600\t600\n");
    assert_eq!(hosts("usage_recent").await, "600\t600\n");
    let rollup_rows = support::clickhouse(
        &config,
        &format!("SELECT count() FROM {db}.usage_rollup FORMAT TSV"),
    )
    .await;
    assert_eq!(
        hosts("usage_rollup").await,
        format!("{}\t{}\n", rollup_rows.trim(), rollup_rows.trim())
    );

    // A crash after its statements and before its record: the next run repeats them all.
    support::clickhouse(
        &config,
        &format!("CREATE TABLE {db}.schema_migrations_kept AS {db}.schema_migrations"),
    )
    .await;
    support::clickhouse(
        &config,
        &format!(
            "INSERT INTO {db}.schema_migrations_kept
             SELECT * FROM {db}.schema_migrations WHERE version < 16 OR version >= 50"
        ),
    )
    .await;
    support::clickhouse(&config, &format!("DROP TABLE {db}.schema_migrations")).await;
    support::clickhouse(
        &config,
        &format!("RENAME TABLE {db}.schema_migrations_kept TO {db}.schema_migrations"),
    )
    .await;
    let again = aggregators::migrate(&config.clickhouse).await.unwrap();
    assert!(
        again.applied.iter().any(|(version, _)| *version == 16),
        "{again:?}"
    );
    assert_eq!(
        snapshot().await,
        before,
        "a repeated run keeps every row too"
    );

    // New records name their hosts; the rollup job settles them into host rows.
    let sink = UsageSink::connect(&config.clickhouse, Duration::from_secs(30))
        .await
        .unwrap();
    let first = start + 2400;
    let mut rows = Vec::new();
    for i in 0..40_i64 {
        let host = ["images.example.com", "cdn.example.org:8443"][(i % 2) as usize];
        for (source, outcome) in [(UsageSource::Resizer, "resized"), (UsageSource::Api, "ok")] {
            let event = UsageRecorded {
                request_id: format!("new-{i}"),
                tenant_id: "tenant-1".into(),
                key_id: "k".into(),
                event_time_ms: (first + i * 20) * 1000,
                outcome: outcome.into(),
                status: 200,
                bytes_in: 1,
                bytes_out: 1,
                pixels_in: 1,
                pixels_out: 1,
                cpu_time_us: 1,
                input_format: None,
                output_format: Some("webp".into()),
                latency_us: 1,
                source,
                source_host: Some(host.into()),
            };
            rows.push(UsageRow::new(0, 600 + rows.len() as i64, event));
        }
    }
    sink.insert_rows(0, &rows, &format!("hosts-{db}"))
        .await
        .unwrap();
    let rollup = aggregators::rollup::Rollup::new(
        sink.client().clone(),
        &config.clickhouse.database,
        1,
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    while rollup.step().await.unwrap().is_some() {}
    let settled = support::clickhouse(
        &config,
        &format!(
            "SELECT source_host, sumMerge(requests) FROM {db}.usage_rollup
             WHERE granularity = 3 GROUP BY source_host ORDER BY source_host FORMAT TSV"
        ),
    )
    .await;
    let settled: Vec<(String, i64)> = settled
        .lines()
        .map(|l| {
            let (h, n) = l.split_once('\t').unwrap();
            (h.to_owned(), n.parse().unwrap())
        })
        .collect();
    assert_eq!(
        settled[0],
        (String::new(), 300),
        "every old request, once: {settled:?}"
    );
    assert_eq!(settled.len(), 3, "both hosts settled: {settled:?}");
    let views = support::clickhouse(
        &config,
        &format!(
            "SELECT source_host, sum(requests), sum(refused) FROM {db}.usage_day
             GROUP BY source_host ORDER BY source_host FORMAT TSV"
        ),
    )
    .await;
    assert_eq!(
        views, "\t300\t0\ncdn.example.org:8443\t20\t0\nimages.example.com\t20\t0\n",
        "the views: settled and live tail, by host"
    );
    let offsets = sink.stored_offsets(&[0]).await.unwrap();
    assert_eq!(
        offsets.get(&0),
        Some(&679),
        "the resume point follows new rows"
    );
    support::clickhouse(&config, &format!("DROP DATABASE {db}")).await;
}
