//! Shared set-up of the integration tests. Every test talks to the real Kafka, schema registry
//! and ClickHouse of the local stack (`compose/local/stack up`), and isolates itself with its own
//! namespace: its own topics, consumer groups, transactional ids, schema subjects and ClickHouse
//! database, so tests run in parallel without seeing each other.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

pub mod images;
pub mod outage;

use imgpipe::Config;

/// A namespace unique to this test run, e.g. `t3f9a1c2e.`.
pub fn unique_namespace(test: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}.", test.replace('_', "-"), &id[..8])
}

/// Config for a test: defaults pointing at the local stack, with a fresh namespace and database.
/// `IMGPIPE_TEST_*` variables override the endpoints (for a stack on other ports).
pub fn test_config(test: &str) -> Config {
    let mut config = Config::default();
    config.kafka.namespace = unique_namespace(test);
    if let Ok(brokers) = std::env::var("IMGPIPE_TEST_KAFKA") {
        config.kafka.brokers = brokers;
    }
    if let Ok(url) = std::env::var("IMGPIPE_TEST_REGISTRY") {
        config.registry.url = url;
    }
    if let Ok(url) = std::env::var("IMGPIPE_TEST_CLICKHOUSE") {
        config.clickhouse.url = url;
    }
    config.clickhouse.database = format!("t_{}", config.kafka.namespace.replace(['-', '.'], "_"))
        .parse()
        .expect("a plain identifier");
    config
}

/// A test's config with its topics created and schemas registered.
pub async fn provisioned(test: &str) -> Config {
    let config = test_config(test);
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        imgpipe::provision::ensure_all(&config.kafka, &config.registry),
    )
    .await
    .expect("provisioning timed out: is the stack up? (compose/local/stack up)")
    .expect("provisioning failed: is the stack up? (compose/local/stack up)");
    assert_eq!(
        report.created.len(),
        schemas::topics::CATALOGUE.len(),
        "{report:?}"
    );
    config
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port for a service to bind later, taken below the kernel's ephemeral range
/// (Linux's default starts at 32768). A port from `bind(0)` is an ephemeral one: released, it
/// could be taken as the local port of any outgoing connection (a Kafka client's, say) before
/// the service bound it, which failed a run with "Address already in use". Ports are handed
/// out in turn from a per-process start, each probed with a bind, so two tests of one process
/// never get the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % COUNT;
    for _ in 0..COUNT {
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT;
        let port = u16::try_from(port).expect("below 32768");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}

/// Services hosted in this test process, stopped on drop.
pub struct Hosted {
    pub shutdown: chassis::Shutdown,
    pub handle: Option<tokio::task::JoinHandle<Result<(), imgpipe::host::HostError>>>,
    pub ops: std::net::SocketAddr,
}

impl Drop for Hosted {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

impl Hosted {
    /// Stops the services and waits for them to drain and commit.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(handle) = self.handle.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), handle).await;
            let stopped = result
                .expect("services stop within 30 s")
                .expect("host task joins");
            stopped.expect("services stop cleanly");
        }
    }
}

/// Starts `services` in this process and waits until `/readyz` says ready.
pub async fn host(mut config: Config, services: &[imgpipe::host::Service]) -> Hosted {
    // Service logs go through libtest's capture: shown only for failing tests.
    chassis::telemetry::init_for_tests();
    let ops = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.ops.listen = Some(ops);
    let shutdown = chassis::Shutdown::new();
    let services = services.to_vec();
    let handle = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { imgpipe::host::run(config, &services, shutdown).await }
    });
    wait_ready(ops, &handle).await;
    Hosted {
        shutdown,
        handle: Some(handle),
        ops,
    }
}

