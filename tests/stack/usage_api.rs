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
    // A resizer sends its reply before its transaction with the usage record commits, so the
    // api's `ok` can be stored a moment before the record carrying the work: wait for both.
    let pixels_out = 5 * 100 * 75;
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
                && sum(&report, "refused") == a_refused
                && sum(&report, "pixels_out") == pixels_out)
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
    assert_eq!(sum(&report, "pixels_out"), pixels_out, "{report}");

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

/// A usage record of `tenant` at `at_ms`: the api's (`ok`, or `outcome` with no image) or the
/// resizer's (`resized`, with the work), for an image from `host` (`None`: sent in the body).
fn record(
    tenant: &str,
    id: &str,
    at_ms: i64,
    source: schemas::events::UsageSource,
    outcome: &str,
    host: Option<&str>,
) -> schemas::events::UsageRecorded {
    use schemas::events::UsageSource;
    let image = outcome == "ok" || outcome == "resized";
    schemas::events::UsageRecorded {
        request_id: id.into(),
        tenant_id: tenant.into(),
        key_id: "k".into(),
        event_time_ms: at_ms,
        outcome: outcome.into(),
        status: if image { 200 } else { 404 },
        bytes_in: 0,
        bytes_out: if image { 1000 } else { 0 },
        pixels_in: if source == UsageSource::Resizer {
            40_000
        } else {
            0
        },
        pixels_out: if source == UsageSource::Resizer {
            10_000
        } else {
            0
        },
        cpu_time_us: if source == UsageSource::Resizer {
            2000
        } else {
            0
        },
        input_format: image.then(|| "jpeg".to_owned()),
        output_format: image.then(|| "webp".to_owned()),
        latency_us: 9000,
        source,
        source_host: host.map(str::to_owned),
    }
}

/// `record` encoded as a producer from before `source_host` wrote it: with the schema less
/// that field, registered under the topic's subject (a BACKWARD-compatible version, as the
/// previous one was).
async fn old_shape(config: &imgpipe::Config, event: &schemas::events::UsageRecorded) -> Vec<u8> {
    use schemas::events::{Event, UsageRecorded};
    let mut schema: Value = serde_json::from_str(UsageRecorded::SCHEMA).unwrap();
    schema["fields"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["name"] != "source_host");
    let subject = schemas::registry::value_subject(&config.kafka.name(UsageRecorded::TOPIC));
    let id = config
        .registry
        .register(&subject, &schema.to_string())
        .await
        .expect("the schema before source_host is a compatible version");
    let previous = apache_avro::Schema::parse_str(&schema.to_string()).unwrap();
    let apache_avro::types::Value::Record(mut fields) = apache_avro::to_value(event).unwrap()
    else {
        panic!("a record");
    };
    fields.retain(|(name, _)| name != "source_host");
    let value = apache_avro::types::Value::Record(fields)
        .resolve(&previous)
        .unwrap();
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(&previous)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap();
    let mut payload = vec![0];
    payload.extend_from_slice(&id.to_be_bytes());
    payload.extend_from_slice(&body);
    payload
}

/// `(source_host, requests, refused, bytes_out, cpu_time_us)` of every bucket of a
/// `group_by=source_host` report, summed per host.
fn by_host(report: &Value) -> Vec<(String, i64, i64, i64, i64)> {
    let mut hosts: std::collections::BTreeMap<String, (i64, i64, i64, i64)> = Default::default();
    for bucket in report["buckets"].as_array().into_iter().flatten() {
        let host = bucket["source_host"]
            .as_str()
            .expect("every bucket names its host")
            .to_owned();
        let sums = hosts.entry(host).or_default();
        sums.0 += bucket["requests"].as_i64().unwrap();
        sums.1 += bucket["refused"].as_i64().unwrap();
        sums.2 += bucket["bytes_out"].as_i64().unwrap();
        sums.3 += bucket["cpu_time_us"].as_i64().unwrap();
    }
    hosts
        .into_iter()
        .map(|(host, (n, r, b, c))| (host, n, r, b, c))
        .collect()
}

