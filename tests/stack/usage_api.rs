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
    let hosted = support::host(config.clone(), &Service::ALL).await;
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
    // Those two probes were refusals (400) recorded for each tenant; now the real traffic.
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
    // Billed: the images; refused: the probes and the typo, never billed.
    let (a_requests, a_refused, b_requests, b_refused) = (5, 2, 3, 1);

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
            (status == StatusCode::OK
                && sum(&report, "requests") == a_requests
                && sum(&report, "refused") == a_refused)
                .then_some(report)
        },
    )
    .await;
    assert_eq!(report["tenant_id"], a.tenant_id.as_str());
    let (requests, bytes_in, bytes_out) = clickhouse_totals(&config, &a.tenant_id).await;
    assert_eq!(requests, a_requests + a_refused, "every request, once");
    assert_eq!(sum(&report, "bytes_in"), bytes_in, "the api and SQL agree");
    assert_eq!(sum(&report, "bytes_out"), bytes_out);
    let sent = i64::try_from(photo.len()).unwrap();
    // A parameter typo is refused before the body is read: only the five resizes count bytes.
    assert_eq!(bytes_in, 5 * sent);
    assert_eq!(sum(&report, "pixels_out"), 5 * 100 * 75, "{report}");

    // By outcome: five ok, two refused with bad_parameters. `ok` comes from the api's record of
    // each delivered image, which may land a moment after the resizer's `resized`.
    let expected = [("bad_parameters".to_owned(), 0, 2), ("ok".to_owned(), 5, 0)];
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
            let mut outcomes: Vec<(String, i64, i64)> = by_outcome["buckets"]
                .as_array()?
                .iter()
                .map(|b| {
                    (
                        b["outcome"].as_str().unwrap().to_owned(),
                        b["requests"].as_i64().unwrap(),
                        b["refused"].as_i64().unwrap(),
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
        (sum(&report, "requests") == b_requests && sum(&report, "refused") == b_refused)
            .then_some(report)
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

/// `sum(requests), sum(refused)` of `tenant` from `usage_day` since yesterday, the analysts'
/// per-tenant totals, run as a read-only analyst account runs it (`readonly = 1`).
async fn invoice_totals(config: &imgpipe::Config, tenant: &str) -> (i64, i64) {
    let sql = format!(
        "SELECT toInt64(sum(requests)), toInt64(sum(refused)) FROM {}.usage_day \
         WHERE tenant_id = '{tenant}' AND day >= toStartOfDay(now()) - 86400 FORMAT TSV",
        config.clickhouse.database
    );
    let mut url = reqwest::Url::parse(&config.clickhouse.url).unwrap();
    url.query_pairs_mut().append_pair("readonly", "1");
    let text = reqwest::Client::new()
        .post(url)
        .body(sql)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    let cells: Vec<i64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (cells[0], cells[1])
}

/// Billing counts delivered work. A tenant that gets N images and M refusals (a parameter
/// typo, a wrong secret for its key, over its rate limit, suspended) sees `requests` = N and
/// `refused` = M, in `GET /v1/usage` and in the analysts' totals; by outcome, each refusal code
/// has its own row, counted as refused.
#[tokio::test]
async fn requests_count_delivered_images_and_refusals_are_their_own_column() {
    let mut config = support::provisioned("usage_billed").await;
    let api = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let identity = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    config.api.listen = api;
    config.identity.listen = identity;
    config.identity.admin_token = support::ADMIN_TOKEN.into();
    config.aggregator.batch_max_age = Duration::from_millis(200);
    let hosted = support::host(config.clone(), &Service::ALL).await;
    // Five requests a second, a burst of three: a quick run of calls goes over the limit.
    let tenant = support::create_tenant_key(identity, "billed", 5, 3).await;
    support::wait_for_key(api, &tenant.api_key).await;
    let http = reqwest::Client::new();
    let photo = support::images::jpeg(320, 240);

    // Every answer, by the outcome it records: 200 is a delivered image, the rest refusals.
    let mut answers: std::collections::BTreeMap<&'static str, i64> = Default::default();
    let tally = |answers: &mut std::collections::BTreeMap<&'static str, i64>,
                 status: StatusCode| {
        let outcome = match status {
            StatusCode::OK => "ok",
            StatusCode::BAD_REQUEST => "bad_parameters",
            StatusCode::UNAUTHORIZED => "unauthenticated",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            other => panic!("unexpected answer {other}"),
        };
        *answers.entry(outcome).or_default() += 1;
        status
    };
    let images = 3;
    let mut delivered = 0;
    while delivered < images {
        let status = tally(
            &mut answers,
            resize(&http, api, &tenant.api_key, "width=64", photo.clone()).await,
        );
        if status == StatusCode::OK {
            delivered += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // A parameter typo (400, refused before the body is read) until the limit answers 429.
    // The images may have emptied the burst; a second refills it (3 tokens at 5/s take 0.6 s),
    // so the first typo is answered 400 however quickly the images came back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut over_limit = false;
    for _ in 0..100 {
        let status = tally(
            &mut answers,
            resize(&http, api, &tenant.api_key, "widht=64", Vec::new()).await,
        );
        if status == StatusCode::TOO_MANY_REQUESTS {
            over_limit = true;
            break;
        }
    }
    assert!(over_limit, "the rate limit never answered 429: {answers:?}");
    assert!(
        answers.contains_key("bad_parameters"),
        "the first typo was not answered 400: {answers:?}"
    );
    // The tenant's key with a wrong secret: 401, recorded against the key it named.
    let mut wrong = tenant.api_key.clone();
    let last = if wrong.ends_with('a') { "b" } else { "a" };
    wrong.replace_range(wrong.len() - 1.., last);
    let status = tally(
        &mut answers,
        resize(&http, api, &wrong, "width=64", photo.clone()).await,
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Suspended: typos until the api's view has the suspension (403), then active again.
    let patch = |status: &'static str| {
        let http = http.clone();
        let tenant_id = tenant.tenant_id.clone();
        async move {
            http.patch(format!("http://{identity}/admin/v1/tenants/{tenant_id}"))
                .bearer_auth(support::ADMIN_TOKEN)
                .json(&serde_json::json!({ "status": status }))
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap();
        }
    };
    patch("suspended").await;
    let mut forbidden = false;
    for _ in 0..200 {
        let status = tally(
            &mut answers,
            resize(&http, api, &tenant.api_key, "widht=64", Vec::new()).await,
        );
        if status == StatusCode::FORBIDDEN {
            forbidden = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        forbidden,
        "the suspension never reached the api: {answers:?}"
    );
    patch("active").await;

    let requests = answers["ok"];
    let refused: i64 = answers
        .iter()
        .filter(|(outcome, _)| **outcome != "ok")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(requests, images);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let range = format!("from={}&to={}", now - 3600, now + 60);
    let report = support::eventually(
        Duration::from_secs(30),
        "N images and M refusals in GET /v1/usage",
        || async {
            let (status, report) = usage(&http, api, &tenant.api_key, &range).await;
            (status == StatusCode::OK
                && sum(&report, "requests") == requests
                && sum(&report, "refused") == refused)
                .then_some(report)
        },
    )
    .await;
    assert_eq!(report["tenant_id"], tenant.tenant_id.as_str());
    assert_eq!(
        invoice_totals(&config, &tenant.tenant_id).await,
        (requests, refused),
        "the analysts' totals agree"
    );

    // By outcome: every outcome its row; `ok` billed, each refusal code refused.
    let expected: Vec<(String, i64, i64)> = answers
        .iter()
        .map(|(&outcome, &n)| {
            if outcome == "ok" {
                (outcome.to_owned(), n, 0)
            } else {
                (outcome.to_owned(), 0, n)
            }
        })
        .collect();
    assert!(expected.len() == 5, "{expected:?}");
    support::eventually(Duration::from_secs(20), "every outcome its row", || async {
        let (status, by_outcome) = usage(
            &http,
            api,
            &tenant.api_key,
            &format!("{range}&granularity=day&group_by=outcome"),
        )
        .await;
        if status != StatusCode::OK {
            return None;
        }
        let got: Vec<(String, i64, i64)> = by_outcome["buckets"]
            .as_array()?
            .iter()
            .map(|b| {
                (
                    b["outcome"].as_str().unwrap().to_owned(),
                    b["requests"].as_i64().unwrap(),
                    b["refused"].as_i64().unwrap(),
                )
            })
            .collect();
        (got == expected).then_some(())
    })
    .await;
    hosted.stop().await;
}