/// Waits until the ops endpoint at `ops` reports ready (or the host task died).
pub async fn wait_ready(
    ops: std::net::SocketAddr,
    handle: &tokio::task::JoinHandle<Result<(), imgpipe::host::HostError>>,
) {
    let http = reqwest::Client::new();
    let url = format!("http://{ops}/readyz");
    let mut last = String::new();
    for _ in 0..600 {
        assert!(
            !handle.is_finished(),
            "services stopped while starting; last readyz: {last}"
        );
        if let Ok(response) = http.get(&url).send().await {
            let ok = response.status().is_success();
            last = response.text().await.unwrap_or_default();
            if ok {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("services not ready after 60 s: {last}");
}

/// A tenant and one of its API keys, created through the identity admin API.
pub struct TenantKey {
    pub tenant_id: String,
    pub api_key: String,
}

/// The admin token of test configs.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Creates a tenant (with a rate limit) and a key on the identity service at `identity`.
pub async fn create_tenant_key(
    identity: std::net::SocketAddr,
    name: &str,
    rate: i32,
    burst: i32,
) -> TenantKey {
    let http = reqwest::Client::new();
    let tenant: serde_json::Value = http
        .post(format!("http://{identity}/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"name": name, "rate_limit_per_second": rate, "burst": burst}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let tenant_id = tenant["id"].as_str().unwrap().to_owned();
    let key: serde_json::Value = http
        .post(format!(
            "http://{identity}/admin/v1/tenants/{tenant_id}/keys"
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    TenantKey {
        tenant_id,
        api_key: key["api_key"].as_str().unwrap().to_owned(),
    }
}

/// Waits until `key` authenticates at the api at `api` (the identity change reached its view).
/// Probes with a usage query, which writes no usage record.
pub async fn wait_for_key(api: std::net::SocketAddr, key: &str) {
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(20),
        "the key to reach the api",
        || async {
            let status = http
                .get(format!("http://{api}/v1/usage?from=0&to=1"))
                .bearer_auth(key)
                .send()
                .await
                .ok()?
                .status();
            (status != reqwest::StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await;
}

/// Writes usage records to a test namespace's `usage.events`, as resizers and the api do.
pub struct UsageProducer {
    producer: rdkafka::producer::FutureProducer,
    codec: schemas::Codec,
    topic: String,
}

impl UsageProducer {
    pub fn new(config: &Config) -> Self {
        let codec = schemas::Codec::new(&config.registry, &config.kafka.namespace);
        Self {
            producer: config.kafka.producer().unwrap(),
            topic: codec.topic::<schemas::events::UsageRecorded>(),
            codec,
        }
    }

    /// Encodes and sends `events` (key = tenant id), waiting for every acknowledgement.
    pub async fn send(&self, events: &[schemas::events::UsageRecorded]) {
        let mut encoded = Vec::with_capacity(events.len());
        for event in events {
            encoded.push((
                event.tenant_id.clone(),
                self.codec.encode(event).await.unwrap(),
            ));
        }
        self.send_raw(&encoded).await;
    }

    /// Sends `(key, value)` records as they are (poison included).
    pub async fn send_raw(&self, records: &[(String, Vec<u8>)]) {
        let sends = records.iter().map(|(key, value)| {
            self.producer.send(
                rdkafka::producer::FutureRecord::to(&self.topic)
                    .key(key)
                    .payload(value),
                Duration::from_secs(10),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e).unwrap();
        }
    }
}

/// A valid resize request (a 16×16 JPEG to 8 px wide) for `tenant`, answered on partition
/// `reply_partition` of the namespace's reply topic, with a minute before its deadline.
pub fn resize_request(
    config: &Config,
    id: &str,
    tenant: &str,
    reply_partition: i32,
) -> schemas::events::ResizeRequested {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    schemas::events::ResizeRequested {
        request_id: id.into(),
        tenant_id: tenant.into(),
        key_id: "k".into(),
        received_at_ms: now,
        deadline_at_ms: now + 60_000,
        params: schemas::events::ResizeParams {
            width: Some(8),
            ..Default::default()
        },
        content_type: None,
        image: images::jpeg(16, 16),
        reply_topic: config.kafka.name(schemas::topics::IMAGE_RESULTS),
        reply_partition,
        source_url: None,
    }
}

/// Writes `request` straight to image.requests (no api involved), encoded through `registry`,
/// to `partition` if given; returns its offset.
pub async fn produce_request(
    config: &Config,
    registry: &schemas::RegistryConfig,
    request: &schemas::events::ResizeRequested,
    partition: Option<i32>,
) -> i64 {
    let codec = schemas::Codec::new(registry, &config.kafka.namespace);
    let payload = codec.encode(request).await.unwrap();
    let topic = config.kafka.name(schemas::topics::IMAGE_REQUESTS);
    let mut record = rdkafka::producer::FutureRecord::to(&topic)
        .key(&request.request_id)
        .payload(&payload);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    config
        .kafka
        .producer()
        .unwrap()
        .send(record, Duration::from_secs(5))
        .await
        .unwrap()
        .offset
}

/// A consumer of the namespace's `usage.events` in group `group` (from the earliest record of
/// a new group), with the codec that decodes them.
pub fn usage_reader(
    config: &Config,
    group: &str,
) -> (schemas::Codec, rdkafka::consumer::StreamConsumer) {
    use rdkafka::consumer::Consumer;
    let codec = schemas::Codec::new(&config.registry, &config.kafka.namespace);
    let consumer: rdkafka::consumer::StreamConsumer = config
        .kafka
        .group_consumer_config(group, chassis::kafka::ConsumerProfile::AtLeastOnce)
        .create()
        .unwrap();
    consumer
        .subscribe(&[&codec.topic::<schemas::events::UsageRecorded>()])
        .unwrap();
    (codec, consumer)
}

/// The value of the unlabelled metric `name` on the ops server at `ops` (`http://host:port`);
/// `None` while the server does not answer or does not export it yet.
pub async fn metric(ops: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{ops}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Runs `sql` on the test's ClickHouse over HTTP and returns the answer's body; panics with the
/// statement and the server's message if it fails.
pub async fn clickhouse(config: &Config, sql: &str) -> String {
    let response = reqwest::Client::new()
        .post(&config.clickhouse.url)
        .body(sql.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert!(status.is_success(), "{sql}: {body}");
    body
}
