//! A request is billed `ok` only when its client was handed the image. Over the real stack, each
//! way a client can fail to get its 200 is recorded with its own outcome, never `ok`: a body that
//! arrives slower than the deadline (408, nothing produced), a client that hangs up while the
//! image is being made (`client_closed_request`), and an api killed with SIGKILL mid-request (the
//! resizer's `resized` stands; nobody confirms delivery).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)] // tests fail by panicking

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use imgpipe::Config;
use imgpipe::host::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support;

/// `(outcome, status, sources)` of `tenant`'s requests in `usage_by_request`, with the number of
/// distinct writers (api, resizer) behind each.
async fn usage_rows(config: &Config, tenant: &str) -> Vec<(String, i64, i64)> {
    let db = &config.clickhouse.database;
    let sql = format!(
        "SELECT outcome, toInt64(status), toInt64(sources) FROM (
           SELECT request_id, outcome, status FROM {db}.usage_by_request WHERE tenant_id = '{tenant}'
         ) ANY INNER JOIN (
           SELECT request_id, uniqExact(source) AS sources FROM {db}.usage_raw
           WHERE tenant_id = '{tenant}' GROUP BY request_id
         ) USING request_id ORDER BY outcome FORMAT TSV"
    );
    let Ok(response) = reqwest::Client::new()
        .post(&config.clickhouse.url)
        .body(sql)
        .send()
        .await
    else {
        return Vec::new();
    };
    let Ok(response) = response.error_for_status() else {
        return Vec::new();
    };
    response
        .text()
        .await
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let cells: Vec<&str> = line.split('\t').collect();
            (
                cells[0].to_owned(),
                cells[1].parse().unwrap(),
                cells[2].parse().unwrap(),
            )
        })
        .collect()
}

/// Waits until `tenant` has exactly one request in ClickHouse, written by `sources` writers,
/// and returns its `(outcome, status)`.
async fn the_one_request(config: &Config, tenant: &str, sources: i64) -> (String, i64) {
    support::eventually(
        Duration::from_secs(30),
        "the request's usage in ClickHouse",
        || async {
            match usage_rows(config, tenant).await.as_slice() {
                [(outcome, status, n)] if *n == sources => Some((outcome.clone(), *status)),
                _ => None,
            }
        },
    )
    .await
}

/// How many records the namespaced `topic` holds (the sum of its partitions' high watermarks).
async fn records_in(config: &Config, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let kafka = config.kafka.clone();
    let topic = kafka.name(topic);
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka.client_config().create().unwrap();
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .unwrap();
        metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p.id(), Duration::from_secs(5))
                    .unwrap();
                high - low
            })
            .sum()
    })
    .await
    .unwrap()
}

/// A test config with the api and identity on free ports and a quick aggregator.
async fn config(test: &str) -> (Config, SocketAddr, SocketAddr) {
    let mut config = support::provisioned(test).await;
    let api = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let identity = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    config.api.listen = api;
    config.identity.listen = identity;
    config.identity.admin_token = support::ADMIN_TOKEN.into();
    config.aggregator.batch_max_age = Duration::from_millis(200);
    (config, api, identity)
}

