//! Supervision over the real stack: a background task that dies (here the api's identity tail,
//! made to panic on its next record through a fault point) stops the whole process with a
//! non-zero exit and one clear ERROR naming the task, instead of leaving an api that answers
//! with a frozen view of tenants and keys. Runs in `failpoints` builds (the test command's).
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)] // tests fail by panicking

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imgpipe::host::Service;

use crate::support;

#[tokio::test]
async fn a_task_that_panics_stops_the_process_with_a_clear_error() {
    let mut config = support::provisioned("supervision_tail").await;
    let identity = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    config.identity.listen = identity;
    config.identity.admin_token = support::ADMIN_TOKEN.into();
    let identity_host = support::host(config.clone(), &[Service::Identity]).await;

    let api = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let ops = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgpipe"))
        .arg("api")
        .env("IMGPIPE_KAFKA__BROKERS", &config.kafka.brokers)
        .env("IMGPIPE_KAFKA__NAMESPACE", &config.kafka.namespace)
        .env("IMGPIPE_REGISTRY__URL", &config.registry.url)
        .env("IMGPIPE_API__LISTEN", api.to_string())
        .env("IMGPIPE_OPS__LISTEN", ops.to_string())
        .env("IMGPIPE_TELEMETRY__LOG_FORMAT", "json")
        .env("RUST_LOG", "error")
        // The tail panics on the first identity record it reads after start-up.
        .env("FAILPOINTS", "identity-tail-record=panic(injected fault)")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the imgpipe binary starts");

    // A record on identity.changes reaches the tail.
    support::create_tenant_key(identity, "supervised", 10, 10).await;

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the api kept running with a dead identity tail");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(!status.success(), "exit {status:?}; log: {log}");
    let errors: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &serde_json::Value| line["level"] == "ERROR")
        .collect();
    assert!(
        errors.iter().any(|e| {
            let text = e.to_string();
            text.contains("identity-tail")
                && text.contains("panicked")
                && text.contains("injected fault")
        }),
        "no ERROR names the task and its panic: {log}"
    );
    identity_host.stop().await;
}