/// The source host is a billing dimension from `usage.events` to `GET /v1/usage`: records of
/// signed GETs name their source's host, the aggregator stores it, and `group_by=source_host`
/// gives each host its exact counts, first from the live tail, then from the settled rollup,
/// and for a range inside one minute (recounted from `usage_raw`). Images sent in the body,
/// and records of a producer from before the field (the previous schema, no `source_host`),
/// count under the empty host. Each request counts once: its two records, a duplicate
/// delivery, or a resizer's record naming the host that its api's record lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_splits_by_source_host_live_and_settled() {
    use schemas::events::UsageSource::{Api, Resizer};
    let mut config = support::provisioned("usage_hosts").await;
    let api = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let identity = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    config.api.listen = api;
    config.identity.listen = identity;
    config.identity.admin_token = support::ADMIN_TOKEN.into();
    config.aggregator.batch_max_age = Duration::from_millis(200);
    config.aggregator.rollup_interval = Duration::from_millis(200);
    config.aggregator.rollup_lateness = Duration::from_secs(1);
    let hosted = support::host(
        config.clone(),
        &[Service::Identity, Service::Aggregator, Service::Api],
    )
    .await;
    let tenant = support::create_tenant_key(identity, "hosts", 1000, 1000).await;
    support::wait_for_key(api, &tenant.api_key).await;
    let t = tenant.tenant_id.as_str();
    let http = reqwest::Client::new();

    // Every record in one second, `at`, a few hundred milliseconds in.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let at = now_ms / 1000;
    let ms = at * 1000 + 300;
    let (images, cdn) = ("images.example.com", "cdn.example.org:8443");
    let mut events = Vec::new();
    for i in 0..3 {
        let id = format!("get-images-{i}");
        events.push(record(t, &id, ms, Resizer, "resized", Some(images)));
        events.push(record(t, &id, ms + 5, Api, "ok", Some(images)));
    }
    for i in 0..2 {
        let id = format!("get-cdn-{i}");
        events.push(record(t, &id, ms, Resizer, "resized", Some(cdn)));
        events.push(record(t, &id, ms + 5, Api, "ok", Some(cdn)));
    }
    // The origin answered 404: refused, never billed, still the host's.
    events.push(record(
        t,
        "get-cdn-missing",
        ms,
        Api,
        "source_not_found",
        Some(cdn),
    ));
    // The resizer names the host, the api's record does not: still one request of that host.
    events.push(record(
        t,
        "get-images-3",
        ms,
        Resizer,
        "resized",
        Some(images),
    ));
    events.push(record(t, "get-images-3", ms + 5, Api, "ok", None));
    // Delivered twice.
    events.push(events[0].clone());
    for i in 0..2 {
        let id = format!("post-{i}");
        events.push(record(t, &id, ms, Resizer, "resized", None));
        events.push(record(t, &id, ms + 5, Api, "ok", None));
    }
    let producer = support::UsageProducer::new(&config);
    producer.send(&events).await;
    let old = [
        record(t, "old-0", ms, Resizer, "resized", None),
        record(t, "old-0", ms + 5, Api, "ok", None),
    ];
    let mut raw = Vec::new();
    for event in &old {
        raw.push((t.to_owned(), old_shape(&config, event).await));
    }
    producer.send_raw(&raw).await;

    let expected: Vec<(String, i64, i64, i64, i64)> = vec![
        (String::new(), 3, 0, 3000, 6000),
        (cdn.to_owned(), 2, 1, 2000, 4000),
        (images.to_owned(), 4, 0, 4000, 8000),
    ];
    let db = config.clickhouse.database.as_str().to_owned();
    let mark = || {
        let config = &config;
        let db = &db;
        async move {
            support::clickhouse(
                config,
                &format!(
                    "SELECT toUInt32(max(bucket)) FROM {db}.usage_rollup WHERE granularity = 0"
                ),
            )
            .await
            .trim()
            .parse::<i64>()
            .unwrap()
        }
    };
    let minute = at - at.rem_euclid(60);
    let ranges = [
        // Whole minutes around `at`: rollup rows and the live tail.
        format!(
            "from={}&to={}&granularity=minute&group_by=source_host",
            at - 600,
            at + 600
        ),
        // One second: recounted from usage_raw.
        format!(
            "from={at}&to={}&granularity=hour&group_by=source_host",
            at + 1
        ),
    ];
    let reports = |what: &'static str| {
        let http = &http;
        let key = &tenant.api_key;
        let ranges = &ranges;
        let expected = &expected;
        async move {
            for range in ranges {
                support::eventually(Duration::from_secs(30), what, || async {
                    let (status, report) = usage(http, api, key, range).await;
                    (status == StatusCode::OK
                        && report["group_by"] == "source_host"
                        && by_host(&report) == *expected)
                        .then_some(())
                })
                .await;
            }
        }
    };
    reports("every host's counts from the live tail").await;
    assert!(
        mark().await < minute,
        "answered before `at`'s minute was settled"
    );

    // Without grouping: the same requests, once each.
    let (_, total) = usage(
        &http,
        api,
        &tenant.api_key,
        &format!("from={}&to={}", at - 600, at + 600),
    )
    .await;
    assert_eq!((sum(&total, "requests"), sum(&total, "refused")), (9, 1));
    assert!(total["buckets"][0].get("source_host").is_none());

    // Settled: the rollup holds the host as a key, and the reports do not change.
    support::eventually(
        Duration::from_secs(150),
        "`at`'s minute settled",
        || async { (mark().await >= minute + 59).then_some(()) },
    )
    .await;
    let settled = support::clickhouse(
        &config,
        &format!(
            "SELECT source_host, sumMerge(requests) FROM {db}.usage_rollup
             WHERE granularity = 1 AND tenant_id = '{t}'
             GROUP BY source_host ORDER BY source_host FORMAT TSV"
        ),
    )
    .await;
    assert_eq!(
        settled,
        format!("\t3\n{cdn}\t3\n{images}\t4\n"),
        "settled minute rows by host (requests and refusals)"
    );
    reports("every host's counts from the settled rollup").await;

    // The analysts' view and per-request view agree.
    let analysts = support::clickhouse(
        &config,
        &format!(
            "SELECT source_host, sum(requests), sum(refused) FROM {db}.usage_day
             WHERE tenant_id = '{t}' GROUP BY source_host ORDER BY source_host FORMAT TSV"
        ),
    )
    .await;
    assert_eq!(analysts, format!("\t3\t0\n{cdn}\t2\t1\n{images}\t4\t0\n"));
    let per_request = support::clickhouse(
        &config,
        &format!(
            "SELECT source_host, count() FROM {db}.usage_by_request
             WHERE tenant_id = '{t}' GROUP BY source_host ORDER BY source_host FORMAT TSV"
        ),
    )
    .await;
    assert_eq!(per_request, format!("\t3\n{cdn}\t3\n{images}\t4\n"));
    hosted.stop().await;
}
