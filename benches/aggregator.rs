//! Usage aggregator benchmarks against the real stack (`cargo bench --bench aggregator`):
//!
//! 1. Throughput: pre-produce `AGG_BENCH_RECORDS` (default 2,000,000) usage records, start one
//!    `imgpipe aggregator` process, time until ClickHouse holds all of them.
//! 2. Freshness: produce at `AGG_BENCH_RATE` (default 10,000) records/s for
//!    `AGG_BENCH_SECONDS` (default 20 s) and measure produce → visible in `usage_minute` for
//!    probe records sent five times a second (p50 / p99).
//!
//! Peak RSS of the aggregator (VmHWM) is reported for both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use imgpipe::Config;
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::Codec;
use schemas::events::{UsageRecorded, UsageSource};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn usage(i: u64, tenant: String, time_ms: i64) -> UsageRecorded {
    UsageRecorded {
        request_id: format!("bench-{i}"),
        tenant_id: tenant,
        key_id: "key-1".into(),
        event_time_ms: time_ms,
        outcome: "ok".into(),
        status: 200,
        bytes_in: 250_000 + (i % 1000) as i64,
        bytes_out: 40_000,
        pixels_in: 1600 * 1200,
        pixels_out: 512 * 384,
        cpu_time_us: 30_000,
        input_format: Some("jpeg".into()),
        output_format: Some("webp".into()),
        latency_us: 45_000,
        source: UsageSource::Resizer,
        source_host: None,
    }
}

struct Producer {
    producer: FutureProducer,
    codec: Codec,
    topic: String,
}

impl Producer {
    fn new(config: &Config) -> Self {
        let codec = Codec::new(&config.registry, &config.kafka.namespace);
        Self {
            producer: config.kafka.producer().unwrap(),
            topic: codec.topic::<UsageRecorded>(),
            codec,
        }
    }

