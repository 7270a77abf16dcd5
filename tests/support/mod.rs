//! Shared set-up of the integration tests. Every test talks to the real Kafka, schema registry
//! and ClickHouse of the local stack (`compose/local/stack up`), and isolates itself with its own
//! namespace: its own topics, consumer groups, transactional ids, schema subjects and ClickHouse
//! database, so tests run in parallel without seeing each other.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

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
    config.clickhouse.database = format!("t_{}", config.kafka.namespace.replace(['-', '.'], "_"));
    config
}

/// A test's config with its topics created and schemas registered.
pub async fn provisioned(test: &str) -> Config {
    let config = test_config(test);
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        schemas::provision::ensure_all(&config.kafka, &config.registry),
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
