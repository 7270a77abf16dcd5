//! Usage totals in ClickHouse equal what was produced: no loss and no double count after the
//! aggregator is killed with SIGKILL at random moments, restarted, and finally replayed from
//! offset 0 by an operator. Runs the real `imgpipe aggregator` process against the real stack.
//! Also: the tenant usage query agrees with ClickHouse, never shows another tenant's rows, and
//! refuses bad ranges.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use imgpipe::Config;
use ingest::api::usage::query::{Granularity, GroupBy, UsageQuery, UsageQueryError, UsageRequest};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use schemas::events::{UsageRecorded, UsageSource};

use crate::support;

/// 15 tenants reach all 6 partitions of `usage.events` (keyed by tenant).
const TENANTS: usize = 15;

/// Per-tenant sums of every billing dimension.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Totals {
    requests: i64,
    bytes_in: i64,
    bytes_out: i64,
    pixels_in: i64,
    pixels_out: i64,
    cpu_time_us: i64,
}

/// Request `i`'s record, stamped `event_ms` (the wall clock when its batch is made, as the api
/// and the resizer stamp theirs): in production order within each partition, and never ahead
/// of the clock, the bounds settling relies on (see docs/analysts.md).
fn usage(i: usize, event_ms: i64) -> UsageRecorded {
    let ok = !i.is_multiple_of(7);
    UsageRecorded {
        request_id: format!("req-{i}"),
        tenant_id: format!("tenant-{}", i % TENANTS),
        key_id: format!("key-{}", i % 3),
        event_time_ms: event_ms,
        outcome: if ok { "ok" } else { "bad_parameters" }.into(),
        status: if ok { 200 } else { 400 },
        bytes_in: 1000 + (i % 977) as i64,
        bytes_out: if ok { 100 + (i % 89) as i64 } else { 0 },
        pixels_in: 10_000 + (i % 1234) as i64,
        pixels_out: if ok { 500 + (i % 77) as i64 } else { 0 },
        cpu_time_us: if ok { 3000 + (i % 501) as i64 } else { 0 },
        input_format: Some("jpeg".into()),
        output_format: ok.then(|| ["webp", "png"][i % 2].to_owned()),
        latency_us: 5000 + (i % 999) as i64,
        source: if ok {
            UsageSource::Resizer
        } else {
            UsageSource::Api
        },
        source_host: None,
    }
}

fn add(totals: &mut BTreeMap<String, Totals>, event: &UsageRecorded) {
    let t = totals.entry(event.tenant_id.clone()).or_default();
    t.requests += 1;
    t.bytes_in += event.bytes_in;
    t.bytes_out += event.bytes_out;
    t.pixels_in += event.pixels_in;
    t.pixels_out += event.pixels_out;
    t.cpu_time_us += event.cpu_time_us;
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The aggregator as a child process, on its own ops port.
struct Aggregator {
    child: Child,
    ops: String,
}

/// A test that fails half-way must not leave its aggregator running.
impl Drop for Aggregator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
            // Small, frequent batches: kills land between and during many INSERTs.
            .env("IMGPIPE_AGGREGATOR__BATCH_MAX_RECORDS", "700")
            .env("IMGPIPE_AGGREGATOR__BATCH_MAX_AGE", "100ms")
            // Settle soon after each minute ends (the lookaround minute still applies); 5 s
            // covers a batch's delivery, stamped before it is sent.
            .env("IMGPIPE_AGGREGATOR__ROLLUP_INTERVAL", "200ms")
            .env("IMGPIPE_AGGREGATOR__ROLLUP_LATENESS", "5s")
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

    /// SIGKILL: no flush, no commit, no goodbye to the group.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait: the member leaves the group cleanly.
    fn stop(mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "aggregator exited with {exit}");
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        support::metric(&self.ops, name).await
    }
}

async fn count(config: &Config, sql: &str) -> i64 {
    support::clickhouse(config, sql)
        .await
        .trim()
        .parse()
        .unwrap_or(-1)
}

