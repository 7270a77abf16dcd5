//! Usage end to end: real resizes and refusals through the api become usage records (written by
//! the resizers in their transactions and by the api for refusals), the aggregator lands them in
//! ClickHouse within seconds, and `GET /v1/usage` gives each tenant exactly its own totals —
//! the same numbers an analyst's SQL gives.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)] // tests fail by panicking

use std::net::SocketAddr;
use std::time::Duration;

use imgpipe::host::Service;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support;

async fn resize(
    http: &reqwest::Client,
    api: SocketAddr,
    key: &str,
    query: &str,
    body: Vec<u8>,
) -> StatusCode {
    http.post(format!("http://{api}/v1/resize?{query}"))
        .bearer_auth(key)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

async fn usage(
    http: &reqwest::Client,
    api: SocketAddr,
    key: &str,
    query: &str,
) -> (StatusCode, Value) {
    let response = http
        .get(format!("http://{api}/v1/usage?{query}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

fn sum(report: &Value, field: &str) -> i64 {
    report["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[field].as_i64().unwrap())
        .sum()
}

/// Exact totals straight from ClickHouse, as an analyst would query them.
async fn clickhouse_totals(config: &imgpipe::Config, tenant: &str) -> (i64, i64, i64) {
    let sql = format!(
        "SELECT toInt64(count()) AS requests, toInt64(sum(bytes_in)) AS bytes_in, \
         toInt64(sum(bytes_out)) AS bytes_out FROM {}.usage_by_request \
         WHERE tenant_id = '{tenant}' FORMAT JSONEachRow",
        config.clickhouse.database
    );
    let text = reqwest::Client::new()
        .post(&config.clickhouse.url)
        .body(sql)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    let row: Value = serde_json::from_str(text.trim()).unwrap();
    let number = |v: &Value| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap()
    };
    (
        number(&row["requests"]),
        number(&row["bytes_in"]),
        number(&row["bytes_out"]),
    )
}

#[tokio::test]
async fn each_tenant_sees_exactly_its_own_usage_seconds_later() {
    let mut config = support::provisioned("usage_api").await;
    let api = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let identity = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    config.api.listen = api;
    config.identity.listen = identity;
    config.identity.admin_token = support::ADMIN_TOKEN.into();
    config.aggregator.batch_max_age = Duration::from_millis(200);
    let services = [
        Service::Identity,
        Service::Aggregator,
        Service::Resizer,
        Service::Api,
    ];
    let hosted = support::host(config.clone(), &services).await;
    let a = support::create_tenant_key(identity, "tenant-a", 1000, 1000).await;
    let b = support::create_tenant_key(identity, "tenant-b", 1000, 1000).await;
    let http = reqwest::Client::new();

    let photo = support::images::jpeg(640, 480);
    for key in [&a.api_key, &b.api_key] {
        support::eventually(Duration::from_secs(10), "keys to reach the api", || async {
            let status = resize(&http, api, key, "width=0", Vec::new()).await;
            (status != StatusCode::UNAUTHORIZED).then_some(())
        })
        .await;
    }
    // Those two probes were refusals (400) billed to each tenant; now the real traffic.
    for _ in 0..5 {
        assert_eq!(
            resize(
                &http,
                api,
                &a.api_key,
                "width=100&format=png",
                photo.clone()
            )
            .await,
            StatusCode::OK
        );
    }
    assert_eq!(
        resize(&http, api, &a.api_key, "widht=100", photo.clone()).await,
        StatusCode::BAD_REQUEST
    );
    for _ in 0..3 {
        assert_eq!(
            resize(&http, api, &b.api_key, "width=50", photo.clone()).await,
            StatusCode::OK
        );
    }
    let (a_requests, b_requests) = (5 + 2, 3 + 1);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let range = format!("from={}&to={}", now - 3600, now + 60);
    let report = support::eventually(
        Duration::from_secs(20),
        "usage of tenant A in ClickHouse",
        || async {
            let (status, report) = usage(
                &http,
                api,
                &a.api_key,
                &format!("{range}&granularity=minute"),
            )
            .await;
            (status == StatusCode::OK && sum(&report, "requests") == a_requests).then_some(report)
        },
    )
    .await;
    assert_eq!(report["tenant_id"], a.tenant_id.as_str());
    let (requests, bytes_in, bytes_out) = clickhouse_totals(&config, &a.tenant_id).await;
    assert_eq!(requests, a_requests);
    assert_eq!(sum(&report, "bytes_in"), bytes_in, "the api and SQL agree");
    assert_eq!(sum(&report, "bytes_out"), bytes_out);
    let sent = i64::try_from(photo.len()).unwrap();
    // A parameter typo is refused before the body is read: only the five resizes count bytes.
    assert_eq!(bytes_in, 5 * sent);
    assert_eq!(sum(&report, "pixels_out"), 5 * 100 * 75, "{report}");

    // By outcome: five ok, two refused with bad_parameters. `ok` comes from the api's record of
    // each delivered image, which may land a moment after the resizer's `resized`.
    let expected = [("bad_parameters".to_owned(), 2), ("ok".to_owned(), 5)];
    support::eventually(
        Duration::from_secs(20),
        "five ok and two bad_parameters by outcome",
        || async {
            let (_, by_outcome) = usage(
                &http,
                api,
                &a.api_key,
                &format!("{range}&granularity=hour&group_by=outcome"),
            )
            .await;
            let mut outcomes: Vec<(String, i64)> = by_outcome["buckets"]
                .as_array()?
                .iter()
                .map(|b| {
                    (
                        b["outcome"].as_str().unwrap().to_owned(),
                        b["requests"].as_i64().unwrap(),
                    )
                })
                .collect();
            outcomes.sort();
            (outcomes == expected).then_some(())
        },
    )
    .await;

    // Tenant B sees only its own requests, through the same route.
    let report_b = support::eventually(Duration::from_secs(20), "usage of tenant B", || async {
        let (_, report) = usage(&http, api, &b.api_key, &format!("{range}&granularity=day")).await;
        (sum(&report, "requests") == b_requests).then_some(report)
    })
    .await;
    assert_eq!(report_b["tenant_id"], b.tenant_id.as_str());

    // Bad ranges are the caller's mistake: 400 with a problem document.
    for bad in [
        format!("from={now}&to={}", now - 10),
        "from=yesterday&to=today".into(),
        format!("from={}&to={now}&granularity=minute", now - 30 * 86400),
    ] {
        let response = http
            .get(format!("http://{api}/v1/usage?{bad}"))
            .bearer_auth(&a.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let (status, _) = usage(&http, api, "imgp_nope_nope", &range).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    hosted.stop().await;
}