fn request_head(api: SocketAddr, key: &str, query: &str, length: usize) -> String {
    format!(
        "POST /v1/resize?{query} HTTP/1.1\r\nhost: {api}\r\nauthorization: Bearer {key}\r\n\
         content-length: {length}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_body_slower_than_the_deadline_gets_408_and_is_never_resized() {
    let (mut config, api, identity) = config("billing_slow_body").await;
    config.api.request_timeout = Duration::from_secs(2);
    let hosted = support::host(config.clone(), &Service::ALL).await;
    let tenant = support::create_tenant_key(identity, "slow", 100, 100).await;
    support::wait_for_key(api, &tenant.api_key).await;

    // Every chunk comes well within the body read timeout, but the whole body takes longer than
    // the request's deadline.
    let image = support::images::jpeg(64, 64);
    let mut stream = tokio::net::TcpStream::connect(api).await.unwrap();
    let head = request_head(api, &tenant.api_key, "width=32", image.len());
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunks: Vec<&[u8]> = image.chunks(image.len().div_ceil(8)).collect();
    for chunk in chunks {
        if stream.write_all(chunk).await.is_err() {
            break; // the api answered and closed
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");

    // Recorded by the api alone: nothing was produced, so no resizer worked on it.
    let (outcome, status) = the_one_request(&config, &tenant.tenant_id, 1).await;
    assert_eq!((outcome.as_str(), status), ("request_timeout", 408));
    hosted.stop().await;
}

#[tokio::test]
async fn a_client_that_hangs_up_before_its_image_is_not_billed_ok() {
    let (config, api, identity) = config("billing_client_gone").await;
    // No resizer yet: the request waits in Kafka while the client gives up.
    let front = support::host(config.clone(), &[Service::Identity, Service::Api]).await;
    let tenant = support::create_tenant_key(identity, "gone", 100, 100).await;
    support::wait_for_key(api, &tenant.api_key).await;

    let image = support::images::jpeg(64, 64);
    let mut stream = tokio::net::TcpStream::connect(api).await.unwrap();
    let head = request_head(api, &tenant.api_key, "width=32", image.len());
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&image).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(stream);

    // Now the work is done: the resizer records `resized`, the api `client_closed_request`.
    let back = support::host(config.clone(), &[Service::Resizer, Service::Aggregator]).await;
    let (outcome, status) = the_one_request(&config, &tenant.tenant_id, 2).await;
    assert_eq!((outcome.as_str(), status), ("client_closed_request", 499));
    back.stop().await;
    front.stop().await;
}

/// Sends one resize request and waits until it is in Kafka, as a client would: a 503 (the api
/// not ready for a moment, say its reply partitions moving under load) is retried on a new
/// connection, and any other answer before the record fails the test with that answer. Returns
/// the connection whose request was produced, its answer still to come.
async fn send_until_produced(config: &Config, api: SocketAddr, key: &str) -> tokio::net::TcpStream {
    let image = support::images::jpeg(64, 64);
    let head = request_head(api, key, "width=32", image.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    'attempt: loop {
        let mut stream = tokio::net::TcpStream::connect(api).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&image).await.unwrap();
        let mut answer = Vec::new();
        loop {
            if records_in(config, schemas::topics::IMAGE_REQUESTS).await == 1 {
                return stream;
            }
            let mut chunk = [0; 4096];
            if let Ok(read) =
                tokio::time::timeout(Duration::from_millis(50), stream.read(&mut chunk)).await
            {
                answer.extend_from_slice(&chunk[..read.unwrap_or(0)]);
            }
            // A status line is judged once it is whole ("HTTP/1.1 503" is 12 bytes).
            if answer.len() >= 12 {
                let text = String::from_utf8_lossy(&answer);
                if text.starts_with("HTTP/1.1 503") && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'attempt;
                }
                panic!("the api answered before producing the request: {text}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after 30s waiting for the request in Kafka"
            );
        }
    }
}

/// The api in its own process, killed with SIGKILL on drop if still running.
struct ApiProcess(Child);

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_request_whose_api_was_killed_stays_unconfirmed_never_ok() {
    let (config, api, identity) = config("billing_api_killed").await;
    let identity_host = support::host(config.clone(), &[Service::Identity]).await;
    let tenant = support::create_tenant_key(identity, "killed", 100, 100).await;
    let ops = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let mut process = ApiProcess(
        Command::new(env!("CARGO_BIN_EXE_imgpipe"))
            .arg("api")
            .env("IMGPIPE_KAFKA__BROKERS", &config.kafka.brokers)
            .env("IMGPIPE_KAFKA__NAMESPACE", &config.kafka.namespace)
            .env("IMGPIPE_REGISTRY__URL", &config.registry.url)
            .env("IMGPIPE_CLICKHOUSE__URL", &config.clickhouse.url)
            .env(
                "IMGPIPE_CLICKHOUSE__DATABASE",
                config.clickhouse.database.as_str(),
            )
            .env("IMGPIPE_API__LISTEN", api.to_string())
            .env("IMGPIPE_API__REQUEST_TIMEOUT", "30s")
            .env("IMGPIPE_OPS__LISTEN", ops.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("the imgpipe binary starts"),
    );
    support::eventually(Duration::from_secs(60), "the api process ready", || async {
        let ready = reqwest::get(format!("http://{ops}/readyz")).await.ok()?;
        ready.status().is_success().then_some(())
    })
    .await;
    assert!(process.0.try_wait().unwrap().is_none(), "api exited");
    support::wait_for_key(api, &tenant.api_key).await;

    // The client waits for its image; no resizer runs yet, so the request sits in Kafka. The
    // api is killed only once its request is in Kafka (a fixed pause raced a slow first
    // produce).
    let mut stream = send_until_produced(&config, api, &tenant.api_key).await;
    process.0.kill().expect("SIGKILL");
    process.0.wait().unwrap();

    let back = support::host(config.clone(), &[Service::Resizer, Service::Aggregator]).await;
    let (outcome, status) = the_one_request(&config, &tenant.tenant_id, 1).await;
    assert_eq!((outcome.as_str(), status), ("resized", 200));
    // The client saw the connection drop, not an image.
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    back.stop().await;
    identity_host.stop().await;
}
