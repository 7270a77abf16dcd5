//! ClickHouse goes away under the aggregator and comes back: the aggregator says so on `/readyz`,
//! keeps its memory bounded by pausing consumption instead of dropping records, and catches up
//! by itself when ClickHouse returns — with exact totals. The outage is a cut TCP proxy in front
//! of the real ClickHouse, so nothing else on the shared stack is disturbed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)] // tests fail by panicking

use std::net::SocketAddr;
use std::time::Duration;

use imgpipe::host::Service;
use schemas::events::{UsageRecorded, UsageSource};

use crate::support;

fn record(tenant: &str, i: usize) -> UsageRecorded {
    UsageRecorded {
        request_id: format!("{tenant}-{i}"),
        tenant_id: tenant.into(),
        key_id: "k".into(),
        event_time_ms: i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap(),
        outcome: "ok".into(),
        status: 200,
        bytes_in: 1000 + i64::try_from(i).unwrap(),
        bytes_out: 10,
        pixels_in: 100,
        pixels_out: 10,
        cpu_time_us: 7,
        input_format: Some("jpeg".into()),
        output_format: Some("jpeg".into()),
        latency_us: 5,
        source: UsageSource::Resizer,
        source_host: None,
    }
}

async fn produce(config: &imgpipe::Config, tenant: &str, range: std::ops::Range<usize>) {
    let events: Vec<UsageRecorded> = range.map(|i| record(tenant, i)).collect();
    support::UsageProducer::new(config).send(&events).await;
}

/// (rows, sum of bytes_in) for `tenant`, straight from the real ClickHouse (not the proxy).
async fn stored(config: &imgpipe::Config, tenant: &str) -> (u64, u64) {
    let sql = format!(
        "SELECT count(), sum(bytes_in) FROM {}.usage_by_request WHERE tenant_id = '{tenant}' FORMAT TSV",
        config.clickhouse.database
    );
    let Ok(response) = reqwest::Client::new()
        .post("http://127.0.0.1:8123")
        .body(sql)
        .send()
        .await
    else {
        return (0, 0);
    };
    let text = response.text().await.unwrap_or_default();
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0));
    (fields.next().unwrap_or(0), fields.next().unwrap_or(0))
}

async fn readyz(ops: SocketAddr) -> (bool, String) {
    let response = reqwest::get(format!("http://{ops}/readyz")).await.unwrap();
    let ready = response.status().is_success();
    (ready, response.text().await.unwrap())
}

#[tokio::test]
async fn the_aggregator_survives_a_clickhouse_outage_and_catches_up_exactly() {
    let mut config = support::provisioned("ch_outage").await;
    let proxy = support::outage::Outage::proxy(SocketAddr::from(([127, 0, 0, 1], 8123))).await;
    config.clickhouse.url = format!("http://{}", proxy.address);
    config.aggregator.batch_max_age = Duration::from_millis(200);
    config.aggregator.retry_backoff_max = Duration::from_secs(1);
    let hosted = support::host(config.clone(), &[Service::Aggregator]).await;
    let tenant = "outage-tenant";
    let expected = |n: u64| (n, (0..n).map(|i| 1000 + i).sum::<u64>());

    produce(&config, tenant, 0..500).await;
    support::eventually(Duration::from_secs(20), "the first 500 records", || async {
        (stored(&config, tenant).await == expected(500)).then_some(())
    })
    .await;

    // ClickHouse disappears (for the aggregator): it must say so, and lose nothing.
    proxy.cut();
    produce(&config, tenant, 500..1500).await;
    let reason = support::eventually(
        Duration::from_secs(20),
        "readyz to report ClickHouse",
        || async {
            let (ready, body) = readyz(hosted.ops).await;
            (!ready && body.contains("ClickHouse")).then_some(body)
        },
    )
    .await;
    assert!(reason.contains("unavailable"), "{reason}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stored(&config, tenant).await,
        expected(500),
        "nothing written while cut off"
    );

    // It comes back: the aggregator catches up by itself, exactly.
    proxy.restore();
    support::eventually(
        Duration::from_secs(30),
        "catching up after the outage",
        || async { (stored(&config, tenant).await == expected(1500)).then_some(()) },
    )
    .await;
    support::eventually(Duration::from_secs(10), "readyz to recover", || async {
        readyz(hosted.ops).await.0.then_some(())
    })
    .await;
    // And no record was written twice (a cut INSERT may have been applied without an answer).
    let sql = format!(
        "SELECT count() FROM {}.usage_raw WHERE tenant_id = '{tenant}' FORMAT TSV",
        config.clickhouse.database
    );
    let raw: u64 = reqwest::Client::new()
        .post("http://127.0.0.1:8123")
        .body(sql)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(raw, 1500, "usage_raw holds each record once");
    hosted.stop().await;
}