    async fn send(&self, events: &[UsageRecorded]) {
        let mut encoded = Vec::with_capacity(events.len());
        for event in events {
            encoded.push(self.codec.encode(event).await.unwrap());
        }
        let sends = events.iter().zip(&encoded).map(|(event, value)| {
            self.producer.send(
                FutureRecord::to(&self.topic)
                    .key(&event.tenant_id)
                    .payload(value),
                Duration::from_secs(30),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e).unwrap();
        }
    }
}

fn start_aggregator(config: &Config) -> Child {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Command::new(env!("CARGO_BIN_EXE_imgpipe"))
        .arg("aggregator")
        .env("IMGPIPE_KAFKA__NAMESPACE", &config.kafka.namespace)
        .env(
            "IMGPIPE_CLICKHOUSE__DATABASE",
            config.clickhouse.database.as_str(),
        )
        .env("IMGPIPE_OPS__LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn peak_rss_mib(child: &Child) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

async fn clickhouse(config: &Config, sql: &str) -> String {
    reqwest::Client::new()
        .post(&config.clickhouse.url)
        .body(sql.to_owned())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn throughput() {
    let records = env_or("AGG_BENCH_RECORDS", 2_000_000);
    let config = support::provisioned("bench_agg_throughput").await;
    let producer = Producer::new(&config);
    let produce_start = Instant::now();
    let time = now_ms();
    let chunk = 20_000;
    for start in (0..records).step_by(chunk as usize) {
        let events: Vec<_> = (start..(start + chunk).min(records))
            .map(|i| usage(i, format!("tenant-{}", i % 50), time))
            .collect();
        producer.send(&events).await;
    }
    println!(
        "produced {records} records in {:.1} s",
        produce_start.elapsed().as_secs_f64()
    );

    let db = config.clickhouse.database.clone();
    let started = Instant::now();
    let child = start_aggregator(&config);
    let mut first_row = None;
    let mut peak = 0.0_f64;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(peak_rss_mib(&child));
        let stored: u64 = clickhouse(&config, &format!("SELECT count() FROM {db}.usage_raw"))
            .await
            .trim()
            .parse()
            .unwrap_or(0);
        if stored > 0 && first_row.is_none() {
            first_row = Some((Instant::now(), stored));
        }
        if stored >= records {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "drain timed out at {stored}"
        );
    }
    let done = Instant::now();
    peak = peak.max(peak_rss_mib(&child));
    let (first_at, first_count) = first_row.unwrap();
    let drain = done.duration_since(first_at).as_secs_f64();
    println!(
        "throughput: {records} records drained in {:.2} s from start ({:.0} records/s); \
         {:.2} s from first visible row ({:.0} records/s); aggregator peak RSS {peak:.0} MiB",
        done.duration_since(started).as_secs_f64(),
        records as f64 / done.duration_since(started).as_secs_f64(),
        drain,
        (records - first_count) as f64 / drain.max(0.001),
    );
    let exact = clickhouse(
        &config,
        &format!("SELECT count(), uniqExact(request_id) FROM {db}.usage_raw FORMAT TSV"),
    )
    .await;
    println!("usage_raw rows / distinct request ids: {}", exact.trim());
    stop(child);
    clickhouse(&config, &format!("DROP DATABASE {db}")).await;
}

async fn freshness() {
    let rate = env_or("AGG_BENCH_RATE", 10_000);
    let seconds = env_or("AGG_BENCH_SECONDS", 20);
    let config = support::provisioned("bench_agg_freshness").await;
    let db = config.clickhouse.database.clone();
    let producer = Producer::new(&config);
    let child = start_aggregator(&config);
    // Wait until the aggregator writes: one warm-up record visible.
    producer
        .send(&[usage(u64::MAX, "warmup".into(), now_ms())])
        .await;
    support::eventually(Duration::from_secs(60), "warm-up record", || async {
        let n = clickhouse(&config, &format!("SELECT count() FROM {db}.usage_raw")).await;
        (n.trim() == "1").then_some(())
    })
    .await;

    // Producer: every 10 ms, rate/100 records; every 200 ms one probe with its own tenant id.
    let probes = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Instant)>::new()));
    let sender = {
        let probes = probes.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let producer = Producer::new(&config);
            let per_tick = rate / 100;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut i = 0_u64;
            for n in 0..seconds * 100 {
                tick.tick().await;
                let time = now_ms();
                let mut events: Vec<_> = (0..per_tick)
                    .map(|k| usage(i + k, format!("tenant-{}", k % 50), time))
                    .collect();
                i += per_tick;
                let probe = (n % 20 == 0).then(|| format!("probe-{n}"));
                if let Some(tenant) = &probe {
                    events.push(usage(i, tenant.clone(), time));
                    i += 1;
                }
                let sent_at = Instant::now();
                producer.send(&events).await;
                if let Some(tenant) = probe {
                    probes.lock().unwrap().push((tenant, sent_at));
                }
            }
            i
        })
    };
    let mut seen = std::collections::HashMap::new();
    let mut peak = 0.0_f64;
    let poll_start = Instant::now();
    loop {
        let text = clickhouse(
            &config,
            &format!(
                "SELECT DISTINCT tenant_id FROM {db}.usage_minute WHERE tenant_id LIKE 'probe-%' FORMAT TSV"
            ),
        )
        .await;
        let now = Instant::now();
        for tenant in text.lines() {
            seen.entry(tenant.to_owned()).or_insert(now);
        }
        peak = peak.max(peak_rss_mib(&child));
        if sender.is_finished() && seen.len() >= probes.lock().unwrap().len() {
            break;
        }
        if poll_start.elapsed() > Duration::from_secs(seconds + 60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let produced = sender.await.unwrap();
    let mut latencies: Vec<f64> = probes
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(tenant, sent)| Some(seen.get(tenant)?.duration_since(*sent).as_secs_f64()))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    println!(
        "freshness at {rate} records/s for {seconds} s ({produced} records, {} probes): \
         produce → visible in usage_minute p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; \
         aggregator peak RSS {peak:.0} MiB",
        latencies.len(),
        pct(0.50) * 1e3,
        pct(0.99) * 1e3,
        latencies.last().copied().unwrap_or(0.0) * 1e3,
    );
    stop(child);
    clickhouse(&config, &format!("DROP DATABASE {db}")).await;
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a filter argument picks one part.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    if filter.as_deref().is_none_or(|f| "throughput".contains(f)) {
        throughput().await;
    }
    if filter.as_deref().is_none_or(|f| "freshness".contains(f)) {
        freshness().await;
    }
}