async fn stored_totals(config: &Config) -> BTreeMap<String, Totals> {
    let db = &config.clickhouse.database;
    let text = support::clickhouse(
        config,
        &format!(
            "SELECT tenant_id, sum(requests) + sum(refused), sum(bytes_in), sum(bytes_out), sum(pixels_in), \
             sum(pixels_out), sum(cpu_time_us) FROM {db}.usage_minute GROUP BY tenant_id \
             ORDER BY tenant_id FORMAT TSV"
        ),
    )
    .await;
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let n = |i: usize| f[i].parse::<i64>().unwrap();
            (
                f[0].to_owned(),
                Totals {
                    requests: n(1),
                    bytes_in: n(2),
                    bytes_out: n(3),
                    pixels_in: n(4),
                    pixels_out: n(5),
                    cpu_time_us: n(6),
                },
            )
        })
        .collect()
}

async fn wait_for_requests(config: &Config, expected: i64, what: &str) {
    let db = config.clickhouse.database.clone();
    support::eventually(Duration::from_secs(60), what, || {
        let db = db.clone();
        async move {
            let stored = count(
                config,
                &format!("SELECT count() FROM {db}.usage_by_request"),
            )
            .await;
            (stored == expected).then_some(())
        }
    })
    .await;
}

/// Commits offset 0 for every partition of the group, as an operator's
/// `kafka-consumer-groups --reset-offsets --to-earliest` would. Like that tool, it only works
/// once the group is empty: a member that just left (or was killed and whose session has not
/// expired yet) makes the broker refuse the commit, so it waits for that, within a bound.
async fn reset_group_to_earliest(config: &Config) {
    let consumer: BaseConsumer = config
        .kafka
        .group_consumer_config(
            aggregators::GROUP_ID,
            chassis::kafka::ConsumerProfile::AtLeastOnce,
        )
        .create()
        .unwrap();
    let topic = config.kafka.name(schemas::topics::USAGE_EVENTS);
    let partitions = schemas::topics::spec(schemas::topics::USAGE_EVENTS)
        .unwrap()
        .partitions;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(&topic, p, Offset::Offset(0))
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(error) = consumer.commit(&list, rdkafka::consumer::CommitMode::Sync) {
        assert!(
            Instant::now() < deadline,
            "the group did not become empty within 30 s: {error}"
        );
        eprintln!("group not empty yet ({error}); waiting, as an operator would");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let committed = consumer.committed(Duration::from_secs(10)).unwrap();
    assert!(
        committed
            .elements()
            .iter()
            .all(|e| e.offset() == Offset::Offset(0) || e.topic() != topic)
    );
}

/// A tiny deterministic generator for kill moments (seeded from the clock, printed for replay).
struct Jitter(u64);

impl Jitter {
    fn millis(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_are_exact_after_kills_and_an_operator_replay() {
    let config = support::provisioned("usage_exactness").await;
    let producer = support::UsageProducer::new(&config);
    let mut expected: BTreeMap<String, Totals> = BTreeMap::new();
    let base = now_ms();
    let seed = base as u64 | 1;
    eprintln!("kill-moment seed: {seed}");
    let mut jitter = Jitter(seed);

    // Backlog before the first start, plus poison the aggregator must skip, not stop on.
    let first: Vec<_> = (0..8_000).map(|i| usage(i, base)).collect();
    let mut last_ms = base;
    first.iter().for_each(|e| add(&mut expected, e));
    producer.send(&first).await;
    let poison = vec![
        ("tenant-0".to_owned(), b"not avro at all".to_vec()),
        ("tenant-1".to_owned(), vec![0, 0, 0, 0, 0x7f, 1, 2]),
        ("tenant-2".to_owned(), Vec::new()),
    ];
    producer.send_raw(&poison).await;

    // Kill -9 at random moments while live traffic keeps arriving.
    let mut next = first.len();
    for round in 0..3 {
        let aggregator = Aggregator::start(&config);
        // After a kill the group waits out the dead member's session before assigning, so the
        // random moment is counted from the first INSERT of this run: kills land mid-stream.
        let started = Instant::now();
        let mut deadline = None;
        while deadline.is_none_or(|d| Instant::now() < d) {
            last_ms = now_ms();
            let live: Vec<_> = (next..next + 400).map(|i| usage(i, last_ms)).collect();
            live.iter().for_each(|e| add(&mut expected, e));
            producer.send(&live).await;
            next += live.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
            if deadline.is_none() {
                let inserted = aggregator
                    .metric("imgpipe_aggregator_inserted_records_total")
                    .await;
                if inserted.is_some_and(|n| n > 0.0) || started.elapsed() > Duration::from_secs(25)
                {
                    deadline =
                        Some(Instant::now() + Duration::from_millis(jitter.millis(50, 1_500)));
                }
            }
        }
        let stored = count(
            &config,
            &format!(
                "SELECT count() FROM {}.usage_raw",
                config.clickhouse.database
            ),
        )
        .await;
        eprintln!("round {round}: killing with {stored} rows stored, {next} produced");
        aggregator.kill9();
    }

    // A clean run drains everything.
    let aggregator = Aggregator::start(&config);
    let total = next as i64;
    wait_for_requests(&config, total, "every produced request in ClickHouse").await;
    let db = &config.clickhouse.database;
    support::eventually(
        Duration::from_secs(30),
        "poison records in usage_rejects",
        || async {
            (count(
                &config,
                &format!("SELECT uniqExact(kafka_partition, kafka_offset) FROM {db}.usage_rejects"),
            )
            .await
                == 3)
                .then_some(())
        },
    )
    .await;
    // Settling reaches the end of the run (the last record's minute, once the lookaround minute
    // and `rollup_lateness` have passed): the totals below then come from the rollups the job
    // settled while it was being killed and restarted, not from the live tail.
    let produced_until = last_ms / 1000;
    support::eventually(
        Duration::from_secs(180),
        "the rollup job to settle every minute of the run",
        || async {
            let settled = count(
                &config,
                &format!(
                    "SELECT toInt64(max(bucket)) FROM {db}.usage_rollup WHERE granularity = 0"
                ),
            )
            .await;
            (settled >= produced_until).then_some(())
        },
    )
    .await;
    assert_eq!(stored_totals(&config).await, expected, "after kills");
    aggregator.stop();

    // Operator replay: the group's offsets go back to the beginning; ClickHouse's offsets win.
    reset_group_to_earliest(&config).await;
    let aggregator = Aggregator::start(&config);
    let sentinel: Vec<_> = (next..next + 100).map(|i| usage(i, now_ms())).collect();
    sentinel.iter().for_each(|e| add(&mut expected, e));
    producer.send(&sentinel).await;
    wait_for_requests(
        &config,
        total + 100,
        "the records produced after the replay",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let skipped = aggregator
        .metric("imgpipe_aggregator_skipped_records_total")
        .await;
    let consumed = aggregator
        .metric("imgpipe_aggregator_consumed_records_total")
        .await;
    eprintln!("after replay: consumed {consumed:?}, skipped {skipped:?}");
    assert_eq!(
        consumed,
        Some(100.0),
        "the replay must seek past ClickHouse's offsets, not re-read"
    );
    assert_eq!(stored_totals(&config).await, expected, "after replay");
    aggregator.stop();

    let raw = count(&config, &format!("SELECT count() FROM {db}.usage_raw")).await;
    let distinct = count(
        &config,
        &format!("SELECT uniqExact(kafka_partition, kafka_offset) FROM {db}.usage_raw"),
    )
    .await;
    eprintln!(
        "usage_raw: {raw} rows, {distinct} distinct offsets, {} requests",
        total + 100
    );
    assert_eq!(distinct, total + 100, "every offset stored exactly once");
}

#[tokio::test]
async fn tenant_query_matches_clickhouse_and_sees_only_its_tenant() {
    let config = support::test_config("usage_query");
    aggregators::migrate(&config.clickhouse).await.unwrap();
    let db = &config.clickhouse.database;
    // Two tenants, one request delivered twice (a duplicate the exact query must not count).
    let base = 1_735_689_600; // 2025-01-01T00:00:00Z
    let event = |i: usize, offset: i64| {
        let tenant = if i.is_multiple_of(3) {
            "tenant-b"
        } else {
            "tenant-a"
        };
        let format = ["webp", "png", ""][i % 3];
        let outcome = if i.is_multiple_of(5) {
            "bad_parameters"
        } else {
            "ok"
        };
        let event = UsageRecorded {
            request_id: format!("r{i}"),
            tenant_id: tenant.into(),
            key_id: "k".into(),
            event_time_ms: (base + i as i64 * 10) * 1000,
            outcome: outcome.into(),
            status: 200,
            bytes_in: 100 + i as i64,
            bytes_out: 10 + i as i64,
            pixels_in: 1000 + i as i64,
            pixels_out: 50 + i as i64,
            cpu_time_us: 7 + i as i64,
            input_format: Some("jpeg".into()),
            output_format: (!format.is_empty()).then(|| format.into()),
            latency_us: 10,
            source: UsageSource::Resizer,
            source_host: None,
        };
        aggregators::sink::UsageRow::new(0, offset, event)
    };
    let mut rows: Vec<_> = (0..300).map(|i| event(i, i as i64)).collect();
    rows.push(event(1, 300));
    let sink = aggregators::UsageSink::connect(&config.clickhouse, Duration::from_secs(30))
        .await
        .unwrap();
    sink.insert_rows(0, &rows, &format!("usage-query-{db}"))
        .await
        .unwrap();

    let query = UsageQuery::connect(&config.clickhouse).await.unwrap();
    let from = ingest::api::usage::query::Timestamp::from_epoch_seconds(base).unwrap();
    let to = ingest::api::usage::query::Timestamp::from_epoch_seconds(base + 3600).unwrap();
    for granularity in [Granularity::Minute, Granularity::Hour, Granularity::Day] {
        for group_by in [None, Some(GroupBy::Format), Some(GroupBy::Outcome)] {
            let request = UsageRequest::new(from, to, granularity, group_by).unwrap();
            let report = query.buckets("tenant-a", &request).await.unwrap();
            // Every request, billed (`requests`) or not (`refused`).
            let requests: u64 = report.buckets.iter().map(|b| b.requests + b.refused).sum();
            let bytes_in: i64 = report.buckets.iter().map(|b| b.bytes_in).sum();
            let cpu: i64 = report.buckets.iter().map(|b| b.cpu_time_us).sum();
            let direct = support::clickhouse(
                &config,
                &format!(
                    "SELECT sum(requests) + sum(refused), sum(bytes_in), sum(cpu_time_us) FROM {db}.usage_minute \
                     WHERE tenant_id = 'tenant-a' AND minute >= toDateTime({base}) \
                     AND minute < toDateTime({}) FORMAT TSV",
                    base + 3600
                ),
            )
            .await;
            assert_eq!(
                direct.trim(),
                format!("{requests}\t{bytes_in}\t{cpu}"),
                "{granularity:?} {group_by:?}"
            );
            assert_eq!(requests, 200, "the duplicate delivery of r1 counts once");
        }
    }
    let minute = UsageRequest::new(from, to, Granularity::Minute, Some(GroupBy::Format)).unwrap();
    let report = query.buckets("tenant-a", &minute).await.unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["tenant_id"], "tenant-a");
    assert_eq!(json["buckets"][0]["start"], "2025-01-01T00:00:00Z");
    assert!(json["buckets"][0].get("format").is_some());

    // Another tenant's id, or SQL in the id, never reaches tenant-a's rows.
    let b = query.buckets("tenant-b", &minute).await.unwrap();
    assert_eq!(
        b.buckets
            .iter()
            .map(|x| x.requests + x.refused)
            .sum::<u64>(),
        100
    );
    for hostile in [
        "tenant-a' OR '1'='1",
        "tenant-a\\' OR 1=1 --",
        "%",
        "tenant-",
    ] {
        let report = query.buckets(hostile, &minute).await.unwrap();
        assert!(
            report.buckets.is_empty(),
            "{hostile:?} saw {:?}",
            report.buckets
        );
    }
    support::clickhouse(&config, &format!("DROP DATABASE {db}")).await;
}

#[tokio::test]
async fn bad_ranges_are_refused_before_any_query() {
    let parse = |from: &str, to: &str, granularity: &str| {
        UsageRequest::from_params(&ingest::api::usage::query::UsageParams {
            from: from.into(),
            to: to.into(),
            granularity: Some(granularity.into()),
            group_by: None,
        })
    };
    for (from, to, granularity) in [
        ("1735689600", "1735689600", "minute"),
        ("1735693200", "1735689600", "hour"),
        ("2025-01-01T00:00:00Z", "2025-01-03T00:00:00Z", "minute"),
        ("2025-01-01T00:00:00Z", "2025-03-01T00:00:00Z", "hour"),
        ("2020-01-01T00:00:00Z", "2025-01-01T00:00:00Z", "day"),
    ] {
        let error = parse(from, to, granularity).unwrap_err();
        assert!(
            matches!(error, UsageQueryError::BadRange(_)),
            "{from}..{to}: {error}"
        );
        assert!(error.is_bad_request());
    }
    assert!(parse("2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z", "minute").is_ok());
}
